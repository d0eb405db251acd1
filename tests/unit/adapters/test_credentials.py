"""The app signs in with its managed identity in Azure and as the developer elsewhere, so `func start`
against real resources works with the roles infra grants the deploying principal."""

from __future__ import annotations

import pytest
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

from shared import runtime
from shared.adapters import credentials
from shared.settings import Settings


@pytest.fixture(autouse=True)
def _no_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in credentials.PLATFORM_VARIABLES:
        monkeypatch.delenv(name, raising=False)


async def test_in_azure_the_managed_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://localhost:8081/msi/token")
    credential = credentials.app_credential(Settings(AZURE_CLIENT_ID="11111111-2222-3333-4444-555555555555"))
    assert isinstance(credential, ManagedIdentityCredential)
    await credential.close()


async def test_elsewhere_the_developer_and_never_a_managed_identity_probe() -> None:
    credential = credentials.app_credential(Settings())
    assert isinstance(credential, DefaultAzureCredential)
    assert not any(isinstance(c, ManagedIdentityCredential) for c in credential.credentials)
    await credential.close()


async def test_the_runtime_built_from_the_environment_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AzureWebJobsStorage__tableServiceUri", "https://example.table.core.windows.net")
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    saved = runtime._installed
    runtime.install(None)
    try:
        rt = runtime.get()
        ledger = rt.ledger
        assert isinstance(ledger._service.credential, DefaultAzureCredential)  # type: ignore[attr-defined]
        await rt.close()
    finally:
        runtime.install(saved)


def test_the_exporter_signs_in_as_the_developer_only_when_asked_and_outside_azure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.identity import DefaultAzureCredential as SyncDefault

    from shared.adapters import telemetry

    monkeypatch.delenv("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", raising=False)
    assert telemetry.exporter_credential() == {}
    monkeypatch.setenv("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "Authorization=AAD")
    assert isinstance(telemetry.exporter_credential()["credential"], SyncDefault)
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://localhost:8081/msi/token")  # Azure: the exporter's own
    assert telemetry.exporter_credential() == {}
