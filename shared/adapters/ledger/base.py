"""The ledger's tables, its client, and a count of its HTTP requests (benchmarks read it)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ServiceRequestError, ServiceResponseError

from shared.adapters.ledger.errors import LedgerUnavailable

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient, TableServiceClient

CAS_ATTEMPTS = 64
STORAGE_ATTEMPTS = 4  # a write that failed and did not land is sent again this many times before giving up


class RequestCounter:
    """Counts every HTTP request the table client sends, retries included: a `raw_request_hook`, which azure-core's
    CustomHookPolicy calls per attempt (it sits after the retry policy in azure-data-tables' pipeline)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, request: Any) -> None:
        self.count += 1


def storage_failed(exc: BaseException) -> bool:
    """Table Storage failed the request (5xx, 408, 429) or the connection did."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return True
    return isinstance(exc, HttpResponseError) and (exc.status_code or 0) in (408, 429, 500, 502, 503, 504)


async def backoff(attempt: int) -> None:
    """After losing a compare-and-swap: a short random pause (real time), so a storm of writers on one
    entity spreads out instead of colliding again in lockstep."""
    await asyncio.sleep(random.uniform(0, min(0.25, 0.004 * 2 ** min(attempt, 6))))  # noqa: S311 - jitter


class Tables:
    """Tables `{prefix}ops` (operations), `{prefix}index` (listing), `{prefix}targets` (targets, their queues,
    the global budget's slots)."""

    def __init__(self, service: TableServiceClient, prefix: str = "reimager",
                 on_close: Callable[[], Awaitable[None]] | None = None, counter: RequestCounter | None = None) -> None:
        self._service = service
        self._prefix = prefix
        self._on_close = on_close
        self._ready = False
        self._counter = counter or RequestCounter()

    @property
    def round_trips(self) -> int:
        """HTTP requests sent to Table Storage so far (retries included)."""
        return self._counter.count

    @property
    def tables(self) -> tuple[str, str, str]:
        return f"{self._prefix}ops", f"{self._prefix}index", f"{self._prefix}targets"

    def _table(self, name: str) -> TableClient:
        return self._service.get_table_client(name)

    async def ensure_tables(self) -> None:
        if self._ready:
            return

        async def create(name: str) -> None:
            try:
                await self._service.create_table(name)
            except ResourceExistsError:
                pass

        try:
            await asyncio.gather(*(create(name) for name in self.tables))  # side by side: first call is cold start
        except Exception as exc:
            if storage_failed(exc):
                raise LedgerUnavailable("creating its tables") from exc
            raise
        self._ready = True

    async def _read(self, what: str, read: Awaitable[Any]) -> Any:
        """A read; a storage failure is LedgerUnavailable (the SDK has already retried it)."""
        try:
            return await read
        except Exception as exc:
            if storage_failed(exc):
                raise LedgerUnavailable(what) from exc
            raise

    async def close(self) -> None:
        await self._service.close()
        if self._on_close is not None:
            await self._on_close()
