"""Crash points, a mixed concurrent load, and a secret scan over everything that was produced."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from shared.domain.ids import operation_id
from tests.helpers import SENTINEL_PASSWORD
from tests.integration.conftest import BASE, LINUX_VM, VMSS, Host

NewHost = Callable[..., Any]


async def _crashed_claim(host: Host, key: str, status: str, target: str = LINUX_VM) -> str:
    """What a trigger that died leaves in the ledger: the claim, the lease, and maybe `Submitting`."""
    from shared.domain.records import OperationRecord
    from shared.workflow import completion

    rt = host.dh.runtime
    assert rt is not None
    op, now = operation_id(key), rt.now()
    record = OperationRecord(operation_id=op, request_id=key, target=target, lease_key=target.lower(),
                             cooldown_keys=[""], trigger="queue", created_time=now, last_updated_time=now)
    await rt.ledger.claim(record)
    await rt.ledger.index(record)
    await completion.admit(rt, record, secret=False, capacity=1, target_id=target)
    if status == "Submitting":
        await rt.ledger.update(op, lambda r: setattr(r, "status", "Submitting") or r)
        from shared.domain.request import parse_request

        await rt.compute.submit(parse_request({"target": target}).arm_call(rt.settings.compute_api_version))
    return op


async def test_crash_between_claim_and_submit(host: Host) -> None:
    """The trigger claimed and died before reaching ARM: the redelivery takes the claim over and submits once."""
    op = await _crashed_claim(host, "crash-a", "Claimed")
    s, out = await host.queue({"target": LINUX_VM}, messageId="crash-a")  # the redelivery
    assert s == 202 and out["settlement"] == "completed"
    events = await host.until_completed()
    assert [(e["data"]["operationId"], e["data"]["status"]) for e in events] == [(op, "Succeeded")]
    assert len(host.reimage_posts()) == 1


async def test_crash_between_submit_and_submitted(host: Host) -> None:
    """The POST went out, then the trigger died before recording it: redeliveries send nothing new, and the
    sweeper ends the operation exactly once (SubmissionLost: it may have been applied)."""
    op = await _crashed_claim(host, "crash-b", "Submitting")
    for _ in range(3):  # Service Bus redelivers (the host died): nothing new is sent
        s, out = await host.queue({"target": LINUX_VM}, messageId="crash-b")
        assert s == 202 and out["settlement"] == "completed"
    await host.until_completed()
    later = host.dh.clock.now() + 600  # ten more sweeps: still one event
    await host.settle(lambda: host.dh.clock.now() >= later, max_virtual_seconds=900)
    assert [(e["data"]["operationId"], e["data"]["error"]["code"]) for e in host.completed()] == [
        (op, "SubmissionLost")]
    assert len(host.reimage_posts()) == 1


async def test_500_mixed_concurrent_requests(new_host: NewHost, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    h: Host = await new_host()
    vms = [f"{BASE}/virtualMachines/load-{i:03d}" for i in range(120)]
    for vm in vms:
        h.dh.sim.upsert(vm, {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}})
    rng = random.Random(7)
    pw = {"osProfile": {"adminPassword": SENTINEL_PASSWORD}}
    bodies: list[dict[str, Any]] = []
    for i in range(500):
        kind = i % 5
        if kind == 0:    # valid, unique target
            bodies.append({"target": vms[i // 5 % len(vms)], "requestId": f"load-{i}", **pw})
        elif kind == 1:  # duplicate of one of a few keys
            bodies.append({"target": vms[-1], "requestId": f"dup-{i % 3}"})
        elif kind == 2:  # conflicting: many keys, one scale set
            bodies.append({"target": VMSS, "instanceIds": [str(rng.randrange(4))], "requestId": f"conf-{i}"})
        elif kind == 3:  # invalid, with a secret in it
            bodies.append({"target": vms[0], "tempdisk": "yes", **pw})
        else:            # forbidden / missing
            bodies.append({"target": rng.choice([vms[0].replace("load-000", "ghost"),
                                                 f"{BASE}/virtualMachines/db-linux-01"])})
    answers = await asyncio.gather(*(h.reimage(b) for b in bodies))
    statuses = Counter(a[0] for a in answers)
    assert 500 not in statuses and set(statuses) <= {200, 202, 400, 403, 404, 409, 429}
    # 202, or 200 for one that was accepted and had already ended (a queued request canceled by the breaker)
    accepted = {a[1]["operationId"] for a in answers if a[0] == 202 or (a[0] == 200 and not a[1].get("duplicate"))}
    await h.settle(lambda: {e["data"]["operationId"] for e in h.completed()} >= accepted, max_virtual_seconds=3600)
    await h.settle(lambda: True)
    per_op = Counter(e["data"]["operationId"] for e in h.completed())
    assert set(per_op) == accepted and set(per_op.values()) == {1}  # nothing lost, nothing twice
    posts = Counter(p["path"] for p in h.reimage_posts())
    assert max(posts.values()) == 1  # no target was sent two reimages
    dup0 = {a[1].get("operationId") for a, b in zip(answers, bodies, strict=True) if b.get("requestId") == "dup-0"}
    assert len(dup0) == 1  # one key, one operation, however many times it was sent
    haystacks = {"logs": caplog.text, "answers": json.dumps([a[1] for a in answers]),
                 "events": json.dumps(h.dh.events()), "durable": h.dh.engine.dump()}  # type: ignore[union-attr]
    for name, text in haystacks.items():
        assert SENTINEL_PASSWORD not in text, name
    # ...while the valid requests did carry it to ARM: the scan looked at real traffic.
    assert any(SENTINEL_PASSWORD in json.dumps(p["body"]) for p in h.reimage_posts())


async def test_crash_after_completion_before_the_event(host: Host) -> None:
    """The operation ended in the ledger, then the process died before its event went out: the sweeper
    sends it, once."""
    from shared.workflow import completion

    op = await _crashed_claim(host, "crash-c", "Claimed")
    rt = host.dh.runtime
    assert rt is not None

    def ended(r: Any) -> Any:
        r.status, r.applied, r.completed_at = "Succeeded", True, rt.now()
        return r

    record = await rt.ledger.update(op, ended)
    assert record is not None and record.event_id is None
    await completion.release_lease(rt, record, applied=True)
    events = await host.until_completed()
    later = host.dh.clock.now() + 600  # ten more sweeps: still one event
    await host.settle(lambda: host.dh.clock.now() >= later, max_virtual_seconds=900)
    assert [(e["data"]["operationId"], e["data"]["status"]) for e in host.completed()] == [(op, "Succeeded")]
    assert events and host.reimage_posts() == []
    stored = await rt.ledger.get(op)
    assert stored is not None and stored.event_id == host.completed()[0]["id"]
