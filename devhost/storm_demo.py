"""The demo's storms, at the same time, on three 20-machine scale sets:

- 12 alerts on 12 instances of a Uniform set (each re-sent once, as action groups do): the first batch is a canary
  of one instance; once it came back healthy the rest ride a few batched POSTs, one at a time, each request ending
  with its own completion event and health;
- the same storm on a Flexible set: its members are VMs of their own, so its canary is one single-VM POST, and each
  batch after it a group of single-VM POSTs sent together (never more than the batch cap in flight), under the
  set's lease, cap, budgets and breaker as for the Uniform set;
- 6 alerts on a Uniform set whose image is bad (devhost's `healthAfter` reimage fault): its canary comes back
  unhealthy, the set is suspended (one `reimager.target.suspended`, CanaryFailed) after one POST, and the other 5
  requests end Canceled / TargetSuspended, each with its event."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
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
    mode: str = "Uniform"  # or "Flexible"
    alerts: int = ALERTS
    accepted: int = 0
    refused: int = 0
    started: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)  # its reimage POSTs, in the order ARM got them
    reads: int = 0  # its ARM reads (GETs of its set, its machines and their operations)
    evidence: int = 0  # its retrieveBootDiagnosticsData calls (evidence before the wipe)
    suspended: list[dict[str, Any]] = field(default_factory=list)
    members: list[str] = field(default_factory=list)  # a Flexible set's member VM names (lower case)
    bad: bool = False  # its image is bad: its canary is expected to suspend it

    @property
    def passed(self) -> bool:
        return self.suspended_ok if self.bad else self.ok

    @property
    def name(self) -> str:
        return self.set_id.rsplit("/", 1)[-1]

    @property
    def canary(self) -> dict[str, Any] | None:
        """The canary's own request's event data."""
        return next((e["data"] for e in self.events if (e["data"].get("canary") or {}).get("role") == "canary"), None)

    def machines(self, post: dict[str, Any]) -> list[str]:
        """What one POST reimages: a scale-set POST's instance ids, a single-VM POST's VM."""
        if self.mode == "Flexible":
            return [post["path"].rsplit("/", 2)[1]]
        return list((post.get("body") or {}).get("instanceIds") or [])

    def reimaged(self) -> Counter[str]:
        """Each machine a POST ARM accepted reimaged."""
        return Counter(m for p in self.posts if p.get("status", 202) == 202 for m in self.machines(p))

    @property
    def healthy_seconds(self) -> float | None:
        """From the first alert until the last machine was reimaged and healthy."""
        done = [datetime.fromisoformat(e["data"]["completedAt"]).timestamp() for e in self.events
                if e["data"].get("completedAt")]
        return max(done) - self.started if done and self.started else None

    @property
    def ok(self) -> bool:
        """A healthy storm: a canary of one machine went alone and passed, then every other machine was reimaged once,
        in batches of at most the cap (a Flexible set: one single-VM POST each, never a scale-set POST)."""
        reimaged, canary = self.reimaged(), self.canary
        batches = {e["data"].get("batchId") for e in self.events}
        rest = -(-(self.alerts - 1) // CAP)
        posts = self.alerts if self.mode == "Flexible" else 1 + rest
        return (self.refused == 0 and len(self.events) == self.alerts and canary is not None
                and canary["canary"]["outcome"] == "passed" and len(canary["canary"]["instanceIds"]) == 1
                and all(e["data"]["status"] == "Succeeded" for e in self.events)
                and [len(self.machines(p)) for p in self.posts][:1] == [1]  # the canary went alone
                and len(self.posts) == posts and len(batches) == 1 + rest
                and len(reimaged) == self.alerts and set(reimaged.values()) == {1}
                and not (self.mode == "Flexible" and any("scalesets" in p["path"].lower() for p in self.posts)))

    @property
    def suspended_ok(self) -> bool:
        """The bad image's storm: one POST, one CanaryFailed suspension, every other request ended by it."""
        canary = self.canary
        waited = [e["data"] for e in self.events if (e["data"].get("canary") or {}).get("role") == "waited"]
        return (len(self.posts) == 1 and len(self.suspended) == 1 and canary is not None
                and self.suspended[0]["data"]["suspension"].get("code") == "CanaryFailed"
                and canary["health"] == "Unhealthy" and len(waited) == self.alerts - 1
                and all((d["status"], d["error"]["code"]) == ("Canceled", "TargetSuspended") for d in waited))


