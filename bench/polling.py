"""Polling: ARM GETs and detection lag, reimager's monitor loop vs azure-mgmt-compute's poller.

The same simulated operations (3, 6, 12 s; Retry-After absent, 1, 3), on devhost's real clock,
side by side: reimager through POST /api/reimage and its durable loop (app defaults), the peer
through begin_reimage(...).result() with its default polling.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from typing import Any

import aiohttp

from bench._host import ThreadedDevhost

DURATIONS = [3.0, 6.0, 12.0]
RETRY_AFTERS: list[int | None] = [None, 1, 3]
SUB_RG = "/resourceGroups/reimager-demo/providers/Microsoft.Compute/virtualMachines/"


async def run_group(dh: Any, retry_after: int | None, rows: list[dict[str, Any]]) -> None:
    from azure.identity.aio import ManagedIdentityCredential
    from azure.mgmt.compute.aio import ComputeManagementClient

    dh.sim.retry_after = retry_after
    sub = dh.endpoints()["subscriptionId"]
    body = {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}}
    targets = {}
    for d in DURATIONS:
        for who in ("ours", "peer"):
            name = f"{who}-ra{retry_after}-d{int(d)}".lower()
            rid = f"/subscriptions/{sub}{SUB_RG}{name}"
            dh.sim.upsert(rid, body)
            dh.sim.durations[name] = d
            targets[(who, d)] = (name, rid)
    credential = ManagedIdentityCredential()
    peer = ComputeManagementClient(credential, sub, base_url=dh.arm_url)
    detected: dict[tuple[str, float], float] = {}

    async def ours(d: float) -> None:
        _, rid = targets[("ours", d)]
        async with aiohttp.ClientSession(headers={"x-functions-key": dh.function_key}) as http:
            async with http.post(f"{dh.functions_url}/api/reimage", json={"target": rid}) as r:
                op = (await r.json())["operationId"]
            while True:
                done = [e for e in dh.events() if e["type"] == "reimager.operation.completed"
                        and e["data"]["operationId"] == op]
                if done:
                    detected[("ours", d)] = time.time()
                    return
                await asyncio.sleep(0.02)

    async def theirs(d: float) -> None:
        name, _ = targets[("peer", d)]
        poller = await peer.virtual_machines.begin_reimage("reimager-demo", name, enforce_https=False)
        await poller.result()
        detected[("peer", d)] = time.time()

    await asyncio.gather(*(ours(d) for d in DURATIONS), *(theirs(d) for d in DURATIONS))
    await peer.close()
    await credential.close()
    settings_default = 15
    for (who, d), when in sorted(detected.items()):
        name = targets[(who, d)][0]
        op = next(o for o in dh.sim.operations.values() if o.lock_key.endswith("/" + name))
        gets = sum(1 for r in dh.sim.requests if r["method"] == "GET" and op.id in r["path"])
        interval = retry_after if retry_after is not None else settings_default
        rows.append({"who": who, "retryAfter": retry_after, "duration": d, "gets": gets,
                     "lag": max(0.0, when - op.end), "minimum": math.ceil(d / interval) + 1})


def main() -> None:
    rows: list[dict[str, Any]] = []
    with ThreadedDevhost(operation_seconds=5, retry_after=1) as dh:
        os.environ["IDENTITY_ENDPOINT"], os.environ["IDENTITY_HEADER"] = dh.identity_url, dh.issuer.header_secret
        for ra in RETRY_AFTERS:
            asyncio.run(run_group(dh, ra, rows))
    print(f"{'who':<5} {'Retry-After':>11} {'duration':>8} {'GETs':>5} {'minimum':>7} {'lag s':>7}")
    for r in rows:
        print(f"{r['who']:<5} {r['retryAfter']!s:>11} {r['duration']:>8.0f} {r['gets']:>5} {r['minimum']:>7} "
              f"{r['lag']:>7.2f}")
    ours = [r for r in rows if r["who"] == "ours"]
    peer = [r for r in rows if r["who"] == "peer"]
    gets, peer_gets = sum(r["gets"] for r in ours), sum(r["gets"] for r in peer)
    lag, peer_lag = sum(r["lag"] for r in ours), sum(r["lag"] for r in peer)
    minimum = sum(r["minimum"] for r in ours)
    print(json.dumps({"ours_lag_s": round(lag, 2), "peer_lag_s": round(peer_lag, 2)}))
    print(f"RESULT polling gets_ratio_to_peer={gets / peer_gets:.3f} lag_ratio_to_peer={lag / peer_lag:.3f} "
          f"gets={gets} peer_gets={peer_gets} minimum_gets={minimum} lag_s={lag:.2f} peer_lag_s={peer_lag:.2f}")


if __name__ == "__main__":
    main()
