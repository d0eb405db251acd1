"""shared/rules/admission.py: the decisions on one target record, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.domain.records import TargetRecord
from shared.rules import admission
from shared.settings import load_settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
UNTIL = T0 + timedelta(hours=3)
SET = "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachinescalesets/ss"
VM = "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm"
OPTS = {"operation": "VirtualMachineScaleSets_Reimage"}


def settings(**kw: str) -> Any:
    # The batching rules by themselves: the canary that cuts a storm's first batch is tests/unit/rules/test_canary.py's.
    base = {"BREAKER_PERCENT": "100", "FLEET_BUDGET_PERCENT": "100", "COOLDOWN_MINUTES": "30", "CANARY_INSTANCES": "0"}
    return load_settings(**{**base, **kw})


def ask(record: TargetRecord, owner: str, keys: list[str], s: Any, *, options: dict[str, Any] | None = None,
        secret: bool = False, capacity: int = 100, now: datetime = T0, batch_id: str = "b-1"
        ) -> admission.Admission:
    changed, decided = admission.admit_request(
        record, owner=owner, keys=keys, options=options or OPTS, secret=secret, capacity=capacity,
        target_id=record.key, now=now, until=UNTIL, settings=s, batch_id=batch_id)
    if changed is not None:
        record.__dict__.update(changed.__dict__)
    return decided


def test_batch_cap_and_budget_round_down_but_never_to_zero() -> None:
    s = settings(MAX_BATCH_PERCENT="20", FLEET_BUDGET_PERCENT="30", MAX_INSTANCES_PER_REQUEST="10")
    assert admission.batch_cap(100, s) == 10  # MAX_INSTANCES_PER_REQUEST bounds it
    assert admission.batch_cap(20, s) == 4 and admission.batch_cap(4, s) == 1
    assert admission.fleet_budget(4, s) == 1 and admission.fleet_budget(100, s) == 30


def test_a_scale_set_request_queues_and_forms_a_batch_that_later_requests_join_at_seal() -> None:
    s = settings()
    record = TargetRecord(key=SET)
    first = ask(record, "op-a", ["1"], s)
    assert first.kind == "queued" and first.formed == "b-1" and record.lease_owner == "b-1"
    second = ask(record, "op-b", ["2"], s, batch_id="b-2")
    assert second.kind == "queued" and second.formed is None and second.position == 2
    changed, sealed = admission.seal(record, "b-1", T0, s)
    assert changed is not None and sealed.members == ["op-a", "op-b"] and sealed.keys == ["1", "2"]
    # a request for an instance in the sealed running batch, with equal options, rides it
    record.__dict__.update(changed.__dict__)
    assert ask(record, "op-c", ["2"], s).kind == "joined" and record.batch is not None
    assert record.batch.members == ["op-a", "op-b", "op-c"]


def test_secrets_never_wait() -> None:
    s = settings()
    record = TargetRecord(key=SET)
    ask(record, "op-a", ["1"], s)
    refused = ask(record, "op-s", ["2"], s, secret=True)
    assert refused.kind == "refused" and refused.error is not None and refused.error.code == "OperationInProgress"
    assert [e.operation_id for e in record.queue] == ["op-a"]


def test_a_free_vm_leads_and_a_second_request_rides_it() -> None:
    s = settings()
    record = TargetRecord(key=VM)
    opts = {"operation": "VirtualMachines_Reimage"}
    assert ask(record, "op-a", [""], s, options=opts, capacity=1).kind == "lead"
    assert ask(record, "op-b", [""], s, options=opts, capacity=1).kind == "joined"
    other = ask(record, "op-c", [""], s, options={**opts, "tempDisk": True}, capacity=1)
    assert other.kind == "queued"  # different options: the next reimage, after this one


def test_seal_takes_equal_options_in_arrival_order_within_the_cap() -> None:
    s = settings(MAX_BATCH_PERCENT="3")  # cap 3 of 100
    record = TargetRecord(key=SET, capacity=100)
    for i, opts in enumerate([OPTS, OPTS, {**OPTS, "exactVersion": "1"}, OPTS, OPTS, OPTS]):
        ask(record, f"op-{i}", [str(i)], s, options=opts)
    _, sealed = admission.seal(record, "b-1", T0, s)
    assert sealed.members == ["op-0", "op-1", "op-3"]  # the third has other options; the cap is 3
    changed, handoff = admission.release(record, "b-1", sealed.keys, "Succeeded", T0, applied=True,
                                         unhealthy=False, now=T0, until=UNTIL, settings=s, next_batch_id="b-2")
    assert changed is not None and handoff.members == ["op-0", "op-1", "op-3"] and handoff.formed == "b-2"
    _, sealed = admission.seal(record, "b-2", T0, s)
    assert sealed.members == ["op-2"]  # the head's options now: the next batch in arrival order


@given(st.lists(st.integers(0, 99), min_size=1, max_size=60), st.integers(1, 100), st.integers(1, 100))
def test_batches_never_exceed_the_cap_or_the_budget_and_lose_nothing(instances: list[int], pct: int,
                                                                    budget: int) -> None:
    s = settings(MAX_BATCH_PERCENT=str(pct), FLEET_BUDGET_PERCENT=str(budget), MAX_INSTANCES_PER_REQUEST="100",
                 COOLDOWN_MINUTES="0")
    record = TargetRecord(key=SET, capacity=100)
    owners = []
    for n, i in enumerate(instances):
        decided = ask(record, f"op-{n}", [str(i)], s, batch_id=f"b-{n}")
        owners.append(f"op-{n}")
        assert decided.kind == "queued"
    seen: list[str] = []
    now = T0
    for round_ in range(500):
        if record.lease_owner is None:
            now += timedelta(minutes=61)  # the window frees
            formed = admission.form_batch(record, now, now + timedelta(hours=3), s, f"b-x{round_}")
            if formed is None:
                break
        owner = record.lease_owner
        assert owner is not None
        _, sealed = admission.seal(record, owner, now, s)
        assert len(sealed.keys) <= admission.batch_cap(100, s)
        assert admission.budget_used(record) <= max(admission.fleet_budget(100, s), len(sealed.keys))
        seen += sealed.members
        changed, _ = admission.release(record, owner, sealed.keys, "Succeeded", now, applied=True, unhealthy=False,
                                       now=now, until=now + timedelta(hours=3), settings=s,
                                       next_batch_id=f"b-n{round_}")
        if changed is not None:
            record.__dict__.update(changed.__dict__)
    assert sorted(seen) == sorted(owners) and not record.queue  # every request rode exactly one batch


def test_the_breaker_trips_on_distinct_instances_above_the_percent() -> None:
    s = settings(BREAKER_PERCENT="50")
    record = TargetRecord(key=SET)
    for i in range(10):
        assert ask(record, f"op-{i}", [str(i)], s, capacity=20).kind == "queued"
    tripped = ask(record, "op-10", ["10"], s, capacity=20)
    assert tripped.kind == "refused" and tripped.error is not None and tripped.error.code == "TargetSuspended"
    assert tripped.suspension is not None and tripped.suspension["evidence"]["distinctInstancesRequested"] == 11
    assert len(tripped.ended) == 10 and record.queue == []
    assert ask(record, "op-11", ["11"], s, capacity=20).error.code == "TargetSuspended"  # type: ignore[union-attr]
    changed, lifted = admission.resume(record, T0, "ops", "fixed")
    assert changed is not None and lifted is not None and changed.suspended is None and changed.requested == {}


def test_failures_in_a_row_suspend_and_a_success_resets_the_streak() -> None:
    s = settings(BREAKER_FAILURES="3")
    record = TargetRecord(key=VM)
    opts = {"operation": "VirtualMachines_Reimage"}
    outcomes = [("Failed", False), ("Succeeded", False), ("Failed", False), ("TimedOut", False), ("Succeeded", True)]
    for n, (status, unhealthy) in enumerate(outcomes):
        assert ask(record, f"op-{n}", [""], s, options=opts, capacity=1, now=T0 + timedelta(hours=n)).kind == "lead"
        changed, handoff = admission.release(record, f"op-{n}", [""], status, T0 + timedelta(hours=n),
                                             applied=True, unhealthy=unhealthy, now=T0 + timedelta(hours=n),
                                             until=UNTIL, settings=s)
        assert changed is not None
        record.__dict__.update(changed.__dict__)
    assert record.suspended is not None and record.consecutive_failures == 3
    assert record.suspended["evidence"]["lastStatus"] == "Unhealthy"


def test_a_release_by_a_former_owner_changes_nothing_of_the_new_one() -> None:
    s = settings()
    record = TargetRecord(key=VM, lease_owner="op-new", lease_until=UNTIL)
    changed, handoff = admission.release(record, "op-old", [""], "Succeeded", T0, applied=True, unhealthy=False,
                                         now=T0, until=UNTIL, settings=s)
    assert (changed.lease_owner if changed else record.lease_owner) == "op-new" and handoff.members == []


def test_a_batchs_members_arm_refused_get_no_cooldown_nor_budget_count_even_released_twice() -> None:
    s = settings()
    record = TargetRecord(key=SET)
    ask(record, "op-a", ["a", "b", "c"], s)
    changed, _ = admission.seal(record, "b-1", T0, s)
    assert changed is not None
    record.__dict__.update(changed.__dict__)
    assert admission.budget_used(record) == 3 and set(record.cooldowns) == {"a", "b", "c"}
    for _ in range(2):  # a release run twice withdraws once
        changed, _handoff = admission.release(record, "b-1", ["a", "b", "c"], "Succeeded", T0, applied=True,
                                              unhealthy=False, now=T0, until=UNTIL, settings=s, withdrawn=["b"])
        if changed is not None:
            record.__dict__.update(changed.__dict__)
        assert set(record.cooldowns) == {"a", "c"} and admission.budget_used(record) == 2


def test_withdraw_forget_and_expire() -> None:
    s = settings()
    record = TargetRecord(key=SET)
    for i in range(3):
        ask(record, f"op-{i}", [str(i)], s, now=T0 + timedelta(minutes=i))
    changed, entry = admission.withdraw(record, "op-1")
    assert changed is not None and entry is not None and [e.operation_id for e in changed.queue] == ["op-0", "op-2"]
    assert admission.withdraw(changed, "op-1") == (None, None)
    changed, old = admission.expire(changed, T0 + timedelta(minutes=241), timedelta(minutes=240))
    assert changed is not None and [e.operation_id for e in old] == ["op-0"]
    changed, forgot = admission.forget(changed, "op-2")
    assert forgot and changed is not None and changed.queue == []
