"""Table Storage fault x every flow that writes the ledger: claim, lead, ride, queue, seal, hand-off, finish,
cancel, approve, reject, expiry, breaker and the sweeper's repairs, in one workload run once per kind of fault,
with every fourth write the ledger makes answered that way. Whatever happens: every request answered 202 ends with
exactly one terminal event; ARM sees at most one POST it could have applied per request; no instance is reimaged
twice within its cooldown; the global budget is never exceeded. The request log shows which flows met a fault."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from typing import Any

import pytest

from devhost.storage.faults import StorageFault
from tests.integration.conftest import BASE, LINUX_VM, WINDOWS_VM, Host

NewHost = Any
SETS = {name: f"{BASE}/virtualMachineScaleSets/{name}" for name in ("storm", "approve", "expire", "breaker")}
SETTINGS = {"COOLDOWN_MINUTES": "30", "QUEUE_MAX_WAIT_MINUTES": "20", "GLOBAL_MAX_REIMAGES_PER_HOUR": "40",
            "BREAKER_PERCENT": "100", "FLEET_BUDGET_PERCENT": "100", "MAX_INSTANCES_PER_REQUEST": "20",
            "APPROVAL_ABOVE_INSTANCES": "3", "APPROVAL_ALLOW_UNVERIFIED": "true", "MAX_TARGETS_PER_ALERT": "100",
            "HEALTH_GRACE_MINUTES": "1"}
EVERY = 4  # every fourth ledger write meets the fault


def alert(target: str, alert_id: str) -> dict[str, Any]:
    return {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
        "alertId": alert_id, "alertRule": "r", "severity": "Sev2", "signalType": "Metric",
        "monitorCondition": "Fired", "monitoringService": "Platform", "alertTargetIDs": [target],
        "firedDateTime": "2026-01-01T00:00:00Z"}, "alertContext": {}}}


async def accepted(h: Host, call: Any) -> list[str]:
    """The operations a call's answer says were accepted (202/200), from any surface."""
    with contextlib.suppress(Exception):
        result = await call
        body = result[1]
        if isinstance(body, dict) and "accepted" in body:
            return [a["operationId"] for a in body["accepted"] if "operationId" in a]
        if isinstance(body, dict) and body.get("operationId") and result[0] in (200, 202):
            return [body["operationId"]]
    return []


async def workload(h: Host) -> set[str]:
    ops: set[str] = set()
    inst = {name: f"{target}/virtualMachines" for name, target in SETS.items()}
    # lead + same-key joins (VMs); a storm with re-sent alerts (queue, seal, ride, hand-off); the breaker's set
    calls = [h.reimage({"target": LINUX_VM, "requestId": "vm-1"}) for _ in range(3)]
    calls += [h.post("/api/alerts", alert(f"{inst['storm']}/{i}", f"storm-{i}")) for i in range(8) for _ in (0, 1)]
    calls += [h.post("/api/alerts", alert(f"{inst['breaker']}/{i}", f"trip-{i}")) for i in range(6)]
    for got in await asyncio.gather(*(accepted(h, c) for c in calls)):
        ops.update(got)
    # the queue expires behind a long batch; one queued request is canceled
    ops.update(await accepted(h, h.post("/api/alerts", alert(f"{inst['expire']}/0", "expire-lead"))))
    waiting = []
    for i in range(1, 4):
        waiting += await accepted(h, h.post("/api/alerts", alert(f"{inst['expire']}/{i}", f"expire-{i}")))
    ops.update(waiting)
    if waiting:
        await h.post(f"/api/reimage/{waiting[-1]}/cancel", {"by": "carol"})
    # approvals: one approved, one rejected
    wide = await accepted(h, h.reimage({"target": SETS["approve"], "allInstances": True, "requestId": "wide",
                                        "requestedBy": "alice"}))
    narrow = await accepted(h, h.reimage({"target": SETS["approve"], "instanceIds": ["0", "1", "2", "3"],
                                          "requestId": "narrow", "requestedBy": "alice"}))
    ops.update(wide + narrow)
    for op, act in zip(wide + narrow, ("approve", "reject"), strict=False):
        await h.post(f"/api/reimage/{op}/{act}", {"by": "bob"})
    ops.update(await accepted(h, h.reimage({"target": WINDOWS_VM, "requestId": "vm-2"})))
    return ops


def check(h: Host, ops: set[str]) -> None:
    by_op: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in h.completed():
        by_op[e["data"]["operationId"]].append(e)
    assert {op: len(by_op[op]) for op in ops} == dict.fromkeys(ops, 1)  # one terminal event each
    applied = [p for p in h.reimage_posts() if not 400 <= int(p.get("status") or 0) < 500]
    assert len(applied) <= int(SETTINGS["GLOBAL_MAX_REIMAGES_PER_HOUR"])
    per_instance: Counter[str] = Counter()
    for post in applied:
        ids = (post.get("body") or {}).get("instanceIds") or [""]
        per_instance.update(f"{post['path'].rsplit('/', 1)[0]}#{i}" for i in ids)
    assert max(per_instance.values(), default=0) <= 1, per_instance  # the workload is shorter than a cooldown
    # every request whose event says it rode a POST rode one: at most one POST per request
    for op, events in by_op.items():
        assert len({e["data"].get("batchId") for e in events}) <= 1, op


@pytest.mark.parametrize("effect", ["applyThen500", "applyThenDrop", "busy503"])
async def test_every_flow_survives_a_storage_fault(new_host: NewHost, effect: str) -> None:
    h: Host = await new_host(settings=SETTINGS, operation_seconds=30)
    for name, target in SETS.items():
        h.dh.sim.seed_scale_set(target, 4 if name == "approve" else 10)
    h.dh.sim.durations["expire"] = 3600  # the expiry set's batch outlives QUEUE_MAX_WAIT_MINUTES
    assert h.dh.storage is not None
    h.dh.storage.faults.extend(StorageFault.model_validate(
        {"match": {"method": "WRITE", "nth": n}, "effect": effect}) for n in range(EVERY, 4000, EVERY))
    ops = await workload(h)
    assert len(ops) >= 10, ops
    await h.settle(lambda: {e["data"]["operationId"] for e in h.completed()} >= ops, max_virtual_seconds=4 * 3600)
    with contextlib.suppress(TimeoutError):  # some more sweeps: still one event each
        await h.settle(lambda: False, max_virtual_seconds=600)
    check(h, ops)
    faulted = Counter(next((t for t in ("ops", "index", "targets") if (r.get("table") or "").endswith(t)), "?")
                      for r in h.dh.storage.requests if r.get("effect") == effect)
    assert faulted["ops"] and faulted["targets"], faulted  # operations' and targets' writes both met it
