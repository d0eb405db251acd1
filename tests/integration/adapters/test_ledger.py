"""The ledger against real Azurite: insert-if-absent, compare-and-swap, listing order and paging."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables.aio import TableServiceClient

from shared.adapters.ledger import Ledger, RecordChanged
from shared.domain.records import OperationRecord, TargetRecord
from shared.rules import admission
from shared.settings import load_settings

SETTINGS = load_settings(COOLDOWN_MINUTES="30")


def lead(t: TargetRecord, owner: str, keys: list[str], now: datetime, until: datetime, cooldown: int
         ) -> tuple[TargetRecord | None, admission.Admission]:
    """Take the target for `owner` as a request carrying secrets would: lead, or be refused (never queue)."""
    return admission.admit_request(t, owner=owner, keys=keys, options={"operation": "x"}, secret=True, capacity=1,
                                   target_id=t.key, now=now, until=until,
                                   settings=load_settings(COOLDOWN_MINUTES=str(cooldown)))

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def ledger(azurite_storage: str) -> AsyncIterator[Ledger]:
    led = Ledger(TableServiceClient.from_connection_string(azurite_storage), f"t{uuid.uuid4().hex[:12]}")
    yield led
    await led.close()


def record(op: str, target: str = "/x/vm-a", created: datetime = T0) -> OperationRecord:
    return OperationRecord(operation_id=op, request_id=f"key-{op}", target=target, lease_key=target.lower(),
                           trigger="http", created_time=created, last_updated_time=created)


async def test_the_claim_has_exactly_one_winner_under_concurrency(ledger: Ledger) -> None:
    results = await asyncio.gather(*(ledger.claim(record("op-1")) for _ in range(30)))
    assert sum(won for won, _ in results) == 1
    assert {r.operation_id for _, r in results} == {"op-1"}


async def test_a_stale_etag_is_refused(ledger: Ledger) -> None:
    _, mine = await ledger.claim(record("op-2"))
    other = await ledger.get("op-2")
    assert other is not None
    other.status = "Submitting"
    await ledger.replace(other)
    mine.status = "Failed"
    with pytest.raises(RecordChanged):
        await ledger.replace(mine)
    stored = await ledger.get("op-2")
    assert stored is not None and stored.status == "Submitting"


async def test_a_freed_key_can_be_claimed_again_but_not_with_a_stale_etag(ledger: Ledger) -> None:
    _, first = await ledger.claim(record("op-3"))
    moved = await ledger.update("op-3", lambda r: setattr(r, "status", "Submitting") or r)
    assert moved is not None
    assert not await ledger.release_claim(first)  # stale: it moved on meanwhile
    assert await ledger.release_claim(moved)
    won, _ = await ledger.claim(record("op-3"))
    assert won


async def test_concurrent_compare_and_swap_loses_no_update(ledger: Ledger) -> None:
    def bump(t: TargetRecord) -> tuple[TargetRecord, int]:
        t.consecutive_failures += 1
        return t, t.consecutive_failures

    seen = await asyncio.gather(*(ledger.change_target("/x/vm-b", bump) for _ in range(12)))
    assert sorted(seen) == list(range(1, 13))
    assert (await ledger.get_target("/x/vm-b")).consecutive_failures == 12


async def test_one_lease_among_racing_admissions(ledger: Ledger) -> None:
    until = T0 + timedelta(hours=1)

    async def admit(owner: str) -> bool:
        admission = await ledger.change_target(
            "/x/vm-c", lambda t: lead(t, owner, [""], T0, until, 30))
        return admission.error is None

    won = await asyncio.gather(*(admit(f"op-{i}") for i in range(16)))
    assert sum(won) == 1


async def test_a_late_release_does_not_free_the_next_owners_lease(ledger: Ledger) -> None:
    early = T0 + timedelta(minutes=1)
    await ledger.change_target("/x/vm-d", lambda t: lead(t, "op-old", [""], T0, early, 0))
    later = T0 + timedelta(minutes=5)  # op-old's lease has expired: op-new takes the target
    await ledger.change_target("/x/vm-d", lambda t: lead(t, "op-new", [""], later, later + timedelta(hours=1),
                                                                 0))
    await ledger.change_target("/x/vm-d", lambda t: admission.release(
        t, "op-old", [""], "Succeeded", later, applied=True, unhealthy=False, now=later, until=later,
        settings=SETTINGS))
    target = await ledger.get_target("/x/vm-d")
    assert target.lease_owner == "op-new" and target.lease_held(later)


async def test_listing_is_newest_first_per_target_and_pages_exactly_once(ledger: Ledger) -> None:
    for i in range(23):
        rec = record(f"op-{i:02d}", target="/x/vm-e" if i % 3 else "/x/vm-f", created=T0 + timedelta(seconds=i))
        await ledger.claim(rec)
        await ledger.index(rec)
    seen: list[str] = []
    token = None
    while True:
        page = await ledger.list_operations(lease_key="/x/vm-e", top=4, continuation_token=token)
        seen += [r.operation_id for r in page.items]
        token = page.continuation_token
        if token is None:
            break
    expected = [f"op-{i:02d}" for i in reversed(range(23)) if i % 3]
    assert seen == expected
    everything = await ledger.list_operations(top=100)
    assert len(everything.items) == 23 and everything.items[0].operation_id == "op-22"
    since = await ledger.list_operations(lease_key="/x/vm-e", since=T0 + timedelta(seconds=20), top=100)
    assert [r.operation_id for r in since.items] == ["op-22", "op-20"]


async def test_large_target_records_are_split_across_properties(ledger: Ledger) -> None:
    keys = [str(i) for i in range(1000)]
    until = T0 + timedelta(hours=1)
    await ledger.change_target("/x/ss", lambda t: lead(t, "op-big", keys, T0, until, 30))
    target = await ledger.get_target("/x/ss")
    assert len(target.cooldowns) == 1000 and target.lease_owner == "op-big"


async def test_one_lease_when_every_admission_stalls_between_its_read_and_its_write(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worst moment for check-then-act: every caller has read the free target before any writes."""
    read = ledger.get_target

    async def slow_read(lease_key: str) -> TargetRecord:
        record = await read(lease_key)
        await asyncio.sleep(0.05)
        return record

    monkeypatch.setattr(ledger, "get_target", slow_read)
    until = T0 + timedelta(hours=1)

    async def admit(owner: str) -> bool:
        admission = await ledger.change_target("/x/vm-g", lambda t: lead(t, owner, [""], T0, until, 30))
        return admission.error is None

    won = await asyncio.gather(*(admit(f"op-{i}") for i in range(12)))
    assert sum(won) == 1
    assert (await read("/x/vm-g")).lease_owner is not None


