"""Timer triggers run on their NCRONTAB schedule on devhost's (virtual) clock, with a TimerRequest built
by the library's TimerRequestConverter."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import azure.functions as func
import pytest

from devhost.clock import VirtualClock
from devhost.functions import FunctionIndex, index_app
from devhost.timers import TimerScheduler, next_occurrence, validate
from tests.integration.conftest import Host

RUNS: list[tuple[datetime, func.TimerRequest]] = []
CLOCK: list[VirtualClock] = []


def build_index() -> FunctionIndex:
    app = func.FunctionApp()

    @app.timer_trigger(schedule="*/30 * * * * *", arg_name="timer")
    async def sweep(timer: func.TimerRequest) -> None:
        RUNS.append((CLOCK[0].utcnow(), timer))

    @app.timer_trigger(schedule="0 0 * * * *", arg_name="timer")
    async def broken(timer: func.TimerRequest) -> None:
        raise RuntimeError("boom")

    @app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer")
    async def slow(timer: func.TimerRequest) -> None:
        for _ in range(200):  # stays in flight across many loop turns
            await asyncio.sleep(0)
        RUNS.append((CLOCK[0].utcnow(), timer))

    return index_app(app)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def advance_to(clock: VirtualClock, until: float) -> None:
    """Jump from deadline to deadline, letting each run finish, as devhost's drive() does."""
    while True:
        await settle()
        deadline = clock.next_deadline()
        if deadline is None or deadline > until:
            clock.set(until)
            await settle()
            return
        clock.set(deadline)


@pytest.fixture
def clock() -> VirtualClock:
    RUNS.clear()
    CLOCK[:] = [VirtualClock()]  # starts 2026-01-01T00:00:00Z
    return CLOCK[0]


def test_ncrontab_has_seconds_first() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert next_occurrence("*/30 * * * * *", start) == datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    assert next_occurrence("0 */5 * * * *", start) == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    with pytest.raises(ValueError):
        validate("*/5 * * * *")  # five fields: not NCRONTAB


async def test_runs_on_schedule_under_the_virtual_clock(clock: VirtualClock, tmp_path: Path) -> None:
    index = build_index()
    sched = TimerScheduler(clock, index.of_type("timerTrigger"), tmp_path / "timers.json")
    sched.start()
    try:
        await advance_to(clock, clock.now() + 95)
        times = [t.strftime("%H:%M:%S") for t, _ in RUNS]
        assert times == ["00:00:30", "00:01:00", "00:01:30"]
        assert all(isinstance(r, func.TimerRequest) and not r.past_due for _, r in RUNS)
        assert RUNS[0][1].schedule == {"AdjustForDST": True}
        assert RUNS[1][1].schedule_status["Last"].startswith("2026-01-01T00:00:30")
        await advance_to(clock, clock.now() + 3600)
        broken = [r for r in sched.runs if r.function == "broken"]
        assert [r.error for r in broken] == ["RuntimeError: boom"]  # logged; the schedule goes on
    finally:
        await sched.close()


async def test_a_missed_occurrence_runs_at_start_as_past_due(clock: VirtualClock, tmp_path: Path) -> None:
    state = tmp_path / "timers.json"
    sweep = [e for e in build_index().of_type("timerTrigger") if e.name == "sweep"]
    first = TimerScheduler(clock, sweep, state)
    first.start()
    await advance_to(clock, clock.now() + 31)
    await first.close()  # devhost stops; the recorded Next passes while it is down
    clock.advance(600)
    RUNS.clear()
    second = TimerScheduler(clock, sweep, state)
    second.start()
    try:
        await settle()
        assert [r.past_due for _, r in RUNS] == [True]
        await advance_to(clock, clock.now() + 30)
        assert [r.past_due for _, r in RUNS] == [True, False]
    finally:
        await second.close()


async def test_devhost_runs_timer_functions_on_its_clock(host: Host) -> None:
    assert isinstance(host.dh.clock, VirtualClock)
    RUNS.clear()
    CLOCK[:] = [host.dh.clock]
    sweep = [e for e in build_index().of_type("timerTrigger") if e.name == "sweep"]
    host.dh.start_timers(sweep)
    start = host.dh.clock.now()
    await host.settle(lambda: len(RUNS) >= 3)
    assert host.dh.clock.now() - start == 90 and not any(r.past_due for _, r in RUNS)
    assert (host.dh.state_dir / "timers.json").exists()


async def test_idle_waits_for_a_run_in_flight(clock: VirtualClock, tmp_path: Path) -> None:
    slow = [e for e in build_index().of_type("timerTrigger") if e.name == "slow"]
    sched = TimerScheduler(clock, slow, tmp_path / "timers.json")
    sched.start()
    try:
        await settle()
        deadline = clock.next_deadline()
        assert deadline is not None
        clock.set(deadline)  # 2027-01-01T00:00:00Z
        await settle()
        assert RUNS == []  # started, not finished
        await sched.idle()
        assert [t.year for t, _ in RUNS] == [2027]
    finally:
        await sched.close()
