"""Races and refusals decided by the ledger, with real concurrency on devhost (hostile by default).

"Reimage POST" below means one ARM may have applied: a POST it refused with a 4xx reimaged
nothing, and the guarantee (one reimage per key) is about what can reimage.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from devhost.compute import Fault
from tests.helpers import SENTINEL_PASSWORD
from tests.integration.conftest import LINUX_VM, VMSS, WINDOWS_VM, Host

NewHost = Any


def applied_posts(h: Host) -> list[dict[str, Any]]:
    return [p for p in h.reimage_posts() if not 400 <= int(p.get("status") or 0) < 500]


def alert(target: str, alert_id: str) -> dict[str, Any]:
    return {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
        "alertId": alert_id, "alertRule": "cpu", "severity": "Sev2", "signalType": "Metric",
        "monitorCondition": "Fired", "monitoringService": "Platform", "alertTargetIDs": [target],
        "firedDateTime": "2026-01-01T00:00:00Z"}, "alertContext": {}}}


@pytest.mark.parametrize("fault", [
    None,
    {"match": "reimage", "status": 409, "code": "Conflict"},
    {"match": "reimage", "status": 400, "code": "InvalidParameter"},
    {"match": "reimage", "status": 500, "code": "InternalServerError"},
    {"match": "reimage", "status": 429, "retryAfter": 1},
    {"match": "reimage", "drop": True},
    {"match": "get", "delaySeconds": 0.5},  # a slow preflight for the first caller
], ids=["clean", "409", "400", "500", "429", "dropped", "slow-preflight"])
async def test_one_key_fifty_times_across_http_queue_and_alerts(new_host: NewHost, fault: dict[str, Any] | None
                                                               ) -> None:
    h: Host = await new_host(settings={"COOLDOWN_MINUTES": "0"})
    if fault is not None:
        h.dh.sim.faults.append(Fault.model_validate(fault))
    body = {"target": LINUX_VM, "requestId": "storm-key"}
    calls = []
    for i in range(50):
        if i % 5 == 0:  # an action group re-sending one alert: its own key (alertId + target)
            calls.append(h.post("/api/alerts", alert(LINUX_VM, "storm-alert")))
        elif i % 3 == 0:
            calls.append(h.queue(body, messageId=f"m-{i}", deliverUntilSettled=False))
        else:
            calls.append(h.reimage(body))
    await asyncio.gather(*calls)
    if h.dh.servicebus is not None:
        await h.dh.servicebus.idle()
    await h.settle(lambda: not h.dh.engine.instances or all(  # type: ignore[union-attr]
        i.status not in ("Pending", "Running") for i in h.dh.engine.instances.values()))  # type: ignore[union-attr]
    by_key: dict[str, int] = {}
    for e in h.completed():
        by_key[e["data"]["requestId"]] = by_key.get(e["data"]["requestId"], 0) + 1
    assert set(by_key.values()) <= {1}, by_key  # exactly one terminal event per operation
    assert set(by_key) <= {"storm-key", next((k for k in by_key if k.startswith("alert|storm-alert|")), "-")}
    # Every POST ARM may have applied belongs to an operation that ended with its event, one per key; the
    # alert's key, arriving while the first reimage ran with equal options, may ride it (no second POST).
    assert len(applied_posts(h)) <= len(by_key) <= 2, h.reimage_posts()
    assert len({e["id"] for e in h.completed()}) == len(h.completed())


async def test_distinct_outcomes_have_distinct_event_ids(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"COOLDOWN_MINUTES": "0"})
    h.dh.sim.faults.append(Fault.model_validate({"match": "reimage", "status": 500}))
    await h.reimage({"target": LINUX_VM, "requestId": "k-fail"})
    await h.reimage({"target": WINDOWS_VM, "requestId": "k-ok"})
    await h.until_completed(2)
    ids = [e["id"] for e in h.completed()]
    assert len(ids) == len(set(ids)) == 2


async def test_fresh_keys_on_four_vms_reimage_each_vm_once_within_the_cooldown(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"COOLDOWN_MINUTES": "30"})
    vms = [LINUX_VM, WINDOWS_VM, *[LINUX_VM.replace("web-linux-01", f"extra-{i}") for i in range(2)]]
    for vm in vms[2:]:
        h.dh.sim.upsert(vm, {"location": "westus", "properties": {"storageProfile": {
            "osDisk": {"osType": "Linux"}, "imageReference": {"version": "1"}}}})

    async def wave() -> None:
        await asyncio.gather(*(h.reimage({"target": vm}) for vm in vms for _ in range(2)))

    for _ in range(4):  # 32 requests over 12 virtual seconds, racing each other and the completions
        await wave()
        h.dh.clock.advance(3)  # type: ignore[attr-defined]
    await h.settle(lambda: len(h.completed()) >= 4)
    for _ in range(4):
        await wave()
    by_vm = [p["path"].lower().rsplit("/", 1)[0] for p in h.reimage_posts()]
    assert sorted(by_vm) == sorted(v.lower() for v in vms)


async def test_all_instances_refused_while_one_instance_cools_down(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"COOLDOWN_MINUTES": "30"})
    await h.reimage({"target": VMSS, "instanceIds": ["1"]})
    await h.until_completed()
    s, body, headers = await h.reimage({"target": VMSS, "allInstances": True})
    assert s == 429 and body["error"]["code"] == "CooldownActive"
    assert "instance 1" in body["error"]["message"].lower() and int(headers["Retry-After"]) > 1700
    assert len(h.reimage_posts()) == 1


async def test_all_instances_names_the_instances_seen_at_preflight(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"APPROVAL_ALLOW_UNVERIFIED": "true"})
    s, body, _ = await h.reimage({"target": VMSS, "allInstances": True, "requestedBy": "alice"})
    assert s == 202 and body["status"] == "AwaitingApproval"
    s, approved, _ = await h.post(f"/api/reimage/{body['operationId']}/approve", {"by": "bob"})
    assert s == 202, approved
    await h.settle(lambda: len(h.reimage_posts()) >= 2)  # the set's canary (its first instance), then the rest
    sent = [i for p in h.reimage_posts() for i in p["body"]["instanceIds"]]
    assert sent == body["instanceIds"] and len(body["instanceIds"]) >= 2


async def test_a_throttled_submission_does_not_burn_the_key(new_host: NewHost) -> None:
    """ARM throttles the POST past the client's retries: nothing was applied, so the request waits Queued (same
    key) and a batch sends it after Retry-After; asking again is a duplicate, never a second POST."""
    h: Host = await new_host()
    h.dh.sim.faults.append(Fault.model_validate({"match": "reimage", "status": 429, "retryAfter": 1, "times": 4}))
    s, body, _ = await h.reimage({"target": LINUX_VM, "requestId": "throttled"})
    assert s == 202 and body["status"] == "Queued"
    s, again, _ = await h.reimage({"target": LINUX_VM, "requestId": "throttled"})
    assert s == 202 and again["operationId"] == body["operationId"] and again["duplicate"] is True
    [event] = await h.until_completed()
    assert event["data"]["status"] == "Succeeded" and len(applied_posts(h)) == 1


async def test_a_throttled_submission_with_secrets_is_503_and_frees_the_key(new_host: NewHost) -> None:
    """Secrets are never stored, so a request carrying them cannot wait for ARM: 503 with Retry-After, key free."""
    h: Host = await new_host()
    h.dh.sim.faults.append(Fault.model_validate({"match": "reimage", "status": 429, "retryAfter": 1, "times": 4}))
    request = {"target": LINUX_VM, "requestId": "throttled-secret", "osProfile": {"adminPassword": SENTINEL_PASSWORD}}
    s, body, headers = await h.reimage(request)
    assert s == 503 and body["error"]["code"] == "ComputeUnavailable" and headers["Retry-After"] == "1"
    s, body, _ = await h.reimage(request)
    assert s == 202 and body["status"] == "Accepted"
    assert len(applied_posts(h)) == 1
    await h.until_completed()


async def test_an_uncertain_submission_starts_the_cooldown(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"COOLDOWN_MINUTES": "30"})
    h.dh.sim.faults.append(Fault.model_validate({"match": "reimage", "drop": True}))
    s, body, _ = await h.reimage({"target": LINUX_VM, "requestId": "maybe"})
    assert s == 502 and body["error"]["code"] == "SubmissionUncertain"
    [event] = h.completed()
    assert event["data"]["status"] == "Failed"
    s, body, _ = await h.reimage({"target": LINUX_VM, "requestId": "another-key"})
    assert s == 429 and body["error"]["code"] == "CooldownActive"
    s, body, _ = await h.reimage({"target": LINUX_VM, "requestId": "maybe"})
    assert s == 200 and body["duplicate"] is True and body["status"] == "Failed"


async def test_queue_busy_target_and_request_id_conflict_give_rejected_events(new_host: NewHost) -> None:
    h: Host = await new_host()
    _, first, _ = await h.reimage({"target": LINUX_VM, "requestId": "first"})
    await h.queue({"target": LINUX_VM}, messageId="busy-msg")  # rides the running reimage: no second POST
    await h.queue({"target": LINUX_VM, "osProfile": {"adminPassword": "Str0ng-Passw0rd"}},
                  messageId="secret-msg")  # secrets cannot wait: refused
    await h.queue({"target": WINDOWS_VM, "requestId": "first"}, messageId="conflict-msg")
    codes = sorted(e["data"]["error"]["code"] for e in h.events("reimager.request.rejected"))
    assert codes == ["OperationInProgress", "RequestIdConflict"]
    events = await h.until_completed(2)
    assert {e["data"]["requestId"]: e["data"]["batchId"] for e in events} == {
        "first": first["operationId"], "busy-msg": first["operationId"]}
    assert len(h.reimage_posts()) == 1


async def test_status_reads_the_ledger(new_host: NewHost) -> None:
    h: Host = await new_host()
    s, body, _ = await h.reimage({"target": LINUX_VM, "requestId": "read-me"})
    op = body["operationId"]
    s, doc = await h.get(f"/api/reimage/{op}")
    assert s == 200 and doc["status"] in ("Accepted", "Running") and doc["requestId"] == "read-me"
    await h.until_completed()
    s, doc = await h.get(f"/api/reimage/{op}")
    assert doc["status"] == "Succeeded" and doc["polls"] >= 1
    record = await h.dh.runtime.ledger.get(op)  # type: ignore[union-attr]
    assert record is not None and json.dumps(record.view()) == json.dumps(doc)


async def test_fresh_keys_racing_through_a_stalled_admission_reimage_once(new_host: NewHost,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request reads the free target, then stalls before its write: still one POST."""
    h: Host = await new_host(settings={"COOLDOWN_MINUTES": "30"})
    ledger = h.dh.runtime.ledger  # type: ignore[union-attr]
    read = ledger.get_target

    async def slow_read(lease_key: str) -> Any:
        record = await read(lease_key)
        await asyncio.sleep(0.05)
        return record

    monkeypatch.setattr(ledger, "get_target", slow_read)
    results = await asyncio.gather(*(h.reimage({"target": LINUX_VM}) for _ in range(20)))
    assert {s for s, _, _ in results} == {202}  # one leads, the others ride its reimage
    events = await h.until_completed(20)
    assert len({e["data"]["operationId"] for e in events}) == 20
    assert len({e["data"]["batchId"] for e in events}) == 1
    assert len(h.reimage_posts()) == 1


