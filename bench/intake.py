"""Intake throughput: POST /api/reimage on devhost (unique VMs) vs the same number of azure-mgmt-compute
begin_reimage(polling=False) initial calls, at the same concurrency, against the same simulator.

Interleaved repeats (BENCH_REPEATS rounds of BENCH_N requests per side, the side going first
alternating), and the median of each figure over the rounds: single runs swing by 2x on a shared
machine. ARM sends no Retry-After here (as in production), so every accepted request also reads its
target's history for the learned poll schedule; POLL_DEFAULT_SECONDS=120 keeps the monitors' polling
of the accepted operations (3,600 s each) out of the way.

reimager does more per request (preflight GET, ledger claim/admission/index, POST, monitor start,
event); the ratio says what that safety costs against a bare ARM call.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import aiohttp

from bench._host import DevhostProcess, percentile

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


async def run(dh: DevhostProcess) -> None:
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
          f"accepted={statuses.get(202, 0)} rounds={REPEATS}")


def main() -> None:
    # The global budget (100 POSTs an hour by default) would queue most requests: a cheaper path than a POST.
    # ARM's limits off: 150 POSTs a round from each side exceed ARM's write bucket (200, then 10 a second) and
    # 150 preflights a VM's own; this measures reimager's intake against a bare POST, not ARM's quota
    # (bench/storm_vmss.py and tests/integration/test_arm_quota.py measure that).
    with DevhostProcess("--arm-limits", "off", "--operation-seconds", "3600", "--settings", "POLL_DEFAULT_SECONDS=120",
                        "--settings", "GLOBAL_MAX_REIMAGES_PER_HOUR=100000") as dh:
        asyncio.run(run(dh))


if __name__ == "__main__":
    main()
