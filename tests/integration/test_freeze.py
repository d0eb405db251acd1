"""Freezes through devhost: during a FREEZE_WINDOWS window (or on a target tagged reimager-freeze) every intake holds
the request AwaitingApproval, a second verified person's approval runs it, and outside the window it runs at once.
devhost's virtual clock starts at 2026-01-01T00:00:00Z."""

from __future__ import annotations

import json
from typing import Any

from tests.helpers import SENTINEL_PASSWORD
from tests.integration.conftest import LINUX_VM, WINDOWS_VM, Host
from tests.integration.test_chatops import SETTINGS as CHAT_SECRETS
from tests.integration.test_four_eyes import BOB_OID, easy_auth, post, slack_say

NewHost = Any
WINDOW = "2025-12-31T00:00Z/2026-01-02T00:00Z"  # holds devhost's start
PAST = "2025-12-01T00:00Z/P1D"
FROZEN = {"FREEZE_WINDOWS": f"{PAST}; {WINDOW}", "EASY_AUTH_ENABLED": "true", **CHAT_SECRETS}


def alert(alert_id: str, *targets: str) -> dict[str, Any]:
    return {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
        "alertId": alert_id, "alertRule": "cpu-stuck", "severity": "Sev2", "signalType": "Metric",
        "monitorCondition": "Fired", "monitoringService": "Platform", "alertTargetIDs": list(targets),
        "firedDateTime": "2026-01-01T00:00:00Z"}, "alertContext": {}, "customProperties": None}}


def assert_held(h: Host, view: dict[str, Any], source: str = "window") -> None:
    assert view["status"] == "AwaitingApproval", view
    assert view["error"]["code"] == "ApprovalRequired" and "frozen" in view["error"]["message"]
    assert view["freeze"]["source"] == source
    if source == "window":
        assert view["freeze"]["window"] == WINDOW and view["error"]["message"].count(WINDOW) == 1


async def test_every_intake_waits_for_approval_during_a_window(new_host: NewHost) -> None:
    h: Host = await new_host(settings=FROZEN)
    s, by_http, _ = await h.reimage({"target": LINUX_VM, "requestId": "http-1"})
    assert s == 202
    assert_held(h, by_http)
    s, by_alert, _ = await h.post("/api/alerts", alert("a-1", WINDOWS_VM))
    assert s == 202 and by_alert["accepted"][0]["status"] == "AwaitingApproval"
    assert "frozen" in by_alert["accepted"][0]["error"]["message"]
    s, by_queue = await h.queue({"target": LINUX_VM, "requestId": "q-1"}, messageId="m-1")
    assert s == 202 and by_queue["settlement"] == "completed", by_queue
    text = await slack_say(h, "reimage reimager-demo/app-win-01 -- stuck", "UALICE", "fz.1")
    assert "AwaitingApproval" in text and WINDOW in text
    ops = {e["data"]["operationId"]: e["data"] for e in h.events("reimager.operation.awaiting-approval")}
    assert len(ops) == 4 and {d["trigger"] for d in ops.values()} == {"http", "alert", "queue", "chatops"}
    assert all(d["freeze"]["window"] == WINDOW and d["freeze"]["until"] == "2026-01-02T00:00:00+00:00"
               for d in ops.values())
    assert h.reimage_posts() == []
    # break-glass: a second, verified person
    s, approved = await post(h, f"/api/reimage/{by_http['operationId']}/approve", {"reason": "outage"},
                             easy_auth("bob@contoso.com", BOB_OID))
    assert s == 202 and approved["approvedByIdentity"] == f"entra:{BOB_OID}"
    [event] = await h.until_completed(1)
    assert event["data"]["status"] == "Succeeded" and event["data"]["freeze"]["window"] == WINDOW
    assert len(h.reimage_posts()) == 1


async def test_outside_the_window_a_request_runs_at_once(new_host: NewHost) -> None:
    h: Host = await new_host(settings={**FROZEN, "FREEZE_WINDOWS": PAST})
    s, body, _ = await h.reimage({"target": LINUX_VM})
    assert s == 202 and body["status"] == "Accepted" and "freeze" not in body
    assert len(h.reimage_posts()) == 1


async def test_the_dry_run_shows_the_freeze_and_a_request_with_secrets_is_refused(new_host: NewHost) -> None:
    h: Host = await new_host(settings=FROZEN)
    s, plan, _ = await h.reimage({"target": LINUX_VM, "dryRun": True})
    check = {c["name"]: c for c in plan["checks"]}["freeze"]
    assert s == 200 and not plan["passed"] and check["result"] == "failed" and check["window"] == WINDOW
    s, refused, _ = await h.reimage({"target": WINDOWS_VM, "osProfile": {"adminPassword": SENTINEL_PASSWORD}})
    assert s == 400 and refused["error"]["target"] == "osProfile" and WINDOW in refused["error"]["message"]
    assert SENTINEL_PASSWORD not in json.dumps(refused) and h.reimage_posts() == []


async def test_a_tag_frozen_target_waits_and_others_do_not(new_host: NewHost) -> None:
    h: Host = await new_host(settings={**FROZEN, "FREEZE_WINDOWS": ""})
    h.dh.sim.upsert(LINUX_VM, {"tags": {"reimager-freeze": "2026-01-01T06:00:00Z"}}, patch=True)
    s, plan, _ = await h.reimage({"target": LINUX_VM, "dryRun": True})
    assert {c["name"]: c for c in plan["checks"]}["freeze"]["source"] == "tag"
    s, held, _ = await h.reimage({"target": LINUX_VM, "requestId": "t-1"})
    assert_held(h, held, "tag")
    assert held["freeze"]["until"] == "2026-01-01T06:00:00+00:00"
    s, free, _ = await h.reimage({"target": WINDOWS_VM})
    assert free["status"] == "Accepted" and len(h.reimage_posts()) == 1
    text = await slack_say(h, f"approve {held['operationId']}", "UBOB", "fz.2")
    assert "Approved" in text
    await h.until_completed(2)
    assert len(h.reimage_posts()) == 2
