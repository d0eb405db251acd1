"""The demo's storm: 12 alerts on 12 instances of a 20-instance scale set arrive together (each
re-sent once, as action groups do) and ride a few batched POSTs, one at a time, each request ending
with its own completion event and health."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from devhost.demo import WIDTH, Run, render
from devhost.host import DevHost

ALERTS, CAPACITY = 12, 20
# The storm must not trip the breaker (12 of 20 is above its default 50%) or wait an hour for the budget.
SETTINGS = {"BREAKER_PERCENT": "80", "FLEET_BUDGET_PERCENT": "100", "BATCH_GATHER_SECONDS": "2"}


@dataclass
class Storm:
    set_id: str
    accepted: int = 0
    refused: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        reimaged = Counter(i for p in self.posts for i in p["body"]["instanceIds"])
        return (self.refused == 0 and len(self.events) == ALERTS
                and all(e["data"]["status"] == "Succeeded" for e in self.events)
                and len(self.posts) == -(-ALERTS // (CAPACITY * 20 // 100))
                and len(reimaged) == ALERTS and set(reimaged.values()) == {1})


def alert(set_id: str, instance: int, run: Run) -> dict[str, Any]:
    return {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
        "alertId": run.key(f"storm-{instance}"), "alertRule": "instance-unhealthy", "severity": "Sev2",
        "signalType": "Metric", "monitorCondition": "Fired", "monitoringService": "Platform",
        "alertTargetIDs": [f"{set_id}/virtualMachines/{instance}"], "firedDateTime": "2026-11-25T00:00:00Z"},
        "alertContext": {}}}


async def run_storm(host: DevHost, run: Run, base: str, time_limit: float) -> Storm:
    storm = Storm(f"{base}/virtualMachineScaleSets/storm")
    host.sim.seed_scale_set(storm.set_id, CAPACITY)
    async with aiohttp.ClientSession(headers={"x-functions-key": host.function_key}) as http:
        async def send(i: int) -> Any:
            async with http.post(f"{host.functions_url}/api/alerts", json=alert(storm.set_id, i, run)) as r:
                return await r.json()

        answers = await asyncio.gather(*(send(i) for i in range(ALERTS) for _ in range(2)))
    ops = {a["operationId"] for b in answers for a in b.get("accepted", [])}
    storm.accepted = len(ops)
    storm.refused = sum(len(b.get("refused", [])) for b in answers)
    deadline = time.monotonic() + time_limit
    while time.monotonic() < deadline:
        storm.events = [e for e in run.events(host, "reimager.operation.completed")
                        if e["data"]["operationId"] in ops]
        if len(storm.events) >= len(ops):
            break
        await asyncio.sleep(0.25)
    storm.posts = [p for p in host.sim.reimage_posts() if "/storm/" in p["path"]]
    return storm


def storm_table(storm: Storm, width: int = WIDTH) -> str:
    """One row per batch (one ARM POST): its instances, its requests' outcomes and health."""
    by_batch: dict[str, list[dict[str, Any]]] = {}
    for e in storm.events:
        by_batch.setdefault(e["data"].get("batchId") or "-", []).append(e["data"])
    rows = [("batch", "instances", "requests", "status", "health")]
    for batch, items in sorted(by_batch.items(), key=lambda kv: min(d["completedAt"] or "" for d in kv[1])):
        instances = sorted({i for d in items for i in d["instanceIds"] or []}, key=int)
        rows.append((batch[:14], ",".join(instances), str(len(items)),
                     "/".join(sorted({d["status"] for d in items})),
                     "/".join(sorted({d["health"] or "-" for d in items}))))
    summary = (f"storm: {ALERTS} alerts (each sent twice) on {ALERTS} instances of a {CAPACITY}-instance set\n"
               f"  -> {storm.accepted} requests, {storm.refused} refused, {len(storm.posts)} ARM POSTs, "
               f"{len(storm.events)} completion events")
    return summary + "\n" + render(rows[0], rows[1:], width)
