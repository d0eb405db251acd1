"""The durable engine: instances and their episode loop. Client operations (start, raise an event,
terminate) put events in an instance's inbox and queue it; one worker runs each queued instance's next
episode (replay), schedules the actions it returns as tasks, and completes, fails or continues it as new.
Ended instances are released from memory (their task-hub file keeps them); `drive` runs it all on a
virtual clock for tests."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from devhost.clock import Clock
from devhost.durable.fidelity import Fidelity
from devhost.durable.history import (
    CONTINUE_AS_NEW,
    CREATE_TIMER,
    EVENT_RAISED,
    EXECUTION_COMPLETED,
    EXECUTION_STARTED,
    ORCHESTRATOR_COMPLETED,
    ORCHESTRATOR_STARTED,
    event,
)
from devhost.durable.http_api import HttpApi
from devhost.durable.instance import ACTIVE, AlreadyExists, Instance
from devhost.durable.persistence import TaskHub
from devhost.durable.replay import OrchestratorFn, mismatch, replay, signature
from devhost.durable.tasks import ActivityFn, Tasks

log = logging.getLogger("devhost.durable")


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
        self._worker: asyncio.Task[None] | None = None
        self.raise_event_failures = 0  # fault injection: fail the next N raiseEvent calls (a crashed caller)
        self.activity_runs: dict[str, int] = {}  # executions per activity name, duplicates included
        self.discarded_starts: list[str] = []  # instance ids whose start lost a race (answered 202, dropped)
        self.discarded_events: list[tuple[str, str]] = []  # (instance id, event name) lost before start
        self._tasks = Tasks(clock, activities, self.fidelity, self.activity_runs, self._kick)
        self._http = HttpApi(self)
        self._hub = TaskHub(self.state_dir) if self.state_dir is not None else None
        if self._hub is not None:
            self._load(self._hub)

    # ---- lifecycle ------------------------------------------------------------------------
    def start_worker(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())
            self._resume()

    async def close(self) -> None:
        tasks = list(self._tasks.running) + [t for i in self.instances.values() for t in i.timers.values()]
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
        running = self._tasks.running
        while True:
            for _ in range(5):
                await asyncio.sleep(0)
            if self._queue.empty() and self._busy == 0 and not running:
                return
            if running:
                await asyncio.wait(set(running), timeout=5)
            else:
                await asyncio.sleep(0.001)

    # ---- task hub on disk -----------------------------------------------------------------
    def _save(self, inst: Instance) -> None:
        if self._hub is None or self.instances.get(inst.id) is not inst or inst.released:
            return
        self._hub.write(inst)

    def _load(self, hub: TaskHub) -> None:
        for inst in hub.load():
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
                    self._tasks.arm_timer(inst, seq)
            for seq, work in inst.activities.items():
                self._tasks.run_activity(inst, seq, work["name"], work.get("input"), copies=1)
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
            self._tasks.cancel_timers(existing)
        now = self.clock.now()
        inst = Instance(iid, name, input_json, now, now, input_is_string=input_is_string)
        self.instances[iid] = inst
        inst.inbox.append(event(self.clock, EXECUTION_STARTED, Name=name, Input=input_json, Version=""))
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
            inst.inbox.append(event(self.clock, EVENT_RAISED, Name=name, Input=data_json))
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

    def _episode(self, inst: Instance) -> None:
        new = [event(self.clock, ORCHESTRATOR_STARTED), *inst.inbox]
        inst.inbox = []
        inst.status = "Running"
        episode = replay(self.orchestrators, inst, new, self.fidelity.long_timers)
        state, error, actions = episode.state, episode.error, episode.actions
        inst.history = episode.history
        different = mismatch(inst.recorded, actions)
        if different:
            inst.custom_status = state.get("customStatus", inst.custom_status)
            self._finish(inst, "Failed", f"Non-Deterministic workflow detected: {different}")
            return
        for index, action in enumerate(actions):
            if index < len(inst.recorded):
                seq = inst.action_seq[index]
                if (action.get("actionType") == CREATE_TIMER and action.get("isCanceled") and seq is not None
                        and self.fidelity.honour_timer_cancel):
                    # OutOfProcOrchestrationShim.InvokeAPIFromAction cancels the token; DTFx then drops
                    # the timer from its open tasks (TaskOrchestrationContext.CreateTimer).
                    self._tasks.drop_timer(inst, seq)
                continue
            inst.recorded.append(signature(action))
            inst.action_seq.append(self._tasks.schedule(inst, action))
            if (action.get("actionType") == CREATE_TIMER and action.get("isCanceled")
                    and self.fidelity.honour_timer_cancel and inst.action_seq[-1] is not None):
                self._tasks.drop_timer(inst, inst.action_seq[-1])  # created and cancelled in the same episode
        inst.history.append(event(self.clock, ORCHESTRATOR_COMPLETED))
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

    # ---- ending an execution --------------------------------------------------------------
    def _continue_as_new(self, inst: Instance, input_json: str | None) -> None:
        """A new execution with only ExecutionStarted: events raised to the old one and not consumed are gone
        (the Python SDK has no preserveUnprocessedEvents; .NET's defaults to false)."""
        self._tasks.cancel_timers(inst)
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
        inst.inbox = [event(self.clock, EXECUTION_STARTED, Name=inst.name, Input=input_json, Version="")]
        self._kick(inst)

    def _finish(self, inst: Instance, status: str, output: Any) -> None:
        self._tasks.cancel_timers(inst)
        inst.activities = {}
        inst.generation += 1
        inst.status = status
        inst.output = output
        inst.last_updated = self.clock.now()
        inst.history.append(event(self.clock, EXECUTION_COMPLETED, OrchestrationStatus=status))
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
        assert self._hub is not None
        return self._hub.history(inst.id)

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
        return self._http.binding(base_url)

    def routes(self) -> list[web.RouteDef]:
        return self._http.routes()


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

