"""In flight: N = 50, 200, 1,000 reimages of 60 s each at once on devhost, on the real clock.

Each N gets a fresh devhost process (its own Azurite). ARM sends no Retry-After (as in production:
the recorded exchange has none) and the targets have no history, so reimager polls on its default
grid, every POLL_DEFAULT_SECONDS = 15 s from submission: ceil(60 / 15) = 4 status reads. BENCH_RETRY_AFTER=5
makes ARM ask for 5 s instead (12 reads; 200 polls a second at N = 1,000), the stress case. Measured:
- intake p50/p99: POST /api/reimage latency (all N sent at concurrency 32);
- poll lag p50/p99: ARM's end of each operation to its completion event's `completedAt`;
- ARM GETs per operation (preflight + status reads, from the simulator's request log) vs the minimum
  1 + ceil(60 / interval): `gets_over_minimum` sums the extra reads; an operation below the minimum had
  polls skipped because the loop ran more than half an interval late (the schedule's grid);
- CPU ms per operation of the devhost process (app + stand-ins in one process) and of Azurite, from
  the first POST to the last completion event; peak RSS of devhost;
- event-loop lag p99: how late a 50 ms sleep in devhost's loop wakes up while the operations run.

devhost runs each activity once here (`Fidelity.without("duplicate_activities")`): by default it runs
every activity twice, as hostile as Azure can be, which would double the status reads. EVIDENCE=off, as in
bench.polling: the capture's reads before the POST are not status reads. Real clock:
lag under load is the point, and a virtual clock has no load.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench._host import ROOT, complete_lines, percentile

SIZES = [int(n) for n in os.environ.get("BENCH_INFLIGHT", "50,200,1000").split(",")]
OPERATION_SECONDS = float(os.environ.get("BENCH_INFLIGHT_SECONDS", "60"))
RETRY_AFTER = int(os.environ["BENCH_RETRY_AFTER"]) if os.environ.get("BENCH_RETRY_AFTER") else None
POLL_DEFAULT_SECONDS = 15
CONCURRENCY = 32
LOOP_PROBE_SECONDS = 0.05


# ---- the devhost process (python -m bench.inflight --host DIR) ----------------------------------
SAMPLE_SECONDS = 0.005  # every 5 ms (the GIL's switch interval): often enough, and cheap for the main thread
APP_PARTS = ("/shared/", "/handlers/", "/function_app.py", "/azure/durable_functions/", "/azure/functions/")


class CpuSampler:
    """Where the app process's CPU goes: the main thread's stack, sampled every SAMPLE_SECONDS from another thread.
    A sample with a frame of the app on its stack (shared/, handlers/, function_app, and the SDKs the worker runs
    it with: the durable SDK's replay, azure.functions) is the app's; one with a frame of devhost (the durable
    stand-in, Functions routing, the storage proxy, the Service Bus stand-in) and none of the app is a stand-in's;
    the rest is the event loop's own (I/O callbacks, aiohttp's parsers, serving both); a sample waiting in the
    selector is idle. The busy shares times the process's CPU time estimate each part's CPU (the sampler's own
    cost is in it)."""

    def __init__(self) -> None:
        import threading

        self.counts = {"app": 0, "stand-ins": 0, "loop": 0, "idle": 0}
        self.at_mark = dict(self.counts)
        self.main = threading.get_ident()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.devhost = str(ROOT / "devhost") + "/"

    def classify(self, frame: Any) -> str:
        inner = frame.f_code.co_filename
        if inner.endswith("selectors.py") and frame.f_code.co_name == "select":
            return "idle"
        part = "loop"
        while frame is not None:
            name = frame.f_code.co_filename
            if any(p in name for p in APP_PARTS) and "site-packages/azure/functions/_" not in name:
                return "app"
            if name.startswith(self.devhost):
                part = "stand-ins"
            frame = frame.f_back
        return part

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_SECONDS):
            frame = sys._current_frames().get(self.main)
            if frame is not None:
                self.counts[self.classify(frame)] += 1


async def host_main(state_dir: Path) -> None:
    from bench._host import external_arm
    from devhost.durable import Fidelity
    from devhost.host import DevHost

    standins = json.loads((state_dir / "standins.json").read_text())
    dh = DevHost(port=0, state_dir=state_dir, operation_seconds=OPERATION_SECONDS, retry_after=RETRY_AFTER,
                 # every operation in flight at once: the global budget (100 an hour) would queue the rest; no
                 # evidence capture: its reads before the POST are intake's cost (bench.intake counts them) and
                 # would blur the status reads counted here
                 settings={"COOLDOWN_MINUTES": "0", "GLOBAL_MAX_REIMAGES_PER_HOUR": "100000", "EVIDENCE": "off",
                           "AzureWebJobsStorage": standins["storage"]},
                 durable_fidelity=Fidelity.without("duplicate_activities"), external_arm=external_arm(standins),
                 seed=False, storage_proxy=False)
    await dh.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: sampler.counts.update(dict.fromkeys(sampler.counts, 0)))
    loop.add_signal_handler(signal.SIGUSR2, lambda: sampler.at_mark.update(sampler.counts))
    lags: list[tuple[float, float]] = []
    sampler = CpuSampler()
    sampler.thread.start()

    async def probe() -> None:
        while True:
            start = loop.time()
            await asyncio.sleep(LOOP_PROBE_SECONDS)
            lags.append((time.time(), loop.time() - start - LOOP_PROBE_SECONDS))

    task = loop.create_task(probe())
    (state_dir / "bench.json").write_text(json.dumps({"azuritePid": standins["azuritePid"]}))
    await stop.wait()
    sampler.stop.set()
    task.cancel()
    (state_dir / "looplag.json").write_text(json.dumps(lags))
    (state_dir / "cpu-split.json").write_text(json.dumps({"counts": sampler.counts, "atMark": sampler.at_mark}))
    await dh.stop()


# ---- the driver ----------------------------------------------------------------------------------
def cpu_seconds(pid: int | None) -> float:
    import psutil

    if pid is None:
        return 0.0
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def start_host(n: int) -> tuple[Path, subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """The stand-ins that are not the worker in Azure (ARM, identity, Azurite behind the storage proxy) in a process of
    their own, then devhost (the app, the durable stand-in, Functions routing) pointed at them."""
    # tmpfs when there is one: devhost persists its task hub, simulator and Azurite data as files, and on ext4
    # each atomic os.replace costs milliseconds of the event loop (14.7 of 123 CPU-seconds at N = 200); in
    # Azure that state is written by the Storage service, not by the worker.
    shm = Path("/dev/shm")
    state = Path(tempfile.mkdtemp(prefix=f"bench-inflight-{n}-", dir=shm if shm.is_dir() else None))
    log = os.environ.get("BENCH_INFLIGHT_LOG")  # devhost's warnings and errors, for diagnosis
    stderr = open(f"{log}.{n}", "w") if log else subprocess.DEVNULL  # the child keeps it open
    arm = subprocess.Popen([sys.executable, "-m", "bench.inflight", "--standins", str(state)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=stderr)
    end = time.monotonic() + 60
    while not (state / "standins.json").exists():
        if time.monotonic() > end or arm.poll() is not None:
            raise RuntimeError("the stand-ins did not start")
        time.sleep(0.05)
    proc = subprocess.Popen([sys.executable, "-m", "bench.inflight", "--host", str(state)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=stderr)
    return state, proc, arm


async def run_size(n: int) -> dict[str, Any]:
    import psutil

    state, proc, arm = start_host(n)
    try:
        end = time.monotonic() + 90
        while not (state / "bench.json").exists():
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError("devhost did not start")
            await asyncio.sleep(0.05)
        ep = json.loads((state / "endpoints.json").read_text())
        azurite_pid = json.loads((state / "bench.json").read_text()).get("azuritePid")
        me = psutil.Process(proc.pid)
        from bench._host import DevhostProcess

        helper = DevhostProcess.__new__(DevhostProcess)
        helper.ep = ep
        async with aiohttp.ClientSession(headers={"x-functions-key": ep["functionKey"]}) as http:
            targets = await helper.create_vms(http, [f"inflight-{i:05d}" for i in range(n)])
            rss_peak = me.memory_info().rss
            proc.send_signal(signal.SIGUSR1)  # the CPU split counts from here
            cpu0, az0, arm0 = cpu_seconds(proc.pid), cpu_seconds(azurite_pid), cpu_seconds(arm.pid)
            t0 = time.time()
            sem = asyncio.Semaphore(CONCURRENCY)
            latencies: list[float] = []
            statuses: dict[int, int] = {}

            async def one(target: str) -> None:
                async with sem:
                    start = time.perf_counter()
                    async with http.post(f"{ep['functions']}/api/reimage", json={"target": target}) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                    latencies.append(time.perf_counter() - start)

            intake = asyncio.gather(*(one(t) for t in targets))
            events_file = state / "events.jsonl"
            done: list[dict[str, Any]] = []
            deadline = time.time() + OPERATION_SECONDS + 240
            t_mid, cpu_mid = 0.0, 0.0
            while time.time() < deadline:
                await asyncio.sleep(1.0)
                if intake.done() and not t_mid:  # every request answered: from here on, the polls' phase
                    t_mid, cpu_mid = time.time(), cpu_seconds(proc.pid)
                    proc.send_signal(signal.SIGUSR2)
                rss_peak = max(rss_peak, me.memory_info().rss)
                done = [e for e in complete_lines(events_file) if e["type"] == "reimager.operation.completed"]
                if intake.done() and len(done) >= statuses.get(202, 0):
                    break
            await intake
            t1 = time.time()
            cpu1, az1, arm1 = cpu_seconds(proc.pid), cpu_seconds(azurite_pid), cpu_seconds(arm.pid)
            rss_end = me.memory_info().rss
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        arm.send_signal(signal.SIGTERM)
        arm.wait(60)
    try:
        return summarise(n, state, t0, t1, statuses, latencies, done, cpu1 - cpu0, az1 - az0, rss_peak, rss_end,
                         arm1 - arm0, t_mid, cpu1 - cpu_mid)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def summarise(n: int, state: Path, t0: float, t1: float, statuses: dict[int, int], latencies: list[float],
              done: list[dict[str, Any]], cpu: float, azurite_cpu: float, rss_peak: int,
              rss_end: int, arm_cpu: float, t_mid: float, poll_phase_cpu: float) -> dict[str, Any]:
    """`t_mid`: when every request had its answer; `poll_phase_cpu`: devhost's CPU-seconds from then to the end
    (the polls, and each operation's end), split by the sampler's counts over the same span."""
    # ARM's side, from the simulator's files: each operation's end, and every request it saw
    ops = {}
    for path in (state / "arm" / "operations").glob("*.json"):
        op = json.loads(path.read_text())
        ops[op["lockKey"]] = op
    requests = complete_lines(state / "arm" / "requests.jsonl")
    status_reads: dict[str, int] = {}
    preflights: dict[str, int] = {}
    for r in requests:
        if r["method"] != "GET":
            continue
        if "/operations/" in r["path"]:
            op_id = r["path"].rsplit("/", 1)[-1]
            status_reads[op_id] = status_reads.get(op_id, 0) + 1
        else:
            preflights[r["path"].lower()] = preflights.get(r["path"].lower(), 0) + 1
    lags, gets = [], []
    for e in done:
        key = e["data"]["target"].lower()
        op = ops[key]
        arm_end = op["started"] + op["duration"]
        lags.append(max(0.0, datetime.fromisoformat(e["data"]["completedAt"]).timestamp() - arm_end))
        gets.append(preflights.get(key, 0) + status_reads.get(op["id"], 0))
    loop_lags = [lag for at, lag in json.loads((state / "looplag.json").read_text()) if t0 <= at <= t1]
    minimum = 1 + math.ceil(OPERATION_SECONDS / (RETRY_AFTER or POLL_DEFAULT_SECONDS))
    sampled = json.loads((state / "cpu-split.json").read_text())
    split = {k: v - sampled["atMark"][k] for k, v in sampled["counts"].items()}
    busy = sum(v for k, v in split.items() if k != "idle") or 1
    polls = sum(1 for r in requests if r["method"] == "GET" and "/operations/" in r["path"] and r["at"] >= t_mid) or 1
    return {
        "n": n, "accepted": statuses.get(202, 0), "statuses": statuses, "completed": len(done),
        "intake_p50_ms": percentile(latencies, 0.5) * 1000, "intake_p99_ms": percentile(latencies, 0.99) * 1000,
        "lag_p50_s": percentile(lags, 0.5) if lags else float("nan"),
        "lag_p99_s": percentile(lags, 0.99) if lags else float("nan"),
        "gets_per_op": sum(gets) / len(gets) if gets else float("nan"), "minimum": minimum,
        "gets_over_minimum": sum(max(0, g - minimum) for g in gets),
        "ops_under_minimum": sum(1 for g in gets if g < minimum), "cpu_ms_per_op": cpu * 1000 / n,
        "azurite_cpu_ms_per_op": azurite_cpu * 1000 / n, "proxy_arm_cpu_ms_per_op": arm_cpu * 1000 / n,
        "polls_after_intake": polls, "app_cpu_ms_per_poll": poll_phase_cpu * 1000 * split["app"] / busy / polls,
        "standins_cpu_ms_per_poll": poll_phase_cpu * 1000 * split["stand-ins"] / busy / polls,
        "loop_cpu_ms_per_poll": poll_phase_cpu * 1000 * split["loop"] / busy / polls,
        "app_share": split["app"] / busy, "standins_share": split["stand-ins"] / busy,
        "loop_share": split["loop"] / busy, "rss_peak_mb": rss_peak / 2**20, "rss_end_mb": rss_end / 2**20,
        "loop_lag_p99_ms": percentile(loop_lags, 0.99) * 1000 if loop_lags else float("nan"), "wall_s": t1 - t0,
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--standins":
        from bench._host import serve_standins

        # ARM's limits off: 1,000 preflights and POSTs at once exceed ARM's read and write buckets (250 and 200,
        # then 25 and 10 a second). This measures the app's cost and lag per operation in flight, not ARM's quota
        # (bench/storm_quota.py and tests/integration/test_arm_quota.py measure that).
        asyncio.run(serve_standins(Path(sys.argv[2]), operation_seconds=OPERATION_SECONDS, retry_after=RETRY_AFTER,
                                   limits="off"))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--host":
        if os.environ.get("BENCH_PROFILE"):  # where the devhost process spends its CPU (cProfile stats file)
            import cProfile

            cProfile.runctx("asyncio.run(host_main(Path(sys.argv[2])))", globals(), locals(),
                            os.environ["BENCH_PROFILE"])
            return
        asyncio.run(host_main(Path(sys.argv[2])))
        return
    results = [asyncio.run(run_size(n)) for n in SIZES]
    print(f"{OPERATION_SECONDS:.0f} s operations, ARM Retry-After {RETRY_AFTER or 'none'}, intake at concurrency "
          f"{CONCURRENCY}; devhost (app, durable stand-in, Functions routing) is one process, ARM, identity and "
          "storage proxy another,"
          " Azurite a third (on a shared 2-core machine)")
    print(f"{'N':>5} {'accepted':>8} {'done':>5} {'intake p50/p99 ms':>18} {'lag p50/p99 s':>14} {'GETs/op (min)':>14} "
          f"{'CPU ms/op':>9} {'Azurite':>8} {'RSS peak/end MB':>16} {'loop p99 ms':>11} {'wall s':>6}")
    for r in results:
        print(f"{r['n']:>5} {r['accepted']:>8} {r['completed']:>5} {r['intake_p50_ms']:>8.0f} / "
              f"{r['intake_p99_ms']:<7.0f} "
              f"{r['lag_p50_s']:>5.2f} / {r['lag_p99_s']:<6.2f} {r['gets_per_op']:>8.2f} ({r['minimum']})  "
              f"{r['cpu_ms_per_op']:>9.1f} {r['azurite_cpu_ms_per_op']:>8.1f} {r['rss_peak_mb']:>7.0f} / "
              f"{r['rss_end_mb']:<6.0f} {r['loop_lag_p99_ms']:>11.0f} {r['wall_s']:>6.0f}")
    for r in results:
        if r["completed"] < r["n"]:  # then the figures describe fewer operations than N: say so
            print(f"WARNING: N = {r['n']}: only {r['completed']} operations completed within the window")
    for r in results:
        print(f"RESULT inflight n={r['n']} lag_p99_s={r['lag_p99_s']:.2f} gets_over_minimum={r['gets_over_minimum']} "
              f"intake_p99_ms={r['intake_p99_ms']:.0f} lag_p50_s={r['lag_p50_s']:.2f} "
              f"intake_p50_ms={r['intake_p50_ms']:.0f} gets_per_op={r['gets_per_op']:.2f} "
              f"ops_under_minimum={r['ops_under_minimum']} cpu_ms_per_op={r['cpu_ms_per_op']:.1f} "
              f"rss_peak_mb={r['rss_peak_mb']:.0f} loop_lag_p99_ms={r['loop_lag_p99_ms']:.0f} "
              f"completed={r['completed']} app_cpu_ms_per_poll={r['app_cpu_ms_per_poll']:.2f} "
              f"standins_cpu_ms_per_poll={r['standins_cpu_ms_per_poll']:.2f} "
              f"loop_cpu_ms_per_poll={r['loop_cpu_ms_per_poll']:.2f} "
              f"proxy_arm_cpu_ms_per_op={r['proxy_arm_cpu_ms_per_op']:.1f} "
              f"azurite_cpu_ms_per_op={r['azurite_cpu_ms_per_op']:.1f}")


if __name__ == "__main__":
    main()