def alert(target: str, alert_id: str) -> dict[str, Any]:
    return {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
        "alertId": alert_id, "alertRule": "instance-unhealthy", "severity": "Sev2",
        "signalType": "Metric", "monitorCondition": "Fired", "monitoringService": "Platform",
        "alertTargetIDs": [target], "firedDateTime": "2026-11-25T00:00:00Z"},
        "alertContext": {}}}


async def _storm(host: DevHost, run: Run, storm: Storm, targets: list[str], http: aiohttp.ClientSession,
                 deadline: float) -> Storm:
    async def send(i: int) -> Any:
        async with http.post(f"{host.functions_url}/api/alerts",
                             json=alert(targets[i], run.key(f"{storm.name}-{i}"))) as r:
            return await r.json()

    storm.started = host.clock.now()
    answers = await asyncio.gather(*(send(i) for i in range(storm.alerts) for _ in range(2)))
    ops = {a["operationId"] for b in answers for a in b.get("accepted", [])}
    storm.accepted = len(ops)
    storm.refused = sum(len(b.get("refused", [])) for b in answers)
    while time.monotonic() < deadline:
        storm.events = [e for e in run.events(host, "reimager.operation.completed")
                        if e["data"]["operationId"] in ops]
        storm.suspended = [e for e in run.events(host, "reimager.target.suspended")
                           if str(e["data"]["target"]).endswith(f"/{storm.name}")]
        # a bad image's storm also waits for its suspension's event, which may come just after the last request's
        if len(storm.events) >= len(ops) and (storm.suspended or not storm.bad):
            break
        await asyncio.sleep(0.25)
    _tally(host, storm)
    return storm


def _tally(host: DevHost, storm: Storm) -> None:
    """The storm's ARM calls (the simulator starts empty each demo run): its reimage POSTs, its evidence's boot
    diagnostics calls, and the reads of its set, its machines and their operations."""
    names = {storm.name.lower(), *storm.members}
    ops = {o.id for o in host.sim.operations.values() if o.lock_key.rsplit("/", 1)[-1] in names}
    calls = list(host.sim.requests)

    def mine(r: dict[str, Any]) -> bool:
        parts = r["path"].lower().split("/")
        return (parts[-1] in ops or bool(names & set(parts))
                or f"/virtualmachinescalesets/{storm.name.lower()}'" in str(r.get("query")).lower())

    storm.posts = [p for p in calls if p["method"] == "POST" and p["path"].lower().endswith("/reimage")
                   and p["path"].split("/")[-2].lower() in names]
    storm.evidence = sum(1 for p in calls if p["method"] == "POST" and mine(p)
                         and p["path"].lower().endswith("/retrievebootdiagnosticsdata"))
    storm.reads = sum(1 for r in calls if r["method"] == "GET" and mine(r))


async def run_storms(host: DevHost, run: Run, base: str, time_limit: float) -> list[Storm]:
    """The three storms at once: a healthy canary then batches on a Uniform set and on a Flexible set, and a bad
    image's canary suspending its set."""
    good = Storm(f"{base}/virtualMachineScaleSets/storm")
    flex = Storm(f"{base}/virtualMachineScaleSets/flexstorm", mode="Flexible")
    bad = Storm(f"{base}/virtualMachineScaleSets/storm-bad", alerts=BAD_ALERTS, bad=True)
    for storm in (good, flex, bad):
        host.sim.seed_scale_set(storm.set_id, CAPACITY, boot_diagnostics=True, flexible=storm.mode == "Flexible")
    host.sim.faults.append(Fault.model_validate({"match": "storm-bad/reimage", "healthAfter": "unhealthy",
                                                 "times": 100}))
    members = host.sim.members(flex.set_id)[:ALERTS]
    flex.members = [str(m["name"]).lower() for m in members]
    start = time.monotonic()
    async with aiohttp.ClientSession(headers={"x-functions-key": host.function_key}) as http:
        # the bad canary is judged when its minute of grace is over: it gets that long on top of the time limit
        await asyncio.gather(
            _storm(host, run, good, [f"{good.set_id}/virtualMachines/{i}" for i in range(ALERTS)], http,
                   start + time_limit),
            _storm(host, run, flex, [str(m["id"]) for m in members], http, start + time_limit),
            _storm(host, run, bad, [f"{bad.set_id}/virtualMachines/{i}" for i in range(BAD_ALERTS)], http,
                   start + time_limit + 90))
    return [good, flex, bad]


