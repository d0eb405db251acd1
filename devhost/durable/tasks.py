"""An orchestration's open tasks: the actions an episode schedules, activities (run at least once,
retried as DTFx retries them) and durable timers on the engine's clock. A finished task lands in the
instance's inbox and kicks the instance, so its next episode replays it."""

from __future__ import annotations

import asyncio
import inspect
import json
import traceback
from collections.abc import Callable
from typing import Any

from devhost.clock import Clock
from devhost.durable.fidelity import Fidelity
from devhost.durable.history import (
    CALL_ACTIVITY,
    CALL_ACTIVITY_WITH_RETRY,
    CONTINUE_AS_NEW,
    CREATE_TIMER,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_SCHEDULED,
    TIMER_CREATED,
    TIMER_FIRED,
    WAIT_FOR_EVENT,
    event,
    iso,
    parse_iso,
)
from devhost.durable.instance import ACTIVE, Instance

ActivityFn = Callable[[Any], Any]


def continue_trace(trace_parent: str | None) -> None:
    """What the Python worker does before each invocation with PYTHON_ENABLE_OPENTELEMETRY on
    (`azure_functions_worker/otel.py` `configure_opentelemetry`): attach the host's trace context to
    this task's context, so the function's spans join the trace. Each activity runs in its own task."""
    if not trace_parent:
        return
    from opentelemetry import context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context.attach(TraceContextTextMapPropagator().extract({"traceparent": trace_parent}))


class Tasks:
    """Runs the tasks an orchestrator schedules; `kick` hands a finished one back to the engine."""

    def __init__(self, clock: Clock, activities: dict[str, ActivityFn], fidelity: Fidelity,
                 activity_runs: dict[str, int], kick: Callable[[Instance], None]) -> None:
        self.clock = clock
        self.activities = activities
        self.fidelity = fidelity
        self.activity_runs = activity_runs  # executions per activity name, duplicates included
        self.kick = kick  # save the instance and queue its next episode
        self.running: set[asyncio.Task[Any]] = set()  # activities in flight

    def schedule(self, inst: Instance, action: dict[str, Any]) -> int | None:
        kind = action.get("actionType")
        if kind in (CALL_ACTIVITY, CALL_ACTIVITY_WITH_RETRY):
            seq = inst.next_seq
            inst.next_seq += 1
            name = action["functionName"]
            inst.history.append(event(self.clock, TASK_SCHEDULED, seq, Name=name, Input=action.get("input")))
            if kind == CALL_ACTIVITY_WITH_RETRY:
                inst.retries[seq] = {"name": name, "input": action.get("input"), "attempt": 1,
                                     "options": action.get("retryOptions") or {}}
            self.start_activity(inst, seq, name, action.get("input"))
            return seq
        if kind == CREATE_TIMER:
            seq = inst.next_seq
            inst.next_seq += 1
            fire_at = action["fireAt"]
            inst.history.append(event(self.clock, TIMER_CREATED, seq, FireAt=fire_at))
            inst.timer_meta[seq] = {"fireAt": fire_at, "retry": None}
            self.arm_timer(inst, seq)
            return seq
        if kind in (WAIT_FOR_EVENT, CONTINUE_AS_NEW):
            return None
        raise NotImplementedError(f"devhost durable stand-in does not support action type {kind}")

    def arm_timer(self, inst: Instance, seq: int) -> None:
        generation = inst.generation
        meta = inst.timer_meta[seq]
        fire_at = meta["fireAt"]
        when = parse_iso(fire_at)

        async def fire() -> None:
            await self.clock.sleep(when - self.clock.now())
            inst.timers.pop(seq, None)
            if inst.generation != generation or inst.status not in ACTIVE or seq not in inst.timer_meta:
                return
            inst.timer_meta.pop(seq, None)
            inst.inbox.append(event(self.clock, TIMER_FIRED, TimerId=seq, FireAt=fire_at))
            if meta.get("retry") is not None:
                self._reschedule(inst, meta["retry"])
            self.kick(inst)

        inst.timers[seq] = asyncio.get_running_loop().create_task(fire())

    def drop_timer(self, inst: Instance, seq: int) -> None:
        inst.timer_meta.pop(seq, None)
        task = inst.timers.pop(seq, None)
        if task is not None:
            task.cancel()

    def start_activity(self, inst: Instance, seq: int, name: str, input_json: str | None) -> None:
        inst.activities[seq] = {"name": name, "input": input_json}
        self.run_activity(inst, seq, name, input_json, copies=2 if self.fidelity.duplicate_activities else 1)

    def run_activity(self, inst: Instance, seq: int, name: str, input_json: str | None, copies: int) -> None:
        """Run an activity `copies` times (at-least-once); the first completion wins, as in DTFx, where a
        TaskCompleted for a task id already completed is dropped as a duplicate."""
        generation = inst.generation

        async def run() -> None:
            self.activity_runs[name] = self.activity_runs.get(name, 0) + 1
            continue_trace(inst.trace_parent)
            try:
                fn = self.activities[name]
                value = json.loads(input_json) if input_json else None
                result = fn(value)
                if inspect.isawaitable(result):
                    result = await result
                done = event(self.clock, TASK_COMPLETED, TaskScheduledId=seq, Result=json.dumps(result))
                failed = False
            except Exception as exc:
                done = event(self.clock, TASK_FAILED, TaskScheduledId=seq, Reason=f"{type(exc).__name__}: {exc}",
                             Details="".join(traceback.format_exception_only(exc)))
                failed = True
            if inst.generation != generation or inst.status not in ACTIVE or seq not in inst.activities:
                return  # a duplicate (or a late result for an old generation): ignored
            inst.activities.pop(seq, None)
            inst.inbox.append(done)
            retry = inst.retries.pop(seq, None)
            if failed and retry is not None:
                self._retry_after_failure(inst, retry)
            self.kick(inst)

        for _ in range(copies):
            task = asyncio.get_running_loop().create_task(run())
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    def _retry_after_failure(self, inst: Instance, retry: dict[str, Any]) -> None:
        """What DTFx does for CallActivityWithRetry, in the order the SDK's RetryAbleTask expects:
        a timer after every failure, then a new attempt while attempts remain."""
        opts = retry["options"]
        first = float(opts.get("firstRetryIntervalInMilliseconds", 1000)) / 1000
        coefficient = float(opts.get("backoffCoefficient", 1) or 1)
        cap = opts.get("maxRetryIntervalInMilliseconds")
        delay = first * coefficient ** (retry["attempt"] - 1)
        if cap:
            delay = min(delay, float(cap) / 1000)
        timer_seq = inst.next_seq
        inst.next_seq += 1
        when = self.clock.now() + delay
        inst.history.append(event(self.clock, TIMER_CREATED, timer_seq, FireAt=iso(when)))
        inst.timer_meta[timer_seq] = {"fireAt": iso(when), "retry": retry}
        self.arm_timer(inst, timer_seq)

    def _reschedule(self, inst: Instance, retry: dict[str, Any]) -> None:
        if retry["attempt"] >= int(retry["options"].get("maxNumberOfAttempts", 1)):
            return
        seq = inst.next_seq
        inst.next_seq += 1
        retry["attempt"] += 1
        inst.retries[seq] = retry
        inst.history.append(event(self.clock, TASK_SCHEDULED, seq, Name=retry["name"], Input=retry["input"]))
        self.start_activity(inst, seq, retry["name"], retry["input"])

    def cancel_timers(self, inst: Instance) -> None:
        for task in inst.timers.values():
            task.cancel()
        inst.timers.clear()
        inst.timer_meta.clear()

