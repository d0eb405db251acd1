"""Scale-set storms: alerts per instance coalesce into batches; budgets, the breaker and health.

Real concurrency on devhost (hostile by default: activities run twice, events are delivered twice),
with action-group retries re-sending the same alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import Counter
from typing import Any

import pytest

from devhost.compute import Fault
from tests.helpers import SENTINEL_PASSWORD
from tests.integration.conftest import BASE, LINUX_VM, Host

NewHost = Any
SET = f"{BASE}/virtualMachineScaleSets/storm"
OPEN = {"BREAKER_PERCENT": "100", "FLEET_BUDGET_PERCENT": "100", "MAX_INSTANCES_PER_REQUEST": "100",
        "COOLDOWN_MINUTES": "30"}


def alert(instance: str, alert_id: str, **custom: Any) -> dict[str, Any]:
    return {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
        "alertId": alert_id, "alertRule": "unhealthy-instance", "severity": "Sev2", "signalType": "Metric",
        "monitorCondition": "Fired", "monitoringService": "Platform",
        "alertTargetIDs": [f"{SET}/virtualMachines/{instance}"], "firedDateTime": "2026-01-01T00:00:00Z"},
        "alertContext": {}, "customProperties": custom or None}}


async def storm_host(new_host: NewHost, capacity: int = 100, **settings: str) -> Host:
    h: Host = await new_host(settings={**OPEN, **settings})
    h.dh.sim.seed_scale_set(SET, capacity)
    return h


def posts(h: Host) -> list[dict[str, Any]]:
    return [p for p in h.reimage_posts() if "/storm/" in p["path"]]


def reimaged(h: Host) -> Counter[str]:
    return Counter(i for p in posts(h) if p["status"] == 202 for i in p["body"]["instanceIds"])


async def send_storm(h: Host, n: int, retries: int = 1, **custom: Any) -> list[tuple[int, Any]]:
    """N alerts at once; then the whole storm again `retries` times, as action groups re-send."""
    async def one(i: int) -> tuple[int, Any]:
        s, body, _ = await h.post("/api/alerts", alert(str(i), f"alert-{i}", **custom))
        return s, body

    results: list[tuple[int, Any]] = []
    for _ in range(1 + retries):
        results += await asyncio.gather(*(one(i) for i in range(n)))
    return results


@pytest.mark.parametrize("n", [12, 60])
async def test_storm_coalesces_into_batches(new_host: NewHost, n: int) -> None:
    h = await storm_host(new_host)
    results = await send_storm(h, n)
    refused = [r for s, b in results for r in b.get("refused", [])]
    assert refused == [] and {s for s, _ in results} == {202}  # 0 refused for busy
    events = await h.until_completed(n)
    assert len(events) == n
    by_op = Counter(e["data"]["operationId"] for e in events)
    assert set(by_op.values()) == {1}  # exactly one completion event per request
    cap = 100 * 20 // 100
    # the set's canary (one instance) first, then batches of the cap
    assert len(posts(h)) == 1 + math.ceil((n - 1) / cap) and len(posts(h)[0]["body"]["instanceIds"]) == 1
    assert all(len(p["body"]["instanceIds"]) <= cap for p in posts(h))  # no POST wider than its batch
    # every batch's submit activity ran (at least) twice, as devhost delivers activities: still one POST each
    assert h.dh.engine is not None and h.dh.engine.activity_runs["submit_reimage_batch"] >= 2 * len(posts(h))
    assert set(reimaged(h).values()) == {1} and len(reimaged(h)) == n  # no instance reimaged twice
    for e in events:  # each request names its batch and its own instance's outcome
        d = e["data"]
        assert d["status"] == "Succeeded" and d["batchId"].startswith("b-") and d["health"] == "Healthy"
        assert list(d["healthDetail"]) == d["instanceIds"]
    # action-group retries after the fact are duplicates: nothing new
    again = await send_storm(h, n, retries=0)
    assert all(a.get("duplicate") for _, b in again for a in b["accepted"])
    assert len(posts(h)) == 1 + math.ceil((n - 1) / cap)


async def test_mixed_options_make_separate_batches_in_arrival_order(new_host: NewHost) -> None:
    h = await storm_host(new_host)
    for i in range(3):
        await h.post("/api/alerts", alert(str(i), f"a-{i}"))
    for i in range(3, 6):
        await h.post("/api/alerts", alert(str(i), f"a-{i}", **{"reimage.exactVersion": "1.2.3"}))
    await h.post("/api/alerts", alert("6", "a-6"))
    await h.until_completed(7)
    bodies = [p["body"] for p in posts(h)]
    # the canary, the rest with its options; then another image (exactVersion): a canary of its own, then the rest
    assert bodies == [{"instanceIds": ["0"]}, {"instanceIds": ["1", "2", "6"]},
                      {"instanceIds": ["3"], "exactVersion": "1.2.3"},
                      {"instanceIds": ["4", "5"], "exactVersion": "1.2.3"}]


async def test_request_with_secrets_for_a_busy_set_is_409_and_nothing_is_stored(new_host: NewHost) -> None:
    h: Host = await new_host(settings=OPEN)
    h.dh.sim.seed_scale_set(SET, 4, ephemeral=False)  # osProfile is for a non-ephemeral OS disk
    _, queued, _ = await h.post("/api/alerts", alert("0", "a-0"))
    body = {"target": SET, "instanceIds": ["1"], "requestId": "with-secret",
            "osProfile": {"adminPassword": SENTINEL_PASSWORD}}
    s, answer, _ = await h.reimage(body)
    assert s == 409 and answer["error"]["code"] == "OperationInProgress"
    assert SENTINEL_PASSWORD not in json.dumps(answer)
    record = await h.dh.runtime.ledger.get_target(_key())  # type: ignore[union-attr]
    assert [e.operation_id for e in record.queue] == [queued["accepted"][0]["operationId"]]
    assert SENTINEL_PASSWORD not in record.to_json()
    from shared.domain.ids import operation_id

    assert await h.dh.runtime.ledger.get(operation_id("with-secret")) is None  # type: ignore[union-attr]


def _key() -> str:
    from shared.domain.targets import parse_target

    return parse_target(SET).lock_key


async def test_global_budget_queues_the_rest_and_admits_as_the_window_frees(new_host: NewHost) -> None:
    """One alert naming 40 VMs with GLOBAL_MAX_REIMAGES_PER_HOUR=10: 10 POSTs now, the rest wait and are
    admitted as the hour's window frees; what waits past QUEUE_MAX_WAIT_MINUTES ends QueueExpired."""
    # MAX_TARGETS_PER_ALERT above 40: this is about the global budget, not the fan-out bound that would hold
    # the alert for approval (tests/integration/test_alert_groups.py)
    h: Host = await new_host(settings={"GLOBAL_MAX_REIMAGES_PER_HOUR": "10", "COOLDOWN_MINUTES": "0",
                                       "QUEUE_MAX_WAIT_MINUTES": "150", "SWEEP_SCHEDULE": "0 */5 * * * *",
                                       "MAX_TARGETS_PER_ALERT": "1000"})
    vms = [LINUX_VM.replace("web-linux-01", f"fleet-{i:03d}") for i in range(40)]
    for vm in vms:
        h.dh.sim.upsert(vm, {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}})
    doc = alert("0", "fleet-alert")
    doc["data"]["essentials"]["alertTargetIDs"] = vms
    s, body, _ = await h.post("/api/alerts", doc)
    assert s == 202 and len(body["accepted"]) == 40
    assert Counter(a["status"] for a in body["accepted"]) == {"Accepted": 10, "Queued": 30}
    assert len(h.reimage_posts()) == 10
    await h.settle(lambda: len(h.completed()) >= 10, max_virtual_seconds=1800)
    assert len(h.reimage_posts()) == 10  # the hour is not over: the rest waits
    await h.settle(lambda: len(h.completed()) >= 20, max_virtual_seconds=3 * 3600)
    assert len(h.reimage_posts()) == 20  # the window freed: ten more
    await h.settle(lambda: len(h.completed()) >= 40, max_virtual_seconds=4 * 3600)
    events = h.completed()
    assert Counter(e["data"]["operationId"] for e in events).most_common(1)[0][1] == 1  # one event each
    outcomes = Counter(e["data"]["status"] if e["data"]["status"] == "Succeeded" else e["data"]["error"]["code"]
                       for e in events)
    assert outcomes["Succeeded"] == len(h.reimage_posts()) == 30  # three hours' worth: 0, 60 and 120 minutes
    assert outcomes["QueueExpired"] == 10


