"""A seeded soak: a few hundred mixed requests over HTTP, alerts and the queue (fresh keys and resent ones), against
`python -m devhost --storage-chaos` (Table Storage failing a few percent of requests as Azure can), with one
`kill -9` of the whole host in the middle and a restart on the same state dir. Callers retry what got no answer
or a 5xx with the same key, as action groups and clients do.

Whatever the seed: every request that was accepted ends with exactly one completion event; no machine is
reimaged twice within its cooldown (so no key is POSTed twice); the global budget is never exceeded. The seed is
printed (and named in every failure); `SOAK_SEED=<n>` repeats a run, `SOAK_REQUESTS=<n>` sizes it."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

from shared.domain.ids import operation_id
from tests.e2e.test_devhost_process import ROOT, wait_for
from tests.e2e.test_kill9_restart import stop_azurite

SEED = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1 << 31))
SIZE = int(os.environ.get("SOAK_REQUESTS") or 200)
CHAOS = 0.03
BUDGET = 14  # GLOBAL_MAX_REIMAGES_PER_HOUR: fewer than the machines asked for, so the budget binds
VMS = 12
SET_SIZE = 24
SETTINGS = {"POLL_MIN_SECONDS": "1", "POLL_DEFAULT_SECONDS": "1", "SUBMIT_TIMEOUT_SECONDS": "5",
            "SWEEP_SCHEDULE": "*/2 * * * * *", "COOLDOWN_MINUTES": "120", "GLOBAL_MAX_REIMAGES_PER_HOUR": str(BUDGET),
            "QUEUE_MAX_WAIT_MINUTES": "1", "BATCH_GATHER_SECONDS": "2", "BREAKER_PERCENT": "100",
            "FLEET_BUDGET_PERCENT": "100", "MAX_INSTANCES_PER_REQUEST": "100", "CLAIM_SECONDS": "10"}
TERMINAL = {"Succeeded", "Failed", "Canceled", "TimedOut"}


def start(state: Path, chaos_seed: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    (state / "endpoints.json").unlink(missing_ok=True)
    args = [arg for name, value in SETTINGS.items() for arg in ("--settings", f"{name}={value}")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "devhost", "--port", "0", "--state-dir", str(state), "--operation-seconds", "3",
         "--retry-after", "1", "--storage-chaos", f"{CHAOS}:{chaos_seed}", *args],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    wait_for((state / "endpoints.json").exists, 60, "endpoints.json")
    return proc, json.loads((state / "endpoints.json").read_text())


def create_resources(ep: dict[str, Any]) -> tuple[list[str], str]:
    """PUT the soak's machines to the ARM simulator, as an operator's template would."""
    token = requests.get(ep["identity"], params={"api-version": "2019-08-01", "resource": "https://management.azure.com/"},
                         headers={"X-IDENTITY-HEADER": ep["identityHeader"]}, timeout=10).json()["access_token"]
    base = f"{ep['arm']}/subscriptions/{ep['subscriptionId']}/resourceGroups/soak/providers/Microsoft.Compute"
    auth = {"Authorization": f"Bearer {token}"}
    disk = {"createOption": "FromImage", "osType": "Linux", "managedDisk": {"storageAccountType": "Premium_LRS"}}
    vms = []
    for i in range(VMS):
        r = requests.put(f"{base}/virtualMachines/soak-vm-{i:02}", params={"api-version": "2024-07-01"}, headers=auth,
                         json={"location": "westus", "properties": {"storageProfile": {"osDisk": disk}}}, timeout=10)
        assert r.status_code in (200, 201), r.text
        vms.append(r.json()["id"])
    r = requests.put(f"{base}/virtualMachineScaleSets/soak-set", params={"api-version": "2024-07-01"}, headers=auth,
                     timeout=10, json={"location": "westus", "sku": {"name": "Standard_D2s_v5", "capacity": SET_SIZE},
                                       "properties": {"upgradePolicy": {"mode": "Manual"}, "virtualMachineProfile": {
                                           "storageProfile": {"osDisk": disk}}}})
    assert r.status_code in (200, 201), r.text
    return vms, r.json()["id"]


@dataclass
class Call:
    """One request, sent (and resent) with the same key."""

    kind: str  # http, alert, queue
    key: str
    body: dict[str, Any]
    answers: list[tuple[int, Any]] = field(default_factory=list)

    def accepted(self) -> set[str]:
        """The operations this call was answered as accepted for."""
        ops: set[str] = set()
        for status, body in self.answers:
            if self.kind == "http" and status in (200, 202):
                ops.add(body["operationId"])
            elif self.kind == "alert" and status in (200, 202):
                ops |= {a["operationId"] for a in body.get("accepted", [])}
            elif self.kind == "queue" and status in (200, 202) and body.get("settlement") == "completed":
                ops.add(operation_id(self.key))  # unless it was rejected (below)
        return ops

    def answered(self) -> bool:
        """A definite answer: 2xx, or a 4xx that says no (callers do not retry those)."""
        return any(200 <= s < 300 or (400 <= s < 500 and s != 429) for s, _ in self.answers)


def plan(vms: list[str], scale_set: str, rng: random.Random) -> list[Call]:
    calls: list[Call] = []
    for n in range(SIZE):
        if calls and rng.random() < 0.3:  # a resend: same key, same body
            calls.append(rng.choice(calls))
            continue
        kind = rng.choices(["http", "alert", "queue"], [0.4, 0.35, 0.25])[0]
        instance = f"{scale_set}/virtualMachines/{rng.randrange(SET_SIZE)}"
        target = rng.choice(vms) if kind == "http" or rng.random() < 0.5 else instance
        key = f"soak-{SEED}-{n}"
        if kind == "alert":
            body = {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
                "alertId": key, "alertRule": "soak", "severity": "Sev2", "signalType": "Metric",
                "monitorCondition": "Fired", "monitoringService": "Platform",
                "alertTargetIDs": [rng.choice([instance, rng.choice(vms)])], "firedDateTime": "2026-12-07T00:00:00Z"},
                "alertContext": {}}}
        elif kind == "http":
            body = {"target": target, "requestId": key, "reason": "soak"}
        else:
            body = {"target": target, "reason": "soak"}
        calls.append(Call(kind, key, body))
    return calls


async def send(http: aiohttp.ClientSession, ep: dict[str, Any], call: Call) -> None:
    url, headers = ep["functions"], {"x-functions-key": ep["functionKey"]}
    if call.kind == "http":
        path, doc = "/api/reimage", call.body
    elif call.kind == "alert":
        path, doc = "/api/alerts", call.body
    else:
        path, doc = "/admin/functions/reimage_queue", {"input": json.dumps(call.body), "messageId": call.key}
    try:
        async with http.post(url + path, json=doc, headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as r:
            call.answers.append((r.status, await r.json(content_type=None)))
    except (TimeoutError, aiohttp.ClientError) as exc:  # the host was killed under it
        call.answers.append((0, repr(exc)))


async def send_all(ep: dict[str, Any], calls: list[Call], concurrency: int = 12,
                   answered: Callable[[], None] | None = None) -> None:
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as http:
        async def one(call: Call) -> None:
            async with gate:
                await send(http, ep, call)
            if answered is not None:
                answered()
        await asyncio.gather(*(one(c) for c in calls))


def events(state: Path) -> list[dict[str, Any]]:
    path = state / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def applied_posts(state: Path) -> list[dict[str, Any]]:
    """Every reimage POST ARM accepted, across both processes (the simulator's log survives the restart)."""
    lines = (state / "arm" / "requests.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["method"] == "POST" and re.search(r"/reimage(all)?$", r["path"])
            and 200 <= r["status"] < 300]


def machines(post: dict[str, Any]) -> list[str]:
    path = post["path"].rsplit("/", 1)[0].lower()
    if "/virtualmachinescalesets/" in path and "/virtualmachines/" not in path:
        return [f"{path}/virtualmachines/{i}" for i in (post.get("body") or {}).get("instanceIds", [])]
    return [path]


def status(ep: dict[str, Any], op: str) -> str | None:
    r = requests.get(f"{ep['functions']}/api/reimage/{op}", headers={"x-functions-key": ep["functionKey"]}, timeout=10)
    return r.json().get("status") if r.status_code == 200 else None


def cancel(ep: dict[str, Any], op: str) -> bool:
    """Cancel a waiting request as an operator would: again while storage answers 503."""
    for _ in range(5):
        r = requests.post(f"{ep['functions']}/api/reimage/{op}/cancel", json={"reason": "soak over"}, timeout=10,
                          headers={"x-functions-key": ep["functionKey"]})
        if r.status_code < 500:
            return r.status_code == 200
        time.sleep(1)
    return False


def describe(ep: dict[str, Any], ops: list[str]) -> list[str]:
    """What the app says of up to ten operations (for a failure message)."""
    out = []
    for op in ops[:10]:
        r = requests.get(f"{ep['functions']}/api/reimage/{op}", headers={"x-functions-key": ep["functionKey"]},
                         timeout=10)
        doc = r.json() if r.content else {}
        out.append(f"{op}: {r.status_code} {doc.get('status')} {doc.get('error')} {doc.get('queuePosition')}")
    return out + ([f"... and {len(ops) - 10} more"] if len(ops) > 10 else [])


@pytest.mark.timeout(420)
def test_seeded_soak_with_storage_chaos_and_a_kill(tmp_path: Path) -> None:
    print(f"soak: seed {SEED}, {SIZE} requests, storage chaos {CHAOS} (repeat with SOAK_SEED={SEED})")
    rng = random.Random(SEED)
    state = tmp_path / "state"
    proc, ep = start(state, SEED)
    try:
        vms, scale_set = create_resources(ep)
        calls = plan(vms, scale_set, rng)
        half = len(calls) // 2
        first = asyncio.run(_first_half(ep, calls[:half], proc))
        proc.wait(timeout=10)
        proc, ep = start(state, SEED + 1)
        asyncio.run(send_all(ep, calls[half:]))
        for _ in range(4):  # callers resend what got no definite answer (a 5xx, a 429, a dropped connection)
            retry = [c for c in {id(c): c for c in calls}.values() if not c.answered()]
            if not retry:
                break
            time.sleep(2)
            asyncio.run(send_all(ep, retry))
        unique = list({id(c): c for c in calls}.values())
        rejected = {e["data"].get("requestId") for e in events(state) if e["type"] == "reimager.request.rejected"}
        accepted = {op for c in unique for op in c.accepted() if not (c.kind == "queue" and c.key in rejected)}
        assert accepted, f"seed {SEED}: nothing was accepted"

        def missing() -> set[str]:
            return accepted - {e["data"]["operationId"] for e in events(state)
                               if e["type"] == "reimager.operation.completed"}
        # What still waits once the rest has ended waits for the budget (an hour): the operator cancels it.
        end = time.monotonic() + 60
        while any(status(ep, op) not in ("Queued", "AwaitingApproval") for op in missing()) and time.monotonic() < end:
            time.sleep(1)
        canceled = [op for op in missing() if cancel(ep, op)]
        end = time.monotonic() + float(os.environ.get("SOAK_WAIT") or 60)
        while missing() and time.monotonic() < end:
            time.sleep(0.5)
        if missing() and os.environ.get("SOAK_DEBUG"):
            Path(os.environ["SOAK_DEBUG"]).write_text(json.dumps({"missing": sorted(missing()), "calls": [
                {"kind": c.kind, "key": c.key, "op": operation_id(c.key), "answers": c.answers} for c in unique]}))
        assert not missing(), f"seed {SEED}: no completion event for {describe(ep, sorted(missing()))}"
        time.sleep(4)  # two more sweeps: a second event would show up now
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        stop_azurite(state)  # the killed host's Azurite was adopted by the restart; it outlives both
    completed = Counter(e["data"]["operationId"] for e in events(state) if e["type"] == "reimager.operation.completed")
    assert {op: n for op, n in completed.items() if n != 1} == {}, f"seed {SEED}: more than one completion event"
    assert all(e["data"]["status"] in TERMINAL for e in events(state) if e["type"] == "reimager.operation.completed")
    posts = applied_posts(state)
    per_machine = Counter(m for p in posts for m in machines(p))
    assert {m: n for m, n in per_machine.items() if n > 1} == {}, f"seed {SEED}: reimaged twice within its cooldown"
    assert len(posts) <= BUDGET, f"seed {SEED}: {len(posts)} POSTs over GLOBAL_MAX_REIMAGES_PER_HOUR={BUDGET}"
    assert first > 0 and len(posts) > 0, f"seed {SEED}: the soak reimaged nothing"
    print(f"soak: seed {SEED}: {len(unique)} keys, {len(accepted)} accepted, {len(posts)} POSTs "
          f"({sum(per_machine.values())} machines), {sum(completed.values())} completion events, {len(canceled)} "
          "canceled while waiting for the budget")


async def _first_half(ep: dict[str, Any], calls: list[Call], proc: subprocess.Popen[str]) -> int:
    """Send the first half; once a quarter of it has been answered, kill -9 the host under the rest."""
    half = asyncio.Event()

    def answered() -> None:
        if sum(1 for c in calls if c.answers) >= len(calls) // 2:
            half.set()
    sending = asyncio.ensure_future(send_all(ep, calls, answered=answered))
    await half.wait()
    proc.send_signal(signal.SIGKILL)
    await sending
    return sum(1 for c in calls if c.answers and c.answers[0][0] in (200, 202))
