"""Target records: one partition per VM or scale set, holding the target's row (lease, batch, cooldowns, budget
window, breaker, suspension) and one row per queue entry, so the record stays under Azure's entity limit at any
queue length.

`change_target(key, decide)` is the one way to change a target: read the partition, let the pure `decide` return
the record to write, and write the target row (ETag compare-and-swap) with the queue rows it added, changed or
removed in one entity-group transaction (atomic within a partition, at most 100 operations). Removals that do not
fit are recorded in the target row (`gone`), so every reader ignores those rows at once, and deleted afterwards.
The write carries a token: when storage answers it with 500/503 or a dropped connection, or azure-core's retry of
an applied write gets 412 for the app's own change, a read of the target row tells whether it landed, and a
landed decision keeps its result (the requests it took out of the queue are ended, never stranded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError

from shared.adapters.ledger.base import CAS_ATTEMPTS, STORAGE_ATTEMPTS, Tables, backoff
from shared.adapters.ledger.entities import (
    WRITE,
    etag_of,
    is_conflict,
    join,
    may_have_landed,
    new_token,
    split,
    target_partition,
)
from shared.adapters.ledger.errors import LedgerConflict, LedgerUnavailable
from shared.domain.records import QueueEntry, TargetRecord

T = TypeVar("T")
QUEUE_ROW = "q-"
TRANSACTION_MAX = 100  # operations in one entity-group transaction (Table Storage's limit)
Operation = tuple[str, dict[str, Any], dict[str, Any]]


def _cas(etag: str | None) -> dict[str, Any]:
    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


class Targets(Tables):
    async def _partition(self, lease_key: str) -> list[Any]:
        await self.ensure_tables()
        query = self._table(self.tables[2]).query_entities("PartitionKey eq @pk",
                                                           parameters={"pk": target_partition(lease_key)})

        async def read() -> list[Any]:
            return [e async for e in query]  # every page: an empty page may still carry a continuation token

        rows: list[Any] = await self._read("reading a target", read())
        return rows

    async def get_target(self, lease_key: str) -> TargetRecord:
        rows = await self._partition(lease_key)
        main = next((r for r in rows if r["RowKey"] == ""), None)
        record = TargetRecord.model_validate_json(join(main)) if main is not None else TargetRecord(key=lease_key)
        record.etag = etag_of(main) if main is not None else None
        gone = set(record.gone)
        queue = [r for r in rows if r["RowKey"].startswith(QUEUE_ROW) and r["RowKey"] not in gone]
        if main is not None and record.queue and not queue:
            return record  # written before queues had rows of their own: the row's own list
        record.queue = []
        for row in sorted(queue, key=lambda r: r["RowKey"]):
            entry = QueueEntry.model_validate_json(join(row))
            entry.row, entry.etag = row["RowKey"], etag_of(row)
            record.queue.append(entry)
        # Rows recorded gone and deleted since: forget them at the next write.
        present = {r["RowKey"] for r in rows}
        record.gone = [g for g in record.gone if g in present]
        return record

    def _plan(self, current: TargetRecord, changed: TargetRecord, token: str) -> tuple[list[Operation], list[str]]:
        """The transaction that turns `current` into `changed` (target row first), and the rows to delete after it
        (recorded in the target row's `gone`) when they do not fit in it."""
        pk = target_partition(current.key)
        before = {e.row: e for e in current.queue if e.row is not None}
        kept: set[str] = set()
        rows: list[Operation] = []
        for entry in changed.queue:
            if entry.row is None or entry.row not in before:
                changed.queue_seq += 1
                entry.row = f"{QUEUE_ROW}{changed.queue_seq:012d}"
                rows.append(("create", {"PartitionKey": pk, "RowKey": entry.row, **split(entry.to_json())}, {}))
            else:
                kept.add(entry.row)
                if entry.to_json() != before[entry.row].to_json():
                    rows.append(("update", {"PartitionKey": pk, "RowKey": entry.row, **split(entry.to_json())},
                                 {"mode": "replace", **_cas(before[entry.row].etag)}))
        removed = [row for row in before if row not in kept]
        later: list[str] = []
        room = TRANSACTION_MAX - 1 - len(rows)
        for row in removed:
            if room > 0:
                rows.append(("delete", {"PartitionKey": pk, "RowKey": row}, _cas(before[row].etag)))
                room -= 1
            else:
                later.append(row)
        changed.gone = sorted(set(changed.gone) | set(later))
        main = {"PartitionKey": pk, "RowKey": "", WRITE: token, **split(changed.to_json())}
        first: Operation = ("create", main, {}) if current.etag is None else (
            "update", main, {"mode": "replace", **_cas(current.etag)})
        return [first, *rows], later

    async def _landed(self, lease_key: str, token: str) -> bool:
        """Whether the target row now holds the write carrying `token` (LedgerUnavailable when it cannot be read)."""
        try:
            row = await self._read("reading a target", self._table(self.tables[2]).get_entity(
                target_partition(lease_key), ""))
        except ResourceNotFoundError:
            return False  # no target row at all: a first write that did not land
        return bool(row.get(WRITE) == token)

    async def change_target(self, lease_key: str, decide: Callable[[TargetRecord], tuple[TargetRecord | None, T]]
                            ) -> T:
        """CAS loop on one target. `decide` gets a fresh copy and returns (record to write or None, result).

        `decide` must be pure: it may run several times, and only the run whose write lands counts.
        """
        table = self._table(self.tables[2])
        failures = 0
        for attempt in range(CAS_ATTEMPTS):
            current = await self.get_target(lease_key)
            changed, result = decide(current.model_copy(deep=True))
            if changed is None:
                return result
            token = new_token()
            operations, later = self._plan(current, changed, token)
            try:
                await table.submit_transaction(operations)
            except Exception as exc:
                if not may_have_landed(exc):
                    raise
                if not await self._landed(lease_key, token):
                    if not is_conflict(exc):
                        failures += 1
                        if failures >= STORAGE_ATTEMPTS:
                            raise LedgerUnavailable("changing a target") from exc
                    await backoff(attempt)
                    continue
            await self._delete_later(lease_key, later)
            return result
        raise LedgerConflict(f"could not change target {lease_key}")

    async def _delete_later(self, lease_key: str, rows: list[str]) -> None:
        """Delete queue rows that a decision recorded as gone; best effort (readers already ignore them, and the
        next write forgets the ones that are deleted)."""
        table = self._table(self.tables[2])
        pk = target_partition(lease_key)
        for row in rows:
            try:
                await table.delete_entity(pk, row)
            except Exception:  # noqa: S112 - a row left behind is ignored (recorded gone) and retried next time
                continue