async def test_breaker_suspends_on_a_systemic_storm(new_host: NewHost) -> None:
    h = await storm_host(new_host, capacity=20, BREAKER_PERCENT="50")
    results = await send_storm(h, 12, retries=0)
    refused = [r["error"]["code"] for _, b in results for r in b.get("refused", [])]
    assert "TargetSuspended" in refused
    await h.settle(lambda: len(h.events("reimager.target.suspended")) >= 1, max_virtual_seconds=600)
    [suspended] = h.events("reimager.target.suspended")
    assert suspended["data"]["suspension"]["evidence"]["distinctInstancesRequested"] == 11
    accepted = [a["operationId"] for _, b in results for a in b["accepted"]]
    events = await h.until_completed(len(accepted))
    assert {e["data"]["status"] for e in events} == {"Canceled"}
    assert {e["data"]["error"]["code"] for e in events} == {"TargetSuspended"}
    assert posts(h) == []
    s, body, _ = await h.post("/api/alerts", alert("15", "later"))
    assert body["refused"][0]["error"]["code"] == "TargetSuspended"
    s, view = await h.get(f"/api/targets?id={SET}")
    assert s == 200 and view["suspended"]["by"] == "breaker"
    s, view, _ = await h.post("/api/targets/resume", {"target": SET, "reason": "bad deploy rolled back"})
    assert s == 200 and view["suspended"] is None
    assert len(h.events("reimager.target.resumed")) == 1
    s, body, _ = await h.post("/api/alerts", alert("15", "after-resume"))
    assert s == 202 and body["accepted"][0]["status"] == "Queued"
    s, again, _ = await h.post("/api/targets/resume", {"target": SET})
    assert s == 409 and again["error"]["code"] == "NotSuspended"


