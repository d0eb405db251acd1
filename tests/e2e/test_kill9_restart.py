"""kill -9 of `python -m devhost` at several phases, then a restart on the same --state-dir.

The task hub, the simulator and the ledger (Azurite, which like a storage account outlives the
app) persist, so every operation still ends with exactly one completion event and no key is
POSTed twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.test_devhost_process import ROOT, wait_for

REIMAGE = re.compile(r"/reimage(all)?$", re.IGNORECASE)  # the reimage POSTs (evidence POSTs too, before them)


def start(state: Path, *settings: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    (state / "endpoints.json").unlink(missing_ok=True)
    extra = [arg for pair in settings for arg in ("--settings", pair)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "devhost", "--port", "0", "--state-dir", str(state), "--operation-seconds", "4",
         "--settings", "POLL_MIN_SECONDS=1", "--settings", "POLL_DEFAULT_SECONDS=1",
         "--settings", "SUBMIT_TIMEOUT_SECONDS=5", "--settings", "SWEEP_SCHEDULE=*/2 * * * * *", *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    wait_for((state / "endpoints.json").exists, 60, "endpoints.json")
    return proc, json.loads((state / "endpoints.json").read_text())


def completed(url: str) -> list[dict[str, Any]]:
    """The completion events devhost published so far."""
    events = requests.get(f"{url}/devhost/events", timeout=10).json()
    return [e for e in events if e["type"] == "reimager.operation.completed"]


def stop_azurite(state: Path) -> None:
    record = state / "azurite.json"
    if record.exists():
        try:
            os.kill(json.loads(record.read_text())["pid"], signal.SIGINT)
        except ProcessLookupError:
            pass


def reimage_posts(url: str) -> list[dict[str, Any]]:
    """The simulator's reimage POSTs (not the evidence's retrieveBootDiagnosticsData before them)."""
    return [x for x in requests.get(f"{url}/devhost/compute/requests", timeout=10).json()
            if x["method"] == "POST" and REIMAGE.search(x["path"])]


def shut(proc: subprocess.Popen[str], state: Path) -> None:
    """Whatever the test left running: devhost (killed if it is still up) and its Azurite."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    stop_azurite(state)


@pytest.mark.parametrize("phase", ["after-202", "mid-poll"])
def test_kill9_then_restart_ends_every_operation_once(tmp_path: Path, phase: str) -> None:
    state = tmp_path / "state"
    proc, ep = start(state)
    try:
        url, key = ep["functions"], {"x-functions-key": ep["functionKey"]}
        linux = next(r["id"] for r in ep["resources"] if r["osType"] == "Linux" and r["kind"] == "virtualMachine"
                     and not r["tags"].get("reimager-protect"))
        r = requests.post(f"{url}/api/reimage", json={"target": linux, "requestId": f"k9-{phase}"}, headers=key,
                          timeout=10)
        assert r.status_code == 202, r.text
        op = r.json()["operationId"]
        if phase == "mid-poll":
            wait_for(lambda: any("/operations/" in x["path"] for x in requests.get(
                f"{url}/devhost/compute/requests", timeout=10).json()), 20, "a first poll")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

        proc, ep = start(state)
        url = ep["functions"]
        key = {"x-functions-key": ep["functionKey"]}

        def done() -> list[dict[str, Any]]:
            return completed(url)

        events = wait_for(done, 60, "the completion event after the restart")
        time.sleep(3)  # a second event would show up by now (polls every second, sweeps every 2 s)
        events = done()
        assert [e["data"]["operationId"] for e in events] == [op]
        assert events[0]["data"]["status"] == "Succeeded"
        posts = reimage_posts(url)
        assert len(posts) == 1
        again = requests.post(f"{url}/api/reimage", json={"target": linux, "requestId": f"k9-{phase}"},
                              headers=key, timeout=10)
        assert again.status_code == 200 and again.json()["status"] == "Succeeded"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        shut(proc, state)


def test_kill9_in_the_hand_off_between_batches_loses_nothing(tmp_path: Path) -> None:
    """A storm on one scale set, one instance per batch; kill -9 the moment the first batch's requests are
    told their outcome (the lease was just handed to the next batch): after a restart every request still
    ends with one event, each instance reimaged once."""
    state = tmp_path / "state"
    proc, ep = start(state, "MAX_BATCH_PERCENT=1", "BREAKER_PERCENT=100", "FLEET_BUDGET_PERCENT=100",
                     "BATCH_GATHER_SECONDS=1")
    try:
        url, key = ep["functions"], {"x-functions-key": ep["functionKey"]}
        workers = next(r for r in ep["resources"] if r["kind"] == "virtualMachineScaleSet")
        instances = workers["instanceIds"]
        assert len(instances) >= 3
        ops = []
        for i in instances:
            alert = {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
                "alertId": f"k9-storm-{i}", "alertRule": "unhealthy", "severity": "Sev2", "signalType": "Metric",
                "monitorCondition": "Fired", "monitoringService": "Platform",
                "alertTargetIDs": [f"{workers['id']}/virtualMachines/{i}"], "firedDateTime": "2026-11-25T00:00:00Z"},
                "alertContext": {}}}
            r = requests.post(f"{url}/api/alerts", json=alert, headers=key, timeout=10)
            assert r.status_code == 202, r.text
            ops.append(r.json()["accepted"][0]["operationId"])

        wait_for(lambda: completed(url), 60, "the first batch's outcome")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

        proc, ep = start(state, "MAX_BATCH_PERCENT=1", "BREAKER_PERCENT=100", "FLEET_BUDGET_PERCENT=100",
                         "BATCH_GATHER_SECONDS=1")
        url = ep["functions"]
        wait_for(lambda: len(completed(url)) >= len(ops), 120, "every request's outcome after the restart")
        time.sleep(3)
        events = completed(url)
        assert sorted(e["data"]["operationId"] for e in events) == sorted(ops)  # one event each
        assert {e["data"]["status"] for e in events} == {"Succeeded"}
        posts = reimage_posts(url)
        reimaged = [i for p in posts for i in p["body"]["instanceIds"]]
        assert sorted(reimaged) == sorted(instances)  # each instance once, one per batch
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        shut(proc, state)


