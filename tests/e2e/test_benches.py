"""Every bench in bench/ runs, at a tiny size, and prints its RESULT lines: the benches are not tests, but they
must not rot. They run as `make bench` runs them (`python -m bench.NAME`), all started at once when the first of
these tests asks (each waits only for its own), since most of their time is spent waiting on devhost.

Where a bench checks a guarantee (one POST per key across processes, no ARM 429 in a storm), the smoke test
holds it to that too."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(330)
ROOT = Path(__file__).resolve().parents[2]
SMOKE: dict[str, dict[str, str]] = {
    "cold_start": {"BENCH_RUNS": "1"},
    "polling": {"BENCH_POLL_TARGETS": "2", "BENCH_POLL_DRAWS": "6", "BENCH_POLL_WARMUP": "4"},
    "intake": {"BENCH_N": "8", "BENCH_REPEATS": "1", "BENCH_RT_SAMPLES": "1"},
    "alert_storm": {"BENCH_TARGETS": "3"},
    "storm_vmss": {"BENCH_STORM": "4", "BENCH_STORM_WAIT": "60"},
    "storm_quota": {"BENCH_STORM_QUOTA": "8"},
    "inflight": {"BENCH_INFLIGHT": "4", "BENCH_INFLIGHT_SECONDS": "3", "BENCH_RETRY_AFTER": "1"},
    "scale_out": {"BENCH_SCALE": "0.1", "BENCH_SCALE_WORKERS": "2"},
    "generation": {"BENCH_GENERATIONS": "10", "BENCH_GENERATION_OPS": "1"},
}
_started: dict[str, tuple[subprocess.Popen[str], float]] = {}


def start_all() -> None:
    if _started:
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    for name, knobs in SMOKE.items():
        proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}"], cwd=ROOT, env={**env, **knobs},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _started[name] = (proc, time.monotonic())


def results(name: str) -> list[dict[str, Any]]:
    """Run (or wait for) the bench; its RESULT lines as dicts (`_name` is the RESULT's name)."""
    start_all()
    proc, _ = _started[name]
    out, _ = proc.communicate(timeout=300)  # nine benches at once: slow on a loaded 2-core machine
    assert proc.returncode == 0, out[-3000:]
    lines = [line.split()[1:] for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, out[-3000:]
    parsed = []
    for words in lines:
        row: dict[str, Any] = {"_name": words[0]}
        for word in words[1:]:
            key, _, value = word.partition("=")
            try:
                row[key] = float(value)
            except ValueError:
                row[key] = value
        parsed.append(row)
    return parsed


@pytest.fixture(scope="module", autouse=True)
def _stop_all() -> Any:
    yield
    for proc, _ in _started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_cold_start() -> None:
    (r,) = results("cold_start")
    assert r["_name"] == "cold_start" and r["first_call_ms"] > 0 and r["peer_ms"] > 0


def test_polling_judges_the_learned_schedule_on_lognormal_draws_with_and_without_retry_after() -> None:
    rows = results("polling")
    assert [r["retry_after"] for r in rows] == ["none", 10]
    for r in rows:
        assert r["distribution"] == "lognormal" and r["cases"] == 4  # 2 targets x (6 draws - 4 of history)
        assert r["gets"] > 0 and r["peer_gets"] > 0 and r["lag_p99_s"] >= 0


def test_intake_counts_ledger_round_trips_by_path() -> None:
    (r,) = results("intake")
    assert r["accepted"] == 8
    # the lead's writes as today (claim, 3 index rows, admission read + CAS, Submitting, slot read + insert,
    # Accepted): a change that adds one shows here
    # 10, and one write of what the evidence capture before the POST recorded (EVIDENCE defaults to on)
    assert r["round_trips_vm"] <= 11 and r["round_trips_vm_keyed"] == r["round_trips_vm"] + 1
    assert r["round_trips_duplicate"] == 1 and 0 < r["round_trips_vmss"] <= 10 and 0 < r["round_trips_join"] <= 10


def test_alert_storm() -> None:
    (r,) = results("alert_storm")
    assert r["posts"] == 3 and r["duplicate_reimages"] == 0


def test_storm_vmss() -> None:
    (r,) = results("storm_vmss")
    assert r["twice"] == 0 and r["dropped"] == 0 and r["reimaged"] == 4


def test_storm_quota_is_never_throttled_and_reimages_every_instance() -> None:
    (r,) = results("storm_quota")
    assert r["alerts"] == 8 and r["throttled"] == 0 and r["reimaged"] == 8 and r["twice"] == 0


def test_inflight_reports_the_apps_own_cpu_per_poll() -> None:
    (r,) = results("inflight")
    assert r["completed"] == 4 and r["gets_over_minimum"] == 0
    assert r["app_cpu_ms_per_poll"] > 0 and r["standins_cpu_ms_per_poll"] >= 0


def test_scale_out_keeps_every_guarantee_across_processes() -> None:
    (r,) = results("scale_out")
    assert r["workers"] == 2 and r["requests_without_event"] == 0
    assert r["posts_per_key_max"] == 1 and r["reimages_within_cooldown_max"] == 1 and r["events_per_request_max"] == 1


def test_generation() -> None:
    assert results("generation")
