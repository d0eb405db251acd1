"""Intake throughput: POST /api/reimage on devhost (unique VMs) vs the same number of azure-mgmt-compute
begin_reimage(polling=False) initial calls, at the same concurrency, against the same simulator.

Interleaved repeats (BENCH_REPEATS rounds of BENCH_N requests per side, the side going first
alternating), and the median of each figure over the rounds: single runs swing by 2x on a shared
machine. ARM sends no Retry-After here (as in production), so every accepted request also reads its
target's history for the learned poll schedule; POLL_DEFAULT_SECONDS=120 keeps the monitors' polling
of the accepted operations (3,600 s each) out of the way.

reimager does more per request (preflight GET, ledger claim/admission/index, POST, monitor start,
event); the ratio says what that safety costs against a bare ARM call.

First, the ledger round trips of one accepted request, by path, counted at the HTTP layer: the ledger's table
client carries a pipeline hook (azure-core's raw_request_hook, called once per request sent, retries included:
`Ledger.round_trips`). One request at a time on an in-process devhost (nothing else writes the ledger then:
the monitors' first polls are minutes away), a few of each path, the median:
- vm: a VM nobody is reimaging, no requestId (the lead: claim, index, admission, Submitting, budget slot, POST,
  Accepted); vm_keyed: the same with a requestId (one more: the read that answers a retry without ARM);
- join: a VM being reimaged, asked again with a new key (it rides the running operation: no POST);
- vmss: an instance of a scale set whose batch is running (it waits in the set's queue for the next batch);
- duplicate: the same requestId again (answered from its record).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import aiohttp

from bench._host import DevhostProcess, percentile

SAMPLES = int(os.environ.get("BENCH_RT_SAMPLES", "5"))

N = int(os.environ.get("BENCH_N", "150"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
CONCURRENCY = 16


async def timed(calls: list[Any]) -> tuple[float, list[float]]:
    """Run the calls at CONCURRENCY; the wall time and each call's latency."""
    sem = asyncio.Semaphore(CONCURRENCY)
    latencies: list[float] = []

    async def one(call: Any) -> None:
        async with sem:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in calls))
    return time.perf_counter() - start, latencies


async def run(dh: DevhostProcess, trips: dict[str, float]) -> None:
    from azure.identity.aio import ManagedIdentityCredential
    from azure.mgmt.compute.aio import ComputeManagementClient

    os.environ["IDENTITY_ENDPOINT"], os.environ["IDENTITY_HEADER"] = dh.ep["identity"], dh.ep["identityHeader"]
    credential = ManagedIdentityCredential()
    peer = ComputeManagementClient(credential, dh.ep["subscriptionId"], base_url=dh.ep["arm"])
    rounds: dict[str, list[dict[str, float]]] = {"ours": [], "peer": []}
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(headers=dh.key) as http:
        ours_vms = await dh.create_vms(http, [f"ours-{i:05d}" for i in range(N * REPEATS)])
        peer_names = [f"peer-{i:05d}" for i in range(N * REPEATS)]
        await dh.create_vms(http, peer_names)

        def post(target: str) -> Any:
            async def call() -> None:
                async with http.post(f"{dh.url}/api/reimage", json={"target": target}) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
            return call

        def begin(name: str) -> Any:
            async def call() -> None:
                await peer.virtual_machines.begin_reimage("reimager-demo", name, polling=False, enforce_https=False)
            return call

        for k in range(REPEATS):
            batch = slice(k * N, (k + 1) * N)
            sides = [("ours", [post(t) for t in ours_vms[batch]]), ("peer", [begin(n) for n in peer_names[batch]])]
            for who, calls in (sides if k % 2 == 0 else sides[::-1]):
                wall, latencies = await timed(calls)
                rounds[who].append({"rps": N / wall, "p50": percentile(latencies, 0.5) * 1000,
                                    "p99": percentile(latencies, 0.99) * 1000})
    await peer.close()
    await credential.close()

    def med(who: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[who])

    print(f"{REPEATS} interleaved rounds of {N} requests per side at concurrency {CONCURRENCY}; medians over rounds "
          "(shared 2-core machine)")
    for who in ("ours", "peer"):
        per_round = ", ".join(f"{r['rps']:.0f}" for r in rounds[who])
        print(f"  {who:<5} rps {med(who, 'rps'):7.1f}  p50 {med(who, 'p50'):6.1f} ms  p99 {med(who, 'p99'):6.1f} ms"
              f"   (rps per round: {per_round})")
    ratios = [o["rps"] / p["rps"] for o, p in zip(rounds["ours"], rounds["peer"], strict=True)]
    print(f"  statuses {statuses}")
    print(f"RESULT intake rps={med('ours', 'rps'):.1f} p50_ms={med('ours', 'p50'):.1f} p99_ms={med('ours', 'p99'):.1f} "
          f"ratio_to_peer={statistics.median(ratios):.3f} peer_rps={med('peer', 'rps'):.1f} "
          f"accepted={statuses.get(202, 0)} rounds={REPEATS}" +
          f" round_trips_vm={trips['vm']:g} round_trips_vmss={trips['vmss']:g} round_trips_join={trips['join']:g} "
          f"round_trips_vm_keyed={trips['vm_keyed']:g} round_trips_duplicate={trips['duplicate']:g}")


