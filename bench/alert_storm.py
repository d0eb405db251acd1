"""Alert storm: 1000 webhooks (100 VMs x 10 duplicates) at concurrency 50.

Counts the ARM reimage POSTs (must be 100), duplicates (must be 0), time to accept everything
and time until all 100 completion events arrived.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import time

import aiohttp

from bench._host import ROOT, DevhostProcess

TARGETS = int(os.environ.get("BENCH_TARGETS", "100"))
DUPLICATES = 10
CONCURRENCY = 50


async def run(dh: DevhostProcess) -> None:
    sample = json.loads((ROOT / "devhost/samples/activity-log-alert.json").read_text())
    async with aiohttp.ClientSession(headers=dh.key) as http:
        vms = await dh.create_vms(http, [f"storm-{i:03d}" for i in range(TARGETS)])
        alerts = []
        for i, vm in enumerate(vms):
            alert = copy.deepcopy(sample)
            alert["data"]["essentials"]["alertId"] = f"/subscriptions/x/providers/Microsoft.AlertsManagement/alerts/{i}"
            alert["data"]["essentials"]["alertTargetIDs"] = [vm.lower()]
            alerts += [alert] * DUPLICATES
        random.Random(1).shuffle(alerts)
        sem = asyncio.Semaphore(CONCURRENCY)
        statuses: dict[int, int] = {}

        async def send(alert: dict[str, object]) -> None:
            async with sem, http.post(f"{dh.url}/api/alerts", json=alert) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(send(a) for a in alerts))
        accept_s = time.perf_counter() - start
        while True:
            events = await dh.get(http, "/devhost/events")
            done = [e for e in events if e["type"] == "reimager.operation.completed"]
            if len(done) >= TARGETS or time.perf_counter() - start > 300:
                break
            await asyncio.sleep(0.2)
        complete_s = time.perf_counter() - start
        requests = await dh.get(http, "/devhost/compute/requests")
    posts = [r["path"] for r in requests if r["method"] == "POST" and r["path"].endswith("/reimage")]
    duplicates = len(posts) - len(set(posts))
    print(f"{len(alerts)} alerts, statuses {statuses}; {len(posts)} reimage POSTs for {len(set(posts))} targets; "
          f"{len(done)} completion events")
    print(f"RESULT alert_storm posts={len(posts)} duplicate_reimages={duplicates} accept_s={accept_s:.2f} "
          f"complete_s={complete_s:.2f} completed={len(done)}")


def main() -> None:
    with DevhostProcess("--operation-seconds", "5", "--retry-after", "1", "--settings", "POLL_MIN_SECONDS=1",
                        "--settings", "GLOBAL_MAX_REIMAGES_PER_HOUR=100000") as dh:
        asyncio.run(run(dh))


if __name__ == "__main__":
    main()
