"""The app's Azure credential: its managed identity in Azure, the developer's own sign-in elsewhere.

In Azure, Functions sets IDENTITY_ENDPOINT (MSI_ENDPOINT on older hosts) and the app uses its
user-assigned identity (AZURE_CLIENT_ID). On a developer's machine neither is set, and the app
signs in as the developer (`azd auth login` / `az login`, or AZURE_* service principal variables),
who holds the data-plane roles infra grants the deploying principal (docs/deploy.md "Run against
your real resources"). Managed identity is excluded there: probing IMDS from a laptop only costs time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

    from shared.settings import Settings


PLATFORM_VARIABLES = ("IDENTITY_ENDPOINT", "MSI_ENDPOINT")


def in_azure() -> bool:
    """True where the platform offers a managed identity (App Service / Functions)."""
    return any(os.environ.get(name) for name in PLATFORM_VARIABLES)


def app_credential(settings: Settings) -> AsyncTokenCredential:
    if in_azure():
        from azure.identity.aio import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=settings.azure_client_id or None)
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential(exclude_managed_identity_credential=True)
