"""The ledger: every coordination decision as one atomic write to Azure Table Storage.

Table Storage gives two atomic primitives, and they are all reimager needs: insert-if-absent (the claim of an
idempotency key) and ETag compare-and-swap (an operation's status; a target's partition, in one entity-group
transaction). Nothing here checks and then acts: every decision is made on a record read with its ETag and
written back only if that ETag still holds, retried on conflict; and every write can tell, by its token, whether
it landed when storage answered it ambiguously. Schema: docs/ledger.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.adapters.ledger.base import RequestCounter
from shared.adapters.ledger.operations import Operations
from shared.adapters.ledger.slots import Slots
from shared.adapters.ledger.targets import Targets

# azure-core's aiohttp transport otherwise looks up netrc and *_PROXY on a worker thread for every request.
_NO_ENV_PROXY: dict[str, Any] = {"use_env_settings": False}


class Ledger(Operations, Targets, Slots):
    """Operations, targets (with their queues) and the global budget's slots."""


def make_ledger(settings: Any, credential_factory: Callable[[], Any] | None = None) -> Ledger:
    """The host's convention: `AzureWebJobsStorage` when set (Azurite locally), else
    `AzureWebJobsStorage__tableServiceUri` with the app's managed identity."""
    from azure.data.tables.aio import TableServiceClient  # heavy: only when the ledger is first used

    counter = RequestCounter()
    options = {**_NO_ENV_PROXY, "raw_request_hook": counter}
    conn = settings.storage_connection_string.get_secret_value() if settings.storage_connection_string else None
    prefix = settings.ledger_table_prefix
    if conn:
        return Ledger(TableServiceClient.from_connection_string(conn, **options), prefix, counter=counter)
    uri = settings.table_service_uri
    if not uri:
        raise RuntimeError("no ledger: set AzureWebJobsStorage or AzureWebJobsStorage__tableServiceUri")
    if credential_factory is None:
        from azure.identity.aio import ManagedIdentityCredential  # heavy: only in Azure, on first use

        credential = ManagedIdentityCredential(client_id=settings.azure_client_id or None)
    else:
        credential = credential_factory()
    return Ledger(TableServiceClient(uri, credential=credential, **options), prefix, on_close=credential.close,
                  counter=counter)