async def test_three_unhealthy_outcomes_in_a_row_suspend_the_target(new_host: NewHost) -> None:
    h = await storm_host(new_host, capacity=20, HEALTH_GRACE_MINUTES="2")
    h.dh.sim.faults.append(Fault.model_validate({"match": "instanceView", "health": "unhealthy", "times": 1000}))
    for i in range(3):
        s, body, _ = await h.post("/api/alerts", alert(str(i), f"sick-{i}"))
        assert s == 202, body
        await h.until_completed(i + 1)
    assert [e["data"]["health"] for e in h.completed()] == ["Unhealthy"] * 3
    assert all(e["data"]["status"] == "Succeeded" for e in h.completed())  # ARM succeeded; the machine did not
    assert "HealthState/unhealthy" in h.completed()[0]["data"]["healthDetail"]["0"] or \
        "unhealthy" in h.completed()[0]["data"]["healthDetail"]["0"].lower()
    await h.settle(lambda: len(h.events("reimager.target.suspended")) >= 1, max_virtual_seconds=600)
    [suspended] = h.events("reimager.target.suspended")
    assert suspended["data"]["suspension"]["evidence"]["consecutiveFailures"] == 3
    s, body, _ = await h.post("/api/alerts", alert("3", "sick-3"))
    assert body["refused"][0]["error"]["code"] == "TargetSuspended"


