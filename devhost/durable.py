"""Durable Functions extension stand-in: the client HTTP API plus a replay engine.

Orchestrators run through the SDK's own replay (`handle(context_json)` on a history), exactly
as the Functions host drives them; activities run in-process. Timers use the given clock
(real for `python -m devhost`, virtual in tests). A replayed action that differs from the
recorded one fails the instance loudly (non-determinism).

The fidelity rule: this stand-in is at least as hostile as Azure (Durable extension 2.x on
the Azure Storage backend). Each hostile behaviour is a switch on `Fidelity`, ON by default;
`docs/fidelity.md` / research/engine-fidelity.md give the source of each one:
- payloads are stringly typed as the extension delivers them (raised events and the status
  `input` arrive as JSON strings);
- a start refused because the instance is active answers 500 with the extension's error body;
- the existence check and the write of a start are not atomic (two racing starts both get 202,
  one is silently discarded);
- a timer still pending when the orchestrator returns keeps the instance Running until it
  fires, and a Python `timer.cancel()` is not honoured;
- activities and raised events are delivered at least once (duplicates injected), an event
  raised before ExecutionStarted was processed is discarded, and `continue_as_new` drops
  events not yet processed;
- with a `state_dir`, the task hub survives a crash: a new engine on the same directory resumes
  every in-flight orchestration (timers re-armed, unfinished activities re-run).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import os
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from azure.durable_functions.models.actions.ActionType import ActionType
from azure.durable_functions.models.history.HistoryEventType import HistoryEventType

from devhost.clock import Clock

log = logging.getLogger("devhost.durable")

OrchestratorFn = Callable[[str], str]
ActivityFn = Callable[[Any], Any]

# Numbers from the SDK's own enums, so they cannot drift from what its replay expects
# (EventRaised is 15; 14 is EventSent).
EXECUTION_STARTED = int(HistoryEventType.EXECUTION_STARTED)
EXECUTION_COMPLETED = int(HistoryEventType.EXECUTION_COMPLETED)
TASK_SCHEDULED = int(HistoryEventType.TASK_SCHEDULED)
TASK_COMPLETED = int(HistoryEventType.TASK_COMPLETED)
TASK_FAILED = int(HistoryEventType.TASK_FAILED)
TIMER_CREATED = int(HistoryEventType.TIMER_CREATED)
TIMER_FIRED = int(HistoryEventType.TIMER_FIRED)
ORCHESTRATOR_STARTED = int(HistoryEventType.ORCHESTRATOR_STARTED)
ORCHESTRATOR_COMPLETED = int(HistoryEventType.ORCHESTRATOR_COMPLETED)
EVENT_RAISED = int(HistoryEventType.EVENT_RAISED)
CALL_ACTIVITY = int(ActionType.CALL_ACTIVITY)
CALL_ACTIVITY_WITH_RETRY = int(ActionType.CALL_ACTIVITY_WITH_RETRY)
CONTINUE_AS_NEW = int(ActionType.CONTINUE_AS_NEW)
CREATE_TIMER = int(ActionType.CREATE_TIMER)
WAIT_FOR_EVENT = int(ActionType.WAIT_FOR_EXTERNAL_EVENT)
WHEN_ANY = int(ActionType.WHEN_ANY)
WHEN_ALL = int(ActionType.WHEN_ALL)
ACTIVE = ("Pending", "Running")

# What the extension puts in the orchestrator's context (OrchestrationTriggerAttributeBindingProvider.cs
# OrchestrationContextToString): SchemaVersion.V2 and .V3 are the enum values 1 and 2
# (OutOfProcOrchestrationShim.cs), serialised as numbers; the timer limits are the Azure Storage
# provider's MaximumDelayTime (6 days) and LongRunningTimerIntervalLength (3 days), as TimeSpans.
UPPER_SCHEMA_VERSION = 1
UPPER_SCHEMA_VERSION_NEW = 2
MAXIMUM_SHORT_TIMER_DURATION = "6.00:00:00"
LONG_RUNNING_TIMER_INTERVAL = "3.00:00:00"

# The body HttpApiHandler.HandleRequestAsync's catch-all produces (CreateErrorResponse with the exception).
ALREADY_EXISTS_TYPE = "DurableTask.Core.Exceptions.OrchestrationAlreadyExistsException"
GENERIC_ERROR = "Something went wrong while processing your request"


@dataclass
class Fidelity:
    """How hostile the stand-in is. Every switch defaults to the Azure (or the more dangerous) behaviour.

    Tests that need a kinder engine turn one switch off by name, and say why.
    """

    stringly_typed: bool = True            # raised events / status input arrive as JSON strings, as in Azure
    racy_start: bool = True                # start_new: existence check and write are not atomic
    start_race_delay: float = 0.0          # seconds (real, not virtual) between the check and the write
    wait_for_open_tasks: bool = True       # a pending timer/activity keeps a returned orchestration Running
    honour_timer_cancel: bool = False      # the dangerous reading of durable-extension#2104
    duplicate_activities: bool = True      # every activity runs twice; the second completion is ignored
    duplicate_events: bool = True          # every raised event is delivered twice
    drop_events_before_start: bool = True  # an event raised while ExecutionStarted is unprocessed is lost
    long_timers: bool = True               # send the timer limits, so long timers become LongTimerTasks

    @classmethod
    def kind(cls) -> Fidelity:
        """Every hostile switch off (typing stays as Azure's): for unit-style tests of the engine itself."""
        return cls(racy_start=False, wait_for_open_tasks=False, honour_timer_cancel=True,
                   duplicate_activities=False, duplicate_events=False, drop_events_before_start=False)

    @classmethod
    def switches(cls) -> list[str]:
        """The names `without` accepts: every boolean switch."""
        return [f.name for f in fields(cls) if f.type in ("bool", bool)]

    @classmethod
    def without(cls, *names: str) -> Fidelity:
        """Hostile, except the named behaviours, each set to its kind value (as in `kind()`)."""
        kind, fidelity = cls.kind(), cls()
        for name in names:
            if name not in cls.switches():
                raise ValueError(f"unknown durable fidelity switch {name!r}; known: {', '.join(cls.switches())}")
            setattr(fidelity, name, getattr(kind, name) if name != "stringly_typed" else False)
        return fidelity


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def continue_trace(trace_parent: str | None) -> None:
    """What the Python worker does before each invocation with PYTHON_ENABLE_OPENTELEMETRY on
    (`azure_functions_worker/otel.py` `configure_opentelemetry`): attach the host's trace context to
    this task's context, so the function's spans join the trace. Each activity runs in its own task."""
    if not trace_parent:
        return
    from opentelemetry import context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context.attach(TraceContextTextMapPropagator().extract({"traceparent": trace_parent}))


class AlreadyExists(Exception):
    pass


@dataclass
class Instance:
    id: str
    name: str
    # JSON text of the value the orchestrator's get_input() returns.
    input: str | None
    created: float
    last_updated: float
    status: str = "Pending"
    history: list[dict[str, Any]] = field(default_factory=list)
    inbox: list[dict[str, Any]] = field(default_factory=list)
    custom_status: Any = None
    output: Any = None
    next_seq: int = 0
    recorded: list[tuple[Any, ...]] = field(default_factory=list)
    action_seq: list[int | None] = field(default_factory=list)
    generation: int = 0
    executions: int = 1
    # True when the extension stores the input as a JSON *string* (what the Python SDK's client and
    # continue_as_new produce): the status endpoint then answers `input` as that string.
    input_is_string: bool = False
    # Persisted task-hub state: pending timers (seq -> {"fireAt", "retry"}), activities scheduled and
    # not yet completed (seq -> {"name", "input"}), retry bookkeeping (seq -> retry state).
    timer_meta: dict[int, dict[str, Any]] = field(default_factory=dict)
    activities: dict[int, dict[str, Any]] = field(default_factory=dict)
    retries: dict[int, dict[str, Any]] = field(default_factory=dict)
    # The W3C traceparent the client started it with (the durable SDK sends the caller's): activities
    # run inside that trace, as the extension's distributed tracing V2 and the worker arrange in Azure.
    trace_parent: str | None = None
    # Runtime only.
    timers: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    released: bool = False  # ended, and its replay state dropped from memory (the task-hub file keeps it)

    def status_input(self) -> Any:
        if self.input is None:
            return None
        return self.input if self.input_is_string else json.loads(self.input)

    def public(self, show_input: bool = True, show_history: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name, "instanceId": self.id, "runtimeStatus": self.status,
            "customStatus": self.custom_status, "output": self.output,
            "createdTime": _iso(self.created), "lastUpdatedTime": _iso(self.last_updated),
            "input": self.status_input() if show_input else None,
        }
        if show_history:
            doc["historyEvents"] = self.history
        return doc

    # ---- persistence ----------------------------------------------------------------------
    _RUNTIME_ONLY = ("timers", "released")

    def to_doc(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._RUNTIME_ONLY}
        doc["recorded"] = [list(r) for r in self.recorded]
        for key in ("timer_meta", "activities", "retries"):
            doc[key] = {str(k): v for k, v in doc[key].items()}
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Instance:
        known = {f.name for f in fields(cls)} - set(cls._RUNTIME_ONLY)
        inst = cls(**{k: v for k, v in doc.items() if k in known})
        inst.recorded = [tuple(r) for r in inst.recorded]
        inst.timer_meta = {int(k): v for k, v in inst.timer_meta.items()}
        inst.activities = {int(k): v for k, v in inst.activities.items()}
        inst.retries = {int(k): v for k, v in inst.retries.items()}
        return inst


def _leaves(actions: list[Any]) -> Iterator[dict[str, Any]]:
    """Flatten the SDK's action payload: V1 nests lists, V2/V3 nest WhenAny/WhenAll compound actions.

    DTFx numbers the leaves in this order (the extension's InvokeAPIFromAction recurses into
    compoundActions), as does the SDK's `_add_to_open_tasks`.
    """
    for action in actions:
        if isinstance(action, list):
            yield from _leaves(action)
        elif action.get("actionType") in (WHEN_ANY, WHEN_ALL):
            yield from _leaves(action.get("compoundActions") or [])
        else:
            yield action


class DurableEngine:
    def __init__(self, clock: Clock, orchestrators: dict[str, OrchestratorFn],
                 activities: dict[str, ActivityFn], task_hub: str = "reimager", *,
                 fidelity: Fidelity | None = None, state_dir: Path | str | None = None) -> None:
        self.clock = clock
        self.orchestrators = orchestrators
        self.activities = activities
        self.task_hub = task_hub
        self.fidelity = fidelity or Fidelity()
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.instances: dict[str, Instance] = {}
        self.listeners: list[Callable[[Instance], None]] = []
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._busy = 0
        self._running: set[asyncio.Task[Any]] = set()
        self._worker: asyncio.Task[None] | None = None
        self.raise_event_failures = 0  # fault injection: fail the next N raiseEvent calls (a crashed caller)
        self.activity_runs: dict[str, int] = {}  # executions per activity name, duplicates included
        self.discarded_starts: list[str] = []  # instance ids whose start lost a race (answered 202, dropped)
        self.discarded_events: list[tuple[str, str]] = []  # (instance id, event name) lost before start
        if self.state_dir is not None:
            self._load()

    # ---- lifecycle ------------------------------------------------------------------------
    def start_worker(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())
            self._resume()

    async def close(self) -> None:
        tasks = list(self._running) + [t for i in self.instances.values() for t in i.timers.values()]
        if self._worker is not None:
            tasks.append(self._worker)
            self._worker = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for inst in self.instances.values():
            inst.timers.clear()

    async def idle(self) -> None:
        """Wait until no episode is queued or running and no activity is in flight."""
        while True:
            for _ in range(5):
                await asyncio.sleep(0)
            if self._queue.empty() and self._busy == 0 and not self._running:
                return
            if self._running:
                await asyncio.wait(set(self._running), timeout=5)
            else:
                await asyncio.sleep(0.001)

    # ---- task hub on disk -----------------------------------------------------------------
    def _path(self, instance_id: str) -> Path:
        assert self.state_dir is not None
        digest = hashlib.sha256(instance_id.encode()).hexdigest()[:32]
        return self.state_dir / "instances" / f"{digest}.json"

    def _save(self, inst: Instance) -> None:
        """Write one instance atomically (temp file + os.replace), as a Storage write either lands or not."""
        if self.state_dir is None or self.instances.get(inst.id) is not inst or inst.released:
            return
        path = self._path(inst.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(inst.to_doc(), default=str))
        os.replace(tmp, path)

    def _load(self) -> None:
        assert self.state_dir is not None
        folder = self.state_dir / "instances"
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.json")):
            try:
                inst = Instance.from_doc(json.loads(path.read_text()))
            except (ValueError, TypeError, KeyError):
                log.exception("unreadable task-hub file %s", path)
                continue
            self.instances[inst.id] = inst
            if inst.status not in ACTIVE:
                self._release(inst)

    def _resume(self) -> None:
        """After a restart: re-arm every pending timer, re-run unfinished activities, process queued events."""
        for inst in self.instances.values():
            if inst.status not in ACTIVE:
                continue
            for seq in inst.timer_meta:
                if seq not in inst.timers:
                    self._arm_timer(inst, seq)
            for seq, work in inst.activities.items():
                self._run_activity(inst, seq, work["name"], work.get("input"), copies=1)
            if inst.inbox:
                self._kick(inst)

    # ---- client operations ----------------------------------------------------------------
    def start(self, name: str, instance_id: str | None, input_json: str | None,
              input_is_string: bool = False) -> Instance:
        """Start atomically (the engine API for tests); the HTTP path uses the racy `start_async`."""
        iid = self._check_start(name, instance_id)
        return self._create(name, iid, input_json, input_is_string)

    async def start_async(self, name: str, instance_id: str | None, input_json: str | None,
                          input_is_string: bool = False) -> Instance:
        """What DTFx AzureStorageOrchestrationService.CreateTaskOrchestrationAsync does: read the instance
        row, then (later) enqueue the start and insert the row. Two racing starts can both pass the read;
        the second insert conflicts, is ignored (AzureTableTrackingStore.SetNewExecutionAsync), and its
        start message is discarded by the runtime de-dupe, while both callers were answered 202."""
        iid = self._check_start(name, instance_id)
        if not self.fidelity.racy_start:
            return self._create(name, iid, input_json, input_is_string)
        seen = self.instances.get(iid)
        if self.fidelity.start_race_delay > 0:
            await asyncio.sleep(self.fidelity.start_race_delay)
        else:
            await asyncio.sleep(0)
        if self.instances.get(iid) is not seen:
            self.discarded_starts.append(iid)
            log.warning("start of %s lost a race: answered 202, silently discarded", iid)
            now = self.clock.now()
            return Instance(iid, name, input_json, now, now, input_is_string=input_is_string)
        return self._create(name, iid, input_json, input_is_string)

    def _check_start(self, name: str, instance_id: str | None) -> str:
        if name not in self.orchestrators:
            raise KeyError(name)
        iid = instance_id or uuid.uuid4().hex
        existing = self.instances.get(iid)
        if existing is not None and existing.status in ACTIVE:
            raise AlreadyExists(f"An Orchestration instance with the status {existing.status} already exists.")
        return iid

    def _create(self, name: str, iid: str, input_json: str | None, input_is_string: bool) -> Instance:
        existing = self.instances.get(iid)
        if existing is not None:
            self._cancel_timers(existing)
        now = self.clock.now()
        inst = Instance(iid, name, input_json, now, now, input_is_string=input_is_string)
        self.instances[iid] = inst
        inst.inbox.append(self._event(EXECUTION_STARTED, Name=name, Input=input_json, Version=""))
        self._kick(inst)
        return inst

    def raise_event(self, instance_id: str, name: str, data_json: str | None) -> int:
        """`data_json` is the EventRaised Input exactly as it lands in history."""
        inst = self.instances.get(instance_id)
        if inst is None:
            return 404
        if inst.status not in ACTIVE:
            return 410
        if self.fidelity.drop_events_before_start and not inst.history:
            # DTFx AzureStorageOrchestrationService.IsExecutableInstanceAsync: a batch without
            # ExecutionStarted for an instance with no history is discarded. Accepted, then lost.
            self.discarded_events.append((instance_id, name))
            log.warning("event %s to %s raised before ExecutionStarted was processed: discarded", name, instance_id)
            return 202
        copies = 2 if self.fidelity.duplicate_events else 1
        for _ in range(copies):
            inst.inbox.append(self._event(EVENT_RAISED, Name=name, Input=data_json))
        self._kick(inst)
        return 202

    def terminate(self, instance_id: str, reason: str) -> int:
        inst = self.instances.get(instance_id)
        if inst is None:
            return 404
        if inst.status not in ACTIVE:
            return 410
        self._finish(inst, "Terminated", reason)
        return 202

    # ---- the episode loop -----------------------------------------------------------------
    def _event(self, event_type: int, event_id: int = -1, **extra: Any) -> dict[str, Any]:
        return {"EventType": event_type, "EventId": event_id, "IsPlayed": False,
                "Timestamp": _iso(self.clock.now()), **extra}

    def _kick(self, inst: Instance) -> None:
        self._save(inst)
        if inst.id not in self._queued:
            self._queued.add(inst.id)
            self._queue.put_nowait(inst.id)

    async def _work(self) -> None:
        while True:
            iid = await self._queue.get()
            self._queued.discard(iid)
            self._busy += 1
            try:
                inst = self.instances.get(iid)
                if inst is not None and inst.inbox and inst.status in ACTIVE:
                    self._episode(inst)
            except Exception:  # the engine must survive anything an orchestrator does
                log.exception("episode failed for %s", iid)
            finally:
                self._busy -= 1

    def _context(self, inst: Instance, history: list[dict[str, Any]]) -> dict[str, Any]:
        context: dict[str, Any] = {
            "history": history, "instanceId": inst.id, "isReplaying": False, "parentInstanceId": None,
            "input": inst.input, "upperSchemaVersion": UPPER_SCHEMA_VERSION,
            "upperSchemaVersionNew": UPPER_SCHEMA_VERSION_NEW,
        }
        if self.fidelity.long_timers:
            context["maximumShortTimerDuration"] = MAXIMUM_SHORT_TIMER_DURATION
            context["longRunningTimerIntervalDuration"] = LONG_RUNNING_TIMER_INTERVAL
        return context

    def _episode(self, inst: Instance) -> None:
        new = [self._event(ORCHESTRATOR_STARTED), *inst.inbox]
        inst.inbox = []
        old = [{**e, "IsPlayed": True} for e in inst.history]
        history = old + new
        inst.status = "Running"
        error: str | None = None
        try:
            state = json.loads(self.orchestrators[inst.name](json.dumps(self._context(inst, history))))
        except Exception as exc:  # the SDK raises with the state appended after a marker
            text = str(exc)
            marker = "\n\n$OutOfProcData$:"
            error, _, rest = text.partition(marker)
            try:
                state = json.loads(rest) if rest else {"actions": []}
            except ValueError:
                state = {"actions": []}
        inst.history = history
        actions = list(_leaves(state.get("actions", [])))
        mismatch = self._check_determinism(inst, actions)
        if mismatch:
            inst.custom_status = state.get("customStatus", inst.custom_status)
            self._finish(inst, "Failed", f"Non-Deterministic workflow detected: {mismatch}")
            return
        for index, action in enumerate(actions):
            if index < len(inst.recorded):
                seq = inst.action_seq[index]
                if (action.get("actionType") == CREATE_TIMER and action.get("isCanceled") and seq is not None
                        and self.fidelity.honour_timer_cancel):
                    # OutOfProcOrchestrationShim.InvokeAPIFromAction cancels the token; DTFx then drops
                    # the timer from its open tasks (TaskOrchestrationContext.CreateTimer).
                    self._drop_timer(inst, seq)
                continue
            inst.recorded.append(self._signature(action))
            inst.action_seq.append(self._schedule(inst, action))
            if (action.get("actionType") == CREATE_TIMER and action.get("isCanceled")
                    and self.fidelity.honour_timer_cancel and inst.action_seq[-1] is not None):
                self._drop_timer(inst, inst.action_seq[-1])  # created and cancelled in the same episode
        inst.history.append(self._event(ORCHESTRATOR_COMPLETED))
        if "customStatus" in state:
            inst.custom_status = state["customStatus"]
        inst.last_updated = self.clock.now()
        continuation = next((a for a in actions if a.get("actionType") == CONTINUE_AS_NEW), None)
        done = error is not None or bool(state.get("isDone"))
        if done and self.fidelity.wait_for_open_tasks and (inst.timer_meta or inst.activities):
            # DTFx TaskOrchestrationExecutor: `if (!this.context.HasOpenTasks)` guards completion,
            # failure and continue-as-new alike. The instance stays Running; the next TimerFired /
            # TaskCompleted replays it and it completes then.
            self._save(inst)
            self._notify(inst)
            return
        if error is not None:
            self._finish(inst, "Failed", error)
        elif continuation is not None and state.get("isDone"):
            self._continue_as_new(inst, continuation.get("input"))
        elif state.get("isDone"):
            self._finish(inst, "Completed", state.get("output"))
        self._save(inst)
        self._notify(inst)

    @staticmethod
    def _signature(action: dict[str, Any]) -> tuple[Any, ...]:
        kind = action.get("actionType")
        name = action.get("functionName") or action.get("externalEventName")
        return (kind, name, action.get("fireAt") if kind == CREATE_TIMER else None)

    def _check_determinism(self, inst: Instance, actions: list[dict[str, Any]]) -> str | None:
        for index, recorded in enumerate(inst.recorded):
            if index >= len(actions):
                return None  # the orchestrator has not replayed that far (it awaits an earlier task)
            got = self._signature(actions[index])
            if got != recorded:
                return f"action #{index} was {recorded}, replay produced {got}"
        return None

    def _schedule(self, inst: Instance, action: dict[str, Any]) -> int | None:
        kind = action.get("actionType")
        if kind in (CALL_ACTIVITY, CALL_ACTIVITY_WITH_RETRY):
            seq = inst.next_seq
            inst.next_seq += 1
            name = action["functionName"]
            inst.history.append(self._event(TASK_SCHEDULED, seq, Name=name, Input=action.get("input")))
            if kind == CALL_ACTIVITY_WITH_RETRY:
                inst.retries[seq] = {"name": name, "input": action.get("input"), "attempt": 1,
                                     "options": action.get("retryOptions") or {}}
            self._start_activity(inst, seq, name, action.get("input"))
            return seq
        if kind == CREATE_TIMER:
            seq = inst.next_seq
            inst.next_seq += 1
            fire_at = action["fireAt"]
            inst.history.append(self._event(TIMER_CREATED, seq, FireAt=fire_at))
            inst.timer_meta[seq] = {"fireAt": fire_at, "retry": None}
            self._arm_timer(inst, seq)
            return seq
        if kind in (WAIT_FOR_EVENT, CONTINUE_AS_NEW):
            return None
        raise NotImplementedError(f"devhost durable stand-in does not support action type {kind}")

    def _arm_timer(self, inst: Instance, seq: int) -> None:
        generation = inst.generation
        meta = inst.timer_meta[seq]
        fire_at = meta["fireAt"]
        when = _parse_iso(fire_at)

        async def fire() -> None:
            await self.clock.sleep(when - self.clock.now())
            inst.timers.pop(seq, None)
            if inst.generation != generation or inst.status not in ACTIVE or seq not in inst.timer_meta:
                return
            inst.timer_meta.pop(seq, None)
            inst.inbox.append(self._event(TIMER_FIRED, TimerId=seq, FireAt=fire_at))
            if meta.get("retry") is not None:
                self._reschedule(inst, meta["retry"])
            self._kick(inst)

        inst.timers[seq] = asyncio.get_running_loop().create_task(fire())

    def _drop_timer(self, inst: Instance, seq: int) -> None:
        inst.timer_meta.pop(seq, None)
        task = inst.timers.pop(seq, None)
        if task is not None:
            task.cancel()

    def _start_activity(self, inst: Instance, seq: int, name: str, input_json: str | None) -> None:
        inst.activities[seq] = {"name": name, "input": input_json}
        self._run_activity(inst, seq, name, input_json, copies=2 if self.fidelity.duplicate_activities else 1)

    def _run_activity(self, inst: Instance, seq: int, name: str, input_json: str | None, copies: int) -> None:
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
                event = self._event(TASK_COMPLETED, TaskScheduledId=seq, Result=json.dumps(result))
                failed = False
            except Exception as exc:
                event = self._event(TASK_FAILED, TaskScheduledId=seq, Reason=f"{type(exc).__name__}: {exc}",
                                    Details="".join(traceback.format_exception_only(exc)))
                failed = True
            if inst.generation != generation or inst.status not in ACTIVE or seq not in inst.activities:
                return  # a duplicate (or a late result for an old generation): ignored
            inst.activities.pop(seq, None)
            inst.inbox.append(event)
            retry = inst.retries.pop(seq, None)
            if failed and retry is not None:
                self._retry_after_failure(inst, retry)
            self._kick(inst)

        for _ in range(copies):
            task = asyncio.get_running_loop().create_task(run())
            self._running.add(task)
            task.add_done_callback(self._running.discard)

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
        inst.history.append(self._event(TIMER_CREATED, timer_seq, FireAt=_iso(when)))
        inst.timer_meta[timer_seq] = {"fireAt": _iso(when), "retry": retry}
        self._arm_timer(inst, timer_seq)

    def _reschedule(self, inst: Instance, retry: dict[str, Any]) -> None:
        if retry["attempt"] >= int(retry["options"].get("maxNumberOfAttempts", 1)):
            return
        seq = inst.next_seq
        inst.next_seq += 1
        retry["attempt"] += 1
        inst.retries[seq] = retry
        inst.history.append(self._event(TASK_SCHEDULED, seq, Name=retry["name"], Input=retry["input"]))
        self._start_activity(inst, seq, retry["name"], retry["input"])

    def _continue_as_new(self, inst: Instance, input_json: str | None) -> None:
        """A new execution with only ExecutionStarted: events raised to the old one and not consumed are gone
        (the Python SDK has no preserveUnprocessedEvents; .NET's defaults to false)."""
        self._cancel_timers(inst)
        inst.generation += 1
        inst.executions += 1
        inst.input = input_json
        # ContinueAsNew(action.Input): the SDK's input is a JSON text, a JValue string to the extension.
        inst.input_is_string = self.fidelity.stringly_typed and input_json is not None
        inst.history, inst.recorded, inst.action_seq, inst.retries = [], [], [], {}
        inst.activities = {}
        inst.next_seq = 0
        if inst.inbox:
            log.info("continue_as_new on %s discards %d unprocessed event(s)", inst.id, len(inst.inbox))
        inst.inbox = [self._event(EXECUTION_STARTED, Name=inst.name, Input=input_json, Version="")]
        self._kick(inst)

    def _finish(self, inst: Instance, status: str, output: Any) -> None:
        self._cancel_timers(inst)
        inst.activities = {}
        inst.generation += 1
        inst.status = status
        inst.output = output
        inst.last_updated = self.clock.now()
        inst.history.append(self._event(EXECUTION_COMPLETED, OrchestrationStatus=status))
        self._save(inst)
        self._notify(inst)
        self._release(inst)

    def _release(self, inst: Instance) -> None:
        """An ended instance keeps only what a status query answers in memory; its history and replay state
        stay in its task-hub file (as Azure keeps them in Storage, not in the worker), read back on demand.
        Without a state directory there is nowhere else to keep them."""
        if self.state_dir is None:
            return
        inst.history, inst.inbox, inst.recorded, inst.action_seq = [], [], [], []
        inst.retries, inst.timer_meta, inst.activities = {}, {}, {}
        inst.released = True

    def history_of(self, inst: Instance) -> list[dict[str, Any]]:
        """The instance's history, from its task-hub file once the instance was released."""
        if not inst.released:
            return inst.history
        doc = json.loads(self._path(inst.id).read_text())
        return list(doc.get("history") or [])

    def _cancel_timers(self, inst: Instance) -> None:
        for task in inst.timers.values():
            task.cancel()
        inst.timers.clear()
        inst.timer_meta.clear()

    def _notify(self, inst: Instance) -> None:
        for listener in self.listeners:
            listener(inst)

    # ---- storage view (for secret scans and debugging) ------------------------------------
    def dump(self) -> str:
        """Everything the durable store holds, as the real extension would persist it."""
        return json.dumps([{**i.public(show_input=True), "historyEvents": self.history_of(i), "inbox": i.inbox}
                           for i in self.instances.values()], default=str)

    # ---- HTTP API (what DurableOrchestrationClient calls under rpcBaseUrl) -----------------
    def binding(self, base_url: str) -> str:
        """The durableClient binding value the host hands to a function."""
        rpc = f"{base_url}/durabletask/"
        mgmt = f"{rpc}instances/INSTANCEID"
        return json.dumps({
            "taskHubName": self.task_hub,
            "creationUrls": {"createNewInstancePostUri": f"{rpc}orchestrators/{{functionName}}[/{{instanceId}}]"},
            "managementUrls": {"id": "INSTANCEID", "statusQueryGetUri": mgmt,
                               "sendEventPostUri": f"{mgmt}/raiseEvent/{{eventName}}",
                               "terminatePostUri": f"{mgmt}/terminate?reason={{text}}",
                               "purgeHistoryDeleteUri": mgmt},
            "rpcBaseUrl": rpc,
            "baseUrl": f"{base_url}/runtime/webhooks/durabletask",
            "requiredQueryStringParameters": "",
        })

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/durabletask/orchestrators/{name}", self._http_start),
            web.post("/durabletask/orchestrators/{name}/{instance_id}", self._http_start),
            web.get("/durabletask/instances/{instance_id}", self._http_status),
            web.post("/durabletask/instances/{instance_id}/raiseEvent/{event}", self._http_raise),
            web.post("/durabletask/instances/{instance_id}/terminate", self._http_terminate),
        ]

    @staticmethod
    def _error(status: int, message: str, exc_type: str, exc_message: str) -> web.Response:
        """HttpRequestMessageExtensions.CreateErrorResponse(request, status, message, e)."""
        return web.json_response({"Message": message, "ExceptionMessage": exc_message, "ExceptionType": exc_type,
                                  "StackTrace": f"   at {exc_type} (devhost durable stand-in)"}, status=status)

    async def _body(self, request: web.Request) -> tuple[str | None, bool]:
        """The body as the extension keeps it: (JSON text, is it a JSON string).

        The Python SDK JSON-encodes the value itself and posts that text with `json=`, so the body
        is the value encoded twice. The extension parses the body once (JsonConvert / ConvertToJToken)
        and stores the result re-serialised: a JSON *string* holding the caller's JSON. With
        `stringly_typed` off, one more layer is stripped (the kind, non-Azure reading).
        """
        raw = await request.read()
        if not raw:
            return None, False
        outer = json.loads(raw)
        if outer is None:
            return None, False
        if isinstance(outer, str) and not self.fidelity.stringly_typed:
            return outer, False
        return json.dumps(outer), isinstance(outer, str)

    async def _http_start(self, request: web.Request) -> web.Response:
        name, iid = request.match_info["name"], request.match_info.get("instance_id")
        try:
            text, is_string = await self._body(request)
        except ValueError as exc:  # the one exception HandleStartOrchestratorRequestAsync catches
            return self._error(400, "Invalid JSON content", "Newtonsoft.Json.JsonReaderException", str(exc))
        try:
            if is_string:  # the value the orchestrator's context carries is the inner JSON text
                inst = await self.start_async(name, iid, json.loads(text or "null"), input_is_string=True)
            else:
                inst = await self.start_async(name, iid, text)
        except KeyError:
            msg = f"The function '{name}' doesn't exist, is disabled, or is not an orchestrator function."
            return self._error(400, "One or more of the arguments submitted is incorrect", "System.ArgumentException",
                               msg)
        except AlreadyExists as exc:
            # OrchestrationAlreadyExistsException is an InvalidOperationException, not caught by the
            # handler itself: HandleRequestAsync's catch-all answers 500.
            return self._error(500, GENERIC_ERROR, ALREADY_EXISTS_TYPE, str(exc))
        inst.trace_parent = request.headers.get("traceparent")
        base = f"{request.url.origin()}/durabletask/instances/{inst.id}"
        return web.json_response({"id": inst.id, "statusQueryGetUri": base,
                                  "sendEventPostUri": f"{base}/raiseEvent/{{eventName}}",
                                  "terminatePostUri": f"{base}/terminate?reason={{text}}",
                                  "purgeHistoryDeleteUri": base}, status=202, headers={"Location": base})

    async def _http_status(self, request: web.Request) -> web.Response:
        inst = self.instances.get(request.match_info["instance_id"])
        if inst is None:
            return web.json_response(None, status=404)
        show_input = request.query.get("showInput", "true").lower() != "false"
        show_history = request.query.get("showHistory", "false").lower() == "true"
        # HttpApiHandler.HandleGetStatusRequestAsync: 202 while active, 200 once ended (Failed too,
        # unless returnInternalServerErrorOnFailure).
        failed_500 = request.query.get("returnInternalServerErrorOnFailure", "").lower() == "true"
        status = 202 if inst.status in ACTIVE else (500 if inst.status == "Failed" and failed_500 else 200)
        doc = inst.public(show_input)
        if show_history:
            doc["historyEvents"] = self.history_of(inst)
        return web.json_response(doc, status=status)

    async def _http_raise(self, request: web.Request) -> web.Response:
        if self.raise_event_failures > 0:
            self.raise_event_failures -= 1
            return web.json_response({"Message": "injected failure"}, status=500)
        inst = self.instances.get(request.match_info["instance_id"])
        if inst is None:
            return web.Response(status=404)
        if inst.status not in ACTIVE:
            return web.Response(status=410)
        try:
            text, _ = await self._body(request)
        except ValueError as exc:
            return self._error(400, "Invalid JSON content", "Newtonsoft.Json.JsonReaderException", str(exc))
        code = self.raise_event(request.match_info["instance_id"], request.match_info["event"], text)
        return web.Response(status=code)

    async def _http_terminate(self, request: web.Request) -> web.Response:
        code = self.terminate(request.match_info["instance_id"], request.query.get("reason", ""))
        return web.Response(status=code)


async def drive(engine: DurableEngine, until: Callable[[], bool], *, max_virtual_seconds: float = 86400,
                step: Callable[[], Awaitable[None]] | None = None) -> None:
    """Virtual-clock driver for tests: run work to idle, then jump to the next timer, until `until()`."""
    from devhost.clock import VirtualClock

    clock = engine.clock
    assert isinstance(clock, VirtualClock)
    start = clock.now()
    while True:
        await engine.idle()
        if step is not None:
            await step()
            await engine.idle()
        if until():
            return
        deadline = clock.next_deadline()
        if deadline is None:
            raise TimeoutError("nothing left to run and the condition is not met")
        if deadline - start > max_virtual_seconds:
            raise TimeoutError(f"condition not met within {max_virtual_seconds} virtual seconds")
        clock.set(deadline)

