"""Where evidence goes, and how the serial console log is fetched.

- `EvidenceStore`: the blob container `reimager-evidence` (azure-storage-blob, aio): AzureWebJobsStorage's
  BlobEndpoint locally (Azurite's blob service under devhost), else AzureWebJobsStorage__blobServiceUri with the
  app's managed identity (the Bicep creates the container and grants the identity Storage Blob Data Contributor on
  it). The container is created on first use when it is missing (locally; in Azure it exists). Blob names start
  with the operation id (`op-.../3/serial-console.log`); a blob's link is its URL, with no SAS: an operator reads it
  with their own Entra ID access.
- `download_log`: one GET of the SAS URI retrieveBootDiagnosticsData handed out, with **no Authorization header**
  (the SAS in its query is the credential; bearer tokens go to the ARM host only), no redirect followed, no proxy
  from the environment; only https (http for a loopback stand-in). At most `max_bytes` are kept: a longer log is
  read again from where its last `max_bytes` begin (a ranged GET), because its end is what led to the failure. The
  URI is never logged or stored: errors name its host only.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from shared.domain.evidence import CONTAINER

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_BLOB_VERSION = "2021-08-06"


class EvidenceUnavailable(RuntimeError):
    """Evidence could not be fetched or stored; the message never holds a SAS."""


class EvidenceStore:
    def __init__(self, client: Any, on_close: Any = None) -> None:
        self._client = client  # azure.storage.blob.aio.BlobServiceClient
        self._on_close = on_close
        self._ready: asyncio.Lock | None = None
        self._created = False

    @property
    def container_url(self) -> str:
        return f"{str(self._client.url).rstrip('/')}/{CONTAINER}"

    async def _container(self) -> Any:
        container = self._client.get_container_client(CONTAINER)
        if self._created:
            return container
        if self._ready is None:
            self._ready = asyncio.Lock()
        async with self._ready:
            if not self._created:
                from azure.core.exceptions import HttpResponseError

                try:
                    await container.create_container()
                except HttpResponseError:  # it exists (409), or this identity may not create it (403: the Bicep did)
                    pass
                self._created = True
        return container

    async def put(self, name: str, data: bytes, content_type: str) -> str:
        """Store `data` as blob `name` (overwriting: a retried capture writes the same thing). Its URL."""
        from azure.core.exceptions import AzureError
        from azure.storage.blob import ContentSettings

        try:
            container = await self._container()
            blob = container.get_blob_client(name)
            await blob.upload_blob(data, overwrite=True, content_settings=ContentSettings(content_type=content_type))
        except AzureError as exc:
            raise EvidenceUnavailable(f"storing {name} in {CONTAINER}: {type(exc).__name__}") from None
        return str(blob.url)

    async def close(self) -> None:
        await self._client.close()
        if self._on_close is not None:
            await self._on_close()


def make_store(settings: Any, credential_factory: Any = None) -> EvidenceStore | None:
    """The host's convention, as the ledger's: AzureWebJobsStorage when set (with its BlobEndpoint), else
    AzureWebJobsStorage__blobServiceUri with the identity. None when neither names a blob service."""
    from azure.storage.blob.aio import BlobServiceClient  # heavy: only when evidence is first stored

    options: dict[str, Any] = {"use_env_settings": False, "retry_total": 2}
    conn = settings.storage_connection_string.get_secret_value() if settings.storage_connection_string else None
    if conn and ("blobendpoint=" in conn.lower() or "accountname=" in conn.lower()
                 or "usedevelopmentstorage=true" in conn.lower()):
        return EvidenceStore(BlobServiceClient.from_connection_string(conn, **options))
    if not settings.blob_service_uri:
        return None
    if credential_factory is None:
        from azure.identity.aio import ManagedIdentityCredential

        credential = ManagedIdentityCredential(client_id=settings.azure_client_id or None)
    else:
        credential = credential_factory()
    return EvidenceStore(BlobServiceClient(settings.blob_service_uri, credential=credential, **options),
                         on_close=credential.close)


def _checked(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        raise EvidenceUnavailable(f"the serial log's URI is not https (host {parts.hostname}); not fetched")
    if not parts.hostname:
        raise EvidenceUnavailable("the serial log's URI names no host; not fetched")
    return parts.hostname


async def download_log(uri: str, max_bytes: int, seconds: float) -> tuple[bytes, int, bool]:
    """The serial log through its SAS URI: (the bytes kept, its whole length, whether it was cut to its end)."""
    host = _checked(uri)
    headers = {"x-ms-version": _BLOB_VERSION}  # never an Authorization header
    limit = aiohttp.ClientTimeout(total=seconds)  # the caller's whole capture is bounded too
    try:
        async with aiohttp.ClientSession(timeout=limit, trust_env=False) as http:
            async with http.get(uri, headers=headers, allow_redirects=False) as r:
                if r.status != 200:
                    raise EvidenceUnavailable(f"the serial log's storage ({host}) answered {r.status}")
                total = int(r.headers.get("Content-Length") or 0)
                if total <= max_bytes:
                    data = await r.content.read(max_bytes + 1)
                    if len(data) <= max_bytes:
                        return data, len(data), False
                    total = max(total, len(data))
            start = max(0, total - max_bytes)  # longer than the cap: its last max_bytes
            ranged = {**headers, "x-ms-range": f"bytes={start}-{total - 1}"}
            async with http.get(uri, headers=ranged, allow_redirects=False) as r:
                if r.status not in (200, 206):
                    raise EvidenceUnavailable(f"the serial log's storage ({host}) answered {r.status} to a ranged "
                                              "read")
                data = await r.content.read(max_bytes)
                return data[-max_bytes:], total, True
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise EvidenceUnavailable(f"reading the serial log from {host}: {type(exc).__name__}") from None
