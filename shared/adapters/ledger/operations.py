"""Operation records: the claim of an idempotency key (insert-if-absent), compare-and-swap updates, the listing
index and the sweeper's work list.

Every write carries a token of its own (property `w`). When Table Storage answers a write with 500/503, drops the
connection, or azure-core's retry of an applied write gets 412/409 for the app's own change, a read of the entity
tells whether the write landed: the token is there, or it is not. A decision therefore never mistakes its own
landed write for a lost race, and never frees what such a write holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

from shared.adapters.ledger.base import CAS_ATTEMPTS, STORAGE_ATTEMPTS, Tables, backoff, storage_failed
from shared.adapters.ledger.entities import (
    WRITE,
    Page,
    decode_token,
    encode_token,
    etag_of,
    inverted,
    is_conflict,
    join,
    may_have_landed,
    new_token,
    split,
    target_partition,
)
from shared.adapters.ledger.errors import LedgerConflict, LedgerUnavailable, RecordChanged
from shared.domain.records import OperationRecord
from shared.domain.status import OperationStatus
from shared.domain.targets import parse_target

OPEN = "open"  # index partition of operations the sweeper still watches


def _op_entity(record: OperationRecord, token: str) -> dict[str, Any]:
    return {"PartitionKey": record.operation_id, "RowKey": "", "status": record.status, WRITE: token,
            "target": record.lease_key, "created": record.created_time, **split(record.to_json())}


def _op_from(entity: Any) -> OperationRecord:
    record = OperationRecord.model_validate_json(join(entity))
    record.etag = etag_of(entity)
    return record


def _same_instant(stored: Any, created: datetime) -> bool:
    if not isinstance(stored, datetime):
        return True
    return abs((stored - created).total_seconds()) < 0.001


class Operations(Tables):
    async def _entity(self, operation_id: str) -> Any:
        await self.ensure_tables()
        try:
            return await self._read(f"reading {operation_id}",
                                    self._table(self.tables[0]).get_entity(operation_id, ""))
        except ResourceNotFoundError:
            return None

    async def get(self, operation_id: str) -> OperationRecord | None:
        entity = await self._entity(operation_id)
        return _op_from(entity) if entity is not None else None

    async def claim(self, record: OperationRecord) -> tuple[bool, OperationRecord]:
        """Insert-if-absent. (True, record) when this caller won; (False, existing) otherwise."""
        await self.ensure_tables()
        ops = self._table(self.tables[0])
        failures = 0
        for _ in range(CAS_ATTEMPTS):
            token = new_token()
            try:
                meta = await ops.create_entity(_op_entity(record, token))
                record.etag = meta.get("etag")
                return True, record
            except Exception as exc:
                if not may_have_landed(exc):
                    raise
                existing = await self._entity(record.operation_id)
                if existing is not None and existing.get(WRITE) == token:
                    record.etag = etag_of(existing)  # our own insert landed, and the retry of it was refused
                    return True, record
                if existing is not None:
                    return False, _op_from(existing)
                if not is_conflict(exc):  # it did not land: the store failed
                    failures += 1
                    if failures >= STORAGE_ATTEMPTS:
                        raise LedgerUnavailable(f"claiming {record.operation_id}") from exc
                    await backoff(failures)
                # else deleted between the insert and the read (a freed key): try again
        raise LedgerConflict(f"could not claim {record.operation_id}")

    async def replace(self, record: OperationRecord) -> OperationRecord:
        """CAS: write `record` only if the stored one still has `record.etag`; RecordChanged otherwise."""
        assert record.etag is not None
        table = self._table(self.tables[0])
        failures = 0
        while True:
            token = new_token()
            try:
                meta = await table.update_entity(_op_entity(record, token), mode="replace", etag=record.etag,
                                                 match_condition=MatchConditions.IfNotModified)
                record.etag = meta.get("etag")
                return record
            except ResourceNotFoundError:
                raise RecordChanged(record.operation_id) from None
            except Exception as exc:
                if not may_have_landed(exc):
                    raise
                stored = await self._entity(record.operation_id)
                if stored is not None and stored.get(WRITE) == token:
                    record.etag = etag_of(stored)  # ours landed; the 412 (or the 5xx) was about the retry
                    return record
                if is_conflict(exc) or stored is None or etag_of(stored) != record.etag:
                    raise RecordChanged(record.operation_id) from None
                failures += 1  # it did not land, and nobody else wrote: send it again
                if failures >= STORAGE_ATTEMPTS:
                    raise LedgerUnavailable(f"writing {record.operation_id}") from exc
                await backoff(failures)

    async def update(self, operation_id: str, mutate: Callable[[OperationRecord], OperationRecord | None], *,
                     known: OperationRecord | None = None) -> OperationRecord | None:
        """Read, mutate, CAS, retried on conflict. `mutate` returns None to leave the record as it is.

        `known`: the record as the caller itself just wrote it (with that write's ETag). It is tried first instead of
        a read, which saves a round trip when nobody wrote since; if somebody did, the CAS fails and the loop reads."""
        for attempt in range(CAS_ATTEMPTS):
            guessed = known is not None and known.etag is not None
            current = known if guessed else await self.get(operation_id)
            known = None
            if current is None:
                return None
            changed = mutate(current.model_copy(deep=True))
            if changed is None:
                if guessed:  # the caller's copy may be stale: decide on what is stored
                    continue
                return current
            changed.etag = current.etag
            try:
                return await self.replace(changed)
            except RecordChanged:
                if not guessed:  # a stale guess lost to no one now writing: read at once
                    await backoff(attempt)
                continue
        raise LedgerConflict(f"could not update {operation_id}")

    async def release_claim(self, record: OperationRecord) -> bool:
        """Free the key of a request that certainly reached nothing (CAS delete on the claim's ETag)."""
        try:
            await self._table(self.tables[0]).delete_entity(
                record.operation_id, "", etag=record.etag, match_condition=MatchConditions.IfNotModified)
            return True  # (the SDK also returns normally when a retry of an applied delete finds nothing)
        except ResourceModifiedError:
            return False
        except Exception as exc:
            if not storage_failed(exc):
                raise
            stored = await self._entity(record.operation_id)
            if stored is None:
                return True
            if etag_of(stored) == record.etag:
                raise LedgerUnavailable(f"freeing {record.operation_id}") from exc
            return False

    async def index(self, record: OperationRecord) -> None:
        """Listing entries (by target and overall), newest first. Idempotent."""
        ix = self._table(self.tables[1])
        row = f"{inverted(record.created_time)}-{record.operation_id}"
        entries = [(target_partition(record.lease_key), row), ("all", row), (OPEN, record.operation_id)]
        if record.scale_set is not None:  # a Flexible member governed by its set: listed under its own VM too
            entries.append((target_partition(parse_target(record.target).lock_key), row))
        # Three partitions cannot share a batch (a transaction is one partition); send them side by side.
        await self._idempotent("indexing", lambda: asyncio.gather(*(
            ix.upsert_entity({"PartitionKey": partition, "RowKey": key, "op": record.operation_id,
                              "created": record.created_time}) for partition, key in entries)))

    async def watch(self, record: OperationRecord) -> None:
        """Only the sweeper's entry (an internal batch record is not listed)."""
        await self._idempotent("indexing", lambda: self._table(self.tables[1]).upsert_entity(
            {"PartitionKey": OPEN, "RowKey": record.operation_id, "op": record.operation_id,
             "created": record.created_time}))

    async def settled(self, operation_id: str) -> None:
        """The operation needs no more sweeping (terminal with its event published, or freed)."""
        await self._idempotent("settling", lambda: self._table(self.tables[1]).delete_entity(OPEN, operation_id))

    async def list_operations(self, *, lease_key: str | None = None, status: str | None = None,
                              since: datetime | None = None, top: int = 50,
                              continuation_token: str | None = None) -> Page:
        """Newest first, from the index partition of one target (or of all); never a table scan. One page of the
        index (it may be empty and still carry a continuation token: Table Storage's rule)."""
        await self.ensure_tables()
        partition = target_partition(lease_key) if lease_key else "all"
        flt = "PartitionKey eq @pk"
        params: dict[str, Any] = {"pk": partition}
        if since is not None:
            flt += " and RowKey lt @upto"
            params["upto"] = inverted(since) + "~"
        pages = self._table(self.tables[1]).query_entities(flt, parameters=params, results_per_page=top).by_page(
            continuation_token=decode_token(continuation_token))
        items: list[OperationRecord] = []
        token: Any = None
        async for page in pages:
            entries = [e async for e in page]
            records = await asyncio.gather(*(self.get(e["op"]) for e in entries))
            for entry, record in zip(entries, records, strict=True):
                # a freed key may have been claimed again: only the entry written for this claim counts
                if record is None or record.status is OperationStatus.REFUSED or _same_instant(
                        entry.get("created"), record.created_time) is False:
                    continue
                if status is None or record.public_status == status:
                    items.append(record)
            token = pages.continuation_token  # type: ignore[attr-defined]
            break
        return Page(items, encode_token(token))

    async def unsettled(self) -> list[str]:
        """Ids of operations not yet settled (the sweeper's work list): one index partition, every page."""
        await self.ensure_tables()
        query = self._table(self.tables[1]).query_entities("PartitionKey eq @pk", parameters={"pk": OPEN})

        async def read() -> list[str]:
            return [e["op"] async for e in query]

        result: list[str] = await self._read("listing unsettled operations", read())
        return result
