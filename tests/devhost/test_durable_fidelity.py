"""The durable stand-in is at least as hostile as Azure (DESIGN.md, "The fidelity rule").

Each test drives small orchestrators through the SDK's own replay, and where the behaviour is
on the client side, through the real `DurableOrchestrationClient` (azure-functions-durable)
against the stand-in's HTTP API on loopback. Sources for each behaviour: research/engine-fidelity.md.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import azure.durable_functions as df
import pytest
from aiohttp import web

from devhost.clock import VirtualClock
from devhost.durable import (
    ALREADY_EXISTS_TYPE,
    TASK_COMPLETED,
    TIMER_CREATED,
    WHEN_ALL,
    WHEN_ANY,
    DurableEngine,
    Fidelity,
    drive,
)
from devhost.functions import index_app
from devhost.host import reset_durable_session
from devhost.serving import Served, serve
from shared.adapters.durable_payload import decode

bp = df.Blueprint()
RUNS: dict[str, int] = {}


@bp.orchestration_trigger(context_name="context")
def echo(context: df.DurableOrchestrationContext) -> Any:
    """Reports the Python types the orchestrator is handed."""
    inp = context.get_input()
    value = yield context.wait_for_external_event("E")
    return {"inputType": type(inp).__name__, "input": inp, "event": value, "eventType": type(value).__name__}


@bp.orchestration_trigger(context_name="context")
def fan(context: df.DurableOrchestrationContext) -> Any:
    both = yield context.task_all([context.call_activity("count", 1), context.call_activity("count", 2)])
    timer = context.create_timer(context.current_utc_datetime + timedelta(seconds=60))
    event = context.wait_for_external_event("E")
    winner = yield context.task_any([event, timer])
    if winner == event:
        timer.cancel()
    return {"both": both, "winner": "event" if winner == event else "timer"}


@bp.orchestration_trigger(context_name="context")
def long_sleep(context: df.DurableOrchestrationContext) -> Any:
    yield context.create_timer(context.current_utc_datetime + timedelta(days=10))
    return "woke"


@bp.orchestration_trigger(context_name="context")
def timeout_wait(context: df.DurableOrchestrationContext) -> Any:
    """The documented timeout pattern: wait for an event or a timer, cancel the timer if the event won."""
    timer = context.create_timer(context.current_utc_datetime + timedelta(hours=1))
    event = context.wait_for_external_event("E")
    winner = yield context.task_any([event, timer])
    if winner == event:
        timer.cancel()
        return "event"
    return "timeout"


@bp.orchestration_trigger(context_name="context")
def generations(context: df.DurableOrchestrationContext) -> Any:
    gen = (context.get_input() or {}).get("gen", 0)
    if gen == 0:
        yield context.create_timer(context.current_utc_datetime + timedelta(seconds=10))
        context.continue_as_new({"gen": 1})
        return None
    timer = context.create_timer(context.current_utc_datetime + timedelta(seconds=30))
    event = context.wait_for_external_event("X")
    winner = yield context.task_any([event, timer])
    return "event" if winner == event else "timeout"


@bp.orchestration_trigger(context_name="context")
def generations_pending(context: df.DurableOrchestrationContext) -> Any:
    """Generation 0 continues as new while a 60 s timer it raced is still pending."""
    gen = (context.get_input() or {}).get("gen", 0)
    if gen == 0:
        now = context.current_utc_datetime
        yield context.task_any([context.create_timer(now + timedelta(seconds=10)),
                                context.create_timer(now + timedelta(seconds=60))])
        context.continue_as_new({"gen": 1})
        return None
    timer = context.create_timer(context.current_utc_datetime + timedelta(seconds=300))
    event = context.wait_for_external_event("X")
    winner = yield context.task_any([event, timer])
    return "event" if winner == event else "timeout"


@bp.orchestration_trigger(context_name="context")
def one_activity(context: df.DurableOrchestrationContext) -> Any:
    return (yield context.call_activity("count", 7))


@bp.orchestration_trigger(context_name="context")
def two_waits(context: df.DurableOrchestrationContext) -> Any:
    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=10))
    first = yield context.wait_for_external_event("E")
    second = yield context.wait_for_external_event("E")
    return [first, second]


@bp.orchestration_trigger(context_name="context")
def short_wait(context: df.DurableOrchestrationContext) -> Any:
    timer = context.create_timer(context.current_utc_datetime + timedelta(seconds=30))
    event = context.wait_for_external_event("E")
    winner = yield context.task_any([event, timer])
    return "event" if winner == event else "timeout"


@bp.activity_trigger(input_name="n")
def count(n: int) -> int:
    RUNS["count"] = RUNS.get("count", 0) + 1
    return n * 10


def build_engine(fidelity: Fidelity | None = None) -> DurableEngine:
    app = df.DFApp()
    app.register_functions(bp)
    index = index_app(app)
    engine = DurableEngine(VirtualClock(), {e.name: e.user for e in index.of_type("orchestrationTrigger")},
                           {e.name: e.user for e in index.of_type("activityTrigger")}, fidelity=fidelity)
    engine.start_worker()
    return engine


@dataclass
class Rig:
    engine: DurableEngine
    served: Served
    client: df.DurableOrchestrationClient

    @property
    def url(self) -> str:
        return self.served.url


@pytest.fixture
async def rig() -> AsyncIterator[Callable[..., Any]]:
    made: list[Rig] = []

    async def factory(fidelity: Fidelity | None = None) -> Rig:
        engine = build_engine(fidelity)
        app = web.Application()
        app.add_routes(engine.routes())
        served = await serve(app)
        client = df.DurableOrchestrationClient(engine.binding(served.url))
        made.append(Rig(engine, served, client))
        return made[-1]

    await reset_durable_session()
    RUNS.clear()
    yield factory
    await reset_durable_session()
    for r in made:
        await r.engine.close()
        await r.served.close()


# ---- 1. payload typing ----------------------------------------------------------------------

async def test_payloads_are_stringly_typed_as_azure_delivers_them(rig: Callable[..., Any]) -> None:
    r: Rig = await rig()
    iid = await r.client.start_new("echo", "p1", {"a": 1})
    await r.engine.idle()
    await r.client.raise_event(iid, "E", {"x": 1})
    await drive(r.engine, lambda: r.engine.instances[iid].status == "Completed")
    status = await r.client.get_status(iid, show_input=True)
    out = status.output
    # The orchestration input is a dict to the orchestrator ...
    assert out["inputType"] == "dict" and out["input"] == {"a": 1}
    # ... but the raised event arrives as the JSON text of the value, and the status input too.
    assert out["eventType"] == "str" and json.loads(out["event"]) == {"x": 1}
    assert isinstance(status.input_, str) and json.loads(status.input_) == {"a": 1}
    assert decode(out["event"]) == {"x": 1} and decode(status.input_) == {"a": 1}


async def test_a_raised_string_arrives_quoted(rig: Callable[..., Any]) -> None:
    r: Rig = await rig()
    iid = await r.client.start_new("echo", "p2", None)
    await r.engine.idle()
    await r.client.raise_event(iid, "E", "green")
    await drive(r.engine, lambda: r.engine.instances[iid].status == "Completed")
    out = r.engine.instances[iid].output
    assert out["event"] == '"green"'  # azure-functions-durable-python#295
    assert decode(out["event"]) == "green"
    assert decode("123") == "123" and decode('"123"') == "123"  # a string that looks like JSON stays one


async def test_kind_switch_strips_the_extra_layer(rig: Callable[..., Any]) -> None:
    r: Rig = await rig(Fidelity(stringly_typed=False))
    iid = await r.client.start_new("echo", "p3", {"a": 1})
    await r.engine.idle()
    await r.client.raise_event(iid, "E", {"x": 1})
    await drive(r.engine, lambda: r.engine.instances[iid].status == "Completed")
    status = await r.client.get_status(iid, show_input=True)
    assert status.output["event"] == {"x": 1} and status.input_ == {"a": 1}


# ---- 2. client error shapes -----------------------------------------------------------------

async def test_start_refused_while_active_is_a_500_with_the_extension_error_body(rig: Callable[..., Any]) -> None:
    r: Rig = await rig()
    await r.client.start_new("echo", "busy", None)
    await r.engine.idle()
    async with aiohttp.ClientSession() as http, http.post(
            f"{r.url}/durabletask/orchestrators/echo/busy", json=json.dumps(None)) as resp:
        assert resp.status == 500
        body = await resp.json()
    assert body["Message"] == "Something went wrong while processing your request"
    assert body["ExceptionType"] == ALREADY_EXISTS_TYPE
    assert body["ExceptionMessage"] == "An Orchestration instance with the status Running already exists."
    assert set(body) == {"Message", "ExceptionMessage", "ExceptionType", "StackTrace"}
    with pytest.raises(Exception) as raised:
        await r.client.start_new("echo", "busy", None)
    assert type(raised.value) is Exception  # a bare Exception carrying the body dict
    assert raised.value.args[0]["ExceptionType"] == ALREADY_EXISTS_TYPE


async def test_raise_event_404_missing_410_terminal(rig: Callable[..., Any]) -> None:
    r: Rig = await rig()
    with pytest.raises(Exception, match="No instance with ID nope found"):
        await r.client.raise_event("nope", "E", {})
    iid = await r.client.start_new("echo", "done", None)
    await r.engine.idle()
    await r.client.raise_event(iid, "E", 1)
    await drive(r.engine, lambda: r.engine.instances[iid].status == "Completed")
    with pytest.raises(Exception, match="is gone"):
        await r.client.raise_event(iid, "E", {})


# ---- 3. replay schema: compound actions and long timers --------------------------------------

async def test_schema_v3_compound_actions_schedule_every_leaf() -> None:
    engine = build_engine()
    seen: list[dict[str, Any]] = []
    inner = engine.orchestrators["fan"]

    def spy(context_json: str) -> str:
        out = inner(context_json)
        seen.append(json.loads(out))
        return out

    engine.orchestrators["fan"] = spy
    inst = engine.start("fan", "f1", None)
    await drive(engine, lambda: inst.status == "Running" and RUNS.get("count", 0) >= 2)
    await drive(engine, lambda: any(a.get("actionType") == WHEN_ANY for s in seen for a in s["actions"][0]))
    kinds = [a["actionType"] for a in seen[-1]["actions"][0]]
    assert kinds == [WHEN_ALL, WHEN_ANY]
    assert [len(a["compoundActions"]) for a in seen[-1]["actions"][0]] == [2, 2]
    assert seen[-1]["schemaVersion"] == 2  # ReplaySchema.V3
    engine.raise_event("f1", "E", json.dumps("go"))
    await drive(engine, lambda: inst.status == "Completed")
    assert inst.output == {"both": [10, 20], "winner": "event"}
    await engine.close()


async def test_long_timers_are_split_into_three_day_intervals() -> None:
    engine = build_engine()
    inst = engine.start("long_sleep", "l1", None)
    await drive(engine, lambda: inst.status == "Completed", max_virtual_seconds=11 * 86400)
    fire = [e["FireAt"] for e in inst.history if e["EventType"] == TIMER_CREATED]
    # LongTimerTask: 3-day steps while more than 6 days remain, then the rest (3 + 3 + 4 days).
    assert fire == ["2026-01-04T00:00:00.000000Z", "2026-01-07T00:00:00.000000Z", "2026-01-11T00:00:00.000000Z"]
    assert engine.clock.now() - inst.created == 10 * 86400 and inst.output == "woke"
    await engine.close()

    kind = build_engine(Fidelity(long_timers=False))
    inst = kind.start("long_sleep", "l2", None)
    await drive(kind, lambda: inst.status == "Completed", max_virtual_seconds=11 * 86400)
    assert len([e for e in inst.history if e["EventType"] == TIMER_CREATED]) == 1
    await kind.close()


# ---- 4. pending timers keep an instance running ----------------------------------------------

async def test_a_cancelled_timer_still_keeps_the_instance_running_until_it_fires() -> None:
    engine = build_engine()
    inst = engine.start("timeout_wait", "t1", None)
    await engine.idle()
    engine.raise_event("t1", "E", json.dumps(1))
    await engine.idle()
    assert inst.status == "Running"  # the orchestrator returned "event", yet the instance runs on
    assert engine.instances["t1"].timer_meta  # the hour-long timer is still pending
    await drive(engine, lambda: inst.status == "Completed")
    assert inst.output == "event"
    assert engine.clock.now() - inst.created == pytest.approx(3600)
    await engine.close()


async def test_honoured_cancel_completes_at_once() -> None:
    engine = build_engine(Fidelity(honour_timer_cancel=True))
    inst = engine.start("timeout_wait", "t2", None)
    await engine.idle()
    engine.raise_event("t2", "E", json.dumps(1))
    await engine.idle()
    assert inst.status == "Completed" and inst.output == "event"
    assert engine.clock.now() == inst.created
    await engine.close()


# ---- 5. continue_as_new drops events not yet processed ---------------------------------------

async def test_continue_as_new_discards_unprocessed_events() -> None:
    engine = build_engine()
    inst = engine.start("generations", "g1", json.dumps({"gen": 0}))
    await engine.idle()
    assert engine.raise_event("g1", "X", json.dumps("early")) == 202  # generation 0 never waits for X
    await drive(engine, lambda: inst.status == "Completed")
    assert inst.executions == 2 and inst.output == "timeout"
    await engine.close()


async def test_events_raised_while_continue_as_new_waits_on_a_timer_are_lost() -> None:
    """continue_as_new, like completion, waits for open tasks; an event raised in that gap is handed
    to the old execution, which never reads it, and is gone with its history."""
    for fidelity, expected in ((Fidelity(), "timeout"), (Fidelity(wait_for_open_tasks=False), "event")):
        engine = build_engine(fidelity)
        inst = engine.start("generations_pending", "g2", json.dumps({"gen": 0}))
        await drive(engine, lambda e=engine, i=inst: e.clock.now() - i.created >= 10)
        engine.clock.advance(10)  # t = 20 s: generation 0 has called continue_as_new
        await engine.idle()
        engine.raise_event("g2", "X", json.dumps("in the gap"))
        await drive(engine, lambda i=inst: i.status == "Completed")
        assert inst.output == expected, fidelity
        await engine.close()


# ---- 6. at-least-once ------------------------------------------------------------------------

async def test_activities_run_twice_and_the_second_completion_is_ignored() -> None:
    engine = build_engine()
    RUNS.clear()
    inst = engine.start("one_activity", "a1", None)
    await drive(engine, lambda: inst.status == "Completed")
    assert RUNS["count"] == 2 and engine.activity_runs["count"] == 2
    assert len([e for e in inst.history if e["EventType"] == TASK_COMPLETED]) == 1
    assert inst.output == 70
    await engine.close()

    kind = build_engine(Fidelity(duplicate_activities=False))
    RUNS.clear()
    inst = kind.start("one_activity", "a2", None)
    await drive(kind, lambda: inst.status == "Completed")
    assert RUNS["count"] == 1
    await kind.close()


async def test_raised_events_are_delivered_twice() -> None:
    engine = build_engine()
    inst = engine.start("two_waits", "e1", None)
    await engine.idle()
    engine.raise_event("e1", "E", json.dumps("once"))
    await drive(engine, lambda: inst.status == "Completed")
    assert len([e for e in inst.history if e.get("Name") == "E"]) == 2  # one raise, two deliveries
    assert inst.output == ["once", "once"]
    await engine.close()


async def test_event_raised_before_execution_started_is_discarded() -> None:
    engine = build_engine()
    inst = engine.start("short_wait", "d1", None)
    assert engine.raise_event("d1", "E", json.dumps(1)) == 202  # accepted ...
    await drive(engine, lambda: inst.status == "Completed")
    assert inst.output == "timeout" and engine.discarded_events == [("d1", "E")]  # ... and lost
    await engine.close()

    kind = build_engine(Fidelity(drop_events_before_start=False))
    inst = kind.start("short_wait", "d2", None)
    kind.raise_event("d2", "E", json.dumps(1))
    await drive(kind, lambda: inst.status == "Completed")
    assert inst.output == "event"
    await kind.close()


async def test_an_early_event_satisfies_every_later_wait_for_its_name() -> None:
    """azure-functions-durable-python#507: the SDK keeps an unclaimed event in `deferred_tasks` and
    never removes it, so each later wait_for_external_event of that name resolves with it."""
    engine = build_engine(Fidelity(duplicate_events=False))
    inst = engine.start("two_waits", "w1", None)
    await engine.idle()
    engine.raise_event("w1", "E", json.dumps("early"))  # raised while the orchestrator sleeps
    await drive(engine, lambda: inst.status == "Completed")
    assert inst.output == ["early", "early"]
    assert len([e for e in inst.history if e.get("Name") == "E"]) == 1  # a single delivery
    await engine.close()


# ---- 7. non-atomic start_new -----------------------------------------------------------------

async def test_two_racing_starts_both_succeed_and_one_is_silently_discarded(rig: Callable[..., Any]) -> None:
    r: Rig = await rig(Fidelity(start_race_delay=0.05))
    a, b = await asyncio.gather(r.client.start_new("echo", "race", {"who": "a"}),
                                r.client.start_new("echo", "race", {"who": "b"}))
    assert a == b == "race"  # both callers were told "started"
    assert r.engine.discarded_starts == ["race"]
    status = await r.client.get_status("race", show_input=True)
    assert decode(status.input_) in ({"who": "a"}, {"who": "b"})  # only one of the two inputs survives


async def test_atomic_start_refuses_the_second(rig: Callable[..., Any]) -> None:
    r: Rig = await rig(Fidelity(racy_start=False))
    results = await asyncio.gather(r.client.start_new("echo", "race2", {"who": "a"}),
                                   r.client.start_new("echo", "race2", {"who": "b"}), return_exceptions=True)
    assert sorted(type(x).__name__ for x in results) == ["Exception", "str"]
