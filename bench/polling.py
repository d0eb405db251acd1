"""Polling: ARM GETs and detection lag per case, reimager's monitor loop vs azure-mgmt-compute's poller.

The same simulated operations (3, 6, 12 s; Retry-After absent, 1, 3 s), on devhost's real clock,
side by side: reimager through POST /api/reimage and its durable loop (app defaults), the peer
through `begin_reimage(...).result()` with its default polling. One group per Retry-After (the
simulator sends one Retry-After to everyone); inside a group every case runs at once.

Counted per case, from the simulator's request log:
- reimager: its preflight GET of the VM (exactly one per reimage; checked) + its status reads;
- the peer: its status reads, including the final GET of the Location URL the SDK makes for a POST.
Lag: ARM's end of the operation to the moment each side knew (reimager: the completion event's
`completedAt`; the peer: `result()` returning).

Without Retry-After (production: the recorded exchange has none) reimager learns each target's
duration from the ledger (ARM's own startTime/endTime of its past reimages). The "learned" point
is the second reimage of a target; the "fixed" curve is the first reimage of fresh targets at
POLL_DEFAULT_SECONDS = 3, 5, 10, 15 (the default), 30.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

import aiohttp

from bench._host import ThreadedDevhost, complete_lines

DURATIONS = [3.0, 6.0, 12.0]
RETRY_AFTERS: list[int | None] = [None, 1, 3]
FIXED_INTERVALS = [3, 5, 10, 15, 30]
# Lag differences below this are timer and thread scheduling on a shared 2-core machine, not the schedule.
LAG_TOLERANCE = 0.05
SUB_RG = "/resourceGroups/reimager-demo/providers/Microsoft.Compute/virtualMachines/"
VM_BODY = {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}}


class Group:
    def __init__(self, dh: Any, retry_after: int | None) -> None:
        self.dh, self.retry_after = dh, retry_after
        self.sub = dh.endpoints()["subscriptionId"]
        self.http: aiohttp.ClientSession | None = None
        self.settings_lock = asyncio.Lock()  # one submission at a time while the app's settings are swapped

    def vm(self, name: str, duration: float) -> str:
        rid = f"/subscriptions/{self.sub}{SUB_RG}{name}"
        self.dh.sim.upsert(rid, VM_BODY)
        self.dh.sim.durations[name] = duration
        return rid

    async def submit(self, rid: str, poll_default: int | None = None) -> str:
        """POST /api/reimage; with `poll_default`, as an app whose POLL_DEFAULT_SECONDS is that."""
        assert self.http is not None
        runtime, base = self.dh.runtime, self.dh.settings
        async with self.settings_lock:
            if poll_default is not None:
                runtime.settings = base.model_copy(update={"poll_default_seconds": poll_default})
            try:
                async with self.http.post(f"{self.dh.functions_url}/api/reimage", json={"target": rid}) as r:
                    body = await r.json()
                    assert r.status == 202, body
            finally:
                runtime.settings = base
        return str(body["operationId"])

    async def completed(self, op: str) -> float:
        """When reimager knew: the completion event's completedAt."""
        while True:
            for e in complete_lines(self.dh.events_file):
                if e["type"] == "reimager.operation.completed" and e["data"]["operationId"] == op:
                    assert e["data"]["status"] == "Succeeded", e["data"]
                    from datetime import datetime

                    return datetime.fromisoformat(e["data"]["completedAt"]).timestamp()
            await asyncio.sleep(0.05)

    def arm_op(self, name: str, index: int = -1) -> Any:
        ops = sorted((o for o in self.dh.sim.operations.values() if o.lock_key.endswith("/" + name)),
                     key=lambda o: o.started)
        return ops[index]

    def status_reads(self, op_id: str) -> int:
        return sum(1 for r in self.dh.sim.requests if r["method"] == "GET" and op_id in r["path"])

    def preflights(self, rid: str) -> int:
        return sum(1 for r in self.dh.sim.requests if r["method"] == "GET" and r["path"].lower() == rid.lower())


async def run_group(dh: Any, retry_after: int | None, rows: list[dict[str, Any]]) -> None:
    from azure.identity.aio import ManagedIdentityCredential
    from azure.mgmt.compute.aio import ComputeManagementClient

    dh.sim.retry_after = retry_after
    g = Group(dh, retry_after)
    tag = f"ra{retry_after}".lower()
    credential = ManagedIdentityCredential()
    peer = ComputeManagementClient(credential, g.sub, base_url=dh.arm_url)

    async def theirs(d: float) -> None:
        name = f"peer-{tag}-d{int(d)}"
        g.vm(name, d)
        poller = await peer.virtual_machines.begin_reimage("reimager-demo", name, enforce_https=False)
        await poller.result()
        known = time.time()
        op = g.arm_op(name)
        rows.append({"who": "peer", "schedule": "sdk", "retryAfter": retry_after, "duration": d,
                     "gets": g.status_reads(op.id), "lag": max(0.0, known - op.end)})

    async def ours(d: float, schedule: str, poll_default: int | None = None, history: bool = False) -> None:
        name = f"ours-{tag}-{schedule}-d{int(d)}"
        rid = g.vm(name, d)
        if history:  # one earlier reimage of the same target, so the ledger knows its duration
            await g.completed(await g.submit(rid))
        op_id = await g.submit(rid, poll_default)
        known = await g.completed(op_id)
        op = g.arm_op(name)
        reimages = 2 if history else 1
        assert g.preflights(rid) == reimages, (name, g.preflights(rid))
        rows.append({"who": "ours", "schedule": schedule, "retryAfter": retry_after, "duration": d,
                     "gets": 1 + g.status_reads(op.id), "lag": max(0.0, known - op.end)})

    async with aiohttp.ClientSession(headers={"x-functions-key": dh.function_key}) as g.http:
        work = [theirs(d) for d in DURATIONS]
        if retry_after is None:
            work += [ours(d, "learned", history=True) for d in DURATIONS]
            for interval in FIXED_INTERVALS:
                work += [ours(d, f"fixed{interval}", poll_default=interval) for d in DURATIONS]
        else:
            work += [ours(d, "app") for d in DURATIONS]
        await asyncio.gather(*work)
    await peer.close()
    await credential.close()


