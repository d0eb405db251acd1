"""The demo's storms: 12 alerts on 12 machines of a 20-machine scale set arrive together (each re-sent once, as
action groups do), on a Uniform set and, beside it, on a Flexible set. Both ride a few batches, one at a time: the
Uniform set's batch is one scale-set POST, the Flexible set's a group of single-VM POSTs sent together (its
members are VMs of their own). Each request ends with its own completion event and health."""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from devhost.demo import WIDTH, render
from devhost.host import DevHost

ALERTS, CAPACITY = 12, 20
CAP = CAPACITY * 20 // 100  # MAX_BATCH_PERCENT's default: machines per batch
# The storm must not trip the breaker (12 of 20 is above its default 50%) or wait an hour for the budget.
SETTINGS = {"BREAKER_PERCENT": "80", "FLEET_BUDGET_PERCENT": "100", "BATCH_GATHER_SECONDS": "2"}


@dataclass
class Storm:
    set_id: str
    mode: str = "Uniform"  # or "Flexible"
    accepted: int = 0
    refused: int = 0
    started: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    reads: int = 0

    @property
    def name(self) -> str:
        return self.set_id.rsplit("/", 1)[1]

    def reimaged(self) -> Counter[str]:
        """Each machine a POST reimaged (the instance ids of a scale-set POST; the VM of a single-VM POST)."""
        if self.mode == "Flexible":
            return Counter(p["path"].rsplit("/", 2)[1] for p in self.posts if p["status"] == 202)
        return Counter(i for p in self.posts if p["status"] == 202 for i in p["body"]["instanceIds"])

    @property
    def healthy_seconds(self) -> float | None:
        """From the first alert until the last machine was reimaged and healthy."""
        from datetime import datetime

        done = [datetime.fromisoformat(e["data"]["completedAt"]).timestamp() for e in self.events
                if e["data"].get("completedAt")]
        return max(done) - self.started if done else None

    @property
    def ok(self) -> bool:
        reimaged = self.reimaged()
        posts = ALERTS if self.mode == "Flexible" else -(-ALERTS // CAP)
        batches = {e["data"].get("batchId") for e in self.events}
        return (self.refused == 0 and len(self.events) == ALERTS
                and all(e["data"]["status"] == "Succeeded" for e in self.events)
                and len(self.posts) == posts and len(batches) == -(-ALERTS // CAP)
                and len(reimaged) == ALERTS and set(reimaged.values()) == {1}
                and not (self.mode == "Flexible" and any("ScaleSets" in p["path"] for p in self.posts)))


def alert(target: str, alert_id: str) -> dict[str, Any]:
    return {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
        "alertId": alert_id, "alertRule": "instance-unhealthy", "severity": "Sev2",
        "signalType": "Metric", "monitorCondition": "Fired", "monitoringService": "Platform",
        "alertTargetIDs": [target], "firedDateTime": "2026-11-25T00:00:00Z"},
        "alertContext": {}}}


async def _send(host: DevHost, storm: Storm, targets: list[str], time_limit: float) -> Storm:
    storm.started = host.clock.now()
    run = uuid.uuid4().hex[:8]  # the events file outlives a run: this run's alerts (and so operations) are its own
    async with aiohttp.ClientSession(headers={"x-functions-key": host.function_key}) as http:
        async def send(i: int) -> Any:
            async with http.post(f"{host.functions_url}/api/alerts",
                                 json=alert(targets[i], f"demo-{storm.name}-{run}-{i}")) as r:
                return await r.json()

        answers = await asyncio.gather(*(send(i) for i in range(ALERTS) for _ in range(2)))
    ops = {a["operationId"] for b in answers for a in b.get("accepted", [])}
    storm.accepted = len(ops)
    storm.refused = sum(len(b.get("refused", [])) for b in answers)
    deadline = time.monotonic() + time_limit
    while time.monotonic() < deadline:
        storm.events = [e for e in host.events() if e["type"] == "reimager.operation.completed"
                        and e["data"]["operationId"] in ops]
        if len(storm.events) >= len(ops):
            break
        await asyncio.sleep(0.25)
    return storm


