"""The task hub survives a restart and a `kill -9`: instances, histories, queued events, pending
timers, in-flight activities and retry state persist under `state_dir`, and a new engine on the same
directory resumes every in-flight orchestration (timers re-armed by FireAt, unfinished activities
re-run: at-least-once, as in Azure, where an activity message is redelivered after a crash)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devhost.clock import Clock, VirtualClock
from devhost.durable import TIMER_CREATED, TIMER_FIRED, DurableEngine, drive
from tests.devhost.durable_crash_app import build

ROOT = Path(__file__).resolve().parents[2]


def on_disk(state_dir: Path) -> dict[str, dict[str, Any]]:
    docs = [json.loads(p.read_text()) for p in (state_dir / "instances").glob("*.json")]
    return {d["id"]: d for d in docs}


async def spin(until: Any, rounds: int = 200) -> None:
    for _ in range(rounds):
        if until():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_a_new_engine_on_the_same_state_dir_resumes_everything(tmp_path: Path) -> None:
    hang = asyncio.Event()
    calls: list[tuple[str, int]] = []

    async def hanging_slow(n: int) -> int:
        calls.append(("old", n))
        if n == 1:
            await hang.wait()  # never set: the engine stops with this activity in flight
        return n * 2

    def failing(n: int) -> int:
        raise RuntimeError("transient")

    old = build(VirtualClock(), tmp_path, {"slow": hanging_slow, "flaky": failing})
    old.start_worker()
    old.start("crashy", "act", json.dumps({"n": 1, "sleep": 5}))
    old.start("crashy", "tmr", json.dumps({"n": 2, "sleep": 60}))
    old.start("retrying", "rty", None)
    await spin(lambda: any(e["EventType"] == TIMER_CREATED for e in old.instances["tmr"].history)
               and old.instances["rty"].timer_meta and old.instances["act"].activities)
    fire_at = next(e["FireAt"] for e in old.instances["tmr"].history if e["EventType"] == TIMER_CREATED)
    old.raise_event("tmr", "Go", json.dumps("queued"))  # still in the inbox when the engine stops
    stopped_at = old.clock.now()
    await old.close()

    disk = on_disk(tmp_path)
    assert disk["tmr"]["inbox"] and disk["tmr"]["timer_meta"] and disk["act"]["activities"]
    assert disk["rty"]["retries"] == {} and any(m["retry"] for m in disk["rty"]["timer_meta"].values())

    def slow(n: int) -> int:
        calls.append(("new", n))
        return n * 2

    new = build(VirtualClock(stopped_at), tmp_path, {"slow": slow, "flaky": lambda n: "recovered"})
    assert set(new.instances) == {"act", "tmr", "rty"}
    new.start_worker()
    new.raise_event("act", "Go", json.dumps("late"))
    await drive(new, lambda: all(i.status == "Completed" for i in new.instances.values()))
    assert new.instances["act"].output == {"first": 2, "second": 6, "go": "late"}
    assert new.instances["tmr"].output == {"first": 4, "second": 10, "go": "queued"}
    assert new.instances["rty"].output == "recovered"
    assert ("new", 1) in calls  # the activity in flight at the stop ran again
    fired = next(e for e in new.history_of(new.instances["tmr"]) if e["EventType"] == TIMER_FIRED)
    assert fired["FireAt"] == fire_at
    assert all(d["status"] == "Completed" for d in on_disk(tmp_path).values())
    await new.close()


async def test_kill_dash_nine_then_resume(tmp_path: Path) -> None:
    state, marks = tmp_path / "hub", tmp_path / "marks"
    marks.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.devhost.durable_crash_app", str(state), str(marks),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            disk = on_disk(state) if (state / "instances").is_dir() else {}
            timer_ready = "c-timer" in disk and disk["c-timer"]["timer_meta"]
            if (marks / "hanging").exists() and timer_ready and disk["c-act"]["activities"]:
                break
            assert proc.returncode is None and time.monotonic() < deadline, "the engine process did not get going"
            await asyncio.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown: whatever is on disk is all there is
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    fire_at = next(iter(on_disk(state)["c-timer"]["timer_meta"].values()))["fireAt"]

    calls: list[int] = []

    def slow(n: int) -> int:
        calls.append(n)
        return n * 2

    engine: DurableEngine = build(Clock(), state, {"slow": slow})
    engine.start_worker()
    for iid in ("c-act", "c-timer"):
        assert engine.raise_event(iid, "Go", json.dumps(iid)) == 202
    deadline = time.monotonic() + 30
    while not all(i.status == "Completed" for i in engine.instances.values()):
        assert time.monotonic() < deadline, {i.id: i.status for i in engine.instances.values()}
        await asyncio.sleep(0.05)
    assert engine.instances["c-act"].output == {"first": 2, "second": 6, "go": "c-act"}
    assert engine.instances["c-timer"].output == {"first": 4, "second": 10, "go": "c-timer"}
    assert 1 in calls  # the activity killed in flight ran again
    fired = next(e for e in engine.history_of(engine.instances["c-timer"]) if e["EventType"] == TIMER_FIRED)
    assert fired["FireAt"] == fire_at and engine.clock.now() >= datetime_ts(fire_at)
    await engine.close()


def datetime_ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
