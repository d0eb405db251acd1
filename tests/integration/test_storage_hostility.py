"""The app through devhost when Table Storage and Service Bus are as hostile as Azure's: writes applied but
answered 500 or cut off, a hot partition answering 503, a slow owner, a ReplyTo that cannot be reached, ARM
refusing a POST that fifty deliveries carry. Each test fails on the ledger and publisher of wave 2."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from devhost.compute import Fault
from devhost.storage.faults import StorageFault
from tests.integration.conftest import BASE, LINUX_VM, WINDOWS_VM, Host

NewHost = Any
SET = f"{BASE}/virtualMachineScaleSets/hostile"
OPEN = {"BREAKER_PERCENT": "100", "FLEET_BUDGET_PERCENT": "100", "MAX_INSTANCES_PER_REQUEST": "100",
        "COOLDOWN_MINUTES": "30"}


def storage_fault(h: Host, **doc: Any) -> None:
    assert h.dh.storage is not None
    h.dh.storage.faults.append(StorageFault.model_validate(doc))


def injected(h: Host) -> list[str]:
    assert h.dh.storage is not None
    return [r["effect"] for r in h.dh.storage.requests if r.get("effect")]


def alert(instance: str, alert_id: str) -> dict[str, Any]:
    return {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
        "alertId": alert_id, "alertRule": "unhealthy-instance", "severity": "Sev2", "signalType": "Metric",
        "monitorCondition": "Fired", "monitoringService": "Platform",
        "alertTargetIDs": [f"{SET}/virtualMachines/{instance}"], "firedDateTime": "2026-01-01T00:00:00Z"},
        "alertContext": {}}}


async def queued_behind_a_batch(h: Host, n: int) -> list[str]:
    """A batch of instance 0 holds the set; n more requests wait in its queue. Their operation ids."""
    h.dh.sim.seed_scale_set(SET, 20)
    _, lead, _ = await h.post("/api/alerts", alert("0", "lead"))
    await h.settle(lambda: any("/hostile/" in p["path"] for p in h.reimage_posts()), max_virtual_seconds=60)
    ops = []
    for i in range(1, n + 1):
        _, body, _ = await h.post("/api/alerts", alert(str(i), f"wait-{i}"))
        ops.append(body["accepted"][0]["operationId"])
    return ops


def ended(h: Host, ops: list[str]) -> dict[str, list[str]]:
    """The terminal events per operation: each must have exactly one."""
    out: dict[str, list[str]] = {op: [] for op in ops}
    for e in h.completed():
        if e["data"]["operationId"] in out:
            out[e["data"]["operationId"]].append(e["data"]["error"]["code"] if e["data"]["error"] else "")
    return out


async def test_a_cancel_whose_write_landed_but_was_answered_500_still_ends_the_request(new_host: NewHost) -> None:
    h: Host = await new_host(settings=OPEN)
    [op] = await queued_behind_a_batch(h, 1)
    storage_fault(h, match={"table": "*targets", "method": "POST"}, effect="applyThen500")
    s, body, _ = await h.post(f"/api/reimage/{op}/cancel", {"reason": "false alarm"})
    assert s == 200 and body["status"] == "Canceled", body
    assert injected(h) == ["applyThen500"]
    assert ended(h, [op]) == {op: ["CanceledByOperator"]}


async def test_queue_expiry_whose_writes_land_but_are_answered_500_ends_every_request_once(
        new_host: NewHost) -> None:
    h: Host = await new_host(settings={**OPEN, "QUEUE_MAX_WAIT_MINUTES": "5", "OPERATION_TIMEOUT_MINUTES": "600"},
                             operation_seconds=3600)
    ops = await queued_behind_a_batch(h, 3)
    storage_fault(h, match={"table": "*targets", "method": "POST"}, effect="applyThen500", times=3)
    await h.settle(lambda: all(ended(h, ops).values()), max_virtual_seconds=900)
    assert "applyThen500" in injected(h)
    assert ended(h, ops) == {op: ["QueueExpired"] for op in ops}


async def test_a_breaker_trip_whose_write_landed_but_was_cut_off_ends_the_waiting_requests(
        new_host: NewHost) -> None:
    h: Host = await new_host(settings={**OPEN, "BREAKER_PERCENT": "25"}, operation_seconds=3600)
    ops = await queued_behind_a_batch(h, 4)  # 5 of 20 asked: at the limit
    storage_fault(h, match={"table": "*targets", "method": "POST"}, effect="applyThenDrop")
    s, body, _ = await h.post("/api/alerts", alert("5", "tips-it"))
    assert body["refused"][0]["error"]["code"] == "TargetSuspended", body
    await h.settle(lambda: all(ended(h, ops).values()), max_virtual_seconds=600)
    assert ended(h, ops) == {op: ["TargetSuspended"] for op in ops}
    assert len(h.events("reimager.target.suspended")) == 1


async def test_a_slow_owner_never_frees_what_the_claim_that_took_over_holds(new_host: NewHost) -> None:
    """The first request stalls between its claim and its submission (its CAS to Submitting waits 6 s in a hot
    partition) past its claim; a retry with the same key takes the key over and reimages. When the stalled one's
    CAS finally fails, it frees only what its own claim attempt held: a third request for the VM is not POSTed
    inside the cooldown, and ARM sees one reimage."""
    h: Host = await new_host(settings={"CLAIM_SECONDS": "5", "COOLDOWN_MINUTES": "30"}, operation_seconds=30)
    storage_fault(h, match={"table": "*ops", "method": "PUT"}, effect="delay", seconds=6)
    first = asyncio.create_task(h.reimage({"target": LINUX_VM, "requestId": "slow"}))
    await asyncio.sleep(1.5)  # real time: the first is stalled in its CAS to Submitting
    h.dh.clock.advance(10)  # the ledger's clock: its claim ran out
    s, retry, _ = await h.reimage({"target": LINUX_VM, "requestId": "slow"})
    assert s == 202 and retry["status"] == "Accepted", retry
    s1, slow, _ = await first
    assert s1 == 503 and slow["error"]["code"] == "ClaimLost", slow
    s, third, _ = await h.reimage({"target": LINUX_VM, "requestId": "third"})
    assert len([p for p in h.reimage_posts() if "web-linux-01" in p["path"]]) == 1
    await h.until_completed(1)
    with contextlib.suppress(TimeoutError):
        await h.settle(lambda: len(h.completed()) >= 2, max_virtual_seconds=900)
    posts = [p for p in h.reimage_posts() if "web-linux-01" in p["path"]]
    assert len(posts) == 1, posts  # the third waited, then ended: the VM cools down for 30 minutes
    assert s in (202, 429), third


async def test_a_reply_to_that_cannot_be_reached_never_resends_the_topic_copy(new_host: NewHost) -> None:
    h: Host = await new_host()
    assert h.dh.broker is not None
    s, out = await h.queue({"target": LINUX_VM}, messageId="m-lost-reply", replyTo="no-such-queue")
    assert s == 202 and out["settlement"] == "completed", out
    [done] = await h.until_completed(1)
    await h.settle(lambda: bool(h.events("reimager.operation.reply-failed")), max_virtual_seconds=3 * 3600)
    with contextlib.suppress(TimeoutError):  # three hours of sweeps
        await h.settle(lambda: False, max_virtual_seconds=3 * 3600)
    sends = [s for s in h.dh.broker.sends if s["messageId"] == done["id"]]
    topic = [s for s in sends if s["entity"] == h.dh.settings.events_topic]
    assert len(topic) == 1 and topic[0]["outcome"] == "delivered"  # never sent again for the ReplyTo
    [failed] = h.events("reimager.operation.reply-failed")
    assert failed["data"]["reply"]["status"] == "failed" and failed["data"]["reply"]["attempts"] == 5
    s, status = await h.get(f"/api/reimage/{done['data']['operationId']}")
    assert status["reply"]["status"] == "failed"
    assert done["data"]["operationId"] not in await h.dh.runtime.ledger.unsettled()


async def test_fifty_concurrent_deliveries_of_a_refused_key_make_one_post(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"COOLDOWN_MINUTES": "0"})
    h.dh.sim.faults.append(Fault.model_validate({"match": "reimage", "status": 409, "code": "OperationNotAllowed",
                                                 "times": 100}))
    answers = await asyncio.gather(*(h.reimage({"target": WINDOWS_VM, "requestId": "refused-key"})
                                     for _ in range(50)))
    assert {s for s, _, _ in answers} == {409}, {s for s, _, _ in answers}
    assert len([p for p in h.reimage_posts() if "app-win-01" in p["path"]]) == 1
    s, retry, _ = await h.reimage({"target": WINDOWS_VM, "requestId": "refused-key"})  # after the refusal
    assert s == 409 and len([p for p in h.reimage_posts() if "app-win-01" in p["path"]]) == 2


async def test_refused_posts_consume_no_global_budget(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"GLOBAL_MAX_REIMAGES_PER_HOUR": "3", "COOLDOWN_MINUTES": "0"})
    h.dh.sim.faults.append(Fault.model_validate({"match": "reimage", "status": 409, "code": "OperationNotAllowed",
                                                 "times": 5}))
    for i in range(5):
        s, _, _ = await h.reimage({"target": LINUX_VM, "requestId": f"refused-{i}"})
        assert s == 409
    s, body, _ = await h.reimage({"target": LINUX_VM, "requestId": "after"})
    assert s == 202 and body["status"] == "Accepted", body  # not Queued for an hour behind refusals


async def test_storage_that_keeps_failing_answers_503_with_retry_after_and_abandons_the_message(
        new_host: NewHost) -> None:
    h: Host = await new_host()
    storage_fault(h, match={"table": "*ops"}, effect="busy503", times=40)
    s, body, headers = await h.reimage({"target": LINUX_VM, "requestId": "busy"})
    assert s == 503 and body["error"]["code"] == "StorageUnavailable" and int(headers["Retry-After"]) > 0
    s, body, _ = await h.post("/api/alerts", {"schemaId": "azureMonitorCommonAlertSchema", "data": {
        "essentials": {"alertId": "busy-alert", "alertRule": "r", "monitorCondition": "Fired",
                       "alertTargetIDs": [LINUX_VM]}, "alertContext": {}}})
    assert s == 503, body  # an action group retries 503 (never 500)
    assert h.dh.storage is not None
    h.dh.storage.faults.clear()
    s, out = await h.queue({"target": LINUX_VM}, messageId="m-busy")
    assert s == 202 and out["settlement"] == "completed"
    s, retry, _ = await h.reimage({"target": LINUX_VM, "requestId": "busy"})
    assert s in (202, 200) and retry["operationId"]

