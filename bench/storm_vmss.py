"""Scale-set storm: N alerts (N = 20, 100), one per unhealthy instance of a 200-instance scale set, at once.

reimager: each alert POSTed to /api/alerts as an Azure Monitor action group delivers it: a 10 s
time-out, retried after 5, 20, 40, 40, 40 s on 408, 429, 503, 504 and time-outs only; any other
answer ends the delivery (MicrosoftDocs action-groups.md; docs/fidelity.md G1). An alert whose
final answer accepted nothing is dropped.

The peer, side by side on a second 200-instance set of the same simulator: one runbook per alert
calling azure-mgmt-compute `virtual_machine_scale_set_vms.begin_reimage(rg, set, instance)` and
waiting for it, what people write today. The simulator preempts a running operation on a set when
a newer one arrives (ARM's OperationPreempted), so most of those runbooks end Canceled.

Per side: ARM writes (reimage POSTs), ARM reads (GETs of the set, its instances and its operations),
dropped or preempted requests, instances reimaged twice, and the time until every alerted instance
was reimaged (and reported healthy, for reimager). Written against the public HTTP API and events,
so it measures whatever the app on main does; settings: MAX_BATCH_PERCENT 20 (the default),
FLEET_BUDGET_PERCENT and BREAKER_PERCENT 100 (the storm is not throttled by them), MAX_INSTANCES_PER_REQUEST
40 (so the batch cap is the 20 % of 200 = 40, not the per-request limit of 10).
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import random
import time
from datetime import datetime
from typing import Any

import aiohttp

from bench._host import ROOT, ThreadedDevhost, complete_lines

SIZES = [int(n) for n in os.environ.get("BENCH_STORM", "20,100").split(",")]
CAPACITY = 200
OPERATION_SECONDS = 5.0
RETRY_DELAYS = [5, 20, 40, 40, 40]
RETRY_STATUSES = {408, 429, 503, 504}
WEBHOOK_TIMEOUT = 10
WAIT_SECONDS = float(os.environ.get("BENCH_STORM_WAIT", "120"))
SETTINGS = {"MAX_BATCH_PERCENT": "20", "FLEET_BUDGET_PERCENT": "100", "BREAKER_PERCENT": "100",
            "MAX_INSTANCES_PER_REQUEST": "40", "POLL_MIN_SECONDS": "1"}
GROUP = "reimager-demo"


def alert_for(sample: dict[str, Any], instance_id: str, n: int, i: int) -> dict[str, Any]:
    alert = copy.deepcopy(sample)
    ess = alert["data"]["essentials"]
    ess["alertId"] = f"/subscriptions/x/providers/Microsoft.AlertsManagement/alerts/storm-{n}-{i}"
    ess["alertTargetIDs"] = [instance_id.lower()]
    ess["signalType"], ess["monitoringService"] = "Metric", "Platform"
    alert["data"]["alertContext"] = {"condition": {"allOf": [{"metricName": "VmAvailabilityMetric"}]}}
    return alert


class Side:
    """One side's scale set and what ARM saw of it."""

    def __init__(self, dh: Any, name: str, capacity: int = CAPACITY) -> None:
        self.dh, self.name = dh, name
        self.id = (f"/subscriptions/{dh.endpoints()['subscriptionId']}/resourceGroups/{GROUP}/providers/"
                   f"Microsoft.Compute/virtualMachineScaleSets/{name}")
        dh.sim.seed_scale_set(self.id, capacity)
        self.first_request = len(dh.sim.requests)

    def ops(self) -> list[Any]:
        return [o for o in self.dh.sim.operations.values() if o.lock_key == self.id.lower()]

    def writes(self) -> int:
        return sum(1 for r in self.dh.sim.requests[self.first_request:] if r["method"] == "POST"
                   and f"/{self.name}/" in r["path"].lower() + "/" and r["path"].lower().endswith(("/reimage",
                                                                                                  "/reimageall")))

    def reads(self) -> int:
        op_ids = {o.id for o in self.ops()}
        return sum(1 for r in self.dh.sim.requests[self.first_request:] if r["method"] == "GET" and (
            f"/{self.name}" in r["path"].lower() or r["path"].rsplit("/", 1)[-1] in op_ids))

    def throttled(self) -> int:
        """Requests of this side ARM answered 429 (the simulator throttles as Compute and ARM do: --arm-limits)."""
        op_ids = {o.id for o in self.ops()}
        return sum(1 for r in self.dh.sim.requests[self.first_request:] if r["status"] == 429 and (
            f"/{self.name}" in r["path"].lower() or r["path"].rsplit("/", 1)[-1] in op_ids))

    def reimaged(self, instances: list[str]) -> tuple[dict[str, int], float | None]:
        """Successful reimages per alerted instance, and when the last of them first got one (ARM time)."""
        now = self.dh.clock.now()
        count = dict.fromkeys(instances, 0)
        first: dict[str, float] = {}
        for op in self.ops():
            if op.status(now) != "Succeeded":
                continue
            for key in op.instance_keys:
                inst = key.partition("#")[2]
                if inst in count:
                    count[inst] += 1
                    first[inst] = min(first.get(inst, op.end), op.end)
        return count, (max(first.values()) if len(first) == len(instances) else None)


