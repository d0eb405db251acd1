"""shared/rules/canary.py through shared/rules/admission.py: the first batch of a storm goes alone, and its verdict
decides for the rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.domain.records import OperationRecord, TargetRecord
from shared.rules import admission, canary
from shared.settings import load_settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
UNTIL = T0 + timedelta(hours=3)
SET = "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachinescalesets/ss"
VM = "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm"
OPTS = {"operation": "VirtualMachineScaleSets_Reimage"}
HEALTHY = {"0": "Healthy: running"}


def settings(**kw: str) -> Any:
    base = {"BREAKER_PERCENT": "100", "FLEET_BUDGET_PERCENT": "100", "COOLDOWN_MINUTES": "30",
            "MAX_BATCH_PERCENT": "20"}
    return load_settings(**{**base, **kw})


def apply(record: TargetRecord, result: tuple[TargetRecord | None, Any]) -> Any:
    changed, decided = result
    if changed is not None:
        record.__dict__.update(changed.__dict__)
    return decided


def ask(record: TargetRecord, owner: str, keys: list[str], s: Any, *, approved: bool = False, capacity: int = 20,
        now: datetime = T0, batch_id: str = "b-1") -> admission.Admission:
    return apply(record, admission.admit_request(
        record, owner=owner, keys=keys, options=OPTS, secret=False, capacity=capacity, target_id=record.key,
        now=now, until=now + timedelta(hours=3), settings=s, batch_id=batch_id, approved=approved))


def seal(record: TargetRecord, batch_id: str, s: Any, now: datetime = T0) -> admission.Sealed:
    return apply(record, admission.seal(record, batch_id, now, s))


def end(record: TargetRecord, batch_id: str, keys: list[str], s: Any, *, status: str = "Succeeded",
        health: str | None = "Healthy", detail: dict[str, str] | None = None, applied: bool = True,
        now: datetime = T0, next_batch: str = "b-next") -> admission.Handoff:
    return apply(record, admission.release(
        record, batch_id, keys, status, now, applied=applied, unhealthy=health == "Unhealthy", now=now,
        until=now + timedelta(hours=3), settings=s, next_batch_id=next_batch, health=health,
        health_detail=detail))


def storm(record: TargetRecord, n: int, s: Any) -> None:
    for i in range(n):
        ask(record, f"op-{i}", [str(i)], s, batch_id="b-1")


def test_the_first_batch_of_a_storm_is_a_canary_of_one_and_the_rest_waits() -> None:
    s = settings()
    record = TargetRecord(key=SET, capacity=20)
    storm(record, 12, s)
    sealed = seal(record, "b-1", s)
    assert sealed.members == ["op-0"] and sealed.keys == ["0"]
    assert sealed.canary is not None and sealed.canary["role"] == "canary" and sealed.canary["outcome"] == "running"
    assert record.canary is not None and record.canary.batch_id == "b-1" and record.canary.members == ["op-0"]
    assert [m for e in record.queue for m in e.members] == [f"op-{i}" for i in range(1, 12)]
    # while it runs, nothing else is sealed: the lease is the canary's
    assert admission.form_batch(record, T0, UNTIL, s, "b-other") is None
    handoff = end(record, "b-1", ["0"], s, detail=HEALTHY)
    assert handoff.suspension is None and handoff.formed == "b-next"
    assert record.canary.outcome == "passed" and record.canary.health == "Healthy"
    assert record.canary.valid_until == T0 + timedelta(minutes=60)  # FLEET_WINDOW_MINUTES
    after = seal(record, "b-next", s)
    assert after.members == ["op-1", "op-2", "op-3", "op-4"]  # the cap (20 % of 20), no canary now
    assert after.canary is not None and after.canary["role"] == "after" and after.canary["batchId"] == "b-1"


def test_an_unhealthy_canary_suspends_the_set_and_every_waiting_request_leaves_the_queue() -> None:
    s = settings()
    record = TargetRecord(key=SET, capacity=20)
    storm(record, 12, s)
    seal(record, "b-1", s)
    detail = {"0": "Unhealthy: HealthState/unhealthy"}
    handoff = end(record, "b-1", ["0"], s, health="Unhealthy", detail=detail)
    assert handoff.formed is None and handoff.suspension is not None and record.queue == []
    assert sorted(m for e in handoff.ended for m in e.members) == sorted(f"op-{i}" for i in range(1, 12))
    suspended = record.suspended
    assert suspended is not None and suspended["code"] == "CanaryFailed" and suspended["by"] == "canary"
    assert suspended["evidence"] == {"canary": "b-1", "instanceIds": ["0"], "members": ["op-0"],
                                     "status": "Succeeded", "health": "Unhealthy", "healthDetail": detail}
    assert "b-1" in suspended["reason"] and "Unhealthy" in suspended["reason"]
    assert record.consecutive_failures == 0  # the canary suspends by itself, not through the streak
    refused = ask(record, "op-late", ["15"], s)
    assert refused.kind == "refused" and refused.error is not None and refused.error.code == "TargetSuspended"
    assert refused.error.extra["suspension"]["code"] == "CanaryFailed"
    # a resume forgets the canary: the next storm starts with a canary again
    apply(record, admission.resume(record, T0, "ops", "image rolled back"))
    assert record.canary is None and record.suspended is None


def test_failed_timed_out_and_canceled_canaries_suspend_too() -> None:
    for status in ("Failed", "TimedOut", "Canceled"):
        s = settings()
        record = TargetRecord(key=SET, capacity=20)
        storm(record, 3, s)
        seal(record, "b-1", s)
        handoff = end(record, "b-1", ["0"], s, status=status, health=None)
        assert handoff.suspension is not None and record.suspended is not None, status
        assert record.suspended["evidence"]["status"] == status


def test_unknown_health_passes_on_arms_word() -> None:
    s = settings()
    record = TargetRecord(key=SET, capacity=20)
    storm(record, 3, s)
    seal(record, "b-1", s)
    handoff = end(record, "b-1", ["0"], s, health="Unknown", detail={"0": "Unknown: no health extension"})
    assert handoff.suspension is None and record.canary is not None and record.canary.outcome == "passed"


def test_a_passed_canary_holds_for_the_window_then_the_next_storm_has_one_again() -> None:
    s = settings(FLEET_WINDOW_MINUTES="30")
    record = TargetRecord(key=SET, capacity=20)
    storm(record, 2, s)
    seal(record, "b-1", s)
    end(record, "b-1", ["0"], s, detail=HEALTHY)
    assert seal(record, "b-next", s).canary["role"] == "after"  # type: ignore[index]
    end(record, "b-next", ["1"], s, next_batch="b-none")
    later = T0 + timedelta(minutes=29)
    for i in (5, 6, 7):
        ask(record, f"op-{i}", [str(i)], s, now=later, batch_id="b-2")
    assert seal(record, "b-2", s, later).members == ["op-5", "op-6", "op-7"]  # still valid: no canary
    end(record, "b-2", ["5", "6", "7"], s, now=later, next_batch="b-none")
    much_later = T0 + timedelta(minutes=31)
    for i in (8, 9):
        ask(record, f"op-{i}", [str(i)], s, now=much_later, batch_id="b-3")
    sealed = seal(record, "b-3", s, much_later)
    assert sealed.members == ["op-8"] and sealed.canary is not None and sealed.canary["role"] == "canary"


def test_a_lone_request_is_no_canary_but_an_approved_one_is() -> None:
    s = settings()
    lone = TargetRecord(key=SET, capacity=20)
    ask(lone, "op-0", ["0"], s)
    sealed = seal(lone, "b-1", s)
    assert sealed.members == ["op-0"] and sealed.canary is None and lone.canary is None  # nothing waits behind it
    approved = TargetRecord(key=SET, capacity=20)
    ask(approved, "op-0", ["0"], s, approved=True)
    sealed = seal(approved, "b-1", s)
    assert sealed.canary is not None and approved.canary is not None and approved.canary.members == ["op-0"]


def test_an_approved_wide_request_is_split_its_rest_held_out_of_the_queue_until_the_verdict() -> None:
    s = settings(MAX_BATCH_PERCENT="100", MAX_INSTANCES_PER_REQUEST="20")
    record = TargetRecord(key=SET, capacity=20)
    wide = [str(i) for i in range(8)]
    ask(record, "op-all", wide, s, approved=True)
    ask(record, "op-b", ["12"], s)
    sealed = seal(record, "b-1", s)
    assert sealed.members == ["op-all"] and sealed.keys == ["0"] and sealed.partial == ["op-all"]
    assert record.canary is not None and [e.keys for e in record.canary.held] == [wide[1:]]
    assert [e.operation_id for e in record.queue] == ["op-b"]  # the rest of op-all is not in the queue
    assert record.batch is not None and record.batch.keys == ["0"]
    end(record, "b-1", ["0"], s, detail=HEALTHY)
    assert [(e.operation_id, e.keys) for e in record.queue] == [("op-all", wide[1:]), ("op-b", ["12"])]
    after = seal(record, "b-next", s)
    assert after.members == ["op-all", "op-b"] and after.keys == [*wide[1:], "12"] and after.partial == []


def test_a_split_request_whose_canary_fails_ends_with_the_rest() -> None:
    s = settings(MAX_BATCH_PERCENT="100", MAX_INSTANCES_PER_REQUEST="20")
    record = TargetRecord(key=SET, capacity=20)
    ask(record, "op-all", [str(i) for i in range(8)], s, approved=True)
    seal(record, "b-1", s)
    handoff = end(record, "b-1", ["0"], s, health="Unhealthy", detail={"0": "Unhealthy: boot loop"})
    assert [(e.operation_id, e.keys) for e in handoff.ended] == [("op-all", [str(i) for i in range(1, 8)])]
    assert record.queue == [] and record.canary is not None and record.canary.held == []


def test_a_canary_that_was_never_applied_decides_nothing_and_the_next_batch_is_a_canary_again() -> None:
    s = settings()
    record = TargetRecord(key=SET, capacity=20)
    storm(record, 4, s)
    seal(record, "b-1", s)
    handoff = end(record, "b-1", ["0"], s, status="Failed", health=None, applied=False)
    assert handoff.suspension is None and record.canary is None and record.suspended is None
    sealed = seal(record, "b-next", s)
    assert sealed.members == ["op-1"] and sealed.canary is not None and sealed.canary["role"] == "canary"


def test_a_canary_sent_back_to_the_queue_is_undone() -> None:
    s = settings(MAX_BATCH_PERCENT="100", MAX_INSTANCES_PER_REQUEST="20")
    record = TargetRecord(key=SET, capacity=20)
    ask(record, "op-all", ["0", "1", "2"], s, approved=True)
    seal(record, "b-1", s)
    entry = record.canary.held[0].model_copy(update={"keys": ["0", "1", "2"]})  # type: ignore[union-attr]
    assert apply(record, admission.requeue(record, "b-1", T0, [entry])) is True
    assert record.canary is None and [(e.operation_id, e.keys) for e in record.queue] == [("op-all", ["0", "1", "2"])]


def test_the_verdict_is_given_once_by_the_canarys_lease_holder() -> None:
    s = settings()
    record = TargetRecord(key=SET, capacity=20)
    storm(record, 3, s)
    seal(record, "b-1", s)
    again = seal(record, "b-1", s)  # the submit activity runs twice: the same membership and canary
    assert again.members == ["op-0"] and again.canary is not None and again.canary["role"] == "canary"
    end(record, "b-1", ["0"], s, detail=HEALTHY)
    first = record.model_copy(deep=True)
    changed, handoff = admission.release(record, "b-1", ["0"], "Succeeded", T0, applied=True, unhealthy=True,
                                         now=T0, until=UNTIL, settings=s, health="Unhealthy")
    assert handoff.suspension is None  # a retried release (no longer the lease holder) decides nothing again
    assert (changed or record).canary == first.canary


def test_canary_instances_zero_turns_it_off_and_vms_never_have_one() -> None:
    s = settings(CANARY_INSTANCES="0")
    record = TargetRecord(key=SET, capacity=20)
    storm(record, 12, s)
    assert seal(record, "b-1", s).members == ["op-0", "op-1", "op-2", "op-3"] and record.canary is None
    vm = TargetRecord(key=VM)
    on = settings()
    for i in range(3):
        apply(vm, admission.admit_request(vm, owner=f"op-{i}", keys=[""], options={"tempDisk": i}, secret=False,
                                          capacity=1, target_id=VM, now=T0, until=UNTIL, settings=on,
                                          approved=True))
    assert vm.canary is None


def test_a_wider_canary_takes_whole_requests_in_arrival_order() -> None:
    s = settings(CANARY_INSTANCES="3")
    record = TargetRecord(key=SET, capacity=20)
    ask(record, "op-a", ["0", "1"], s)
    ask(record, "op-b", ["2", "3"], s)
    ask(record, "op-c", ["4"], s)
    sealed = seal(record, "b-1", s)
    assert sealed.members == ["op-a"] and sealed.keys == ["0", "1"]  # op-b would not fit: arrival order holds


def test_members_carry_the_verdict_and_the_requests_it_ended_say_they_waited() -> None:
    s = settings()
    record = TargetRecord(key=SET, capacity=20)
    storm(record, 3, s)
    seal(record, "b-1", s)
    end(record, "b-1", ["0"], s, health="Unhealthy", detail={"0": "Unhealthy: boot loop"})
    failed = canary.failed_doc(record)
    assert failed is not None and failed["role"] == "waited" and failed["members"] == ["op-0"]
    now = T0
    waiting = OperationRecord(operation_id="op-1", request_id="r", target=SET, lease_key=SET, trigger="alert",
                              cooldown_keys=["1"], created_time=now, last_updated_time=now)
    canary.waited(waiting, failed)
    assert waiting.canary is not None and waiting.canary["role"] == "waited"
    assert waiting.canary["outcome"] == "failed" and waiting.canary["healthDetail"] == {"0": "Unhealthy: boot loop"}
    batch = OperationRecord(operation_id="b-1", request_id="b-1", target=SET, lease_key=SET, trigger="batch",
                            created_time=now, last_updated_time=now, status="Succeeded", health="Unhealthy",
                            health_detail={"0": "Unhealthy: boot loop"}, applied=True, members=["op-0"],
                            canary={"batchId": "b-1", "instanceIds": ["0"], "role": "canary", "outcome": "running",
                                    "partial": []})
    member = waiting.model_copy(update={"operation_id": "op-0", "cooldown_keys": ["0"], "canary": None})
    doc = canary.ended_doc(batch, member)
    assert doc == {"batchId": "b-1", "instanceIds": ["0"], "role": "canary", "outcome": "failed",
                   "status": "Succeeded", "health": "Unhealthy", "healthDetail": {"0": "Unhealthy: boot loop"}}


@hsettings(max_examples=60)
@given(st.lists(st.tuples(st.integers(0, 39), st.integers(1, 4), st.booleans()), min_size=1, max_size=30),
       st.integers(1, 4), st.lists(st.booleans(), min_size=1, max_size=40))
def test_with_canaries_every_instance_asked_for_is_reimaged_once_or_ended_by_a_suspension(
        asks: list[tuple[int, int, bool]], n: int, verdicts: list[bool]) -> None:
    """Whatever the storm, the canary size and the verdicts: each request's instances are sent at most once,
    nothing waits after the queue drains, and a failed canary ends everything that waited."""
    s = settings(CANARY_INSTANCES=str(n), MAX_INSTANCES_PER_REQUEST="40", COOLDOWN_MINUTES="0", MAX_BATCH_PERCENT="25")
    record = TargetRecord(key=SET, capacity=40)
    wanted: dict[str, set[str]] = {}
    for i, (start, width, approved) in enumerate(asks):
        keys = [str(k) for k in range(start, min(40, start + width))]
        decided = ask(record, f"op-{i}", keys, s, approved=approved, capacity=40, batch_id=f"b-{i}")
        assert decided.kind == "queued"
        wanted[f"op-{i}"] = set(keys)
    sent: dict[str, set[str]] = {op: set() for op in wanted}
    ended: set[str] = set()
    now = T0
    for round_ in range(400):
        owner = record.lease_owner
        if owner is None:  # over the fleet budget: the window frees (and the passed canary runs out with it)
            now += timedelta(minutes=61)
            owner = admission.form_batch(record, now, now + timedelta(hours=3), s, f"b-w{round_}")
            if owner is None:
                break
        waiting = {m: set(e.keys) for e in record.queue for m in e.members}
        sealed = seal(record, owner, s, now)
        for op in sealed.members:
            mine = set(sealed.keys) & waiting[op]  # what this batch sends for this request
            assert not mine & sent[op]  # never the same instance twice for one request
            sent[op] |= mine
        good = verdicts[round_ % len(verdicts)]
        handoff = end(record, owner, sealed.keys, s, health="Healthy" if good else "Unhealthy", now=now,
                      next_batch=f"b-n{round_}")
        ended |= {m for e in handoff.ended for m in e.members}
        if record.suspended:
            break
    assert record.lease_owner is None and record.queue == []
    for op, keys in wanted.items():
        assert sent[op] == keys or op in ended, op


def test_the_batch_a_canary_cleared_is_admitted_as_the_first_of_an_empty_window() -> None:
    """A 4-instance set's fleet budget is 1 instance an hour: the canary takes it, yet the approved request's other
    three instances go right after (as one batch would in an empty window), not an hour later, when the canary
    would have run out and cut them again."""
    s = settings(FLEET_BUDGET_PERCENT="30", MAX_INSTANCES_PER_REQUEST="10")
    record = TargetRecord(key=SET, capacity=4)
    ask(record, "op-all", ["0", "1", "2", "3"], s, approved=True, capacity=4)
    seal(record, "b-1", s)
    end(record, "b-1", ["0"], s, detail=HEALTHY)
    after = seal(record, "b-next", s)
    assert after.keys == ["1", "2", "3"] and after.members == ["op-all"]
    # a storm on the same small set: the canary's batch and one more; then the budget holds the rest
    storm_set = TargetRecord(key=SET, capacity=4)
    for i in range(3):
        ask(storm_set, f"op-{i}", [str(i)], s, capacity=4)
    seal(storm_set, "b-1", s)
    end(storm_set, "b-1", ["0"], s, detail=HEALTHY)
    assert seal(storm_set, "b-next", s).members == ["op-1"]
    assert end(storm_set, "b-next", ["1"], s, next_batch="b-3").formed is None  # over budget: wait for the window


def test_a_passed_canary_holds_only_for_the_same_options() -> None:
    """Another exactVersion is another image: its first batch is a canary of its own."""
    s = settings()
    record = TargetRecord(key=SET, capacity=20)
    storm(record, 2, s)
    pinned = {**OPTS, "exactVersion": "1.2.3"}
    for i in (5, 6):
        apply(record, admission.admit_request(record, owner=f"op-v{i}", keys=[str(i)], options=pinned, secret=False,
                                              capacity=20, target_id=SET, now=T0, until=UNTIL, settings=s))
    seal(record, "b-1", s)
    end(record, "b-1", ["0"], s, detail=HEALTHY)
    assert seal(record, "b-next", s).members == ["op-1"]  # the same options: cleared by the canary
    end(record, "b-next", ["1"], s, next_batch="b-3")
    sealed = seal(record, "b-3", s)
    assert sealed.members == ["op-v5"] and sealed.canary is not None and sealed.canary["role"] == "canary"
