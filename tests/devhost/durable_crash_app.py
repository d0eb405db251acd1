"""Orchestrators for the task-hub persistence tests, and an engine that runs in its own process.

`python -m tests.devhost.durable_crash_app STATE_DIR MARKER_DIR` starts two instances on a
real clock: `c-act` hangs in its first activity (so a kill finds it in flight) and `c-timer`
finishes its activity and sleeps on a durable timer. The test kills it with SIGKILL and resumes
the task hub in a new engine.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.durable_functions as df

from devhost.clock import Clock
from devhost.durable import ActivityFn, DurableEngine, Fidelity
from devhost.functions import index_app

bp = df.Blueprint()


@bp.orchestration_trigger(context_name="context")
def crashy(context: df.DurableOrchestrationContext) -> Any:
    inp = context.get_input()
    first = yield context.call_activity("slow", inp["n"])
    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=inp["sleep"]))
    go = yield context.wait_for_external_event("Go")
    second = yield context.call_activity("slow", first + 1)
    return {"first": first, "second": second, "go": go}


@bp.orchestration_trigger(context_name="context")
def retrying(context: df.DurableOrchestrationContext) -> Any:
    retry = df.RetryOptions(first_retry_interval_in_milliseconds=10_000, max_number_of_attempts=3)
    return (yield context.call_activity_with_retry("flaky", retry, 1))


def orchestrators() -> dict[str, Any]:
    app = df.DFApp()
    app.register_functions(bp)
    return {e.name: e.user for e in index_app(app).of_type("orchestrationTrigger")}


def build(clock: Clock, state_dir: Path, activities: dict[str, ActivityFn],
          fidelity: Fidelity | None = None) -> DurableEngine:
    return DurableEngine(clock, orchestrators(), activities, fidelity=fidelity, state_dir=state_dir)


async def _main(state_dir: Path, marker_dir: Path) -> None:
    async def slow(n: int) -> int:
        if n == 1:
            (marker_dir / "hanging").touch()
            await asyncio.sleep(3600)  # killed in flight
        return n * 2

    engine = build(Clock(), state_dir, {"slow": slow})
    engine.start_worker()
    engine.start("crashy", "c-act", json.dumps({"n": 1, "sleep": 1}))
    engine.start("crashy", "c-timer", json.dumps({"n": 2, "sleep": 4}))
    (marker_dir / "started").touch()
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(_main(Path(sys.argv[1]), Path(sys.argv[2])))
