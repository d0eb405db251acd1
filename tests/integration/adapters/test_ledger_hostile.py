"""The ledger against Azurite behind devhost's storage proxy (Azure's limits and failures): writes that landed
but were answered 500 or cut off are recognised as the ledger's own, a decision that took requests out of a queue
keeps its result, a queue of any length stays under Azure's entity limit, and storage that keeps failing is
StorageUnavailable, never a lost race."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables.aio import TableServiceClient

from devhost.outputs import table_endpoint
from devhost.storage import StorageProxy
from devhost.storage.faults import StorageFault
from shared.adapters.ledger import Ledger, LedgerUnavailable
from shared.domain.records import OperationRecord, QueueEntry, TargetRecord
from shared.domain.status import OperationStatus
from shared.rules import admission

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Hostile:
    def __init__(self, ledger: Ledger, proxy: StorageProxy) -> None:
        self.ledger, self.proxy = ledger, proxy

    def fault(self, **doc: Any) -> None:
        self.proxy.faults.append(StorageFault.model_validate(doc))

    def effects(self) -> list[str]:
        return [r["effect"] for r in self.proxy.requests if r.get("effect")]


@pytest.fixture
async def hostile(azurite_storage: str) -> AsyncIterator[Hostile]:
    upstream = table_endpoint(azurite_storage)
    assert upstream is not None
    proxy = StorageProxy(upstream)
    served = await proxy.serve()
    service = TableServiceClient.from_connection_string(proxy.connection_string(azurite_storage))
    ledger = Ledger(service, f"h{uuid.uuid4().hex[:12]}")
    await ledger.ensure_tables()
    yield Hostile(ledger, proxy)
    await ledger.close()
    await proxy.close()
    await served.close()


def record(op: str) -> OperationRecord:
    return OperationRecord(operation_id=op, request_id=f"key-{op}", target="/x/vm-a", lease_key="/x/vm-a",
                           trigger="http", created_time=T0, last_updated_time=T0, attempt="a1")


@pytest.mark.parametrize("effect", ["applyThen500", "applyThenDrop"])
async def test_a_claim_that_landed_but_was_answered_badly_is_won(hostile: Hostile, effect: str) -> None:
    """azure-data-tables retries an insert answered 500 and gets 409 for its own entity; a dropped insert raises.
    Either way the claim is the caller's, not a duplicate of itself."""
    hostile.fault(match={"table": "*ops", "method": "POST"}, effect=effect)
    won, claimed = await hostile.ledger.claim(record("op-1"))
    assert won and claimed.etag is not None and hostile.effects() == [effect]
    again, existing = await hostile.ledger.claim(record("op-1"))
    assert not again and existing.operation_id == "op-1"  # a real second claim still loses


@pytest.mark.parametrize("effect", ["applyThen500", "applyThenDrop"])
async def test_a_compare_and_swap_that_landed_but_was_answered_badly_stands(hostile: Hostile, effect: str) -> None:
    _, mine = await hostile.ledger.claim(record("op-2"))
    hostile.fault(match={"table": "*ops", "method": "PUT"}, effect=effect)
    mine.status = OperationStatus.SUBMITTING
    stored = await hostile.ledger.replace(mine)  # not RecordChanged: the 412 was for its own write
    assert stored.status is OperationStatus.SUBMITTING and hostile.effects() == [effect]
    fresh = await hostile.ledger.get("op-2")
    assert fresh is not None and fresh.status is OperationStatus.SUBMITTING and fresh.etag == stored.etag


def _queued(n: int, now: datetime) -> list[QueueEntry]:
    return [QueueEntry(operation_id=f"op-{i:05d}", keys=[str(i % 1000)], options={"operation": "x", "v": i},
                       queued_at=now) for i in range(n)]


@pytest.mark.parametrize("effect", ["applyThen500", "applyThenDrop"])
async def test_a_decision_that_took_requests_out_of_the_queue_keeps_its_result(hostile: Hostile, effect: str) -> None:
    """The queue-expiry decision answered 500 after it landed: the expired requests are still returned (to be
    ended), not lost because a second run of the decision found them gone."""
    now = T0 + timedelta(hours=5)

    def fill(t: TargetRecord) -> tuple[TargetRecord, None]:
        t.queue = _queued(3, T0)
        return t, None

    await hostile.ledger.change_target("/x/vmss-a", fill)
    hostile.fault(match={"table": "*targets", "method": "POST"}, effect=effect)
    old = await hostile.ledger.change_target("/x/vmss-a", lambda t: admission.expire(t, now, timedelta(hours=4)))
    assert [e.operation_id for e in old] == ["op-00000", "op-00001", "op-00002"]
    assert (await hostile.ledger.get_target("/x/vmss-a")).queue == [] and hostile.effects() == [effect]


async def test_a_queue_of_any_length_stays_under_azures_entity_limit(hostile: Hostile) -> None:
    """3,000 waiting requests: on one entity (today's limit: 480K characters, 960K bytes in Azure's UTF-16
    accounting) they would not fit; as rows of the target's partition they do, and a suspension ends them all."""
    def fill(t: TargetRecord) -> tuple[TargetRecord, None]:
        t.queue = _queued(3000, T0)
        return t, None

    await hostile.ledger.change_target("/x/vmss-b", fill)
    target = await hostile.ledger.get_target("/x/vmss-b")
    assert [e.operation_id for e in target.queue] == [f"op-{i:05d}" for i in range(3000)]  # arrival order

    def suspend(t: TargetRecord) -> tuple[TargetRecord, list[QueueEntry]]:
        return t, admission.suspend(t, T0, "test", {})

    ended = await hostile.ledger.change_target("/x/vmss-b", suspend)
    assert len(ended) == 3000
    after = await hostile.ledger.get_target("/x/vmss-b")
    assert after.queue == [] and after.suspended is not None
    refused = [r for r in hostile.proxy.requests if (r.get("status") or 0) >= 400]
    assert refused == []  # Azure's limits (size, properties, 100 operations a transaction) were never broken


async def test_a_target_read_follows_continuation_tokens_past_empty_pages(hostile: Hostile) -> None:
    def fill(t: TargetRecord) -> tuple[TargetRecord, None]:
        t.queue = _queued(5, T0)
        return t, None

    await hostile.ledger.change_target("/x/vmss-c", fill)
    hostile.fault(match={"table": "*targets", "method": "GET"}, effect="emptyPage", times=2)
    hostile.fault(match={"table": "*targets", "method": "GET"}, effect="shortPage", keep=1)
    target = await hostile.ledger.get_target("/x/vmss-c")
    assert len(target.queue) == 5 and "emptyPage" in hostile.effects()


async def test_storage_that_keeps_failing_is_unavailable_not_a_lost_race(hostile: Hostile) -> None:
    hostile.fault(match={"table": "*ops"}, effect="busy503", times=100)
    with pytest.raises(LedgerUnavailable) as info:
        await hostile.ledger.claim(record("op-3"))
    assert info.value.code == "StorageUnavailable" and info.value.retry_after
