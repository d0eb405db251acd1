"""The ledger: every coordination decision as one atomic write to Azure Table Storage.

Table Storage gives two atomic primitives on one entity, and they are all reimager needs:
insert-if-absent (the claim of an idempotency key) and ETag compare-and-swap (a target's
lease, cooldowns, budget and suspension; an operation's status). Nothing here checks and
then acts: every decision is made on a record read with its ETag and written back only if
that ETag still holds, retried on conflict. Schema: docs/ledger.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from shared.domain.records import OperationRecord, TargetRecord

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient, TableServiceClient


log = logging.getLogger("reimager.ledger")


# A string property holds at most 64 KiB (32K UTF-16 units); documents are split below that.
_CHUNK = 30_000
_CHUNKS = 30  # 900K characters: under the 1 MiB entity limit
_CAS_ATTEMPTS = 64
_MAX_TIME_MS = 10**15  # inverted timestamps sort newest first as fixed-width strings
OPEN = "open"  # index partition of operations the sweeper still watches
GLOBAL_SLOTS = "global-slots"  # targets-table partition of the global budget's slots

T = TypeVar("T")


class LedgerConflict(RuntimeError):
    """A compare-and-swap kept losing; the caller may retry later."""


class RecordChanged(LedgerConflict):
    """A compare-and-swap found the record changed (or gone) since it was read."""


@dataclass(frozen=True)
class Page:
    items: list[OperationRecord]
    continuation_token: str | None


def _split(text: str) -> dict[str, str]:
    parts = [text[i:i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [""]
    if len(parts) > _CHUNKS:
        raise ValueError("ledger document too large")
    return {f"doc{i}": part for i, part in enumerate(parts)}


def _join(entity: Any) -> str:
    return "".join(entity[f"doc{i}"] for i in range(_CHUNKS) if f"doc{i}" in entity)


def _etag(entity: Any) -> str | None:
    meta = getattr(entity, "metadata", None) or {}
    return meta.get("etag")


def inverted(ts: datetime) -> str:
    return f"{_MAX_TIME_MS - int(ts.timestamp() * 1000):016d}"


def target_partition(lease_key: str) -> str:
    # Row and partition keys may not hold '/', '\\', '#', '?'; a hash keeps them short and safe.
    return "t-" + hashlib.sha256(lease_key.encode()).hexdigest()[:40]


def _encode_token(token: Any) -> str | None:
    if not token:
        return None
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode()


def _decode_token(token: str | None) -> Any:
    if not token:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error):
        raise ValueError("continuationToken is not one this API issued") from None
    if not isinstance(value, dict):
        raise ValueError("continuationToken is not one this API issued")
    return value


class Ledger:
    """Tables `{prefix}ops` (operations), `{prefix}index` (listing), `{prefix}targets`."""

    def __init__(self, service: TableServiceClient, prefix: str = "reimager",
                 on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        self._service = service
        self._prefix = prefix
        self._on_close = on_close
        self._ready = False
        self.round_trips = 0  # for benchmarks: table requests made

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

        await asyncio.gather(*(create(name) for name in self.tables))  # side by side: first call is cold start
        self._ready = True

    async def close(self) -> None:
        await self._service.close()
        if self._on_close is not None:
            await self._on_close()

    # ---- operations ------------------------------------------------------------------------
    def _op_entity(self, record: OperationRecord) -> dict[str, Any]:
        return {"PartitionKey": record.operation_id, "RowKey": "", "status": record.status,
                "target": record.lease_key, "created": record.created_time, **_split(record.to_json())}

    @staticmethod
    def _op_from(entity: Any) -> OperationRecord:
        record = OperationRecord.model_validate_json(_join(entity))
        record.etag = _etag(entity)
        return record

    async def claim(self, record: OperationRecord) -> tuple[bool, OperationRecord]:
        """Insert-if-absent. (True, record) when this caller won; (False, existing) otherwise."""

        await self.ensure_tables()
        ops = self._table(self.tables[0])
        for _ in range(_CAS_ATTEMPTS):
            try:
                self.round_trips += 1
                meta = await ops.create_entity(self._op_entity(record))
                record.etag = meta.get("etag")
                return True, record
            except ResourceExistsError:
                existing = await self.get(record.operation_id)
                if existing is not None:
                    return False, existing
                # deleted between the insert and the read (a freed key): try again
        raise LedgerConflict(f"could not claim {record.operation_id}")

    async def index(self, record: OperationRecord) -> None:
        """Listing entries (by target and overall), newest first. Idempotent."""
        ix = self._table(self.tables[1])
        row = f"{inverted(record.created_time)}-{record.operation_id}"
        entries = [(target_partition(record.lease_key), row), ("all", row), (OPEN, record.operation_id)]
        self.round_trips += len(entries)
        # Three partitions cannot share a batch (a transaction is one partition); send them side by side.
        await asyncio.gather(*(ix.upsert_entity({"PartitionKey": partition, "RowKey": key,
                                                 "op": record.operation_id, "created": record.created_time})
                               for partition, key in entries))

    async def watch(self, record: OperationRecord) -> None:
        """Only the sweeper's entry (an internal batch record is not listed)."""
        self.round_trips += 1
        await self._table(self.tables[1]).upsert_entity({"PartitionKey": OPEN, "RowKey": record.operation_id,
                                                         "op": record.operation_id, "created": record.created_time})

    async def settled(self, operation_id: str) -> None:
        """The operation needs no more sweeping (terminal with its event published, or freed)."""

        try:
            self.round_trips += 1
            await self._table(self.tables[1]).delete_entity(OPEN, operation_id)
        except ResourceNotFoundError:
            pass

    async def get(self, operation_id: str) -> OperationRecord | None:

        await self.ensure_tables()
        try:
            self.round_trips += 1
            entity = await self._table(self.tables[0]).get_entity(operation_id, "")
        except ResourceNotFoundError:
            return None
        return self._op_from(entity)

    async def replace(self, record: OperationRecord) -> OperationRecord:
        """CAS: write `record` only if the stored one still has `record.etag`; RecordChanged otherwise."""
        assert record.etag is not None
        self.round_trips += 1
        try:
            meta = await self._table(self.tables[0]).update_entity(
                self._op_entity(record), mode="replace", etag=record.etag,
                match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            raise RecordChanged(record.operation_id) from None
        record.etag = meta.get("etag")
        return record

    async def update(self, operation_id: str,
                     mutate: Callable[[OperationRecord], OperationRecord | None]) -> OperationRecord | None:
        """Read, mutate, CAS, retried on conflict. `mutate` returns None to leave the record as it is."""

        for attempt in range(_CAS_ATTEMPTS):
            current = await self.get(operation_id)
            if current is None:
                return None
            changed = mutate(current.model_copy(deep=True))
            if changed is None:
                return current
            changed.etag = current.etag
            try:
                return await self.replace(changed)
            except RecordChanged:
                await _backoff(attempt)
                continue
        raise LedgerConflict(f"could not update {operation_id}")

    async def release_claim(self, record: OperationRecord) -> bool:
        """Free the key of a request that certainly reached nothing (CAS delete)."""

        try:
            self.round_trips += 1
            await self._table(self.tables[0]).delete_entity(
                record.operation_id, "", etag=record.etag, match_condition=MatchConditions.IfNotModified)
            return True
        except (ResourceModifiedError, ResourceNotFoundError):
            return False

    async def list_operations(self, *, lease_key: str | None = None, status: str | None = None,
                              since: datetime | None = None, top: int = 50,
                              continuation_token: str | None = None) -> Page:
        """Newest first, from the index partition of one target (or of all); never a table scan."""
        await self.ensure_tables()
        partition = target_partition(lease_key) if lease_key else "all"
        flt = "PartitionKey eq @pk"
        params: dict[str, Any] = {"pk": partition}
        if since is not None:
            flt += " and RowKey lt @upto"
            params["upto"] = inverted(since) + "~"
        pages = self._table(self.tables[1]).query_entities(flt, parameters=params, results_per_page=top).by_page(
            continuation_token=_decode_token(continuation_token))
        items: list[OperationRecord] = []
        token: Any = None
        async for page in pages:
            self.round_trips += 1
            entries = [e async for e in page]
            records = await asyncio.gather(*(self.get(e["op"]) for e in entries))
            for entry, record in zip(entries, records, strict=True):
                # a freed key may have been claimed again: only the entry written for this claim counts
                if record is None or _same_instant(entry.get("created"), record.created_time) is False:
                    continue
                if status is None or record.public_status == status:
                    items.append(record)
            token = pages.continuation_token  # type: ignore[attr-defined]
            break
        return Page(items, _encode_token(token))

    # ---- targets ---------------------------------------------------------------------------
    async def get_target(self, lease_key: str) -> TargetRecord:

        await self.ensure_tables()
        try:
            self.round_trips += 1
            entity = await self._table(self.tables[2]).get_entity(target_partition(lease_key), "")
        except ResourceNotFoundError:
            return TargetRecord(key=lease_key)
        record = TargetRecord.model_validate_json(_join(entity))
        record.etag = _etag(entity)
        return record

    async def change_target(self, lease_key: str, decide: Callable[[TargetRecord], tuple[TargetRecord | None, T]]
                            ) -> T:
        """CAS loop on one target. `decide` gets a fresh copy and returns (record to write or None, result).

        `decide` must be pure: it may run several times, and only the run whose write lands counts.
        """

        table = self._table(self.tables[2])
        for attempt in range(_CAS_ATTEMPTS):
            current = await self.get_target(lease_key)
            changed, result = decide(current.model_copy(deep=True))
            if changed is None:
                return result
            entity = {"PartitionKey": target_partition(lease_key), "RowKey": "", **_split(changed.to_json())}
            try:
                self.round_trips += 1
                if current.etag is None:
                    await table.create_entity(entity)
                else:
                    await table.update_entity(entity, mode="replace", etag=current.etag,
                                              match_condition=MatchConditions.IfNotModified)
                return result
            except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
                await _backoff(attempt)
                continue
        raise LedgerConflict(f"could not change target {lease_key}")

    # ---- the global budget: one POST per slot per hour ------------------------------------------
    # GLOBAL_MAX_REIMAGES_PER_HOUR slots, one entity each, taken by insert-if-absent or an ETag CAS on one
    # whose last use is over an hour old. Each slot serves at most one POST an hour, so no rolling hour
    # sees more POSTs than slots; and concurrent POSTs pick random slots instead of all writing one hot
    # entity (one counter record made every POST in a burst retry its CAS: p99 intake 2.4 s against 0.36).
    async def take_global_slot(self, owner: str, now: datetime, limit: int) -> tuple[str | None, datetime | None]:
        """(slot, None) when a slot was taken for `owner`; (None, when one frees) when all are in use."""

        await self.ensure_tables()
        hour_ago = now - timedelta(hours=1)
        for key in {f"{random.randrange(limit):07d}" for _ in range(3)}:  # noqa: S311 - spreading, not secrecy
            if await self._try_slot(key, owner, now, hour_ago):
                return key, None
        for _ in range(_CAS_ATTEMPTS):  # crowded: list the slots, try the free ones
            used = await self._slots()
            busy = {k: at for k, at in used.items() if at > hour_ago and int(k) < limit}
            if len(busy) >= limit:
                return None, min(busy.values()) + timedelta(hours=1)
            free = [f"{i:07d}" for i in range(limit) if f"{i:07d}" not in busy]
            for key in random.sample(free, min(8, len(free))):
                if await self._try_slot(key, owner, now, hour_ago):
                    return key, None
            await _backoff(1)
        raise LedgerConflict("could not take a global-budget slot")

    async def global_slots_free(self, now: datetime, limit: int) -> bool:

        await self.ensure_tables()
        hour_ago = now - timedelta(hours=1)
        return sum(1 for k, at in (await self._slots()).items() if at > hour_ago and int(k) < limit) < limit

    async def give_back_global_slot(self, key: str, owner: str) -> None:
        """Nothing was sent: the slot serves another POST (only if `owner` still holds it)."""

        table = self._table(self.tables[2])
        try:
            self.round_trips += 1
            entity = await table.get_entity(GLOBAL_SLOTS, key)
            if entity.get("owner") == owner:
                self.round_trips += 1
                await table.delete_entity(GLOBAL_SLOTS, key, etag=_etag(entity),
                                          match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            pass

    async def _slots(self) -> dict[str, datetime]:
        self.round_trips += 1
        return {e["RowKey"]: e["at"] async for e in self._table(self.tables[2]).query_entities(
            "PartitionKey eq @pk", parameters={"pk": GLOBAL_SLOTS}, select=["RowKey", "at"])
            if isinstance(e.get("at"), datetime)}

    async def _try_slot(self, key: str, owner: str, now: datetime, hour_ago: datetime) -> bool:

        table = self._table(self.tables[2])
        entity = {"PartitionKey": GLOBAL_SLOTS, "RowKey": key, "at": now, "owner": owner}
        try:
            self.round_trips += 1
            current = await table.get_entity(GLOBAL_SLOTS, key)
        except ResourceNotFoundError:
            try:
                self.round_trips += 1
                await table.create_entity(entity)
                return True
            except ResourceExistsError:
                return False
        at = current.get("at")
        if isinstance(at, datetime) and at > hour_ago:
            return False
        try:
            self.round_trips += 1
            await table.update_entity(entity, mode="replace", etag=_etag(current),
                                      match_condition=MatchConditions.IfNotModified)
            return True
        except (ResourceModifiedError, ResourceNotFoundError):
            return False

    async def unsettled(self) -> list[str]:
        """Ids of operations not yet settled (the sweeper's work list): one index partition, no scan."""
        await self.ensure_tables()
        self.round_trips += 1
        return [e["op"] async for e in self._table(self.tables[1]).query_entities(
            "PartitionKey eq @pk", parameters={"pk": OPEN})]


async def _backoff(attempt: int) -> None:
    """After losing a compare-and-swap: a short random pause (real time), so a storm of writers on one
    entity spreads out instead of colliding again in lockstep."""
    await asyncio.sleep(random.uniform(0, min(0.25, 0.004 * 2 ** min(attempt, 6))))  # noqa: S311 - jitter


def _same_instant(stored: Any, created: datetime) -> bool:
    if not isinstance(stored, datetime):
        return True
    return abs((stored - created).total_seconds()) < 0.001


def make_ledger(settings: Any, credential_factory: Callable[[], Any] | None = None) -> Ledger:
    """The host's convention: `AzureWebJobsStorage` when set (Azurite locally), else
    `AzureWebJobsStorage__tableServiceUri` with the app's managed identity."""
    from azure.data.tables.aio import TableServiceClient

    conn = settings.storage_connection_string.get_secret_value() if settings.storage_connection_string else None
    prefix = settings.ledger_table_prefix
    if conn:
        service = TableServiceClient.from_connection_string(conn, **_NO_ENV_PROXY)
        return Ledger(service, prefix)
    uri = settings.table_service_uri
    if not uri:
        raise RuntimeError("no ledger: set AzureWebJobsStorage or AzureWebJobsStorage__tableServiceUri")
    if credential_factory is None:
        from azure.identity.aio import ManagedIdentityCredential

        credential = ManagedIdentityCredential(client_id=settings.azure_client_id or None)
    else:
        credential = credential_factory()
    return Ledger(TableServiceClient(uri, credential=credential, **_NO_ENV_PROXY), prefix, on_close=credential.close)


# azure-core's aiohttp transport otherwise looks up netrc and *_PROXY on a worker thread for every request.
_NO_ENV_PROXY: dict[str, Any] = {"use_env_settings": False}
