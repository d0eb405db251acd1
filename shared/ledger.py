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
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient, TableServiceClient

log = logging.getLogger("reimager.ledger")

TERMINAL = frozenset({"Succeeded", "Failed", "Canceled", "TimedOut"})
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


class _Doc(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class OperationRecord(_Doc):
    """One reimage operation. Holds no secrets: it is stored, listed and answered."""

    operation_id: str
    request_id: str
    target: str
    lease_key: str
    instance_ids: list[str] | None = None
    cooldown_keys: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    dry_run: bool = False
    trigger: str
    requested_by: str | None = None
    requested_by_verified: str = "unverified"
    reason: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    reply_correlation_id: str | None = None
    status: str = "Claimed"
    error: dict[str, Any] | None = None
    arm: dict[str, Any] | None = None
    arm_status: str | None = None
    polls: int = 0
    applied: bool = False  # the POST may have reached ARM: cooldown applies even on failure
    created_time: datetime
    last_updated_time: datetime
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    arm_seconds: float | None = None  # ARM's startTime -> endTime, for the learned poll schedule
    health: str | None = None
    batch_id: str | None = None  # the ARM operation this request rides: itself, a joined one, or a b-... batch
    members: list[str] | None = None  # a b-... batch record: the requests it carries
    health_detail: dict[str, str] | None = None  # instance ("" = the VM) -> Healthy/Unhealthy/Unknown: detail
    queue_position: int | None = None
    cancelled_by: str | None = None
    approved_by: str | None = None
    approved_by_verified: str | None = None
    event_id: str | None = None  # set once the terminal event is published
    # Not a secret: a salted fingerprint to recognise the request's secrets in ARM's poll text, kept until the
    # operation is settled (shared/redaction.py fingerprint; docs/operations.md "Secrets").
    secret_fingerprint: dict[str, Any] | None = None
    etag: str | None = Field(None, exclude=True)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def is_batch(self) -> bool:
        """A batch formed from queued requests: an internal record, with no event of its own."""
        return self.members is not None

    def view(self) -> dict[str, Any]:
        """The public status document (GET /api/reimage/{id})."""
        doc: dict[str, Any] = {
            "operationId": self.operation_id, "requestId": self.request_id, "status": self.public_status,
            "target": self.target, "instanceIds": self.instance_ids, "trigger": self.trigger,
            "requestedBy": self.requested_by, "requestedByVerified": self.requested_by_verified,
            "reason": self.reason, "correlationId": self.correlation_id,
            "createdTime": self.created_time.isoformat(), "lastUpdatedTime": self.last_updated_time.isoformat(),
            "submittedAt": self.submitted_at.isoformat() if self.submitted_at else None,
            "completedAt": self.completed_at.isoformat() if self.completed_at else None,
            "polls": self.polls, "armStatus": self.arm_status, "error": self.error,
        }
        # In the order of shared/responses.Operation, so a stored view and an answered one are the same JSON.
        if self.terminal:
            doc["health"] = self.health
            doc["healthDetail"] = self.health_detail
        if self.terminal or self.batch_id is not None:
            doc["batchId"] = self.batch_id
        if self.status == "Queued":
            doc["queuePosition"] = self.queue_position
        if self.cancelled_by is not None:
            doc["cancelledBy"] = self.cancelled_by
        if self.approved_by is not None:
            doc["approvedBy"] = self.approved_by
            doc["approvedByVerified"] = self.approved_by_verified
        if self.is_batch:
            doc["members"] = self.members
        return doc

    @property
    def public_status(self) -> str:
        # Claimed/Submitting are internal steps of an accepted request, not states a caller acts on.
        return "Accepted" if self.status in ("Claimed", "Submitting") else self.status


class Cooldown(_Doc):
    until: datetime
    operation_id: str


class QueueEntry(_Doc):
    """A request waiting for its target: admitted into a later batch, in arrival order."""

    operation_id: str
    keys: list[str]  # "" for a VM, else instance ids
    options: dict[str, Any]
    queued_at: datetime


class BatchEntry(_Doc):
    """The batch holding a target's lease: one ARM POST for the union of its members' instances."""

    batch_id: str  # the lead request's operation id, or b-... for a batch formed from the queue
    members: list[str]
    keys: list[str]
    options: dict[str, Any]
    started: datetime
    formed: bool = False  # formed from the queue: a batch record and its orchestration carry it
    handed_from: str | None = None


class BudgetEntry(_Doc):
    owner: str
    count: int
    at: datetime


class TargetRecord(_Doc):
    """One VM or scale set: lease and running batch, queue, cooldowns, budget window, failures, suspension."""

    key: str
    target_id: str | None = None  # the VM or scale set id, as the caller cased it (for batch POSTs)
    capacity: int = 1
    lease_owner: str | None = None
    lease_until: datetime | None = None
    batch: BatchEntry | None = None
    queue: list[QueueEntry] = Field(default_factory=list)
    cooldowns: dict[str, Cooldown] = Field(default_factory=dict)  # "" = the VM itself; else instance id
    window: list[BudgetEntry] = Field(default_factory=list)  # instances reimaged in FLEET_WINDOW_MINUTES
    requested: dict[str, datetime] = Field(default_factory=dict)  # instance -> first request in the window
    consecutive_failures: int = 0
    suspended: dict[str, Any] | None = None
    etag: str | None = Field(None, exclude=True)

    def lease_held(self, now: datetime) -> bool:
        return self.lease_owner is not None and self.lease_until is not None and self.lease_until > now

    def prune(self, now: datetime) -> None:
        self.cooldowns = {k: c for k, c in self.cooldowns.items() if c.until > now}


@dataclass(frozen=True)
class Page:
    items: list[OperationRecord]
    continuation_token: str | None


# ---- entity encoding ------------------------------------------------------------------------
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
    import hashlib

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


# ---- the ledger -----------------------------------------------------------------------------
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
        from azure.core.exceptions import ResourceExistsError

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
        from azure.core.exceptions import ResourceExistsError

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
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.round_trips += 1
            await self._table(self.tables[1]).delete_entity(OPEN, operation_id)
        except ResourceNotFoundError:
            pass

    async def get(self, operation_id: str) -> OperationRecord | None:
        from azure.core.exceptions import ResourceNotFoundError

        await self.ensure_tables()
        try:
            self.round_trips += 1
            entity = await self._table(self.tables[0]).get_entity(operation_id, "")
        except ResourceNotFoundError:
            return None
        return self._op_from(entity)

    async def replace(self, record: OperationRecord) -> OperationRecord:
        """CAS: write `record` only if the stored one still has `record.etag`."""
        from azure.core import MatchConditions

        assert record.etag is not None
        self.round_trips += 1
        meta = await self._table(self.tables[0]).update_entity(
            self._op_entity(record), mode="replace", etag=record.etag, match_condition=MatchConditions.IfNotModified)
        record.etag = meta.get("etag")
        return record

    async def update(self, operation_id: str,
                     mutate: Callable[[OperationRecord], OperationRecord | None]) -> OperationRecord | None:
        """Read, mutate, CAS, retried on conflict. `mutate` returns None to leave the record as it is."""
        from azure.core.exceptions import ResourceModifiedError

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
            except ResourceModifiedError:
                await _backoff(attempt)
                continue
        raise LedgerConflict(f"could not update {operation_id}")

    async def release_claim(self, record: OperationRecord) -> bool:
        """Free the key of a request that certainly reached nothing (CAS delete)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

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
        from azure.core.exceptions import ResourceNotFoundError

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
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

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
        from datetime import timedelta

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
        from datetime import timedelta

        await self.ensure_tables()
        hour_ago = now - timedelta(hours=1)
        return sum(1 for k, at in (await self._slots()).items() if at > hour_ago and int(k) < limit) < limit

    async def give_back_global_slot(self, key: str, owner: str) -> None:
        """Nothing was sent: the slot serves another POST (only if `owner` still holds it)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

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
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

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
