"""Polling: ARM GETs and detection lag per operation, reimager's monitor loop vs azure-mgmt-compute's poller,
on operations whose durations vary as real reimages do.

Durations are drawn from a lognormal distribution with a fixed seed: median 150 s, 90th percentile 300 s
(one recorded scale-set reimage took 2 min 37 s, others 1-6 min). Each of BENCH_POLL_TARGETS VMs is
reimaged BENCH_POLL_DRAWS times in a row, one draw after the other; the first BENCH_POLL_WARMUP draws of each
VM only give reimager history (its ledger learns the target's durations from ARM's startTime/endTime), the
rest are the cases. The learned schedule so only ever knows earlier draws of the same VM, never the one it
polls. The peer reimages a twin VM with the same durations through `begin_reimage(...).result()` (its default
poller: Retry-After when ARM sends one, else every 30 s).

Everything runs on devhost's virtual clock (minutes in milliseconds; no load): the peer too, through an
azure-core transport whose `sleep` is the virtual clock's. The clock moves to the next timer only when every
side is waiting (its HTTP calls answered, the durable engine idle). Twice: ARM sends no Retry-After (as in
production: the recorded exchange has none), and ARM sends Retry-After BENCH_POLL_RETRY_AFTER (10 s).

Per case: GETs (reimager: its preflight GET of the VM + its status reads; the peer: its status reads incl.
its final GET of the Location URL) and lag (ARM's end of the operation to the moment each side knew:
reimager's completion event's `completedAt`, the peer's `result()` returning). A case is worse when reimager
spent more GETs or knew later than the peer did on the same draw.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench._host import peer_identity, percentile, tmpfs_dir
from bench._virtual import Activity, drive, virtual_transport

MEDIAN_S, P90_S = 150.0, 300.0
SIGMA = math.log(P90_S / MEDIAN_S) / 1.2815515655446004  # the 90th percentile of a standard normal
SEED = int(os.environ.get("BENCH_POLL_SEED", "27"))
TARGETS = int(os.environ.get("BENCH_POLL_TARGETS", "12"))
DRAWS = int(os.environ.get("BENCH_POLL_DRAWS", "16"))
WARMUP = int(os.environ.get("BENCH_POLL_WARMUP", "5"))
RETRY_AFTERS: list[int | None] = [None, int(os.environ.get("BENCH_POLL_RETRY_AFTER", "10"))]
SUB_RG = "/resourceGroups/reimager-demo/providers/Microsoft.Compute/virtualMachines/"
VM_BODY = {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}}


def draws(seed: int = SEED, targets: int = TARGETS, per_target: int = DRAWS) -> list[list[float]]:
    """Each target's durations, in the order they are reimaged (fixed seed: every run draws the same)."""
    rng = random.Random(seed)
    return [[MEDIAN_S * math.exp(rng.gauss(0.0, SIGMA)) for _ in range(per_target)] for _ in range(targets)]


