"""Durable Functions extension stand-in: the client HTTP API plus a replay engine.

Orchestrators run through the SDK's own replay (`handle(context_json)` on a history), exactly
as the Functions host drives them; activities run in-process. Timers use the given clock
(real for `python -m devhost`, virtual in tests). A replayed action that differs from the
recorded one fails the instance loudly (non-determinism).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
ACTIVE = ("Pending", "Running")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class AlreadyExists(Exception):
    pass


@dataclass
class Instance:
    id: str
    name: str
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
    timers: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    retries: dict[int, dict[str, Any]] = field(default_factory=dict)

    def public(self, show_input: bool = True, show_history: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name, "instanceId": self.id, "runtimeStatus": self.status,
            "customStatus": self.custom_status, "output": self.output,
            "createdTime": _iso(self.created), "lastUpdatedTime": _iso(self.last_updated),
            "input": json.loads(self.input) if (show_input and self.input is not None) else None,
        }
        if show_history:
            doc["historyEvents"] = self.history
        return doc


class DurableEngine:
    def __init__(self, clock: Clock, orchestrators: dict[str, OrchestratorFn],
                 activities: dict[str, ActivityFn], task_hub: str = "reimager") -> None:
        self.clock = clock
        self.orchestrators = orchestrators
        self.activities = activities
        self.task_hub = task_hub
        self.instances: dict[str, Instance] = {}
        self.listeners: list[Callable[[Instance], None]] = []
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._busy = 0
        self._running: set[asyncio.Task[Any]] = set()
        self._worker: asyncio.Task[None] | None = None
        self.raise_event_failures = 0  # fault injection: fail the next N raiseEvent calls (a crashed caller)

    # ---- lifecycle ------------------------------------------------------------------------
    def start_worker(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def close(self) -> None:
        tasks = list(self._running) + [t for i in self.instances.values() for t in i.timers.values()]
        if self._worker is not None:
            tasks.append(self._worker)
            self._worker = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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

    # ---- client operations ----------------------------------------------------------------
    def start(self, name: str, instance_id: str | None, input_json: str | None) -> Instance:
        if name not in self.orchestrators:
            raise KeyError(name)
        iid = instance_id or uuid.uuid4().hex
        existing = self.instances.get(iid)
        if existing is not None and existing.status in ACTIVE:
            raise AlreadyExists(f"An Orchestration instance with the status {existing.status} already exists.")
        if existing is not None:
            self._cancel_timers(existing)
        now = self.clock.now()
        inst = Instance(iid, name, input_json, now, now)
        self.instances[iid] = inst
        inst.inbox.append(self._event(EXECUTION_STARTED, Name=name, Input=input_json, Version=""))
        self._kick(inst)
        return inst

    def raise_event(self, instance_id: str, name: str, data_json: str | None) -> int:
        inst = self.instances.get(instance_id)
        if inst is None:
            return 404
        if inst.status not in ACTIVE:
            return 410
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
    def _event(self, event_type: int, event_id: int = -1, **fields: Any) -> dict[str, Any]:
        return {"EventType": event_type, "EventId": event_id, "IsPlayed": False,
                "Timestamp": _iso(self.clock.now()), **fields}

    def _kick(self, inst: Instance) -> None:
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

    def _episode(self, inst: Instance) -> None:
        new = [self._event(ORCHESTRATOR_STARTED), *inst.inbox]
        inst.inbox = []
        old = [{**e, "IsPlayed": True} for e in inst.history]
        history = old + new
        context = {"history": history, "instanceId": inst.id, "isReplaying": False, "parentInstanceId": None,
                   "input": inst.input, "upperSchemaVersion": 0}
        inst.status = "Running"
        error: str | None = None
        try:
            state = json.loads(self.orchestrators[inst.name](json.dumps(context)))
        except Exception as exc:  # the SDK raises with the state appended after a marker
            text = str(exc)
            marker = "\n\n$OutOfProcData$:"
            error, _, rest = text.partition(marker)
            try:
                state = json.loads(rest) if rest else {"actions": []}
            except ValueError:
                state = {"actions": []}
        inst.history = history
        actions = [a for group in state.get("actions", []) for a in (group if isinstance(group, list) else [group])]
        mismatch = self._check_determinism(inst, actions)
        if mismatch:
            inst.custom_status = state.get("customStatus", inst.custom_status)
            self._finish(inst, "Failed", f"Non-Deterministic workflow detected: {mismatch}")
            return
        for index, action in enumerate(actions):
            if index < len(inst.recorded):
                seq = inst.action_seq[index]
                if action.get("actionType") == CREATE_TIMER and action.get("isCanceled") and seq is not None:
                    task = inst.timers.pop(seq, None)
                    if task is not None:
                        task.cancel()
                continue
            inst.recorded.append(self._signature(action))
            inst.action_seq.append(self._schedule(inst, action))
        inst.history.append(self._event(ORCHESTRATOR_COMPLETED))
        if "customStatus" in state:
            inst.custom_status = state["customStatus"]
        inst.last_updated = self.clock.now()
        continuation = next((a for a in actions if a.get("actionType") == CONTINUE_AS_NEW), None)
        if error is not None:
            self._finish(inst, "Failed", error)
        elif continuation is not None and state.get("isDone"):
            self._continue_as_new(inst, continuation.get("input"))
        elif state.get("isDone"):
            self._finish(inst, "Completed", state.get("output"))
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
            self._run_activity(inst, seq, name, action.get("input"))
            return seq
        if kind == CREATE_TIMER:
            seq = inst.next_seq
            inst.next_seq += 1
            fire_at = action["fireAt"]
            inst.history.append(self._event(TIMER_CREATED, seq, FireAt=fire_at))
            self._start_timer(inst, seq, _parse_iso(fire_at), fire_at)
            return seq
        if kind in (WAIT_FOR_EVENT, CONTINUE_AS_NEW):
            return None
        raise NotImplementedError(f"devhost durable stand-in does not support action type {kind}")

    def _start_timer(self, inst: Instance, seq: int, when: float, fire_at: str,
                     then: Callable[[], None] | None = None) -> None:
        generation = inst.generation

        async def fire() -> None:
            await self.clock.sleep(when - self.clock.now())
            inst.timers.pop(seq, None)
            if inst.generation != generation or inst.status not in ACTIVE:
                return
            inst.inbox.append(self._event(TIMER_FIRED, TimerId=seq, FireAt=fire_at))
            if then is not None:
                then()
            self._kick(inst)

        inst.timers[seq] = asyncio.get_running_loop().create_task(fire())

    def _run_activity(self, inst: Instance, seq: int, name: str, input_json: str | None) -> None:
        generation = inst.generation

        async def run() -> None:
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
            if inst.generation != generation or inst.status not in ACTIVE:
                return
            inst.inbox.append(event)
            retry = inst.retries.pop(seq, None)
            if failed and retry is not None:
                self._retry_after_failure(inst, retry)
            self._kick(inst)

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

        def reschedule() -> None:
            if retry["attempt"] >= int(opts.get("maxNumberOfAttempts", 1)):
                return
            seq = inst.next_seq
            inst.next_seq += 1
            retry["attempt"] += 1
            inst.retries[seq] = retry
            inst.history.append(self._event(TASK_SCHEDULED, seq, Name=retry["name"], Input=retry["input"]))
            self._run_activity(inst, seq, retry["name"], retry["input"])

        self._start_timer(inst, timer_seq, when, _iso(when), then=reschedule)

    def _continue_as_new(self, inst: Instance, input_json: str | None) -> None:
        self._cancel_timers(inst)
        inst.generation += 1
        inst.executions += 1
        inst.input = input_json
        inst.history, inst.recorded, inst.action_seq, inst.retries = [], [], [], {}
        inst.next_seq = 0
        inst.inbox = [self._event(EXECUTION_STARTED, Name=inst.name, Input=input_json, Version=""), *inst.inbox]
        self._kick(inst)

    def _finish(self, inst: Instance, status: str, output: Any) -> None:
        self._cancel_timers(inst)
        inst.generation += 1
        inst.status = status
        inst.output = output
        inst.last_updated = self.clock.now()
        inst.history.append(self._event(EXECUTION_COMPLETED, OrchestrationStatus=status))
        self._notify(inst)

    def _cancel_timers(self, inst: Instance) -> None:
        for task in inst.timers.values():
            task.cancel()
        inst.timers.clear()

    def _notify(self, inst: Instance) -> None:
        for listener in self.listeners:
            listener(inst)

    # ---- storage view (for secret scans and debugging) ------------------------------------
    def dump(self) -> str:
        """Everything the durable store holds, as the real extension would persist it."""
        return json.dumps([{**i.public(show_input=True, show_history=True), "inbox": i.inbox}
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
    async def _json_text(request: web.Request) -> str | None:
        """Bodies arrive JSON-encoded twice: a JSON string whose content is the JSON value."""
        raw = await request.read()
        if not raw:
            return None
        outer = json.loads(raw)
        return outer if isinstance(outer, str) or outer is None else json.dumps(outer)

    async def _http_start(self, request: web.Request) -> web.Response:
        name, iid = request.match_info["name"], request.match_info.get("instance_id")
        try:
            inst = self.start(name, iid, await self._json_text(request))
        except KeyError:
            msg = f"The function '{name}' doesn't exist, is disabled, or is not an orchestrator function."
            return web.json_response({"Message": msg, "ExceptionMessage": msg}, status=400)
        except AlreadyExists as exc:
            return web.json_response({"Message": str(exc), "ExceptionMessage": str(exc)}, status=409)
        return web.json_response({"id": inst.id}, status=202)

    async def _http_status(self, request: web.Request) -> web.Response:
        inst = self.instances.get(request.match_info["instance_id"])
        if inst is None:
            return web.json_response(None, status=404)
        show_input = request.query.get("showInput", "true").lower() != "false"
        show_history = request.query.get("showHistory", "false").lower() == "true"
        status = {"Completed": 200, "Failed": 400, "Terminated": 400}.get(inst.status, 202)
        return web.json_response(inst.public(show_input, show_history), status=status)

    async def _http_raise(self, request: web.Request) -> web.Response:
        if self.raise_event_failures > 0:
            self.raise_event_failures -= 1
            return web.json_response({"Message": "injected failure"}, status=500)
        code = self.raise_event(request.match_info["instance_id"], request.match_info["event"],
                                await self._json_text(request))
        return web.json_response(None, status=code)

    async def _http_terminate(self, request: web.Request) -> web.Response:
        code = self.terminate(request.match_info["instance_id"], request.query.get("reason", ""))
        return web.json_response(None, status=code)


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