# --- allInstances never reimages wider than checked ------------------------------------------------------
async def test_all_instances_on_a_set_that_grows_after_preflight_posts_only_the_checked_ids(
        new_host: NewHost, monkeypatch: pytest.MonkeyPatch) -> None:
    h: Host = await new_host(settings={"MAX_INSTANCES_PER_REQUEST": "10", "APPROVAL_ALLOW_UNVERIFIED": "true"})
    rt = h.dh.runtime
    assert rt is not None
    compute = rt.compute
    real_submit = compute.submit
    grown = h.dh.sim.seed_scale_set(VMSS.replace("workers", "growing"), 4)

    async def grow_then_submit(call: Any) -> Any:
        doc = {**grown, "sku": {**grown["sku"], "capacity": 40}}
        h.dh.sim.upsert(grown["id"], {k: v for k, v in doc.items() if k in ("location", "sku", "properties")})
        return await real_submit(call)

    monkeypatch.setattr(compute, "submit", grow_then_submit)
    s, answer, _ = await h.reimage({"target": grown["id"], "allInstances": True, "requestedBy": "alice"})
    assert s == 202 and answer["status"] == "AwaitingApproval", answer
    s, approved, _ = await h.post(f"/api/reimage/{answer['operationId']}/approve", {"by": "bob"})
    assert s == 202, approved
    await h.settle(lambda: len(h.reimage_posts()) >= 2)
    # the canary (instance 0), then the rest: both name only what was checked, however far the set grew
    assert [p["body"]["instanceIds"] for p in h.reimage_posts()] == [["0"], ["1", "2", "3"]]
    assert answer["instanceIds"] == ["0", "1", "2", "3"] and h.dh.sim.instance_count(grown["id"].lower()) == 40
    s, doc = await h.get(f"/api/reimage/{answer['operationId']}")
    assert doc["instanceIds"] == ["0", "1", "2", "3"]


# --- one requestId on two targets at once --------------------------------------------------------------
async def test_one_request_id_on_two_targets_concurrently_gives_409_not_503(host: Host) -> None:
    bodies = [{"target": t, "requestId": "shared-key"} for t in (LINUX_VM, WINDOWS_VM) * 10]
    results = await asyncio.gather(*(host.reimage(b) for b in bodies))
    codes = sorted({(s, json.dumps(a)[:300]) for s, a, _ in results})
    assert {s for s, _, _ in results} <= {202, 409}, codes
    winners = {a["target"] for s, a, _ in results if s == 202}
    assert len(winners) == 1, codes
    assert {a["error"]["code"] for s, a, _ in results if s == 409} == {"RequestIdConflict"}
    assert len(host.reimage_posts()) == 1