class Group:
    """One Retry-After setting: the lanes of both sides and what they measured."""

    def __init__(self, dh: Any, retry_after: int | None, durations: list[list[float]]) -> None:
        self.dh, self.retry_after, self.durations = dh, retry_after, durations
        self.sub = dh.endpoints()["subscriptionId"]
        self.tag = f"ra{retry_after}".lower()
        self.activity = Activity()
        self.woken: dict[str, asyncio.Event] = {}  # operation id -> its lane's wake-up
        self.rows: list[dict[str, Any]] = []
        self.events_seen = 0
        self.completed: dict[str, datetime] = {}

    def vm(self, name: str) -> str:
        rid = f"/subscriptions/{self.sub}{SUB_RG}{name}"
        self.dh.sim.upsert(rid, VM_BODY)
        return rid

    def arm_op(self, name: str, index: int) -> Any:
        ops = sorted((o for o in self.dh.sim.operations.values() if o.lock_key.endswith("/" + name)),
                     key=lambda o: o.started)
        return ops[index]

    def read_events(self) -> None:
        """Completion events written since the last look; wake the lanes waiting on them."""
        import json

        path: Path = self.dh.events_file
        if not path.exists():
            return
        with path.open("rb") as f:
            f.seek(self.events_seen)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.events_seen += end
        for line in chunk[:end].splitlines():
            e = json.loads(line)
            if e["type"] == "reimager.operation.completed":
                op = e["data"]["operationId"]
                assert e["data"]["status"] == "Succeeded", e["data"]
                self.completed[op] = datetime.fromisoformat(e["data"]["completedAt"])
                if op in self.woken:
                    self.woken[op].set()

    async def ours(self, http: aiohttp.ClientSession, lane: int) -> None:
        name = f"ours-{self.tag}-{lane}"
        rid = self.vm(name)
        for k, d in enumerate(self.durations[lane]):
            self.dh.sim.durations[name] = d
            async with http.post(f"{self.dh.functions_url}/api/reimage", json={"target": rid}) as r:
                body = await r.json()
                assert r.status == 202, body
            op_id = str(body["operationId"])
            self.woken[op_id] = woken = asyncio.Event()
            if op_id not in self.completed:
                await self.activity.waiting(woken.wait())
            if k < WARMUP:
                continue
            op = self.arm_op(name, k)
            self.rows.append({"who": "ours", "lane": lane, "draw": k, "duration": d,
                              "gets": 1 + self.status_reads(op.id),
                              "lag": max(0.0, self.completed[op_id].timestamp() - op.end)})
        assert self.preflights(rid) == len(self.durations[lane]), (name, self.preflights(rid))

    async def theirs(self, peer: Any, lane: int) -> None:
        name = f"peer-{self.tag}-{lane}"
        self.vm(name)
        for k, d in enumerate(self.durations[lane]):
            if k < WARMUP:  # the peer learns nothing: it needs no history
                continue
            self.dh.sim.durations[name] = d
            poller = await peer.virtual_machines.begin_reimage("reimager-demo", name, enforce_https=False)
            await poller.result()
            known = self.dh.clock.now()
            op = self.arm_op(name, -1)
            self.rows.append({"who": "peer", "lane": lane, "draw": k, "duration": d, "gets": self.status_reads(op.id),
                              "lag": max(0.0, known - op.end)})

    def status_reads(self, op_id: str) -> int:
        return sum(1 for r in self.dh.sim.requests if r["method"] == "GET" and op_id in r["path"])

    def preflights(self, rid: str) -> int:
        return sum(1 for r in self.dh.sim.requests if r["method"] == "GET" and r["path"].lower() == rid.lower())


async def run_group(dh: Any, retry_after: int | None, durations: list[list[float]]) -> list[dict[str, Any]]:
    from azure.identity.aio import ManagedIdentityCredential
    from azure.mgmt.compute.aio import ComputeManagementClient

    dh.sim.retry_after = retry_after
    g = Group(dh, retry_after, durations)
    credential = ManagedIdentityCredential()
    peer = ComputeManagementClient(credential, g.sub, base_url=dh.arm_url,
                                   transport=virtual_transport(dh.clock, g.activity))

    async with aiohttp.ClientSession(headers={"x-functions-key": dh.function_key}) as http:
        tasks = g.activity.lanes([g.ours(http, i) for i in range(len(durations))]
                                 + [g.theirs(peer, i) for i in range(len(durations))])
        await drive(dh, g.activity, tasks, on_quiet=g.read_events)
    await peer.close()
    await credential.close()
    return g.rows


async def measure(durations: list[list[float]], retry_afters: list[int | None]) -> dict[int | None, list[Any]]:
    from devhost.clock import VirtualClock
    from devhost.durable import Fidelity
    from devhost.host import DevHost

    state = tmpfs_dir("bench-polling-")
    # Activities once each: devhost runs every activity twice by default (at-least-once, as hostile as Azure
    # can be), which would double every status read; in Azure a duplicate follows a crash. No evidence capture: it
    # reads the VM before each POST, and this measures the polling.
    dh = DevHost(clock=VirtualClock(), state_dir=state, operation_seconds=MEDIAN_S,
                 settings={"COOLDOWN_MINUTES": "0", "EVIDENCE": "off"},
                 durable_fidelity=Fidelity.without("duplicate_activities"))
    await dh.start()
    try:
        with peer_identity(dh):
            return {ra: await run_group(dh, ra, durations) for ra in retry_afters}
    finally:
        await dh.stop()


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ours = {(r["lane"], r["draw"]): r for r in rows if r["who"] == "ours"}
    peer = {(r["lane"], r["draw"]): r for r in rows if r["who"] == "peer"}
    assert ours.keys() == peer.keys()
    worse_gets = sum(1 for k in ours if ours[k]["gets"] > peer[k]["gets"])
    worse_lag = sum(1 for k in ours if ours[k]["lag"] > peer[k]["lag"] + 0.01)
    worse = sum(1 for k in ours if ours[k]["gets"] > peer[k]["gets"] or ours[k]["lag"] > peer[k]["lag"] + 0.01)
    lags, peer_lags = [r["lag"] for r in ours.values()], [r["lag"] for r in peer.values()]
    gets, peer_gets = sum(r["gets"] for r in ours.values()), sum(r["gets"] for r in peer.values())
    return {"cases": len(ours), "gets": gets, "peer_gets": peer_gets, "ratio": gets / peer_gets,
            "worse": worse, "worse_gets": worse_gets, "worse_lag": worse_lag,
            "lag_p50": percentile(lags, 0.5), "lag_p99": percentile(lags, 0.99), "lag_max": max(lags),
            "peer_lag_p50": percentile(peer_lags, 0.5), "peer_lag_p99": percentile(peer_lags, 0.99),
            "peer_lag_max": max(peer_lags)}


