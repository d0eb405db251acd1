"""devhost at scale: an ended orchestration's replay state leaves memory; the simulator's per-request work
does not grow with the number of running operations."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devhost.clock import VirtualClock
from devhost.compute import Operation
from tests.conftest import start_standins
from tests.devhost.test_simulator_scale import VM, get
from tests.helpers import SUB
from tests.integration.conftest import LINUX_VM, Host


async def test_an_ended_monitor_releases_its_history_and_keeps_it_on_disk(host: Host) -> None:
    s, body, _ = await host.reimage({"target": LINUX_VM})
    assert s == 202
    await host.until_completed()
    engine = host.dh.engine
    assert engine is not None
    await host.settle(lambda: engine.instances[body["operationId"]].status == "Completed")
    inst = engine.instances[body["operationId"]]
    # nothing of the replay state stays in memory once the orchestration ended ...
    assert inst.released and inst.history == [] and inst.recorded == [] and inst.action_seq == []
    assert not inst.timers and not inst.timer_meta and not inst.activities and not inst.inbox
    assert body["operationId"] not in host.dh._last_progress
    # ... and the task hub still answers it, history included, as Storage would
    async with host.http.get(f"{host.url}/durabletask/instances/{inst.id}", params={"showHistory": "true"}) as r:
        doc = await r.json()
    assert r.status == 200 and doc["runtimeStatus"] == "Completed"
    assert [e["EventType"] for e in doc["historyEvents"]][-1] == 1  # ExecutionCompleted
    assert inst.id in engine.dump()


def add_running_operations(sim: Any, n: int) -> None:
    """n operations still running on other VMs, registered the way a reimage registers one."""
    now = sim.clock.now()
    for i in range(n):
        key = f"{VM.lower()}-busy{i}"
        sim._register(Operation(id=str(uuid.uuid4()), lock_key=key, location="westus", subscription=SUB,
                                started=now, duration=3600, instance_keys=[key], version="1"))


async def test_request_cost_does_not_grow_with_running_operations(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """Each request settles the operations that ended; it must find them without looking at every running one."""
    calls = {"n": 0}
    real_status = Operation.status

    def counting(self: Operation, now: float) -> str:
        calls["n"] += 1
        return real_status(self, now)

    monkeypatch.setattr(Operation, "status", counting)
    work: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for n in (10, 5_000):
        s = await start_standins(monkeypatch, VirtualClock(), operation_seconds=60.0)
        try:
            s.sim.upsert(VM, {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}})
            add_running_operations(s.sim, n)
            async with aiohttp.ClientSession() as http:
                await get(http, s, "GET", VM)  # warm up
                calls["n"] = 0
                start = time.perf_counter()
                for _ in range(20):
                    await get(http, s, "GET", VM)
                    await get(http, s, "GET", f"{VM}/instanceView")
                seconds[n] = time.perf_counter() - start
                work[n] = calls["n"]
        finally:
            for server in s.servers:
                await server.close()
    assert work[5_000] == work[10], work
    assert seconds[5_000] < 3 * seconds[10] + 0.2, seconds
