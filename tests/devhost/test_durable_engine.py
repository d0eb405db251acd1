"""The durable stand-in's replay engine, driving real SDK orchestrators through their own replay."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import azure.durable_functions as df
import pytest

from devhost.clock import VirtualClock
from devhost.durable import DurableEngine, Fidelity, drive
from devhost.functions import index_app

bp = df.Blueprint()
CALLS: dict[str, int] = {}


@bp.orchestration_trigger(context_name="context")
def toy(context: df.DurableOrchestrationContext) -> Any:
    inp = context.get_input() or {}
    first = yield context.call_activity("double", inp.get("n", 1))
    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=30))
    context.set_custom_status({"stage": "waiting", "first": first})
    timeout = context.create_timer(context.current_utc_datetime + timedelta(seconds=300))
    event = context.wait_for_external_event("Go")
    winner = yield context.task_any([event, timeout])
    if winner == timeout:
        return {"result": "timeout", "first": first}
    timeout.cancel()
    retry = df.RetryOptions(first_retry_interval_in_milliseconds=2000, max_number_of_attempts=3)
    flaky = yield context.call_activity_with_retry("flaky", retry, inp.get("fail_times", 0))
    both = yield context.task_all([context.call_activity("double", 5), context.call_activity("double", 6)])
    generation = inp.get("generation", 0)
    if generation < inp.get("continue_times", 0):
        context.continue_as_new({**inp, "generation": generation + 1})
        return None
    return {"result": event.result, "first": first, "flaky": flaky, "both": both, "generation": generation}


@bp.activity_trigger(input_name="n")
def double(n: int) -> int:
    return n * 2


@bp.activity_trigger(input_name="n")
def triple(n: int) -> int:
    return n * 3


@bp.activity_trigger(input_name="fails")
async def flaky(fails: int) -> str:
    CALLS["flaky"] = CALLS.get("flaky", 0) + 1
    if CALLS["flaky"] <= fails:
        raise RuntimeError("transient")
    return f"ok after {CALLS['flaky']}"


@bp.orchestration_trigger(context_name="context")
def nondeterministic(context: df.DurableOrchestrationContext) -> Any:
    import uuid

    yield context.call_activity("double" if uuid.uuid4().int % 2 else "triple", 1)
    yield context.call_activity("double", 2)
    yield context.call_activity("double", 3)
    return "done"


def build_engine(fidelity: Fidelity | None = None) -> DurableEngine:
    app = df.DFApp()
    app.register_functions(bp)
    index = index_app(app)
    orchestrators = {e.name: e.user for e in index.of_type("orchestrationTrigger")}
    activities = {e.name: e.user for e in index.of_type("activityTrigger")}
    engine = DurableEngine(VirtualClock(), orchestrators, activities, fidelity=fidelity)
    engine.start_worker()
    return engine


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


async def test_activity_timer_event_retry_fan_out_and_continue_as_new() -> None:
    # Counts executions exactly, so no injected duplicates (test_durable_fidelity covers those).
    engine = build_engine(Fidelity(duplicate_activities=False))
    inst = engine.start("toy", "i1", json.dumps({"n": 21, "fail_times": 2, "continue_times": 1}))
    await drive(engine, lambda: inst.custom_status is not None)
    assert inst.custom_status == {"stage": "waiting", "first": 42}
    assert engine.clock.now() - inst.created == 30  # one 30 s timer, virtual
    assert engine.raise_event("i1", "Go", json.dumps("green")) == 202
    await drive(engine, lambda: inst.status != "Running" or inst.executions > 1)
    # Generation 2 waits for its own Go event: the first one belonged to the old history.
    await drive(engine, lambda: inst.custom_status == {"stage": "waiting", "first": 42} and inst.executions == 2)
    engine.raise_event("i1", "Go", json.dumps("again"))
    await drive(engine, lambda: inst.status == "Completed")
    assert inst.output == {"result": "again", "first": 42, "flaky": "ok after 4", "both": [10, 12], "generation": 1}
    assert CALLS["flaky"] == 4  # 2 failures and 2 retry timers, success on attempt 3; gen 2 calls once more
    await engine.close()


async def test_retry_exhaustion_fails_the_orchestration() -> None:
    engine = build_engine(Fidelity(duplicate_activities=False))
    inst = engine.start("toy", "i2", json.dumps({"n": 1, "fail_times": 99}))
    await drive(engine, lambda: inst.custom_status is not None)
    engine.raise_event("i2", "Go", json.dumps("x"))
    await drive(engine, lambda: inst.status != "Running")
    assert inst.status == "Failed" and "transient" in str(inst.output)
    assert CALLS["flaky"] == 3
    await engine.close()


async def test_timeout_branch_and_event_buffering() -> None:
    engine = build_engine()
    inst = engine.start("toy", "i3", json.dumps({}))
    await drive(engine, lambda: inst.status == "Completed")
    assert inst.output == {"result": "timeout", "first": 2}
    # An event raised before the orchestrator waits for it is buffered, as in DTFx, once the
    # instance's ExecutionStarted has been processed (before that, it may be lost: see
    # test_durable_fidelity.test_event_raised_before_execution_started_is_discarded).
    inst4 = engine.start("toy", "i4", json.dumps({}))
    await engine.idle()
    engine.raise_event("i4", "Go", json.dumps("early"))
    await drive(engine, lambda: inst4.status == "Completed")
    assert inst4.output["result"] == "early"
    await engine.close()


async def test_start_refused_while_running_allowed_after() -> None:
    from devhost.durable import AlreadyExists

    engine = build_engine()
    inst = engine.start("toy", "i5", None)
    with pytest.raises(AlreadyExists):
        engine.start("toy", "i5", None)
    await drive(engine, lambda: inst.status == "Completed")
    again = engine.start("toy", "i5", json.dumps({"n": 4}))
    await drive(engine, lambda: again.status == "Completed")
    assert again.output["first"] == 8
    await engine.close()


async def test_non_determinism_fails_loudly() -> None:
    engine = build_engine()
    failures = 0
    for i in range(12):
        inst = engine.start("nondeterministic", f"nd{i}", None)
        await drive(engine, lambda inst=inst: inst.status != "Running")
        if inst.status == "Failed":
            assert "Non-Deterministic" in inst.output
            failures += 1
    assert failures > 0  # a random choice differs on replay about half the time
    await engine.close()
