"""Concurrency the Functions host and the Durable extension have in Azure, with real concurrency: a function
that waits on an event keeps its first invocation running while devhost starts the next one
(docs/fidelity.md, rows S15, T8, D21)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import azure.functions as func
import pytest

from devhost.clock import VirtualClock
from devhost.durable import DurableEngine, Fidelity, drive
from devhost.functions import FunctionEntry, index_app
from devhost.servicebus import LOCK_LOST, ServiceBusQueues, max_auto_lock_renewal
from devhost.timers import TimerScheduler

ROOT = Path(__file__).resolve().parents[2]
GATES: dict[int, asyncio.Event] = {}  # per delivery count (Service Bus) or per run (timer)
SEEN: list[Any] = []


async def until(condition: Callable[[], bool], turns: int = 500) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def fresh() -> None:
    GATES.clear()
    SEEN.clear()


def gate(key: int) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


# ---- Service Bus: the lock lapses while the function runs ------------------------------------------------
def queue_function() -> FunctionEntry:
    app = func.FunctionApp()

    @app.service_bus_queue_trigger(arg_name="msg", queue_name="q", connection="SB")
    async def slow(msg: func.ServiceBusMessage) -> None:
        SEEN.append((msg.delivery_count, msg.lock_token))
        await gate(msg.delivery_count or 0).wait()

    return index_app(app).entries["slow"]


def test_the_lock_renewal_limit_is_host_jsons() -> None:
    assert max_auto_lock_renewal(ROOT / "host.json") == 300  # "maxAutoLockRenewalDuration": "00:05:00"


async def test_a_message_is_delivered_again_while_its_first_invocation_still_runs() -> None:
    clock = VirtualClock()
    queues = ServiceBusQueues(clock, lambda: "", lock_renewal=max_auto_lock_renewal(ROOT / "host.json"))
    msg = queues.enqueue(b"{}", message_id="m-1")
    delivery = asyncio.ensure_future(queues.deliver(queue_function(), msg))
    await until(lambda: len(SEEN) == 1)
    clock.advance(299.9)
    await settle()
    assert len(SEEN) == 1  # the lock is still being renewed
    clock.advance(0.1)
    await until(lambda: len(SEEN) == 2)  # renewal stopped: the broker hands the message out again
    assert [count for count, _ in SEEN] == [1, 2] and SEEN[0][1] != SEEN[1][1]  # new lock token
    gate(2).set()  # the second invocation completes the message...
    await until(lambda: msg.settlement == "completed")
    assert not delivery.done()  # ...while the first one still runs
    gate(1).set()  # its Complete then fails: the lock is gone
    assert await delivery == "completed"
    assert msg.delivery_count == 2 and LOCK_LOST in msg.errors and queues.messages == []


async def test_a_message_whose_every_delivery_outlives_its_lock_is_dead_lettered() -> None:
    clock = VirtualClock()
    queues = ServiceBusQueues(clock, lambda: "", max_delivery_count=2, lock_renewal=300)
    msg = queues.enqueue(b"{}", message_id="m-2")
    delivery = asyncio.ensure_future(queues.deliver(queue_function(), msg))
    await until(lambda: len(SEEN) == 1)
    clock.advance(300)
    await until(lambda: len(SEEN) == 2)
    clock.advance(300)
    await until(lambda: msg.settlement == "deadLettered")
    assert msg.dead_letter_reason == "MaxDeliveryCountExceeded"  # although no invocation failed
    gate(1).set()
    gate(2).set()
    assert await delivery == "deadLettered"
    assert len(SEEN) == 2


# ---- Timer: another instance runs the same occurrence while the first run goes on --------------------------
def timer_functions() -> list[FunctionEntry]:
    app = func.FunctionApp()

    @app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer")
    async def sweep(timer: func.TimerRequest) -> None:
        SEEN.append(timer.past_due)
        await gate(len(SEEN)).wait()

    return index_app(app).of_type("timerTrigger")


async def test_a_run_that_outlives_its_lease_is_run_again_while_it_goes_on(tmp_path: Path) -> None:
    clock = VirtualClock()  # 2026-01-01T00:00:00Z
    timers = TimerScheduler(clock, timer_functions(), tmp_path / "timers.json", overlap_after=60)
    timers.start()
    try:
        await settle()
        clock.advance(300)  # 00:05: the occurrence
        await until(lambda: SEEN == [False])
        clock.advance(59)
        await settle()
        assert SEEN == [False]
        clock.advance(1)  # the lease lapsed: the next holder finds 00:05 past due and runs it again
        await until(lambda: SEEN == [False, True])
        first, second = timers.runs
        assert first.scheduled == second.scheduled and second.lease_lost and not first.finished
        gate(2).set()
        await until(lambda: second.finished)
        await settle()
        assert not first.finished  # the first run still goes on, and the schedule with it
        clock.advance(240)  # 00:10
        await until(lambda: len(SEEN) == 3)
        assert not first.finished
    finally:
        for run in (1, 2, 3):
            gate(run).set()
        await timers.close()


async def test_without_the_switch_runs_never_overlap_on_one_host(tmp_path: Path) -> None:
    clock = VirtualClock()
    timers = TimerScheduler(clock, timer_functions(), tmp_path / "timers.json")
    timers.start()
    try:
        await settle()
        clock.advance(300)
        await until(lambda: SEEN == [False])
        clock.advance(600)  # two more occurrences pass while it runs
        await settle()
        assert SEEN == [False]
    finally:
        gate(1).set()
        await timers.close()


# ---- Durable: an activity runs again minutes after the orchestration took its result ---------------------
bp = df.Blueprint()


@bp.orchestration_trigger(context_name="context")  # type: ignore[untyped-decorator]
def once(context: df.DurableOrchestrationContext) -> Any:
    first = yield context.call_activity("record", "a")
    return {"first": first}


@bp.activity_trigger(input_name="value")  # type: ignore[untyped-decorator]
def record(value: str) -> int:
    SEEN.append(value)
    return len(SEEN)


async def test_a_completed_activity_runs_again_later_and_its_result_is_dropped() -> None:
    app = df.DFApp()
    app.register_functions(bp)
    index = index_app(app)
    clock = VirtualClock()
    fidelity = Fidelity(duplicate_activities=False, late_activities=True)
    engine = DurableEngine(clock, {e.name: e.user for e in index.of_type("orchestrationTrigger")},
                           {e.name: e.user for e in index.of_type("activityTrigger")}, fidelity=fidelity)
    engine.start_worker()
    try:
        inst = engine.start("once", "i-1", json.dumps(None))
        await drive(engine, lambda: inst.status == "Completed")
        assert inst.output == {"first": 1} and SEEN == ["a"] and engine.late_runs == []
        clock.advance(fidelity.late_activity_seconds)  # the work item's visibility timeout
        await settle()
        await engine.idle()
        assert SEEN == ["a", "a"] and engine.late_runs == [("i-1", "record", 0)]  # its side effects happen
        assert inst.status == "Completed" and inst.output == {"first": 1}  # its result is dropped
    finally:
        await engine.close()


def test_late_activities_are_opt_in() -> None:
    assert Fidelity().late_activities is False and "late_activities" in Fidelity.opt_in()
    assert "late_activities" not in Fidelity.switches()