def linux_vm(ep: dict[str, Any]) -> str:
    return str(next(r["id"] for r in ep["resources"] if r["osType"] == "Linux" and r["kind"] == "virtualMachine"
                    and not r["tags"].get("reimager-protect")))


def claim_then_kill(state: Path, proc: subprocess.Popen[str], ep: dict[str, Any], body: dict[str, Any],
                    *settings: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """A delivery of `body` claims its key, and devhost is killed (kill -9) while the claim's index rows, the
    sweeper's work list among them, are held in their partition; then devhost starts again on the same state."""
    url, key = ep["functions"], {"x-functions-key": ep["functionKey"]}
    r = requests.post(f"{url}/devhost/storage/faults", json={
        "match": {"table": "*index", "operation": "upsertMerge"}, "effect": "delay", "seconds": 25, "times": 10},
        timeout=10)
    assert r.status_code in (200, 201), r.text
    with contextlib.suppress(requests.exceptions.RequestException):  # it never answers: it is killed
        requests.post(f"{url}/api/reimage", json=body, headers=key, timeout=2)
    wait_for(lambda: any(x["table"].endswith("ops") and x["operation"] == "insert" for x in requests.get(
        f"{url}/devhost/storage/requests", timeout=10).json()), 20, "the claim")
    time.sleep(1)  # its index rows are held in the partition for 25 s: the process dies first
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return start(state, *settings)


def test_kill9_between_the_claim_and_its_index_rows_still_ends_the_retry_it_answered(tmp_path: Path) -> None:
    """The first delivery claims its key and dies (kill -9) before its index rows, the sweeper's work list among
    them, are written. After the restart the caller's retry finds the claim, waits for it, and is answered 202
    with that operation, which nobody is sending: it must still end, with one event and no POST (a seeded soak
    once left it Claimed forever)."""
    state = tmp_path / "state"
    proc, ep = start(state, "CLAIM_SECONDS=60")
    try:
        body = {"target": linux_vm(ep), "requestId": "k9-claimed"}
        proc, ep = claim_then_kill(state, proc, ep, body, "CLAIM_SECONDS=60")
        url, key = ep["functions"], {"x-functions-key": ep["functionKey"]}
        retry = requests.post(f"{url}/api/reimage", json=body, headers=key, timeout=30)
        assert retry.status_code == 202 and retry.json()["duplicate"] and retry.json()["submittedAt"] is None, \
            retry.text  # answered with the first delivery's operation, which was never sent
        op = retry.json()["operationId"]
        events = wait_for(lambda: completed(url), 60, "the answered retry's completion event")
        time.sleep(3)  # a second event would show up by now (sweeps every 2 s)
        events = completed(url)
        assert [(e["data"]["operationId"], e["data"]["error"]["code"]) for e in events] == [(op, "NotSubmitted")]
        posts = reimage_posts(url)
        assert posts == []
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        shut(proc, state)


def test_kill9_then_a_takeover_refused_still_ends_the_promised_operation(tmp_path: Path) -> None:
    """As above, but the sweeper is slow (hourly) and the claim runs out first: a later delivery takes the dead
    claim over and is refused (the VM cooled down meanwhile, after another request's reimage). The operation the
    retry was answered 202 with must end Failed with that refusal, never vanish (a seeded soak once answered it
    404 with no event)."""
    state = tmp_path / "state"
    settings = ("CLAIM_SECONDS=30", "SWEEP_SCHEDULE=0 0 * * * *")
    proc, ep = start(state, *settings)
    try:
        url, key = ep["functions"], {"x-functions-key": ep["functionKey"]}
        vm = linux_vm(ep)
        first = requests.post(f"{url}/api/reimage", json={"target": vm, "requestId": "k9-before"}, headers=key,
                              timeout=10)
        assert first.status_code == 202, first.text
        wait_for(lambda: completed(url), 60, "the first reimage's end (the VM now cools down)")
        body = {"target": vm, "requestId": "k9-promised"}
        claimed = time.monotonic()
        proc, ep = claim_then_kill(state, proc, ep, body, *settings)
        url, key = ep["functions"], {"x-functions-key": ep["functionKey"]}
        retry = requests.post(f"{url}/api/reimage", json=body, headers=key, timeout=30)
        assert retry.status_code == 202 and retry.json()["duplicate"], retry.text  # promised, while Claimed
        op = retry.json()["operationId"]
        time.sleep(max(0.0, claimed + 32 - time.monotonic()))  # the dead claim runs out
        late = requests.post(f"{url}/api/reimage", json=body, headers=key, timeout=30)
        assert late.status_code == 429 and late.json()["error"]["code"] == "CooldownActive", late.text
        events = wait_for(lambda: [e for e in completed(url) if e["data"]["operationId"] == op], 20,
                          "the promised operation's event")
        time.sleep(2)
        assert [e["data"]["error"]["code"] for e in completed(url) if e["data"]["operationId"] == op] == \
            ["CooldownActive"], events
        stored = requests.get(f"{url}/api/reimage/{op}", headers=key, timeout=10)
        assert stored.status_code == 200 and stored.json()["status"] == "Failed", stored.text
        assert len(reimage_posts(url)) == 1  # the first request's only
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        shut(proc, state)
