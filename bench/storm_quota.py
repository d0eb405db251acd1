"""storm_quota: 100 alerts, one per instance of one 100-instance scale set, under Compute's and ARM's published
limits (the simulator's default, ArmLimits.azure()), reimager against one `begin_reimage` runbook per alert.

reimager: each alert POSTed to /api/alerts as an Azure Monitor action group delivers it: a 10 s time-out, retried
after 5, 20, 40, 40, 40 s on 408, 429, 503, 504 and time-outs only (docs/fidelity.md G1); every alert is sent at
once. The peer, side by side on a second 100-instance set of the same simulator and subscription: one runbook per
alert calling azure-mgmt-compute `virtual_machine_scale_set_vms.begin_reimage(rg, set, instance)` and waiting for
its poller, what people write today. ARM takes OPERATION_SECONDS per reimage and sends no Retry-After (as the
recorded exchange), on devhost's virtual clock (the peer's waits too), so both sides meet the buckets as they
refill in time, not as fast as this machine can send.

Counted per side from the simulator's request log: ARM writes (reimage POSTs), ARM reads (GETs of the set, its
instances and its operations), requests ARM answered 429, and the alerted instances reimaged (at least once).
Settings: BREAKER_PERCENT and FLEET_BUDGET_PERCENT 100 (a storm on every instance is what this measures, not
what the breaker would stop), MAX_INSTANCES_PER_REQUEST 100; MAX_BATCH_PERCENT keeps its default (20), so a batch
holds at most 20 instances.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import aiohttp

from bench._host import ROOT, complete_lines, peer_identity, tmpfs_dir
from bench._virtual import Activity, drive, virtual_transport
from bench.storm_vmss import RETRY_DELAYS, RETRY_STATUSES, Side, alert_for, peer_runbook

ALERTS = int(os.environ.get("BENCH_STORM_QUOTA", "100"))
OPERATION_SECONDS = 10.0
SETTINGS = {"BREAKER_PERCENT": "100", "FLEET_BUDGET_PERCENT": "100", "MAX_INSTANCES_PER_REQUEST": "100"}


async def deliver(http: aiohttp.ClientSession, url: str, alert: dict[str, Any], clock: Any,
                  activity: Activity) -> tuple[int, dict[str, Any]]:
    """An action group's delivery, its retry delays on the virtual clock: the final answer after its retries."""
    for attempt in range(len(RETRY_DELAYS) + 1):
        async with http.post(url, json=alert) as r:
            text = await r.text()
            if r.status not in RETRY_STATUSES:
                return r.status, (json.loads(text) if text else {})
        if attempt < len(RETRY_DELAYS):
            await activity.waiting(clock.sleep(RETRY_DELAYS[attempt]))
    return 0, {}


async def storm(n: int = ALERTS) -> dict[str, Any]:
    from azure.identity.aio import ManagedIdentityCredential
    from azure.mgmt.compute.aio import ComputeManagementClient

    from devhost.clock import VirtualClock
    from devhost.host import DevHost

    dh = DevHost(clock=VirtualClock(), state_dir=tmpfs_dir("bench-storm-quota-"),
                 operation_seconds=OPERATION_SECONDS, retry_after=None, settings=SETTINGS)
    await dh.start()  # ARM's limits: the simulator's default, Azure's published ones
    with peer_identity(dh):
        try:
            ours, theirs = Side(dh, "quota-ours", n), Side(dh, "quota-peer", n)
            instances = [str(i) for i in range(n)]
            sample = json.loads((ROOT / "devhost/samples/activity-log-alert.json").read_text())
            alerts = [alert_for(sample, f"{ours.id}/virtualMachines/{i}", n, k) for k, i in enumerate(instances)]
            activity = Activity()
            credential = ManagedIdentityCredential()
            peer = ComputeManagementClient(credential, dh.endpoints()["subscriptionId"], base_url=dh.arm_url,
                                           transport=virtual_transport(dh.clock, activity))
            answers: list[tuple[int, dict[str, Any]]] = []
            peer_outcomes: list[str] = []

            async def alerting(alert: dict[str, Any]) -> None:
                answers.append(await deliver(http, f"{dh.functions_url}/api/alerts", alert, dh.clock, activity))

            async def runbook(instance: str) -> None:
                peer_outcomes.append(await peer_runbook(peer, theirs.name, instance))

            def every_request_ended() -> bool:
                accepted = {a["operationId"] for _, body in answers for a in body.get("accepted", [])}
                done = {e["data"]["operationId"] for e in complete_lines(dh.events_file)
                        if e["type"] == "reimager.operation.completed"}
                return accepted <= done

            start = dh.clock.now()
            async with aiohttp.ClientSession(headers={"x-functions-key": dh.function_key}) as http:
                tasks = activity.lanes([alerting(a) for a in alerts] + [runbook(i) for i in instances])
                await drive(dh, activity, tasks, until=every_request_ended)
            await peer.close()
            await credential.close()
            counts, ours_last = ours.reimaged(instances)
            peer_counts, peer_last = theirs.reimaged(instances)
            return {
                "alerts": n, "accepted": sum(1 for _, b in answers if b.get("accepted")),
                "throttled": ours.throttled(), "reads": ours.reads(), "writes": ours.writes(),
                "reimaged": sum(1 for c in counts.values() if c), "twice": sum(1 for c in counts.values() if c > 1),
                "all_reimaged_s": (ours_last - start) if ours_last else None,
                "peer_throttled": theirs.throttled(), "peer_reads": theirs.reads(), "peer_writes": theirs.writes(),
                "peer_reimaged": sum(1 for c in peer_counts.values() if c),
                "peer_failed": sum(1 for o in peer_outcomes if o != "Succeeded"),
                "peer_all_reimaged_s": (peer_last - start) if peer_last else None,
            }
        finally:
            await dh.stop()


def fmt(seconds: float | None) -> str:
    return f"{seconds:.0f}" if seconds is not None else "never"


def main() -> None:
    r = asyncio.run(storm())
    print(f"{r['alerts']} alerts on the {r['alerts']} instances of one set, Compute's and ARM's published limits, "
          f"{OPERATION_SECONDS:.0f} s reimages, no Retry-After; virtual clock")
    print(f"  reimager: {r['writes']} POSTs, {r['reads']} reads, {r['throttled']} answered 429, {r['accepted']} alerts "
          f"accepted, {r['reimaged']} instances reimaged ({r['twice']} twice), all by {fmt(r['all_reimaged_s'])} s")
    print(f"  peer:     {r['peer_writes']} POSTs, {r['peer_reads']} reads, {r['peer_throttled']} answered 429, "
          f"{r['peer_failed']} runbooks failed, {r['peer_reimaged']} instances reimaged, all by "
          f"{fmt(r['peer_all_reimaged_s'])} s")
    print(f"RESULT storm_quota alerts={r['alerts']} throttled={r['throttled']} reads={r['reads']} writes={r['writes']} "
          f"reimaged={r['reimaged']} peer_throttled={r['peer_throttled']} peer_reimaged={r['peer_reimaged']} "
          f"peer_reads={r['peer_reads']} peer_writes={r['peer_writes']} twice={r['twice']} "
          f"all_reimaged_s={fmt(r['all_reimaged_s'])} peer_all_reimaged_s={fmt(r['peer_all_reimaged_s'])}")


if __name__ == "__main__":
    main()
