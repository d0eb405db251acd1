"""The in-memory ledger keeps the real one's promises (tests/integration/adapters/test_ledger.py checks the real
one against Azurite): one claim wins, a stale ETag is refused, the CAS loops decide again on a fresh copy, the
index lists newest first, and the global budget has exactly `limit` slots an hour."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.adapters.ledger import RecordChanged
from shared.domain.records import OperationRecord, TargetRecord
from tests.unit.workflow.fakes import START, FakeLedger


def op(operation_id: str, lease_key: str = "t1", minutes: int = 0) -> OperationRecord:
    at = START + timedelta(minutes=minutes)
    return OperationRecord(operation_id=operation_id, request_id=operation_id, target="/x", lease_key=lease_key,
                           trigger="http", created_time=at, last_updated_time=at)


async def test_one_claim_wins_and_the_loser_gets_the_stored_record() -> None:
    ledger = FakeLedger()
    won, first = await ledger.claim(op("a"))
    lost, existing = await ledger.claim(op("a").model_copy(update={"trigger": "alert"}))
    assert won and not lost and existing.trigger == "http" and existing.etag == first.etag


async def test_a_stale_etag_is_refused_and_a_freed_key_cannot_be_released_twice() -> None:
    ledger = FakeLedger()
    _, record = await ledger.claim(op("a"))
    stale = record.model_copy()
    await ledger.replace(record.model_copy(update={"polls": 1}))
    with pytest.raises(RecordChanged):
        await ledger.replace(stale)
    assert not await ledger.release_claim(stale)
    current = await ledger.get("a")
    assert current is not None and current.polls == 1 and await ledger.release_claim(current)
    assert await ledger.get("a") is None and not await ledger.release_claim(current)


async def test_update_and_change_target_decide_again_after_losing_a_race() -> None:
    ledger = FakeLedger()
    await ledger.claim(op("a"))
    ledger.before_replace = lambda oid: ledger.ops.__setitem__(oid, (op("a").model_copy(
        update={"polls": 5}).to_json(), 'W/"other"'))
    seen: list[int] = []

    def bump(r: OperationRecord) -> OperationRecord:
        seen.append(r.polls)
        r.polls += 1
        return r

    updated = await ledger.update("a", bump)
    assert seen == [0, 5] and updated is not None and updated.polls == 6

    runs: list[int] = []

    def take(t: TargetRecord) -> tuple[TargetRecord | None, int]:
        runs.append(t.capacity)
        if len(runs) == 1:  # a concurrent writer lands between this read and its write
            ledger.put_target(TargetRecord(key="t1", capacity=7))
        t.capacity += 1
        return t, t.capacity

    assert await ledger.change_target("t1", take) == 8 and runs == [1, 7]
    assert (await ledger.get_target("t1")).capacity == 8


async def test_listing_is_newest_first_per_target_and_skips_a_reclaimed_key() -> None:
    ledger = FakeLedger()
    for name, minutes in (("a", 0), ("b", 5), ("c", 10)):
        _, record = await ledger.claim(op(name, minutes=minutes))
        await ledger.index(record)
    await ledger.index(op("other", lease_key="t2"))
    assert [r.operation_id for r in (await ledger.list_operations(lease_key="t1")).items] == ["c", "b", "a"]
    page = await ledger.list_operations(top=2)
    assert [r.operation_id for r in page.items] == ["c", "b"] and page.continuation_token
    stored = await ledger.get("a")
    assert stored is not None and await ledger.release_claim(stored)
    await ledger.claim(op("a", minutes=20))  # the key again, later: the old index entry is not this claim
    rest = await ledger.list_operations(top=2, continuation_token=page.continuation_token)
    assert [r.operation_id for r in rest.items] == [] and rest.continuation_token is None


async def test_the_global_budget_has_exactly_limit_slots_an_hour() -> None:
    ledger = FakeLedger()
    assert [(await ledger.take_global_slot(f"o{i}", START, 2))[0] is not None for i in range(3)] == [
        True, True, False]
    assert (await ledger.take_global_slot("o3", START, 2))[1] == START + timedelta(hours=1)
    later = START + timedelta(hours=1, seconds=1)
    slot, _ = await ledger.take_global_slot("o4", later, 1)  # slot 0 served its hour: it serves again
    assert slot is not None and not await ledger.global_slots_free(later, 1)
    await ledger.give_back_global_slot(slot, "someone-else")  # only its owner gives it back
    assert not await ledger.global_slots_free(later, 1)
    await ledger.give_back_global_slot(slot, "o4")
    assert await ledger.global_slots_free(later, 1)
