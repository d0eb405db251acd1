"""The simulator's state survives a restart: resources, instances, operations (by their recorded times),
the request log, and the port its operation URLs name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devhost.clock import VirtualClock
from devhost.compute import ComputeSimulator
from devhost.identity import TokenIssuer
from devhost.serving import Served, free_port, serve
from tests.helpers import SUB

API = "api-version=2024-07-01"
BASE = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute"
VM = f"{BASE}/virtualMachines/vm1"
SS = f"{BASE}/virtualMachineScaleSets/ss1"


async def call(http: aiohttp.ClientSession, issuer: TokenIssuer, method: str, url: str,
               body: Any = None) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {issuer.issue()[0]}"}
    async with http.request(method, url, json=body, headers=headers) as r:
        text = await r.text()
        return r.status, dict(r.headers), (json.loads(text) if text else None)


def simulator(state: Path, clock: VirtualClock) -> ComputeSimulator:
    return ComputeSimulator(clock=clock, issuer=TokenIssuer(), operation_seconds=60.0, state_dir=state)


async def test_restart_keeps_state_port_and_running_operations(tmp_path: Path) -> None:
    clock = VirtualClock()
    first = simulator(tmp_path / "arm", clock)
    assert first.preferred_port is None
    first.upsert(VM, {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}})
    first.seed_scale_set(SS, 5)
    first.durations["vm1"] = 600  # recorded in the operation: still running after the restart
    served = await first.serve()
    async with aiohttp.ClientSession() as http:
        s, h, _ = await call(http, first.issuer, "POST", f"{served.url}{SS}/reimage?{API}",
                             {"instanceIds": ["1"], "exactVersion": "9.9.9"})
        assert s == 202
        _, vm_h, _ = await call(http, first.issuer, "POST", f"{served.url}{VM}/reimage?{API}",
                                {"osProfile": {"adminPassword": "Sentinel-Pa55-9f3c"}})
        await served.close()
        clock.advance(20)

        # A new simulator on the same directory, asked for "any port": it takes the recorded one.
        second = simulator(tmp_path / "arm", clock)
        assert second.preferred_port == int(served.url.rsplit(":", 1)[1])
        assert set(second.resources) == set(first.resources)
        assert sorted(second.instances[SS.lower()], key=int) == ["0", "1", "2", "3", "4"]
        again = await second.serve()
        try:
            assert again.url == served.url
            for url in (h["Azure-AsyncOperation"], h["Location"]):  # URLs handed out before the restart
                s, _, doc = await call(http, second.issuer, "GET", url)
                assert s in (200, 202)
                assert doc is None or doc["status"] == "InProgress"
            clock.advance(41)  # the operation ends at its recorded end time, 60 s after it started
            s, _, doc = await call(http, second.issuer, "GET", h["Azure-AsyncOperation"])
            assert doc["status"] == "Succeeded" and doc["endTime"]
            s, _, inst = await call(http, second.issuer, "GET", f"{again.url}{SS}/virtualMachines/1?{API}")
            assert inst["properties"]["storageProfile"]["imageReference"]["exactVersion"] == "9.9.9"
            # the request log carries on; secrets never reach the files
            assert [r["method"] for r in second.requests[:2]] == ["POST", "POST"]
            assert second.requests[1]["body"]["osProfile"]["adminPassword"] == "[redacted]"
            assert "Sentinel-Pa55-9f3c" not in (tmp_path / "arm" / "requests.jsonl").read_text()
            assert first.requests[1]["body"]["osProfile"]["adminPassword"] == "Sentinel-Pa55-9f3c"  # ARM got it
            # a running operation from before the restart is still preempted by a newer one
            s, vm_h2, _ = await call(http, second.issuer, "POST", f"{again.url}{VM}/reimage?{API}")
            _, _, old = await call(http, second.issuer, "GET", vm_h["Azure-AsyncOperation"])
            assert s == 202 and old["status"] == "Canceled" and old["error"]["code"] == "OperationPreempted"
        finally:
            await again.close()

    third = simulator(tmp_path / "arm", clock)  # the preemption and the settlement were written too
    ops = {op.id: op for op in third.operations.values()}
    assert sum(op.settled for op in ops.values()) == 2 and len(ops) == 3
    assert not list((tmp_path / "arm").rglob("*.tmp"))  # every write was replaced whole


async def test_operation_that_ended_while_down_is_settled_on_first_read(tmp_path: Path) -> None:
    clock = VirtualClock()
    first = simulator(tmp_path, clock)
    first.seed_scale_set(SS, 3)
    served = await first.serve()
    async with aiohttp.ClientSession() as http:
        _, h, _ = await call(http, first.issuer, "POST", f"{served.url}{SS}/reimage?{API}", {"instanceIds": []})
    await served.close()
    clock.advance(3600)
    second = simulator(tmp_path, clock)
    again = await second.serve()
    try:
        async with aiohttp.ClientSession() as http:
            s, _, body = await call(http, second.issuer, "GET", h["Location"])
        assert (s, body) == (200, None)
        (op,) = second.operations.values()
        assert op.settled and len(op.instance_keys) == 3  # the empty list meant every instance
    finally:
        await again.close()


async def test_torn_log_line_is_skipped_and_a_taken_port_falls_back(tmp_path: Path) -> None:
    clock = VirtualClock()
    first = simulator(tmp_path, clock)
    first.seed_scale_set(SS, 1)
    served = await first.serve()
    async with aiohttp.ClientSession() as http:
        await call(http, first.issuer, "GET", f"{served.url}{SS}?{API}")
    await served.close()
    with (tmp_path / "requests.jsonl").open("a") as f:
        f.write('{"method": "GET", "pa')  # killed mid-write
    blocker: Served = await serve(ComputeSimulator(clock=clock, issuer=TokenIssuer()).app(),
                                  port=first.preferred_port or free_port())
    try:
        second = simulator(tmp_path, clock)
        assert len(second.requests) == 1
        again = await second.serve()  # the recorded port is taken: any free one, with a warning
        assert again.url != served.url and second.preferred_port == int(again.url.rsplit(":", 1)[1])
        await again.close()
    finally:
        await blocker.close()


async def test_devhost_restarts_the_simulator_on_its_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.conftest import SETTING_NAMES, make_host

    for name in SETTING_NAMES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    dh = await make_host(tmp_path)
    arm_url = dh.arm_url
    await dh.stop()
    dh = await make_host(tmp_path)
    try:
        assert dh.arm_url == arm_url
        assert (tmp_path / "devhost" / "arm" / "meta.json").exists()
    finally:
        await dh.stop()
