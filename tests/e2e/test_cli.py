"""The `reimager` CLI as an operator runs it: `python -m reimager` as a process, against devhost as a process,
over real HTTP. One devhost for the module (fast settings); every test waits for what it started, so an
injected fault is used by the operation it was meant for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.e2e.test_devhost_process import ROOT, wait_for
from tests.helpers import SENTINEL_PASSWORD

BASE = ("/subscriptions/7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2910/resourceGroups/reimager-demo/providers/"
        "Microsoft.Compute")
LINUX, WINDOWS = f"{BASE}/virtualMachines/web-linux-01", f"{BASE}/virtualMachines/app-win-01"
WORKERS = f"{BASE}/virtualMachineScaleSets/workers"
SCOPE = ["--entra", "--entra-scope", "api://reimager-devhost/.default"]


@pytest.fixture(scope="module")
def devhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("cli") / "state"
    settings = ["EASY_AUTH_ENABLED=true", "COOLDOWN_MINUTES=0", "POLL_MIN_SECONDS=1", "POLL_DEFAULT_SECONDS=1",
                "BATCH_GATHER_SECONDS=1"]
    proc = subprocess.Popen([sys.executable, "-m", "devhost", "--port", "0", "--state-dir", str(state),
                             "--operation-seconds", "1", "--retry-after", "1",
                             *(a for s in settings for a in ("--settings", s))],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for((state / "endpoints.json").exists, 60, "endpoints.json")
        yield {**json.loads((state / "endpoints.json").read_text()), "path": str(state / "endpoints.json")}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def env_for(devhost: dict[str, Any], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REIMAGER_", "AZURE_", "IDENTITY_", "MSI_"))}
    return {**env, "REIMAGER_ENDPOINTS": devhost["path"], "COLUMNS": "160", **extra}


def cli(devhost: dict[str, Any], *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reimager", *args], cwd=ROOT, env=env_for(devhost, **env),
                          capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def as_identity(devhost: dict[str, Any], client_id: str) -> dict[str, str]:
    """What DefaultAzureCredential finds in an App Service: the managed identity endpoint (devhost's), here
    with a user-assigned identity per person, so that two people are two verified principals."""
    return {"IDENTITY_ENDPOINT": devhost["identity"], "IDENTITY_HEADER": devhost["identityHeader"],
            "AZURE_CLIENT_ID": client_id}


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_reimage_wait_follows_the_operation_to_succeeded_and_exits_0(devhost: dict[str, Any]) -> None:
    r = cli(devhost, "reimage", LINUX, "--wait", "--reason", "e2e")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "request id: cli-" in r.stderr and "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("op-") and "web-linux-01" in lines[0]
    statuses = [line.split()[1] for line in lines[1:]]
    assert statuses[0] == "Accepted" and statuses[-1] == "Succeeded", r.stdout
    assert "health Healthy" in lines[-1]
    request_id = r.stderr.split("request id: ")[1].split()[0]
    again = cli(devhost, "reimage", LINUX, "--request-id", request_id, "--json")  # a retry: the same operation
    assert again.returncode == 0 and json.loads(again.stdout)["duplicate"] is True
    assert json.loads(again.stdout)["operationId"] == lines[0].split()[0]


def test_a_failed_reimage_exits_1_with_arms_code_in_one_line(devhost: dict[str, Any]) -> None:
    fault = {"match": "operations", "outcome": "Failed", "code": "OperationPreempted"}
    assert requests.post(f"{devhost['functions']}/devhost/compute/faults", json=fault, timeout=10).status_code == 201
    r = cli(devhost, "reimage", WINDOWS, "--wait")
    assert r.returncode == 1, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("reimager: op-") and "Failed: OperationPreempted" in last, r.stderr
    assert "Traceback" not in r.stderr


def test_a_dry_run_prints_its_checklist_and_the_planned_call(devhost: dict[str, Any]) -> None:
    ok = cli(devhost, "reimage", LINUX, "--dry-run")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for check in ("scope", "targetExists", "protectTag", "instanceCount", "targetModel", "suspension", "cooldown"):
        assert f"✓ {check}" in ok.stdout, ok.stdout
    assert "Planned ARM call (VirtualMachines_Reimage)" in ok.stdout
    assert f"POST {LINUX}/reimage?api-version=" in ok.stdout
    assert "request id" not in ok.stderr  # a dry run claims nothing
    refused = cli(devhost, "reimage", WINDOWS, "--dry-run", "--temp-disk")
    assert refused.returncode == 6
    flat = " ".join(refused.stdout.split())
    assert "✗ targetModel failed InvalidRequest:" in flat
    assert "tempDisk is supported only where the OS disk is ephemeral" in flat
    assert 'body {"tempDisk": true}' in refused.stdout


def test_list_follows_next_link_through_every_page(devhost: dict[str, Any]) -> None:
    ops = [json.loads(cli(devhost, "reimage", LINUX, "--json", "--request-id", f"e2e-list-{time.time()}-{i}"
                          ).stdout)["operationId"] for i in range(3)]
    for op in ops:  # nothing left running for the next test's fault
        assert cli(devhost, "status", op, "--watch").returncode == 0
    r = cli(devhost, "list", "--target", LINUX, "--top", "1", "--json")
    assert r.returncode == 0, r.stderr
    listed = [doc["operationId"] for doc in json.loads(r.stdout)["value"]]
    assert set(ops) <= set(listed) and len(listed) == len(set(listed)) >= 3  # pages of one, all followed
    table = cli(devhost, "list", "--target", LINUX, "--top", "1", "--since", "1h")
    assert table.returncode == 0 and all(op in table.stdout for op in ops)
    assert f"{len(listed)} operations" in table.stdout


def test_a_second_verified_principal_approves_and_the_requester_cannot(devhost: dict[str, Any]) -> None:
    asked = cli(devhost, "reimage", WORKERS, "--all", "--json", *SCOPE, **as_identity(devhost, "alice-0001"))
    assert asked.returncode == 0, asked.stderr
    doc = json.loads(asked.stdout)
    assert doc["status"] == "AwaitingApproval" and doc["requestedByVerified"] == "easyauth"
    op = doc["operationId"]
    self_approval = cli(devhost, "approve", op, *SCOPE, **as_identity(devhost, "alice-0001"))
    assert self_approval.returncode == 6
    assert "SelfApprovalNotAllowed" in one_line(self_approval.stderr)
    unverified = cli(devhost, "approve", op, "--by", "bob")  # the function key alone says nothing of who
    assert unverified.returncode == 6 and "ApproverNotVerified" in one_line(unverified.stderr)
    approved = cli(devhost, "approve", op, "--reason", "bad image", "--json", *SCOPE,
                   **as_identity(devhost, "bob-0002"))
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["approvedBy"] == "bob-0002"
    assert json.loads(approved.stdout)["approvedByVerified"] == "easyauth"
    watched = cli(devhost, "status", op, "--watch", "--json")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert json.loads(watched.stdout)["status"] == "Succeeded"


def test_json_output_is_only_json_on_stdout(devhost: dict[str, Any]) -> None:
    dry = cli(devhost, "reimage", LINUX, "--dry-run", "--json")
    assert json.loads(dry.stdout)["dryRun"] is True
    target = cli(devhost, "targets", WORKERS, "--json")
    assert target.returncode == 0 and json.loads(target.stdout)["target"].endswith("/workers")
    refused = cli(devhost, "reimage", f"{BASE}/virtualMachines/db-linux-01", "--json")
    assert refused.returncode == 6 and refused.stdout == ""
    assert "TargetProtected" in refused.stderr.strip().splitlines()[-1]
    not_suspended = cli(devhost, "resume", WORKERS, "--reason", "e2e", "--json")
    assert not_suspended.returncode == 6 and "NotSuspended" in one_line(not_suspended.stderr)
    missing = cli(devhost, "status", "op-0", "--json")
    assert missing.returncode == 6 and missing.stdout == "" and "OperationNotFound" in one_line(missing.stderr)


def test_the_admin_password_never_appears_in_output_or_argv(devhost: dict[str, Any]) -> None:
    args = [sys.executable, "-m", "reimager", "reimage", WINDOWS, "--admin-password", "--wait", "--json"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env_for(devhost, REIMAGER_ADMIN_PASSWORD=SENTINEL_PASSWORD),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    seen = []
    while proc.poll() is None:
        try:
            seen.append(" ".join(psutil.Process(proc.pid).cmdline()))
        except psutil.Error:
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert seen and not any(SENTINEL_PASSWORD in line for line in seen)
    assert SENTINEL_PASSWORD not in out + err
    assert json.loads(out)["status"] == "Succeeded"
    # without the variable and without a terminal to ask on: a usage error, nothing sent
    r = cli(devhost, "reimage", WINDOWS, "--admin-password")
    assert r.returncode == 2 and "REIMAGER_ADMIN_PASSWORD" in one_line(r.stderr)


class NotTheApi(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # a 200 that is not JSON (a proxy's page)
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_failures_are_one_line_with_their_exit_code(devhost: dict[str, Any], tmp_path: Path) -> None:
    refused = cli(devhost, "list", "--url", "http://127.0.0.1:1", "--key", "k")
    assert refused.returncode == 7 and "connection refused" in one_line(refused.stderr)
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotTheApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        html = cli(devhost, "status", "op-1", "--url", f"http://127.0.0.1:{server.server_port}", "--key", "k")
    finally:
        server.shutdown()
    assert html.returncode == 7 and "without the API's JSON" in one_line(html.stderr)
    usage = cli(devhost, "list", "--top", "0")
    assert usage.returncode == 2 and "--top" in one_line(usage.stderr)
    nowhere = cli(devhost, "list", REIMAGER_ENDPOINTS=str(tmp_path / "none.json"))
    assert nowhere.returncode == 2 and "make devhost" in one_line(nowhere.stderr)
    wrong_key = cli(devhost, "list", "--url", devhost["functions"], "--key", "not-the-key")
    assert wrong_key.returncode == 6 and "Unauthorized" in one_line(wrong_key.stderr)
    assert "not-the-key" not in wrong_key.stderr


def test_devhosts_app_service_authentication_refuses_a_token_it_did_not_issue(devhost: dict[str, Any]) -> None:
    headers = {"x-functions-key": devhost["functionKey"], "Authorization": "Bearer not-from-devhost"}
    r = requests.get(f"{devhost['functions']}/api/reimage", headers=headers, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "Unauthorized"