def _tally(host: DevHost, storm: Storm, since: int, names: set[str]) -> None:
    """The storm's ARM calls: its POSTs, and the reads of its set, its machines and their operations."""
    ops = {o.id for o in host.sim.operations.values() if o.lock_key.rsplit("/", 1)[-1] in names}
    calls = host.sim.requests[since:]
    storm.posts = [p for p in calls if p["method"] == "POST" and p["path"].lower().endswith("/reimage")
                   and p["path"].split("/")[-2].lower() in names]
    storm.reads = sum(1 for r in calls if r["method"] == "GET" and (
        r["path"].rsplit("/", 1)[-1] in ops or names & set(r["path"].lower().split("/"))
        or any(f"/virtualmachinescalesets/{n}'" in str(r["query"]).lower() for n in names)))


async def run_storm(host: DevHost, base: str, time_limit: float) -> Storm:
    """The storm on a Uniform set: one scale-set POST per batch."""
    return (await run_storms(host, base, time_limit, flexible=False))[0]


async def run_storms(host: DevHost, base: str, time_limit: float, *, flexible: bool = True) -> list[Storm]:
    """The same storm on a Uniform set and, at the same time, on a Flexible set."""
    since = len(host.sim.requests)
    uniform = Storm(f"{base}/virtualMachineScaleSets/storm")
    host.sim.seed_scale_set(uniform.set_id, CAPACITY)
    work = [_send(host, uniform, [f"{uniform.set_id}/virtualMachines/{i}" for i in range(ALERTS)], time_limit)]
    flex = Storm(f"{base}/virtualMachineScaleSets/flexstorm", mode="Flexible")
    if flexible:
        host.sim.seed_scale_set(flex.set_id, CAPACITY, flexible=True)
        members = host.sim.members(flex.set_id)[:ALERTS]
        work.append(_send(host, flex, [m["id"] for m in members], time_limit))
    storms = list(await asyncio.gather(*work))
    _tally(host, uniform, since, {"storm"})
    if flexible:
        _tally(host, flex, since, {"flexstorm", *(m["name"].lower() for m in members)})
    return storms


def _short(storm: Storm, instance: str) -> str:
    return instance.removeprefix(f"{storm.name}_")  # a Flexible member: the part of its name ARM made up


def storm_table(*storms: Storm) -> str:
    """One row per batch: its set, its machines, its requests' outcomes and health, and how it was sent; then each
    storm's totals side by side (POSTs, ARM reads, time to all healthy)."""
    rows = [("set", "batch", "machines", "requests", "status", "health", "sent as")]
    for storm in storms:
        by_batch: dict[str, list[dict[str, Any]]] = {}
        for e in storm.events:
            by_batch.setdefault(e["data"].get("batchId") or "-", []).append(e["data"])
        for batch, items in sorted(by_batch.items(), key=lambda kv: min(d["completedAt"] or "" for d in kv[1])):
            machines = sorted({i for d in items for i in d["instanceIds"] or []}, key=lambda i: (len(i), i))
            sent = "1 set POST" if storm.mode == "Uniform" else f"{len(machines)} VM POSTs"
            rows.append((storm.name, batch[:10], ",".join(_short(storm, m) for m in machines), str(len(items)),
                         "/".join(sorted({d["status"] for d in items})),
                         "/".join(sorted({d["health"] or "-" for d in items})), sent))
    totals = [textwrap.fill(
        f"{s.mode} set {s.name}: {ALERTS} alerts (each sent twice) on {ALERTS} of {CAPACITY} machines -> "
        f"{s.accepted} requests, {s.refused} refused, {len(s.posts)} ARM POSTs, {s.reads} ARM reads, "
        f"{len(s.events)} completion events, all healthy after "
        f"{'-' if s.healthy_seconds is None else f'{s.healthy_seconds:.0f}'} s", WIDTH, subsequent_indent="    ")
        for s in storms]
    return "\n".join(totals) + "\n" + render(rows[0], rows[1:])
