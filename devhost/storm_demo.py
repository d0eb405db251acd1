"""The demo's storms, side by side on two 20-instance scale sets:

- 12 alerts on 12 instances (each re-sent once, as action groups do): the first batch is a canary of one instance;
  once it came back healthy the rest ride a few batched POSTs, one at a time, each request ending with its own
  completion event and health;
- 6 alerts on a set whose image is bad (devhost's `healthAfter` reimage fault): its canary comes back unhealthy,
  the set is suspended (one `reimager.target.suspended`, CanaryFailed) after one POST, and the other 5 requests end
  Canceled / TargetSuspended, each with its event."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from devhost.compute import Fault
from devhost.demo import WIDTH, Run, render
from devhost.host import DevHost

ALERTS, CAPACITY, BAD_ALERTS = 12, 20, 6
CAP = CAPACITY * 20 // 100  # MAX_BATCH_PERCENT's batch cap
# The storm must not trip the breaker (12 of 20 is above its default 50%) or wait an hour for the budget; an unhealthy
# canary is judged when HEALTH_GRACE_MINUTES ends (a healthy one as soon as it reports healthy).
SETTINGS = {"BREAKER_PERCENT": "80", "FLEET_BUDGET_PERCENT": "100", "BATCH_GATHER_SECONDS": "2",
            "HEALTH_GRACE_MINUTES": "1"}


@dataclass
class Storm:
    set_id: str
    alerts: int = ALERTS
    accepted: int = 0
    refused: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    suspended: list[dict[str, Any]] = field(default_factory=list)

    @property
    def canary(self) -> dict[str, Any] | None:
        """The canary's own request's event data."""
        return next((e["data"] for e in self.events if (e["data"].get("canary") or {}).get("role") == "canary"), None)

    @property
    def ok(self) -> bool:
        reimaged = Counter(i for p in self.posts for i in p["body"]["instanceIds"])
        canary = self.canary
        return (self.refused == 0 and len(self.events) == self.alerts and canary is not None
                and canary["canary"]["outcome"] == "passed"
                and all(e["data"]["status"] == "Succeeded" for e in self.events)
                and [len(p["body"]["instanceIds"]) for p in self.posts][:1] == [1]  # the canary went alone
                and len(self.posts) == 1 + -(-(self.alerts - 1) // CAP)
                and len(reimaged) == self.alerts and set(reimaged.values()) == {1})

    @property
    def suspended_ok(self) -> bool:
        """The bad image's storm: one POST, one CanaryFailed suspension, every other request ended by it."""
        canary = self.canary
        waited = [e["data"] for e in self.events if (e["data"].get("canary") or {}).get("role") == "waited"]
        return (len(self.posts) == 1 and len(self.suspended) == 1 and canary is not None
                and self.suspended[0]["data"]["suspension"].get("code") == "CanaryFailed"
                and canary["health"] == "Unhealthy" and len(waited) == self.alerts - 1
                and all((d["status"], d["error"]["code"]) == ("Canceled", "TargetSuspended") for d in waited))


def alert(set_id: str, instance: int, run: Run) -> dict[str, Any]:
    name = set_id.rsplit("/", 1)[-1]
    return {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
        "alertId": run.key(f"{name}-{instance}"), "alertRule": "instance-unhealthy", "severity": "Sev2",
        "signalType": "Metric", "monitorCondition": "Fired", "monitoringService": "Platform",
        "alertTargetIDs": [f"{set_id}/virtualMachines/{instance}"], "firedDateTime": "2026-11-25T00:00:00Z"},
        "alertContext": {}}}