async def round_trips(samples: int = SAMPLES) -> dict[str, float]:
    """The median ledger round trips of one accepted request, by path."""
    import tempfile
    from pathlib import Path

    from devhost.compute import ArmLimits
    from devhost.durable import Fidelity
    from devhost.host import DevHost

    dh = DevHost(state_dir=Path(tempfile.mkdtemp(prefix="bench-intake-rt-")), operation_seconds=3600,
                 # the sweeper (a timer, every minute) reads the ledger too: not while requests are counted
                 settings={"POLL_DEFAULT_SECONDS": "120", "GLOBAL_MAX_REIMAGES_PER_HOUR": "100000",
                           "BREAKER_PERCENT": "100", "FLEET_BUDGET_PERCENT": "100", "SWEEP_SCHEDULE": "0 0 0 1 1 *"},
                 durable_fidelity=Fidelity.without("duplicate_activities"), arm_limits=ArmLimits.off())
    await dh.start()
    sub = dh.endpoints()["subscriptionId"]
    base = f"/subscriptions/{sub}/resourceGroups/reimager-demo/providers/Microsoft.Compute"
    counts: dict[str, list[int]] = {"vm": [], "vm_keyed": [], "join": [], "vmss": [], "duplicate": []}
    try:
        assert dh.runtime is not None
        ledger = dh.runtime.ledger
        async with aiohttp.ClientSession(headers={"x-functions-key": dh.function_key}) as http:
            async def post(body: dict[str, Any], path: str | None = None, expect: str | None = None) -> Any:
                before = ledger.round_trips
                async with http.post(f"{dh.functions_url}/api/reimage", json=body) as r:
                    answer = await r.json()
                    assert r.status == 202, answer
                if expect is not None:
                    assert answer["status"] == expect, (expect, answer)
                if path is not None:
                    counts[path].append(ledger.round_trips - before)
                return answer

            dh.sim.seed_scale_set(f"{base}/virtualMachineScaleSets/rt", 4 * samples + 8)
            await post({"target": f"{base}/virtualMachines/web-linux-01"})  # warm: tables created, clients built
            for i in range(samples):
                vm = f"{base}/virtualMachines/rt-{i}"
                dh.sim.upsert(vm, {"location": "westus", "properties": {"storageProfile": {"osDisk": {
                    "osType": "Linux"}}}})
                first = await post({"target": vm, "requestId": f"rt-{i}"}, "vm_keyed", "Accepted")
                await post({"target": vm}, "join", "Accepted")
                again = await post({"target": vm, "requestId": f"rt-{i}"}, "duplicate")
                assert again["operationId"] == first["operationId"]
                dh.sim.upsert(f"{vm}-auto", {"location": "westus", "properties": {"storageProfile": {"osDisk": {
                    "osType": "Linux"}}}})
                await post({"target": f"{vm}-auto"}, "vm", "Accepted")
            scale_set = f"{base}/virtualMachineScaleSets/rt"
            await post({"target": scale_set, "instanceIds": ["0"]})  # forms the batch that holds the set
            for i in range(samples):
                await post({"target": scale_set, "instanceIds": [str(i + 1)]}, "vmss", "Queued")
    finally:
        await dh.stop()
    return {path: statistics.median(c) for path, c in counts.items()}


def main() -> None:
    trips = asyncio.run(round_trips())
    print("ledger round trips per accepted request (HTTP requests the table client sent, median of "
          f"{SAMPLES}): " + ", ".join(f"{path} {n:g}" for path, n in trips.items()))
    # The global budget (100 POSTs an hour by default) would queue most requests: a cheaper path than a POST.
    # ARM's limits off: 150 POSTs a round from each side exceed ARM's write bucket (200, then 10 a second) and
    # 150 preflights a VM's own; this measures reimager's intake against a bare POST, not ARM's quota
    # (bench/storm_vmss.py and tests/integration/test_arm_quota.py measure that).
    with DevhostProcess("--arm-limits", "off", "--operation-seconds", "3600", "--settings", "POLL_DEFAULT_SECONDS=120",
                        "--settings", "GLOBAL_MAX_REIMAGES_PER_HOUR=100000") as dh:
        asyncio.run(run(dh, trips))


if __name__ == "__main__":
    main()
