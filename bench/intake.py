"""Intake throughput: N POST /api/reimage at concurrency C on devhost (unique targets), and the same
number of azure-mgmt-compute begin_reimage(polling=False) initial calls at the same concurrency.

reimager does more per request (claim in durable storage, preflight GET, policy, POST, hand-off);
the ratio says what that safety costs against a bare ARM call.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp

from bench._host import DevhostProcess, percentile

N = int(os.environ.get("BENCH_N", "2000"))
CONCURRENCY = 16


async def run(dh: DevhostProcess) -> None:
    from azure.identity.aio import ManagedIdentityCredential
    from azure.mgmt.compute.aio import ComputeManagementClient

    async with aiohttp.ClientSession(headers=dh.key) as http:
        ours = await dh.create_vms(http, [f"ours-{i:05d}" for i in range(N)])
        await dh.create_vms(http, [f"peer-{i:05d}" for i in range(N)])
        sem = asyncio.Semaphore(CONCURRENCY)
        latencies: list[float] = []
        statuses: dict[int, int] = {}

        async def one(target: str) -> None:
            async with sem:
                start = time.perf_counter()
                async with http.post(f"{dh.url}/api/reimage", json={"target": target}) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one(t) for t in ours))
        ours_s = time.perf_counter() - start

    os.environ["IDENTITY_ENDPOINT"], os.environ["IDENTITY_HEADER"] = dh.ep["identity"], dh.ep["identityHeader"]
    credential = ManagedIdentityCredential()
    peer = ComputeManagementClient(credential, dh.ep["subscriptionId"], base_url=dh.ep["arm"])
    sem = asyncio.Semaphore(CONCURRENCY)
    peer_latencies: list[float] = []

    async def theirs(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            await peer.virtual_machines.begin_reimage("reimager-demo", f"peer-{i:05d}", polling=False,
                                                      enforce_https=False)
            peer_latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(theirs(i) for i in range(N)))
    peer_s = time.perf_counter() - start
    await peer.close()
    await credential.close()

    rps, peer_rps = N / ours_s, N / peer_s
    print(f"reimager: {N} requests at concurrency {CONCURRENCY} in {ours_s:.1f} s; statuses {statuses}")
    print(f"peer:     {N} begin_reimage(polling=False) in {peer_s:.1f} s; "
          f"p50 {percentile(peer_latencies, 0.5) * 1000:.1f} ms, p99 {percentile(peer_latencies, 0.99) * 1000:.1f} ms")
    print(f"RESULT intake rps={rps:.1f} p50_ms={percentile(latencies, 0.5) * 1000:.1f} "
          f"p99_ms={percentile(latencies, 0.99) * 1000:.1f} ratio_to_peer={rps / peer_rps:.3f} peer_rps={peer_rps:.1f} "
          f"accepted={statuses.get(202, 0)}")


def main() -> None:
    with DevhostProcess("--operation-seconds", "3600", "--retry-after", "120") as dh:
        asyncio.run(run(dh))


if __name__ == "__main__":
    main()