def minimum(d: float, retry_after: int | None) -> int:
    """Status reads the operation needs at the least: ceil(D / R) following Retry-After R; without one, one
    read after it ended (what a schedule that knew the duration would spend)."""
    return math.ceil(d / retry_after) if retry_after else 1


def main() -> None:
    rows: list[dict[str, Any]] = []
    from devhost.durable import Fidelity

    # Activities once each: devhost runs every activity twice by default (at-least-once, as hostile as
    # Azure can be), which would double every status read; in Azure a duplicate follows a crash.
    with ThreadedDevhost(operation_seconds=5, settings={"COOLDOWN_MINUTES": "0"},
                         durable_fidelity=Fidelity.without("duplicate_activities")) as dh:
        os.environ["IDENTITY_ENDPOINT"], os.environ["IDENTITY_HEADER"] = dh.identity_url, dh.issuer.header_secret
        for ra in RETRY_AFTERS:
            asyncio.run(run_group(dh, ra, rows))

    def point(who: str, schedule: str, ra: int | None, d: float) -> dict[str, Any]:
        key = (who, schedule, ra, d)
        return next(r for r in rows if (r["who"], r["schedule"], r["retryAfter"], r["duration"]) == key)

    app_schedule = {None: "learned", 1: "app", 3: "app"}
    print("per case: reimager (app defaults; 'learned' = with one past reimage of the target) vs the peer.")
    print("GETs: reimager = preflight + status reads; peer = status reads incl. its final Location GET.")
    print(f"a case is worse when reimager spends more GETs, or detects more than {LAG_TOLERANCE * 1000:.0f} ms later")
    print(f"{'Retry-After':>11} {'D s':>4} {'min reads':>9} | {'GETs':>4} {'lag s':>6} | {'peer GETs':>9} "
          f"{'lag s':>6} | {'GETs ratio':>10} {'lag ratio':>9} worse")
    worse_cases, cases = 0, 0
    ours_rows, peer_rows = [], []
    for ra in RETRY_AFTERS:
        for d in DURATIONS:
            o, p = point("ours", app_schedule[ra], ra, d), point("peer", "sdk", ra, d)
            ours_rows.append(o)
            peer_rows.append(p)
            worse = o["gets"] > p["gets"] or o["lag"] > p["lag"] + LAG_TOLERANCE
            cases += 1
            worse_cases += worse
            lag_ratio = o["lag"] / p["lag"] if p["lag"] > 0.001 else float("nan")
            print(f"{ra!s:>11} {d:>4.0f} {minimum(d, ra):>9} | {o['gets']:>4} {o['lag']:>6.2f} | {p['gets']:>9} "
                  f"{p['lag']:>6.2f} | {o['gets'] / p['gets']:>10.2f} {lag_ratio:>9.2f} {'WORSE' if worse else ''}")
    print("\nwithout Retry-After, the curve (total over D = 3, 6, 12 s): GETs incl. preflight vs total lag")
    peer_none = [point("peer", "sdk", None, d) for d in DURATIONS]
    peer_total = sum(r["lag"] for r in peer_none)
    print(f"  {'peer (SDK, 30 s)':<22} GETs {sum(r['gets'] for r in peer_none):>3}  lag {peer_total:6.2f} s")
    for schedule in [f"fixed{i}" for i in FIXED_INTERVALS] + ["learned"]:
        pts = [point("ours", schedule, None, d) for d in DURATIONS]
        label = f"reimager {schedule.replace('fixed', 'fixed ') + (' s' if schedule != 'learned' else '')}"
        print(f"  {label:<22} GETs {sum(r['gets'] for r in pts):>3}  lag {sum(r['lag'] for r in pts):6.2f} s")
    gets, peer_gets = sum(r["gets"] for r in ours_rows), sum(r["gets"] for r in peer_rows)
    lag, peer_lag = sum(r["lag"] for r in ours_rows), sum(r["lag"] for r in peer_rows)
    minimum_gets = sum(1 + minimum(r["duration"], r["retryAfter"]) for r in ours_rows)
    print(f"RESULT polling gets_ratio_to_peer={gets / peer_gets:.3f} cases={cases} cases_worse_than_peer={worse_cases} "
          f"lag_ratio_to_peer={lag / peer_lag:.3f} gets={gets} peer_gets={peer_gets} minimum_gets={minimum_gets} "
          f"lag_s={lag:.2f} peer_lag_s={peer_lag:.2f}")


if __name__ == "__main__":
    main()
