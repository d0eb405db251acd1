"""`python -m devhost` as a subprocess: endpoints.json, every entry surface over HTTP, clean SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_devhost_subprocess(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "devhost", "--port", "0", "--state-dir", str(state), "--operation-seconds", "1",
         "--retry-after", "1", "--settings", "POLL_MIN_SECONDS=1", "--settings", "COOLDOWN_MINUTES=0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        endpoints_file = state / "endpoints.json"
        wait_for(endpoints_file.exists, 30, "endpoints.json")
        ep = json.loads(endpoints_file.read_text())
        assert set(ep) >= {"functions", "arm", "identity", "identityHeader", "functionKey", "subscriptionId",
                           "resources"}
        kinds = {(r["kind"], r["osType"], r["ephemeralOSDisk"]) for r in ep["resources"]}
        assert ("virtualMachineScaleSet", "Linux", True) in kinds and ("virtualMachine", "Windows", False) in kinds
        vmss = next(r for r in ep["resources"] if r["kind"] == "virtualMachineScaleSet")
        assert vmss["instanceIds"] == ["0", "1", "2", "3"]
        linux = next(r["id"] for r in ep["resources"] if r["osType"] == "Linux" and r["kind"] == "virtualMachine"
                     and not r["tags"].get("reimager-protect"))
        windows = next(r["id"] for r in ep["resources"] if r["osType"] == "Windows")
        url, key = ep["functions"], {"x-functions-key": ep["functionKey"]}

        r = requests.post(f"{url}/api/reimage", json={"target": linux, "requestId": "e2e-http"}, headers=key,
                          timeout=10)
        assert r.status_code == 202, r.text
        op = r.json()["operationId"]
        alert = json.loads((ROOT / "tests/fixtures/alerts/test-action-activity-log-administrative.json").read_text())
        alert["data"]["essentials"]["alertTargetIDs"] = [vmss["id"] + "/virtualMachines/1"]
        r = requests.post(f"{url}/api/alerts", json=alert, headers=key, timeout=10)
        assert r.status_code == 202, r.text
        r = requests.post(f"{url}/admin/functions/reimage_queue", headers=key, timeout=10,
                          json={"input": json.dumps({"target": windows}), "messageId": "e2e-q", "replyTo": "r"})
        assert r.status_code == 202, r.text

        def completed() -> list[dict[str, Any]]:
            events = requests.get(f"{url}/devhost/events", timeout=10).json()
            done = [e for e in events if e["type"] == "reimager.operation.completed"]
            return done if len(done) >= 3 else []

        done = wait_for(completed, 30, "three completion events")
        assert sorted(e["data"]["trigger"] for e in done) == ["alert", "http", "queue"]
        assert {e["data"]["status"] for e in done} == {"Succeeded"}
        status = requests.get(f"{url}/api/reimage/{op}", headers=key, timeout=10).json()
        assert status["status"] == "Succeeded" and status["polls"] >= 1
        posts = [x for x in requests.get(f"{url}/devhost/compute/requests", timeout=10).json()
                 if x["method"] == "POST"]
        reimages = [x for x in posts if re.search(r"/reimage$", x["path"])]
        # the three reimages, each after its evidence: the three machines' boot diagnostics
        assert len(reimages) == 3 and len(posts) == 6
        assert all("authorization" not in json.dumps(x).lower() for x in posts)
        assert {e["data"]["evidence"]["status"] for e in done} == {"captured"}

        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        proc.wait(timeout=5)
        assert time.monotonic() - start < 5 and proc.returncode == 0
        out = proc.stdout.read() if proc.stdout else ""
        assert "devhost stopped" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