async def deliver(http: aiohttp.ClientSession, url: str, alert: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """An action group's delivery: the final answer after its retries."""
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            async with http.post(url, json=alert, timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT)) as r:
                text = await r.text()
                if r.status not in RETRY_STATUSES:
                    return r.status, (json.loads(text) if text else {})
        except TimeoutError:
            pass
        if attempt < len(RETRY_DELAYS):
            await asyncio.sleep(RETRY_DELAYS[attempt])
    return 0, {}


async def peer_runbook(peer: Any, set_name: str, instance: str) -> str:
    """The peer: one runbook per alert, `begin_reimage` of the instance and its poller to the end. Its outcome:
    Succeeded, or ARM's error code."""
    from azure.core.exceptions import HttpResponseError

    try:
        poller = await peer.virtual_machine_scale_set_vms.begin_reimage(GROUP, set_name, instance, enforce_https=False)
        await poller.result()
        return "Succeeded"
    except HttpResponseError as exc:
        return getattr(exc.error, "code", None) or str(exc.status_code)


async def storm(dh: Any, n: int) -> dict[str, Any]:
    from azure.identity.aio import ManagedIdentityCredential
    from azure.mgmt.compute.aio import ComputeManagementClient

    ours, theirs = Side(dh, f"storm-ours-{n}"), Side(dh, f"storm-peer-{n}")
    rng = random.Random(n)
    picked = sorted(rng.sample(range(CAPACITY), n))
    instances = [str(i) for i in picked]
    sample = json.loads((ROOT / "devhost/samples/activity-log-alert.json").read_text())
    alerts = [alert_for(sample, f"{ours.id}/virtualMachines/{i}", n, k) for k, i in enumerate(instances)]
    credential = ManagedIdentityCredential()
    peer = ComputeManagementClient(credential, dh.endpoints()["subscriptionId"], base_url=dh.arm_url)
    peer_outcomes: list[str] = []

    async def runbook(instance: str) -> None:
        peer_outcomes.append(await peer_runbook(peer, theirs.name, instance))

    start = time.time()
    answers: list[tuple[int, dict[str, Any]]] = []
    async with aiohttp.ClientSession(headers={"x-functions-key": dh.function_key}) as http:
        url = f"{dh.functions_url}/api/alerts"
        results = await asyncio.gather(asyncio.gather(*(deliver(http, url, a) for a in alerts)),
                                       asyncio.gather(*(runbook(i) for i in instances)))
        answers = list(results[0])
    await peer.close()
    await credential.close()
    accepted_ops = {a["operationId"] for _, body in answers for a in body.get("accepted", [])}
    dropped = [body.get("refused") or status for status, body in answers if not body.get("accepted")]
    # wait for every accepted request's completion event, and for ARM to have reimaged every instance
    healthy_at: float | None = None
    deadline = time.time() + WAIT_SECONDS
    while time.time() < deadline:  # every accepted request ends with one completion event
        done = {e["data"]["operationId"]: e for e in complete_lines(dh.events_file)
                if e["type"] == "reimager.operation.completed" and e["data"]["operationId"] in accepted_ops}
        if len(done) >= len(accepted_ops):
            if done and all((e["data"].get("health") or "Unknown") == "Healthy" for e in done.values()):
                healthy_at = max(datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
                                 for e in done.values())
            break
        await asyncio.sleep(0.5)
    done = {e["data"]["operationId"]: e for e in complete_lines(dh.events_file)
            if e["type"] == "reimager.operation.completed" and e["data"]["operationId"] in accepted_ops}
    counts, ours_last = ours.reimaged(instances)
    peer_counts, peer_last = theirs.reimaged(instances)
    batches = [len(o.instance_keys) for o in ours.ops()]
    statuses: dict[str, int] = {}
    for e in done.values():
        statuses[e["data"]["status"]] = statuses.get(e["data"]["status"], 0) + 1
    cap = max(1, min(CAPACITY * int(SETTINGS["MAX_BATCH_PERCENT"]) // 100, int(SETTINGS["MAX_INSTANCES_PER_REQUEST"])))
    return {
        "n": n, "posts": ours.writes(), "reads": ours.reads(), "throttled": ours.throttled(), "dropped": len(dropped),
        "drop_reasons": drop_reasons(dropped),
        "twice": sum(1 for c in counts.values() if c > 1), "reimaged": sum(1 for c in counts.values() if c),
        "all_reimaged_s": (ours_last - start) if ours_last else None,
        "healthy_s": (healthy_at - start) if healthy_at and ours_last else None, "max_batch": max(batches, default=0),
        "batch_cap": cap, "goal_posts": math.ceil(n / cap), "completions": statuses,
        "peer_posts": theirs.writes(), "peer_reads": theirs.reads(), "peer_throttled": theirs.throttled(),
        "peer_preempted": sum(1 for o in peer_outcomes if o != "Succeeded"),
        "peer_twice": sum(1 for c in peer_counts.values() if c > 1),
        "peer_reimaged": sum(1 for c in peer_counts.values() if c),
        "peer_all_reimaged_s": (peer_last - start) if peer_last else None,
    }


def drop_reasons(dropped: list[Any]) -> dict[str, int]:
    """How many dropped alerts ended with each answer: the refusal's error code, else the HTTP status."""
    out: dict[str, int] = {}
    for d in dropped:
        codes = [str(r.get("error", {}).get("code")) for r in d] if isinstance(d, list) else [f"HTTP {d}"]
        for code in codes:
            out[code] = out.get(code, 0) + 1
    return out


def fmt(seconds: float | None) -> str:
    return f"{seconds:.1f}" if seconds is not None else "never"


def main() -> None:
    from devhost.durable import Fidelity

    results = []
    # ARM's published limits stay on (the simulator's default): the storm's reads and 429s are what this compares.
    with ThreadedDevhost(operation_seconds=OPERATION_SECONDS, retry_after=1, settings=SETTINGS,
                         durable_fidelity=Fidelity.without("duplicate_activities")) as dh:
        os.environ["IDENTITY_ENDPOINT"], os.environ["IDENTITY_HEADER"] = dh.identity_url, dh.issuer.header_secret
        for n in SIZES:
            results.append(asyncio.run(storm(dh, n)))
    print(f"scale-set storm: N alerts on N instances of a {CAPACITY}-instance set, {OPERATION_SECONDS:.0f} s "
          "operations, ARM Retry-After 1 s; reimager and the peer side by side on two sets of one simulator")
    print(f"{'N':>4} {'side':<9} {'writes':>6} {'reads':>6} {'429s':>5} {'dropped/preempted':>17} {'twice':>5} "
          f"{'reimaged':>8} {'all reimaged s':>14} {'healthy s':>9}  notes")
    for r in results:
        print(f"{r['n']:>4} {'reimager':<9} {r['posts']:>6} {r['reads']:>6} {r['throttled']:>5} {r['dropped']:>17} "
              f"{r['twice']:>5} "
              f"{r['reimaged']:>8} {fmt(r['all_reimaged_s']):>14} {fmt(r['healthy_s']):>9}  max batch "
              f"{r['max_batch']} (cap {r['batch_cap']}; goal <= {r['goal_posts']} writes); completions "
              f"{r['completions']}; refusals {r['drop_reasons']}")
        print(f"{r['n']:>4} {'peer':<9} {r['peer_posts']:>6} {r['peer_reads']:>6} {r['peer_throttled']:>5} "
              f"{r['peer_preempted']:>17} "
              f"{r['peer_twice']:>5} {r['peer_reimaged']:>8} {fmt(r['peer_all_reimaged_s']):>14} {'-':>9}  "
              "one runbook per alert")
    r = results[-1]
    print(f"RESULT storm_vmss alerts={r['n']} posts={r['posts']} peer_posts={r['peer_posts']} dropped={r['dropped']} "
          f"twice={r['twice']} max_batch={r['max_batch']} peer_preempted={r['peer_preempted']} reads={r['reads']} "
          f"throttled={r['throttled']} peer_throttled={r['peer_throttled']} "
          f"peer_reads={r['peer_reads']} reimaged={r['reimaged']} peer_reimaged={r['peer_reimaged']} "
          f"all_reimaged_s={fmt(r['all_reimaged_s'])} peer_all_reimaged_s={fmt(r['peer_all_reimaged_s'])}")


if __name__ == "__main__":
    main()
