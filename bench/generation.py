"""Replay cost per poll against POLLS_PER_GENERATION: one devhost in this process on a virtual clock.

M operations of 600 s with ARM's Retry-After 5 s (120 polls each) are driven to completion for each
setting; the figure is this process's CPU time (app, durable stand-in, simulator; Azurite is another
process and is not counted) divided by the polls made. The orchestrator replays its whole history on
every episode, and the durable SDK parses every event's timestamp with dateutil, so the cost per poll
grows with the history a generation accumulates.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp

SETTINGS_TRIED = [int(g) for g in os.environ.get("BENCH_GENERATIONS", "5,10,20,50").split(",")]
OPERATIONS = int(os.environ.get("BENCH_GENERATION_OPS", "4"))


async def cost(polls_per_generation: int) -> tuple[float, int]:
    from devhost.clock import VirtualClock
    from devhost.durable import Fidelity, drive
    from devhost.host import DEMO_GROUP, DEMO_SUBSCRIPTION, DevHost

    dh = DevHost(clock=VirtualClock(), state_dir=Path(tempfile.mkdtemp(prefix="bench-gen-")),
                 operation_seconds=600.0, retry_after=5,
                 settings={"POLLS_PER_GENERATION": str(polls_per_generation), "COOLDOWN_MINUTES": "0"},
                 durable_fidelity=Fidelity.without("duplicate_activities"))
    await dh.start()
    try:
        base = f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/{DEMO_GROUP}/providers/Microsoft.Compute/"
        body = {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}}
        async with aiohttp.ClientSession(headers={"x-functions-key": dh.function_key}) as http:
            for i in range(OPERATIONS):
                dh.sim.upsert(f"{base}virtualMachines/gen-{i}", body)
                async with http.post(f"{dh.functions_url}/api/reimage",
                                     json={"target": f"{base}virtualMachines/gen-{i}"}) as r:
                    assert r.status == 202, await r.text()
            assert dh.engine is not None
            start = time.process_time()
            done = [0]

            def finished() -> bool:
                done[0] = sum(1 for e in dh.events() if e["type"] == "reimager.operation.completed")
                return done[0] >= OPERATIONS

            await drive(dh.engine, finished, step=dh.quiesce)
            spent = time.process_time() - start
        polls = sum(1 for r in dh.sim.requests if r["method"] == "GET" and "/operations/" in r["path"])
        return spent, polls
    finally:
        await dh.stop()


def main() -> None:
    print(f"{OPERATIONS} operations x 600 s at Retry-After 5 s on a virtual clock; CPU of this process per poll")
    results = {}
    for g in SETTINGS_TRIED:
        spent, polls = asyncio.run(cost(g))
        results[g] = spent * 1000 / polls
        print(f"  POLLS_PER_GENERATION={g:<3} {polls} polls, {spent:.2f} s CPU, {results[g]:.2f} ms per poll")
    print("RESULT generation " + " ".join(f"ms_per_poll_g{g}={v:.2f}" for g, v in results.items()))


if __name__ == "__main__":
    main()