async def test_the_global_budget_gives_exactly_limit_slots_to_racing_posts(ledger: Ledger) -> None:
    """30 POSTs race for GLOBAL_MAX_REIMAGES_PER_HOUR = 10: exactly 10 slots, the rest told when one frees; a slot
    given back serves another; after an hour every slot serves again."""
    taken = await asyncio.gather(*(ledger.take_global_slot(f"op-{i}", T0, 10) for i in range(30)))
    slots = [slot for slot, _ in taken if slot is not None]
    assert len(slots) == 10 == len(set(slots))
    assert {frees for slot, frees in taken if slot is None} == {T0 + timedelta(hours=1)}
    winner = next(f"op-{i}" for i, (slot, _) in enumerate(taken) if slot is not None)
    given = next(slot for slot, _ in taken if slot is not None)
    await ledger.give_back_global_slot(given, "not-the-owner")  # only its owner gives it back
    assert not await ledger.global_slots_free(T0, 10)
    await ledger.give_back_global_slot(given, winner)
    assert await ledger.global_slots_free(T0, 10)
    assert (await ledger.take_global_slot("op-late", T0 + timedelta(minutes=5), 10))[0] is not None
    assert (await ledger.take_global_slot("op-later", T0 + timedelta(minutes=6), 10))[0] is None
    later = await asyncio.gather(*(ledger.take_global_slot(f"op-h{i}", T0 + timedelta(minutes=66), 10)
                                   for i in range(10)))
    assert all(slot is not None for slot, _ in later)
