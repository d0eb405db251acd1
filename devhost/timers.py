"""Timer triggers on devhost's clock (virtual in tests, real otherwise).

As the Functions timer extension (`TimerListener`) does it:
- the schedule is NCRONTAB with six fields, seconds first, evaluated in UTC;
- one invocation at a time per function on one host: the next occurrence is computed after the
  invocation returns, so a slow run delays the next one rather than overlapping it;
- across hosts runs can overlap (`overlap_after`, off by default): the listener's singleton lease
  (60 s) can be lost while a run goes on, and the instance that takes it over finds the occurrence
  past due (its status is written only after a run) and runs it again, `IsPastDue` true, while the
  first run continues; its schedule then goes on without waiting for that first run;
- the schedule status (Last, Next, LastUpdated) is kept in the state directory (Azure keeps it in
  the storage account); at start-up, when the recorded Next has passed, the function runs at once
  with `IsPastDue` true (the schedule monitor), and also whenever an occurrence is found late;
- `run_on_startup` runs it once at start.

The function receives a real `azure.functions.TimerRequest`, decoded by the library's
`TimerRequestConverter` from the JSON the host sends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.functions.meta import Datum
from croniter import croniter

from devhost import bindings
from devhost.clock import Clock
from devhost.functions import FunctionEntry

log = logging.getLogger("devhost.timers")


def next_occurrence(schedule: str, after: datetime) -> datetime:
    """The first occurrence strictly after `after` (NCRONTAB: seconds are the first field)."""
    it = croniter(schedule, after.astimezone(UTC), second_at_beginning=True)
    nxt: datetime = it.get_next(datetime)
    return nxt.astimezone(UTC)


def validate(schedule: str) -> None:
    if len(schedule.split()) != 6 or not croniter.is_valid(schedule, second_at_beginning=True):
        raise ValueError(f"{schedule!r} is not a six-field NCRONTAB expression (seconds first)")


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


@dataclass
class Run:
    function: str
    scheduled: str
    started: str
    past_due: bool
    error: str | None = None
    lease_lost: bool = False  # started by the instance that took over the lease while another run went on
    finished: bool = False


@dataclass
class TimerScheduler:
    clock: Clock
    entries: list[FunctionEntry]
    state_file: Path
    client_binding: Any = None  # () -> str, for timer functions that also take a durable client
    overlap_after: float | None = None  # seconds a run may go on before its lease is lost (None: never)
    runs: list[Run] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _inflight: set[asyncio.Future[Any]] = field(default_factory=set)  # invocations running, for idle()

    def start(self) -> None:
        for entry in self.entries:
            assert entry.schedule is not None
            validate(entry.schedule)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop(e)) for e in self.entries]

    async def close(self) -> None:
        running = [*self._tasks, *self._inflight]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._tasks = []

    async def idle(self) -> None:
        """Wait until no timer function is running (for virtual-clock drivers, before moving time on)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    # ---- schedule status, as the extension's ScheduleMonitor keeps it ------------------------
    def _statuses(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {}
        doc: dict[str, Any] = json.loads(self.state_file.read_text())
        return doc

    def status(self, name: str) -> dict[str, str] | None:
        found: dict[str, str] | None = self._statuses().get(name)
        return found

    def _save(self, name: str, status: dict[str, str]) -> None:
        doc = self._statuses()
        doc[name] = status
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(doc, indent=1))

    # ---- the listener ------------------------------------------------------------------------
    async def _loop(self, entry: FunctionEntry) -> None:
        assert entry.schedule is not None
        status = self.status(entry.name)
        now = self.clock.utcnow()
        if status is not None and datetime.fromisoformat(status["Next"]) < now:
            await self._fire(entry, datetime.fromisoformat(status["Next"]), past_due=True)
        elif entry.run_on_startup:
            await self._fire(entry, now, past_due=False)
        while True:
            now = self.clock.utcnow()
            due = next_occurrence(entry.schedule, now)
            self._save(entry.name, {**(self.status(entry.name) or {}), "Next": _iso(due),
                                    "LastUpdated": _iso(now)})
            await self.clock.sleep((due - self.clock.utcnow()).total_seconds())
            late = next_occurrence(entry.schedule, due) <= self.clock.utcnow()
            await self._fire(entry, due, past_due=late)

    async def _fire(self, entry: FunctionEntry, scheduled: datetime, *, past_due: bool) -> None:
        """Run one occurrence. With `overlap_after`, a run still going when the lease lapses is run again as past
        due by the lease's next holder, and the schedule goes on once that second run ends."""
        invocation = self._start(entry, scheduled, past_due=past_due, lease_lost=False)
        if self.overlap_after is None:
            await asyncio.wait({invocation})
            return
        lapse = asyncio.ensure_future(self.clock.sleep(self.overlap_after))
        try:
            done, _ = await asyncio.wait({invocation, lapse}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lapse.cancel()
        if invocation not in done:
            log.warning("timer %s: lease lost while the %s run goes on; another instance runs it again, past due",
                        entry.name, _iso(scheduled))
            await asyncio.wait({self._start(entry, scheduled, past_due=True, lease_lost=True)})

    def _start(self, entry: FunctionEntry, scheduled: datetime, *, past_due: bool,
               lease_lost: bool) -> asyncio.Future[Any]:
        status = self.status(entry.name)
        now = self.clock.utcnow()
        info = {
            "Schedule": {"AdjustForDST": True},
            "ScheduleStatus": None if status is None else {
                "Last": status.get("Last", _iso(datetime.min.replace(tzinfo=UTC))),
                "Next": status.get("Next"), "LastUpdated": status.get("LastUpdated")},
            "IsPastDue": past_due,
        }
        run = Run(entry.name, _iso(scheduled), _iso(now), past_due, lease_lost=lease_lost)
        self.runs.append(run)
        invocation = asyncio.ensure_future(self._invoke(entry, run, json.dumps(info), scheduled, now))
        self._inflight.add(invocation)
        invocation.add_done_callback(self._inflight.discard)
        return invocation

    async def _invoke(self, entry: FunctionEntry, run: Run, info: str, scheduled: datetime, now: datetime) -> None:
        assert entry.schedule is not None
        client = self.client_binding() if callable(self.client_binding) else None
        try:
            await entry.invoke(Datum(info, "json"), metadata={}, client_binding=client)
        except Exception as exc:  # a failed timer run is logged; the schedule goes on
            run.error = bindings.worker_message(exc)
            log.warning("timer %s failed: %s", entry.name, run.error)
        finally:
            run.finished = True
        self._save(entry.name, {"Last": _iso(scheduled), "Next": _iso(next_occurrence(entry.schedule, now)),
                                "LastUpdated": _iso(self.clock.utcnow())})
