"""Scale: 1,000-instance scale sets, and per-request cost that does not grow with finished operations."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devhost.clock import VirtualClock
from devhost.compute import ComputeSimulator, Operation
from tests.conftest import StandIns, start_standins
from tests.helpers import SUB

API = {"api-version": "2024-07-01"}
BASE = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute"
VM = f"{BASE}/virtualMachines/vm1"
SS = f"{BASE}/virtualMachineScaleSets/big"


@pytest.fixture
async def standins(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StandIns]:
    s = await start_standins(monkeypatch, VirtualClock(), operation_seconds=60.0)
    yield s
    for server in s.servers:
        await server.close()


async def get(http: aiohttp.ClientSession, s: StandIns, method: str, path: str, body: Any = None,
              params: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    token = s.issuer.issue()[0]
    url = path if path.startswith("http") else s.arm_url + path
    query = None if "api-version=" in url else {**API, **(params or {})}
    async with http.request(method, url, params=query, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        text = await r.text()
        return r.status, dict(r.headers), (await r.json() if text else None)


async def test_put_with_capacity_1000_creates_the_instances_quickly(standins: StandIns) -> None:
    body = {"location": "westus", "sku": {"name": "Standard_D2s_v5", "capacity": 1000}, "properties": {
        "virtualMachineProfile": {"storageProfile": {"osDisk": {"osType": "Linux", "diffDiskSettings": {
            "option": "Local"}}}, "extensionProfile": {"extensions": [{"name": "health", "properties": {
                "type": "ApplicationHealthLinux"}}]}}}}
    async with aiohttp.ClientSession() as http:
        start = time.perf_counter()
        s, _, doc = await get(http, standins, "PUT", SS, body)
        created = time.perf_counter() - start
        assert s == 201 and doc["sku"]["capacity"] == 1000
        assert created < 2.0, created  # generous: it takes tens of milliseconds
        s, _, listing = await get(http, standins, "GET", f"{SS}/virtualMachines", params={"$expand": "instanceView"})
        assert s == 200 and len(listing["value"]) == 1000
        assert len({i["properties"]["vmId"] for i in listing["value"]}) == 1000
        assert all(i["properties"]["instanceView"]["vmHealth"]["status"]["code"] == "HealthState/healthy"
                   for i in listing["value"])
        ids = [str(i) for i in range(0, 1000, 5)]
        s, h, _ = await get(http, standins, "POST", f"{SS}/reimage", {"instanceIds": ids})
        assert s == 202
        _, _, listing = await get(http, standins, "GET", f"{SS}/virtualMachines", params={"$expand": "instanceView"})
        updating = {i["instanceId"] for i in listing["value"]
                    if i["properties"]["instanceView"]["statuses"][0]["code"] == "ProvisioningState/updating"}
        assert updating == set(ids)


def add_finished_operations(sim: ComputeSimulator, n: int) -> None:
    """n operations that ran on other VMs and are long over, registered the way a reimage registers one."""
    now = sim.clock.now()
    for i in range(n):
        op = Operation(id=str(uuid.uuid4()), lock_key=f"{VM.lower()}-old{i}", location="westus", subscription=SUB,
                       started=now - 7200, duration=60, instance_keys=[f"{VM.lower()}-old{i}"], version="1")
        sim._register(op)
    sim._settle_due()
    assert not sim._active and len(sim.operations) >= n


async def run_requests(http: aiohttp.ClientSession, s: StandIns, rounds: int, old_op: str) -> None:
    for _ in range(rounds):
        await get(http, s, "POST", f"{VM}/reimage")  # preempts the previous one each time
        await get(http, s, "GET", VM)
        await get(http, s, "GET", f"{VM}/instanceView")
        await get(http, s, "GET", f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westus/"
                  f"operations/{old_op}")


@pytest.mark.parametrize("persist", [False, True])
async def test_request_cost_does_not_grow_with_finished_operations(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path, persist: bool) -> None:
    """Count the operation-status evaluations 40 requests make with 10 vs 10,000 finished operations, and time them."""
    calls = {"n": 0}
    real_status = Operation.status

    def counting(self: Operation, now: float) -> str:
        calls["n"] += 1
        return real_status(self, now)

    monkeypatch.setattr(Operation, "status", counting)
    work: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for n in (10, 10_000):
        extra: dict[str, Any] = {"state_dir": tmp_path / str(n)} if persist else {}
        s = await start_standins(monkeypatch, VirtualClock(), operation_seconds=60.0, **extra)
        try:
            s.sim.upsert(VM, {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}})
            add_finished_operations(s.sim, n)
            old_op = next(iter(s.sim.operations))
            async with aiohttp.ClientSession() as http:
                await run_requests(http, s, 3, old_op)  # warm up connections and tokens
                calls["n"] = 0
                start = time.perf_counter()
                await run_requests(http, s, 10, old_op)
                seconds[n] = time.perf_counter() - start
                work[n] = calls["n"]
        finally:
            for server in s.servers:
                await server.close()
    assert work[10_000] == work[10], work  # no request looks at finished operations
    assert seconds[10_000] < 3 * seconds[10] + 0.2, seconds  # generous: shared CPUs are noisy


async def test_request_log_is_capped(standins: StandIns) -> None:
    standins.sim.request_log_limit = 40
    standins.sim.upsert(VM, {"location": "westus", "properties": {}})
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            await get(http, standins, "GET", VM)
    assert 30 <= len(standins.sim.requests) <= 40
    assert standins.sim.requests[-1]["status"] == 200
