"""Scale-out: 1, 2 and 4 app processes behind one front, sharing one Azurite (the ledger) and one ARM simulator,
each with its own durable stand-in (an orchestration stays on the instance that started it, as a control-queue
partition does), taking one mixed burst. What Azure runs when Flex Consumption scales the app out.

Processes: `--shared DIR` serves the ARM simulator, the identity endpoint and Azurite; each `--worker DIR I` is a
devhost (the real function_app through the real libraries) pointed at them (devhost.host.ExternalArm and an
AzureWebJobsStorage setting); the driver runs the front (round-robin, as the platform's load balancer spreads
HTTP requests) and sends the burst through it at concurrency CONCURRENCY:
- same-key races: RACES VMs, each asked COPIES times with one requestId (an at-least-once caller);
- fresh keys on shared VMs: SHARED VMs, each asked COPIES times with no requestId (several people at once);
- fresh VMs: FRESH VMs, once each (the bulk of the throughput);
- a storm: STORM alerts, one per instance of a STORM_CAPACITY-instance scale set, at /api/alerts.
The same burst, on fresh processes, for each worker count.

Checked across processes (from the simulator's request log and every worker's events):
- posts_per_key_max: reimage POSTs ARM accepted per requestId (race VMs);
- reimages_within_cooldown_max: reimages ARM accepted per VM or scale-set instance (every request here falls in
  one COOLDOWN_MINUTES window);
- events_per_request_max: completion events per accepted request (every one must have exactly one);
- rps: answered requests per second of the burst (first sent to last answered); cpu_cores: CPU-seconds of every
  process of this bench (workers, shared, Azurite, driver) per second of the burst; machine_cores: the same for
  the whole machine, anyone else's processes included (at the machine's core count, the machine was the limit).
ARM's limits are off (as in bench/intake.py): the burst sends hundreds of preflights and POSTs in seconds, and this
measures the app's own throughput and guarantees, not ARM's quota (bench/storm_quota.py measures that).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench._host import ROOT, complete_lines

WORKERS = [int(n) for n in os.environ.get("BENCH_SCALE_WORKERS", "1,2,4").split(",")]
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
RACES, SHARED, FRESH, STORM = (max(1, int(n * SCALE)) for n in (40, 20, 160, 40))
COPIES = 4
STORM_CAPACITY = 200  # the storm's set: a batch holds MAX_BATCH_PERCENT (20 %) of it, so one or two batches
CONCURRENCY = 32
OPERATION_SECONDS = 3.0
SUB = "7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2910"  # devhost's demo subscription (its ALLOWED_SCOPES)
BASE = f"/subscriptions/{SUB}/resourceGroups/reimager-demo/providers/Microsoft.Compute"
STORM_SET = f"{BASE}/virtualMachineScaleSets/storm"
SETTINGS = {"COOLDOWN_MINUTES": "30", "GLOBAL_MAX_REIMAGES_PER_HOUR": "100000", "BREAKER_PERCENT": "100",
            "FLEET_BUDGET_PERCENT": "100", "MAX_INSTANCES_PER_REQUEST": "100", "POLL_MIN_SECONDS": "1"}
VM_BODY = {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}}


def vm_names() -> list[str]:
    return ([f"race-{i}" for i in range(RACES)] + [f"shared-{i}" for i in range(SHARED)]
            + [f"fresh-{i}" for i in range(FRESH)])


# ---- the shared process: ARM simulator, identity, Azurite ------------------------------------------------------
async def shared_main(state: Path) -> None:
    from devhost import azurite
    from devhost.clock import Clock
    from devhost.compute import ArmLimits, ComputeSimulator
    from devhost.identity import PATH, TokenIssuer
    from devhost.serving import serve

    issuer = TokenIssuer()
    sim = ComputeSimulator(clock=Clock(), issuer=issuer, operation_seconds=OPERATION_SECONDS, retry_after=1,
                           state_dir=state / "arm", arm_limits=ArmLimits.off())
    for name in vm_names():
        sim.upsert(f"{BASE}/virtualMachines/{name}", VM_BODY)
    sim.seed_scale_set(STORM_SET, STORM_CAPACITY)
    identity, arm = await serve(issuer.app()), await sim.serve()
    store = await azurite.start(state)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    (state / "shared.json").write_text(json.dumps({
        "arm": arm.url, "identity": identity.url + PATH, "identityHeader": issuer.header_secret,
        "storage": store.connection_string, "azuritePid": store.pid}))
    await stop.wait()
    await arm.close()
    await identity.close()
    await store.stop()


# ---- one app process -----------------------------------------------------------------------------------------
async def worker_main(state: Path, index: int) -> None:
    from devhost.host import DevHost, ExternalArm

    shared = json.loads((state / "shared.json").read_text())
    dh = DevHost(port=0, state_dir=state / f"worker-{index}", seed=False,
                 settings={**SETTINGS, "AzureWebJobsStorage": shared["storage"]},
                 external_arm=ExternalArm(shared["arm"], shared["identity"], shared["identityHeader"]))
    await dh.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    (state / f"worker-{index}.json").write_text(json.dumps({"functions": dh.functions_url,
                                                             "key": dh.function_key}))
    await stop.wait()
    await dh.stop()


# ---- the driver ------------------------------------------------------------------------------------------------
def spawn(*args: str) -> subprocess.Popen[bytes]:
    log = os.environ.get("BENCH_SCALE_LOG")
    err = open(f"{log}.{'-'.join(args[1:])[-40:].replace('/', '_')}", "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "bench.scale_out", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=err)


async def wait_for(path: Path, proc: subprocess.Popen[bytes], seconds: float = 90) -> dict[str, Any]:
    end = time.monotonic() + seconds
    while not exists(path):
        if time.monotonic() > end or proc.poll() is not None:
            raise RuntimeError(f"{path.name}: the process did not start")
        await asyncio.sleep(0.05)
    return read_json(path)


def exists(path: Path) -> bool:
    return path.exists()


def read_json(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def state_dir(workers: int) -> Path:
    # tmpfs when there is one, as bench/inflight.py: devhost's files are Storage's work in Azure, not the worker's
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix=f"bench-scale-{workers}-", dir=shm if shm.is_dir() else None))


def alert(instance: str, k: int) -> dict[str, Any]:
    return {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
        "alertId": f"/subscriptions/{SUB}/providers/Microsoft.AlertsManagement/alerts/scale-{k}",
        "alertRule": "unhealthy-instance", "severity": "Sev2", "signalType": "Metric", "monitorCondition": "Fired",
        "monitoringService": "Platform", "alertTargetIDs": [f"{STORM_SET}/virtualMachines/{instance}".lower()],
        "firedDateTime": "2026-01-01T00:00:00Z"}, "alertContext": {}, "customProperties": None}}


def burst() -> list[tuple[str, dict[str, Any]]]:
    """(path, body) of every request, shuffled with a fixed seed."""
    work: list[tuple[str, dict[str, Any]]] = []
    for i in range(RACES):
        work += [("/api/reimage", {"target": f"{BASE}/virtualMachines/race-{i}", "requestId": f"race-{i}"})] * COPIES
    for i in range(SHARED):
        work += [("/api/reimage", {"target": f"{BASE}/virtualMachines/shared-{i}"})] * COPIES
    work += [("/api/reimage", {"target": f"{BASE}/virtualMachines/fresh-{i}"}) for i in range(FRESH)]
    work += [("/api/alerts", alert(str(i), i)) for i in range(STORM)]
    random.Random(27).shuffle(work)
    return work


class Front:
    """The platform's load balancer: each request to the next worker in turn, with that worker's function key."""

    def __init__(self, workers: list[dict[str, Any]]) -> None:
        self.backends = itertools.cycle(workers)
        self.http: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        assert self.http is not None
        backend = next(self.backends)
        async with self.http.request(request.method, backend["functions"] + request.path_qs, data=await request.read(),
                                     headers={"x-functions-key": backend["key"],
                                              "Content-Type": request.headers.get("Content-Type", "application/json")}
                                     ) as r:
            body = await r.read()
            headers = {k: r.headers[k] for k in ("Content-Type", "Retry-After") if k in r.headers}
            return web.Response(status=r.status, body=body, headers=headers)


def machine_busy() -> float:
    """CPU-seconds the whole machine has been busy (every process's, this bench's and anyone else's)."""
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


async def run(workers: int) -> dict[str, Any]:
    from devhost.serving import serve

    state = state_dir(workers)
    procs = [spawn("--shared", str(state))]
    try:
        shared = await wait_for(state / "shared.json", procs[0])
        procs += [spawn("--worker", str(state), str(i)) for i in range(workers)]
        backends = [await wait_for(state / f"worker-{i}.json", procs[1 + i]) for i in range(workers)]
        front = Front(backends)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", front.handle)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as front.http, aiohttp.ClientSession() as http:
            served = await serve(app)
            # every worker warm (imports, tables) before the clock starts: a cold start is measured elsewhere
            for _ in range(workers):
                async with http.get(served.url + "/api/reimage?top=1") as r:
                    await r.read()
            pids = [p.pid for p in procs] + [int(shared["azuritePid"]), os.getpid()]
            sem = asyncio.Semaphore(CONCURRENCY)
            answers: list[tuple[str, dict[str, Any], int, Any]] = []

            async def send(path: str, body: dict[str, Any]) -> None:
                async with sem, http.post(served.url + path, json=body) as r:
                    text = await r.text()
                    answers.append((path, body, r.status, json.loads(text) if text else None))

            cpu0, machine0, t0 = cpu_seconds(pids), machine_busy(), time.perf_counter()
            await asyncio.gather(*(send(p, b) for p, b in burst()))
            wall = time.perf_counter() - t0
            cpu, machine = cpu_seconds(pids) - cpu0, machine_busy() - machine0
            accepted = accepted_ops(answers)
            events = await until_completed(state, workers, accepted)
            await served.close()
    finally:
        for p in procs[1:] + procs[:1]:  # the workers before what they use
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
    try:
        return {**check(state, workers, answers, accepted, events, wall, cpu), "machine_cores": machine / wall}
    finally:
        shutil.rmtree(state, ignore_errors=True)


def accepted_ops(answers: list[tuple[str, dict[str, Any], int, Any]]) -> set[str]:
    out: set[str] = set()
    for path, _, status, body in answers:
        if status != 202 or not isinstance(body, dict):
            continue
        if path == "/api/alerts":
            out |= {a["operationId"] for a in body.get("accepted", [])}
        else:
            out.add(body["operationId"])
    return out


def events_of(state: Path, workers: int) -> list[dict[str, Any]]:
    return [e for i in range(workers) for e in complete_lines(state / f"worker-{i}" / "events.jsonl")
            if e["type"] == "reimager.operation.completed"]


async def until_completed(state: Path, workers: int, accepted: set[str], seconds: float = 120) -> list[dict[str, Any]]:
    end = time.monotonic() + seconds
    while True:
        events = events_of(state, workers)
        if accepted <= {e["data"]["operationId"] for e in events} or time.monotonic() > end:
            await asyncio.sleep(2.0)  # a second event for a request would come now: give it the chance
            return events_of(state, workers)
        await asyncio.sleep(0.5)


def check(state: Path, workers: int, answers: list[tuple[str, dict[str, Any], int, Any]], accepted: set[str],
          events: list[dict[str, Any]], wall: float, cpu: float) -> dict[str, Any]:
    posts = [r for r in complete_lines(state / "arm" / "requests.jsonl")
             if r["method"] == "POST" and r["path"].lower().endswith(("/reimage", "/reimageall")) and r["status"] in
             (200, 202)]
    per_vm = Counter(r["path"].lower().split("/virtualmachines/")[1].split("/")[0] for r in posts
                     if "/virtualmachinescalesets/" not in r["path"].lower())
    per_instance: Counter[str] = Counter()
    for r in posts:
        if "/virtualmachinescalesets/" in r["path"].lower():
            body = r["body"] if isinstance(r["body"], dict) else json.loads(r["body"] or "{}")
            per_instance.update(f"storm/{i}" for i in body.get("instanceIds") or [])
    races = [per_vm.get(f"race-{i}", 0) for i in range(RACES)]
    per_request = Counter(e["data"]["operationId"] for e in events)
    statuses = Counter(status for _, _, status, _ in answers)
    return {
        "workers": workers, "requests": len(answers), "statuses": dict(statuses), "accepted": len(accepted),
        "posts_per_key_max": max(races), "race_keys_reimaged": sum(1 for n in races if n),
        "reimages_within_cooldown_max": max([*per_vm.values(), *per_instance.values()]),
        "storm_instances_reimaged": len(per_instance),
        "events_per_request_max": max(per_request.values(), default=0),
        "requests_without_event": len(accepted - set(per_request)),
        "rps": len(answers) / wall, "wall_s": wall, "cpu_cores": cpu / wall, "cores": os.cpu_count(),
    }


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--shared":
        asyncio.run(shared_main(Path(sys.argv[2])))
        return
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        asyncio.run(worker_main(Path(sys.argv[2]), int(sys.argv[3])))
        return
    results = [asyncio.run(run(w)) for w in WORKERS]
    total = len(burst())
    print(f"one burst of {total} requests through one front at concurrency {CONCURRENCY}: {RACES} VMs x {COPIES} "
          f"copies of one requestId, {SHARED} VMs x {COPIES} requests without one, {FRESH} fresh VMs, {STORM} "
          f"alerts on a {STORM_CAPACITY}-instance set; ARM {OPERATION_SECONDS:.0f} s reimages; machine: "
          f"{os.cpu_count()} cores, shared by every process")
    print(f"{'workers':>7} {'rps':>6} {'wall s':>6} {'cores: ours/all':>15} {'accepted':>8} {'POSTs/key max':>13} "
          f"{'reimages/VM max':>15} {'events/request max':>18} {'without event':>13}  statuses")
    for r in results:
        print(f"{r['workers']:>7} {r['rps']:>6.1f} {r['wall_s']:>6.1f} {r['cpu_cores']:>7.2f} / "
              f"{r['machine_cores']:<5.2f} {r['accepted']:>8} "
              f"{r['posts_per_key_max']:>13} {r['reimages_within_cooldown_max']:>15} "
              f"{r['events_per_request_max']:>18} {r['requests_without_event']:>13}  {r['statuses']}")
    one = next((r["rps"] for r in results if r["workers"] == 1), float("nan"))
    for r in results:
        if r["workers"] == 1:
            continue
        print(f"RESULT scale_out workers={r['workers']} posts_per_key_max={r['posts_per_key_max']} "
              f"reimages_within_cooldown_max={r['reimages_within_cooldown_max']} "
              f"events_per_request_max={r['events_per_request_max']} rps={r['rps']:.1f} rps_one_worker={one:.1f} "
              f"speedup={r['rps'] / one:.2f} cpu_cores_busy={r['cpu_cores']:.2f} "
              f"machine_cores_busy={r['machine_cores']:.2f} "
              f"requests_without_event={r['requests_without_event']} accepted={r['accepted']} requests={r['requests']}")


if __name__ == "__main__":
    main()