def oracle(rows: list[dict[str, Any]], retry_after: int | None) -> tuple[float, float]:
    """What limits the goal: the fewest GETs (as a ratio to the peer's) of a schedule that knows the true
    distribution, with lag p99 no later than the peer's. It polls from a low quantile q of the distribution, every L
    seconds (L: ARM's Retry-After, or the peer's lag p99 when ARM sends none), q the highest of the 0.1 / 0.5 / 1 %
    quantiles that keeps its lag p99 within the peer's. Returns (GETs ratio, its lag p99)."""
    ours = [r for r in rows if r["who"] == "ours"]
    peer = [r for r in rows if r["who"] == "peer"]
    peer_gets, bound = sum(r["gets"] for r in peer), percentile([r["lag"] for r in peer], 0.99)
    step = float(retry_after) if retry_after else bound
    best = (float("nan"), float("nan"))
    for z in (3.09, 2.576, 2.326):  # the 0.1, 0.5 and 1 % quantiles
        low = MEDIAN_S * math.exp(-z * SIGMA)
        first = math.ceil(low / step) * step if retry_after else low + step
        gets, lags = 0, []
        for r in ours:
            polls = 1 + max(0, math.ceil((r["duration"] - first) / step))
            gets += 1 + polls  # its preflight too
            lags.append(first + (polls - 1) * step - r["duration"])
        if percentile(lags, 0.99) <= bound + 0.01:
            best = (gets / peer_gets, percentile(lags, 0.99))
    return best


def main() -> None:
    durations = draws()
    cases = [d for lane in durations for d in lane[WARMUP:]]
    results = asyncio.run(measure(durations, RETRY_AFTERS))
    print(f"lognormal durations (seed {SEED}): median {MEDIAN_S:.0f} s, p90 {P90_S:.0f} s; {TARGETS} VMs x {DRAWS} "
          f"reimages in a row, the first {WARMUP} of each only history; cases: {len(cases)} draws, median "
          f"{statistics.median(cases):.0f} s, min {min(cases):.0f} s, max {max(cases):.0f} s; virtual clock")
    print("GETs: reimager = preflight + status reads; peer = status reads incl. its final Location GET")
    for ra, rows in results.items():
        s = summarise(rows)
        print(f"Retry-After {ra or 'none'}: GETs {s['gets']} vs {s['peer_gets']} (ratio {s['ratio']:.2f}); lag p50 "
              f"{s['lag_p50']:.1f} / p99 {s['lag_p99']:.1f} / max {s['lag_max']:.1f} s vs the peer's "
              f"{s['peer_lag_p50']:.1f} / {s['peer_lag_p99']:.1f} / {s['peer_lag_max']:.1f} s; cases worse "
              f"{s['worse']} of {s['cases']} (more GETs {s['worse_gets']}, later {s['worse_lag']})")
    for ra, rows in results.items():
        ratio, lag = oracle(rows, ra)
        print(f"what limits it, Retry-After {ra or 'none'}: a schedule that knew the true distribution, with lag p99 "
              f"no later than the peer's, would spend {ratio:.2f} x the peer's GETs (lag p99 {lag:.1f} s)")
    for ra, rows in results.items():
        s = summarise(rows)
        print(f"RESULT polling distribution=lognormal retry_after={ra or 'none'} cases={s['cases']} "
              f"gets_ratio_to_peer={s['ratio']:.3f} cases_worse_than_peer={s['worse']} lag_p50_s={s['lag_p50']:.1f} "
              f"lag_p99_s={s['lag_p99']:.1f} peer_lag_p50_s={s['peer_lag_p50']:.1f} "
              f"peer_lag_p99_s={s['peer_lag_p99']:.1f} gets={s['gets']} peer_gets={s['peer_gets']} "
              f"cases_more_gets={s['worse_gets']} cases_later={s['worse_lag']} "
              f"oracle_gets_ratio={oracle(rows, ra)[0]:.3f}")


if __name__ == "__main__":
    main()