async def test_health_healthy_within_grace_and_unknown_when_unreadable(new_host: NewHost) -> None:
    h = await storm_host(new_host, capacity=20, HEALTH_GRACE_MINUTES="5")
    h.dh.sim.faults.append(Fault.model_validate({"match": "instanceView", "health": "unhealthy", "times": 2}))
    await h.post("/api/alerts", alert("0", "heals"))
    [event] = await h.until_completed(1)
    assert event["data"]["health"] == "Healthy" and event["data"]["polls"] >= 1
    views = [r for r in h.dh.sim.requests if "instanceView" in r["path"] or "$expand" in json.dumps(r["query"])]
    assert len(views) >= 3  # unhealthy twice, then healthy: it waited within the grace
    h.dh.sim.faults.append(Fault.model_validate({"match": "instanceView", "status": 500, "times": 1000}))
    await h.post("/api/alerts", alert("1", "unreadable"))
    events = await h.until_completed(2)
    assert events[1]["data"]["health"] == "Unknown" and events[1]["data"]["status"] == "Succeeded"


async def test_cancel_a_queued_request(new_host: NewHost) -> None:
    h = await storm_host(new_host)
    _, first, _ = await h.post("/api/alerts", alert("0", "c-0"))
    op = first["accepted"][0]["operationId"]
    s, body, _ = await h.post(f"/api/reimage/{op}/cancel", {"reason": "false alarm"})
    assert s == 200 and body["status"] == "Canceled" and body["error"]["code"] == "CanceledByOperator"
    s, again, _ = await h.post(f"/api/reimage/{op}/cancel", {})
    assert s == 409 and again["error"]["code"] == "NotCancellable"
    [event] = await h.until_completed(1)
    assert event["data"]["status"] == "Canceled"
    with contextlib.suppress(TimeoutError):  # let the batch's gather pass: it has nothing to send
        await h.settle(lambda: False, max_virtual_seconds=120)
    assert posts(h) == [] and len(h.completed()) == 1
    s, vm, _ = await h.reimage({"target": LINUX_VM})
    s, body, _ = await h.post(f"/api/reimage/{vm['operationId']}/cancel", {})
    assert s == 409 and "ARM has no way to stop a reimage" in body["error"]["message"]


async def test_a_batch_post_that_may_have_been_applied_is_never_sent_again(new_host: NewHost) -> None:
    """ARM answers the batch's POST with a 500: it may have been applied. The batch ends Failed /
    SubmissionUncertain with one event per request and the cooldown started; it is not queued and sent again."""
    h = await storm_host(new_host)
    h.dh.sim.faults.append(Fault.model_validate({"match": "storm/reimage", "status": 500, "times": 1}))
    await h.post("/api/alerts", alert("4", "maybe-applied"))
    [event] = await h.until_completed(1)
    assert event["data"]["status"] == "Failed"
    assert event["data"]["error"]["details"][0]["code"] == "InternalServerError"  # ARM's own answer, kept
    with contextlib.suppress(TimeoutError):  # sweeps and any re-formed batch would POST within this
        await h.settle(lambda: len(posts(h)) > 1, max_virtual_seconds=600)
    assert len(posts(h)) == 1
    s, body, _ = await h.post("/api/alerts", alert("4", "again"))
    assert body["refused"][0]["error"]["code"] == "CooldownActive"


async def test_a_hand_off_that_dies_after_creating_the_next_batch_record_is_repaired(
        new_host: NewHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """The finish step handed the lease to the next batch and created its record, then died before the
    sweeper's index entry and the orchestration (the first write after the claim fails). The sweeper finds
    the handed-over batch by its target and starts it: every request still ends with one event."""
    h = await storm_host(new_host, capacity=20, MAX_BATCH_PERCENT="1", BATCH_GATHER_SECONDS="1")
    ledger = h.dh.runtime.ledger  # type: ignore[union-attr]
    real_watch = ledger.watch
    calls = {"n": 0}

    async def dies_once(record: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first is the first batch's (from the request); the second, the hand-off's
            raise ConnectionError("the process died here")
        await real_watch(record)

    monkeypatch.setattr(ledger, "watch", dies_once)
    for i in range(3):
        await h.post("/api/alerts", alert(str(i), f"handoff-{i}"))
    events = await h.until_completed(3)
    assert calls["n"] >= 2 and sorted(e["data"]["status"] for e in events) == ["Succeeded"] * 3
    assert len({e["data"]["operationId"] for e in events}) == 3
    assert sorted(i for p in posts(h) for i in p["body"]["instanceIds"]) == ["0", "1", "2"]
