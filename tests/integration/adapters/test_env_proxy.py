"""The ARM client and the ledger ignore environment proxies (azure-core `use_env_settings=False`).

With the setting on (azure-core's default) aiohttp looks up netrc and *_PROXY on a worker thread for
every request; these tests point HTTP_PROXY at a dead port, so a client that still honoured it fails.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from devhost.serving import free_port
from shared.adapters.arm.client import ComputeClient
from shared.adapters.ledger import make_ledger
from shared.domain.records import OperationRecord
from shared.domain.targets import parse_target
from shared.settings import load_settings
from tests.conftest import StandIns
from tests.helpers import SUB

VM = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"


@pytest.fixture
def dead_proxy(monkeypatch: pytest.MonkeyPatch) -> str:
    proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return proxy


class IssuerCredential:
    """Tokens straight from the identity stand-in's issuer (so only the ARM client's own transport is tested)."""

    def __init__(self, standins: StandIns) -> None:
        self.standins = standins

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        token, expires = self.standins.issuer.issue()
        return AccessToken(token, int(expires))

    async def close(self) -> None:
        return None


async def test_arm_client_ignores_an_environment_proxy(standins: StandIns, dead_proxy: str) -> None:
    standins.sim.upsert(VM, {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}})
    client = ComputeClient(standins.settings(), credential=IssuerCredential(standins), retries=0)  # type: ignore[arg-type]
    try:
        model = await client.get_model(parse_target(VM))
    finally:
        await client.close()
    assert model.os_type == "Linux"


async def test_ledger_ignores_an_environment_proxy(azurite_storage: str, dead_proxy: str) -> None:
    settings = load_settings(AzureWebJobsStorage=azurite_storage, LEDGER_TABLE_PREFIX=f"p{uuid.uuid4().hex[:12]}")
    ledger = make_ledger(settings)
    now = datetime.now(UTC)
    try:
        await ledger.ensure_tables()
        record = OperationRecord(operation_id=uuid.uuid4().hex, request_id="k", target=VM, lease_key=VM.lower(),
                                 trigger="http", created_time=now, last_updated_time=now)
        won, _ = await ledger.claim(record)
        assert won
    finally:
        await ledger.close()