def _short(storm: Storm, machine: str) -> str:
    return machine.removeprefix(f"{storm.name}_")  # a Flexible member: the part of its name ARM made up


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"


def _ranges(ids: list[str]) -> str:
    return ",".join(ids) if len(ids) <= 6 else f"{','.join(ids[:5])},... ({len(ids)})"


def _summary(storm: Storm, width: int) -> list[str]:
    healthy = "-" if storm.healthy_seconds is None else f"{storm.healthy_seconds:.0f}"
    counts = [len(storm.machines(p)) for p in storm.posts]
    sizes = ("one single-VM POST per machine" if storm.mode == "Flexible" else
             f"{', '.join(map(str, counts))} machine{'' if counts == [1] else 's'}")
    ended = "all healthy" if not storm.suspended else "all ended"
    text = (f"{storm.mode} set {storm.name}: {storm.alerts} alerts (each sent twice) on {storm.alerts} of "
            f"{CAPACITY} machines -> {storm.accepted} requests, {storm.refused} refused, "
            f"{_n(len(storm.posts), 'ARM POST')} ({sizes}), {_n(storm.reads, 'ARM read')}, "
            f"{_n(storm.evidence, 'boot diagnostics call')}, {_n(len(storm.events), 'completion event')}, "
            f"{ended} after {healthy} s")
    canary = storm.canary
    if canary is not None:
        text += (f"\ncanary {canary['canary']['batchId'][:14]} ("
                 f"{', '.join(_short(storm, i) for i in canary['canary']['instanceIds'])}): "
                 f"{canary['canary']['outcome']}, health {canary['health']}")
    for e in storm.suspended:
        s = e["data"]["suspension"]
        text += f"\nsuspended {storm.name}: {s.get('code')} by {s.get('by')}: {s.get('reason')}"
    return [textwrap.fill(line, width, subsequent_indent="     ") for line in text.splitlines()]


def storm_table(*storms: Storm, width: int = WIDTH) -> str:
    """Each storm's totals (POSTs, ARM reads, time to all healthy) and its canary; then one row per batch: its set,
    its machines, its requests' canary roles, outcomes and health, and how it was sent."""
    rows = [("set", "batch", "machines", "requests", "canary", "status", "health", "sent as")]
    for storm in storms:
        by_batch: dict[str, list[dict[str, Any]]] = {}
        for e in storm.events:
            by_batch.setdefault(e["data"].get("batchId") or "-", []).append(e["data"])
        for batch, items in sorted(by_batch.items(), key=lambda kv: min(d["completedAt"] or "" for d in kv[1])):
            machines = sorted({i for d in items for i in d["instanceIds"] or []}, key=lambda i: (len(i), i))
            roles = "/".join(sorted({(d.get("canary") or {}).get("role") or "-" for d in items}))
            sent = "1 set POST" if storm.mode == "Uniform" else _n(len(machines), "VM POST")
            if all(d["status"] == "Canceled" for d in items):
                sent = "-"  # ended waiting: never sent
            rows.append((storm.name, batch[:10], _ranges([_short(storm, m) for m in machines]), str(len(items)),
                         roles, "/".join(sorted({d["status"] for d in items})),
                         "/".join(sorted({d["health"] or "-" for d in items})), sent))
    lines = [line for storm in storms for line in _summary(storm, width)]
    return "\n".join(lines) + "\n" + render(rows[0], rows[1:], width)