async def _storm(host: DevHost, run: Run, storm: Storm, http: aiohttp.ClientSession, deadline: float) -> Storm:
    async def send(i: int) -> Any:
        async with http.post(f"{host.functions_url}/api/alerts", json=alert(storm.set_id, i, run)) as r:
            return await r.json()

    answers = await asyncio.gather(*(send(i) for i in range(storm.alerts) for _ in range(2)))
    ops = {a["operationId"] for b in answers for a in b.get("accepted", [])}
    storm.accepted = len(ops)
    storm.refused = sum(len(b.get("refused", [])) for b in answers)
    name = storm.set_id.rsplit("/", 1)[-1]
    while time.monotonic() < deadline:
        storm.events = [e for e in run.events(host, "reimager.operation.completed")
                        if e["data"]["operationId"] in ops]
        storm.suspended = [e for e in run.events(host, "reimager.target.suspended")
                           if str(e["data"]["target"]).endswith(f"/{name}")]
        if len(storm.events) >= len(ops):
            break
        await asyncio.sleep(0.25)
    storm.posts = [p for p in host.sim.reimage_posts() if f"/{name}/" in p["path"]]
    return storm


async def run_storms(host: DevHost, run: Run, base: str, time_limit: float) -> tuple[Storm, Storm]:
    """Both storms at once: a healthy canary, then batches; and a bad image's canary suspending its set."""
    good = Storm(f"{base}/virtualMachineScaleSets/storm")
    bad = Storm(f"{base}/virtualMachineScaleSets/storm-bad", alerts=BAD_ALERTS)
    host.sim.seed_scale_set(good.set_id, CAPACITY, boot_diagnostics=True)
    host.sim.seed_scale_set(bad.set_id, CAPACITY, boot_diagnostics=True)
    host.sim.faults.append(Fault.model_validate({"match": "storm-bad/reimage", "healthAfter": "unhealthy",
                                                 "times": 100}))
    start = time.monotonic()
    async with aiohttp.ClientSession(headers={"x-functions-key": host.function_key}) as http:
        # the bad canary is judged when its minute of grace is over: it gets that long on top of the time limit
        await asyncio.gather(_storm(host, run, good, http, start + time_limit),
                             _storm(host, run, bad, http, start + time_limit + 90))
    return good, bad


def storm_table(storm: Storm, width: int = WIDTH) -> str:
    """One row per batch (one ARM POST): its instances, its requests' outcomes and health."""
    by_batch: dict[str, list[dict[str, Any]]] = {}
    for e in storm.events:
        by_batch.setdefault(e["data"].get("batchId") or "-", []).append(e["data"])
    rows = [("batch", "instances", "requests", "canary", "status", "health")]
    for batch, items in sorted(by_batch.items(), key=lambda kv: min(d["completedAt"] or "" for d in kv[1])):
        instances = sorted({i for d in items for i in d["instanceIds"] or []}, key=int)
        roles = "/".join(sorted({(d.get("canary") or {}).get("role") or "-" for d in items}))
        rows.append((batch[:14], _ranges(instances), str(len(items)), roles,
                     "/".join(sorted({d["status"] for d in items})),
                     "/".join(sorted({d["health"] or "-" for d in items}))))
    name = storm.set_id.rsplit("/", 1)[-1]
    summary = (f"storm on {name}: {storm.alerts} alerts (each sent twice) on {storm.alerts} instances of a "
               f"{CAPACITY}-instance set\n  -> {storm.accepted} requests, {storm.refused} refused, "
               f"{len(storm.posts)} ARM POSTs ({', '.join(str(len(p['body']['instanceIds'])) for p in storm.posts)} "
               f"instances), {len(storm.events)} completion events")
    canary = storm.canary
    if canary is not None:
        summary += (f"\ncanary {canary['canary']['batchId'][:14]} (instance "
                    f"{', '.join(canary['canary']['instanceIds'])}): {canary['canary']['outcome']}, health "
                    f"{canary['health']}")
    for e in storm.suspended:
        s = e["data"]["suspension"]
        summary += f"\nsuspended {name}: {s.get('code')} by {s.get('by')}: {s.get('reason')}"
    lines = [textwrap.fill(line, width, subsequent_indent="     ") for line in summary.splitlines()]
    return "\n".join(lines) + "\n" + render(rows[0], rows[1:], width)


def _ranges(ids: list[str]) -> str:
    return ",".join(ids) if len(ids) <= 6 else f"{','.join(ids[:5])},... ({len(ids)})"
