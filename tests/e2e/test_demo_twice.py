"""`make demo` twice, then `make test`: the demo on a state dir that holds earlier runs passes again, matches
only its own events, prints each log line once, and its closing output fits a 100-column terminal."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.test_devhost_process import ROOT

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d \S+ ")


def demo(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devhost", "--demo", "--state-dir", str(state),
                           "--operation-seconds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.timeout(660)
def test_the_demo_runs_twice_on_one_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = demo(state)
    assert first.returncode == 0, first.stdout + first.stderr
    second = demo(state)  # the first run's completion events are still in events.jsonl
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert "demo: every expected outcome arrived" in out and "Traceback" not in out
    flat = " ".join(out.split())  # the summaries wrap at 100 columns
    assert "Uniform set storm: 12 alerts (each sent twice) on 12 of 20 machines -> 12 requests, 0 refused, 4 ARM " \
        "POSTs (1, 4, 4, 3 machines)" in flat, out
    assert "Flexible set flexstorm: 12 alerts (each sent twice) on 12 of 20 machines -> 12 requests, 0 refused, 12 " \
        "ARM POSTs (one single-VM POST per machine)" in flat, out
    assert "-> 6 requests, 0 refused, 1 ARM POST (1 machine)" in flat and "suspended storm-bad: CanaryFailed" in flat
    for run in (first, second):
        lines = (run.stdout + run.stderr).splitlines()
        logged = [line for line in lines if LOG_LINE.match(line)]
        assert logged, "the demo shows each operation's state changes"
        twice = [line for line, n in Counter(logged).items() if n > 1]
        assert twice == [], f"log lines printed more than once: {twice}"
        assert not any(" monitor " in line or " reimager.events " in line for line in logged)  # -v only
        closing = [line for line in lines if not LOG_LINE.match(line)]
        wide = [line for line in closing if len(line) > 100]
        assert wide == [], f"wider than 100 columns: {wide}"
    prefixes = set(re.findall(r"LEDGER_TABLE_PREFIX=(\w+)", first.stdout + second.stdout))
    assert len(prefixes) == 2  # each run has a namespace (and ledger tables) of its own
