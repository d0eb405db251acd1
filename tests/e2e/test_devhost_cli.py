"""`python -m devhost` as a person meets it: mistakes are one line and exit 2, --help shows the
defaults, and the terminal shows one line per request and per operation state change, with no secret."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.e2e.test_devhost_process import ROOT, wait_for
from tests.helpers import SENTINEL_PASSWORD


def run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devhost", "--state-dir", str(tmp_path / "state"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("args", "named"), [
    (["--settings", "UNKNOWN_SETTING=1"], "UNKNOWN_SETTING"),
    (["--settings", "COOLDOWN_MINUTES=abc"], "COOLDOWN_MINUTES"),
    (["--settings", "MAX_INSTANCES_PER_REQUEST=0"], "MAX_INSTANCES_PER_REQUEST"),
    (["--settings", "COOLDOWN_MINUTES"], "COOLDOWN_MINUTES"),
])
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(tmp_path: Path, args: list[str], named: str) -> None:
    result = run(*args, tmp_path=tmp_path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "state" / "endpoints.json").exists()


def test_a_taken_port_says_use_port_0(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("--port", str(port), tmp_path=tmp_path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--port 0" in lines[0] and str(port) in lines[0], result.stderr
    # what did start (Azurite, the simulator) was stopped again: no orphan keeps the state dir
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
    assert str(tmp_path / "state") not in ps


def test_help_shows_the_defaults(tmp_path: Path) -> None:
    result = run("--help", tmp_path=tmp_path)
    text = " ".join(result.stdout.split())
    assert result.returncode == 0
    for flag, default in (("--port", "7071"), ("--host", "127.0.0.1"), ("--state-dir", ".devhost"),
                          ("--operation-seconds", "5.0"), ("--time-limit", "60.0")):
        assert re.search(re.escape(flag) + r".*?\(default: " + re.escape(default) + r"\)", text), (flag, text)


def test_the_terminal_shows_one_line_per_request_and_state_change_and_no_secret(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "devhost", "--port", "0", "--state-dir", str(state),
                             "--operation-seconds", "1", "--retry-after", "1", "--settings", "POLL_MIN_SECONDS=1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for((state / "endpoints.json").exists, 60, "endpoints.json")
        ep = json.loads((state / "endpoints.json").read_text())
        url, key = ep["functions"], ep["functionKey"]
        windows = next(r["id"] for r in ep["resources"] if r["osType"] == "Windows")
        r = requests.post(f"{url}/api/reimage?code={key}", timeout=10,
                          json={"target": windows, "osProfile": {"adminPassword": SENTINEL_PASSWORD}})
        assert r.status_code == 202, r.text
        op = r.json()["operationId"]
        wait_for(lambda: any(e["type"].endswith("completed") for e in
                             requests.get(f"{url}/devhost/events", timeout=5).json()), 60, "completion")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert SENTINEL_PASSWORD not in out
    request_lines = [line for line in out.splitlines() if "POST /api/reimage" in line and "curl" not in line]
    assert len(request_lines) == 1 and " 202 " in request_lines[0], out
    assert key not in request_lines[0] and "code=" not in request_lines[0]  # the query holds the function key
    states = [line.split(op, 1)[1].split()[0] for line in out.splitlines()
              if f"{op} " in line and " monitor " not in line]
    assert states == ["Accepted", "Succeeded"], out
    terminal = [line for line in out.splitlines() if " devhost.terminal " in line]
    assert terminal and not any("/devhost/events" in line for line in terminal)  # introspection stays quiet
