"""Approval by a second person for wide reimages; reject, cancel and the approval timeout."""

from __future__ import annotations

import base64
import json
from typing import Any

from tests.helpers import SENTINEL_PASSWORD
from tests.integration.conftest import LINUX_VM, VMSS, Host

NewHost = Any
OPEN = {"APPROVAL_ALLOW_UNVERIFIED": "true", "BREAKER_PERCENT": "100", "FLEET_BUDGET_PERCENT": "100",
        "MAX_BATCH_PERCENT": "100"}


async def ask_all(h: Host, **extra: Any) -> dict[str, Any]:
    s, body, headers = await h.reimage({"target": VMSS, "allInstances": True, "requestedBy": "alice", **extra})
    assert s == 202 and body["status"] == "AwaitingApproval", body
    assert body["error"]["code"] == "ApprovalRequired" and "approve" in body["error"]["message"]
    return body


async def test_all_instances_waits_for_a_second_person_then_runs(new_host: NewHost) -> None:
    h: Host = await new_host(settings=OPEN)
    body = await ask_all(h)
    [waiting] = h.events("reimager.operation.awaiting-approval")
    assert waiting["data"]["operationId"] == body["operationId"] and waiting["data"]["requestedBy"] == "alice"
    assert waiting["data"]["instanceIds"] == body["instanceIds"]  # what is to be reimaged, and by whom
    assert h.reimage_posts() == []
    op = body["operationId"]
    s, refused, _ = await h.post(f"/api/reimage/{op}/approve", {"by": "Alice"})
    assert s == 403 and refused["error"]["code"] == "SelfApprovalNotAllowed"
    s, approved, _ = await h.post(f"/api/reimage/{op}/approve", {"by": "bob", "reason": "known bad image"})
    assert s == 202 and approved["approvedBy"] == "bob" and approved["approvedByVerified"] == "unverified"
    [event] = await h.until_completed(1)
    assert event["data"]["status"] == "Succeeded" and event["data"]["approvedBy"] == "bob"
    # exactly what was checked and approved: its first instance as the set's canary, then the rest
    ids = body["instanceIds"]
    assert [p["body"]["instanceIds"] for p in h.reimage_posts()] == [ids[:1], ids[1:]]
    assert event["data"]["canary"]["role"] == "canary" and event["data"]["canary"]["instanceIds"] == ids[:1]
    s, again, _ = await h.post(f"/api/reimage/{op}/approve", {"by": "carol"})
    assert s == 409 and again["error"]["code"] == "NotAwaitingApproval"


async def test_an_unverified_approver_is_refused_by_default(new_host: NewHost) -> None:
    h: Host = await new_host(settings={k: v for k, v in OPEN.items() if k != "APPROVAL_ALLOW_UNVERIFIED"})
    body = await ask_all(h)
    s, refused, _ = await h.post(f"/api/reimage/{body['operationId']}/approve", {"by": "bob"})
    assert s == 403 and refused["error"]["code"] == "ApproverNotVerified"
    assert h.reimage_posts() == []


async def test_more_instances_than_the_limit_need_approval_and_may_not_carry_secrets(new_host: NewHost) -> None:
    h: Host = await new_host(settings={**OPEN, "APPROVAL_ABOVE_INSTANCES": "1"})
    s, body, _ = await h.reimage({"target": VMSS, "instanceIds": ["0", "1"]})
    assert s == 202 and body["status"] == "AwaitingApproval"
    s, body, _ = await h.reimage({"target": LINUX_VM.replace("web-linux-01", "app-win-01"),
                                  "osProfile": {"adminPassword": SENTINEL_PASSWORD}})
    assert s == 202  # one VM: no approval needed
    h2: Host = await new_host(settings={**OPEN, "APPROVAL_ABOVE_INSTANCES": "0"})
    s, body, _ = await h2.reimage({"target": LINUX_VM.replace("web-linux-01", "app-win-01"),
                                   "osProfile": {"adminPassword": SENTINEL_PASSWORD}})
    assert s == 400 and body["error"]["target"] == "osProfile" and "never stored" in body["error"]["message"]
    assert SENTINEL_PASSWORD not in json.dumps(body)


async def test_reject_and_cancel_end_it_with_one_event(new_host: NewHost) -> None:
    h: Host = await new_host(settings=OPEN)
    first = await ask_all(h, requestId="to-reject")
    s, rejected, _ = await h.post(f"/api/reimage/{first['operationId']}/reject", {"by": "bob", "reason": "no"})
    assert s == 200 and rejected["status"] == "Canceled" and rejected["error"]["code"] == "ApprovalRejected"
    second = await ask_all(h, requestId="to-cancel")
    s, canceled, _ = await h.post(f"/api/reimage/{second['operationId']}/cancel", {"by": "alice"})
    assert s == 200 and canceled["status"] == "Canceled" and canceled["cancelledBy"] == "alice"
    events = await h.until_completed(2)
    assert sorted(e["data"]["error"]["code"] for e in events) == ["ApprovalRejected", "CanceledByOperator"]
    s, late, _ = await h.post(f"/api/reimage/{first['operationId']}/approve", {"by": "carol"})
    assert s == 409
    assert h.reimage_posts() == []


async def test_nobody_approves_in_time(new_host: NewHost) -> None:
    h: Host = await new_host(settings={**OPEN, "APPROVAL_TIMEOUT_MINUTES": "30"})
    body = await ask_all(h)
    [event] = await h.until_completed(1)  # the sweeper, on devhost's clock
    assert event["data"]["status"] == "Canceled" and event["data"]["error"]["code"] == "ApprovalTimedOut"
    assert event["data"]["operationId"] == body["operationId"] and h.reimage_posts() == []
    s, late, _ = await h.post(f"/api/reimage/{body['operationId']}/approve", {"by": "bob"})
    assert s == 409


async def test_an_alert_on_a_whole_set_pages_a_human_instead_of_acting(new_host: NewHost) -> None:
    h: Host = await new_host(settings=OPEN)
    doc = {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
        "alertId": "whole-set", "alertRule": "r", "severity": "Sev1", "signalType": "Metric",
        "monitorCondition": "Fired", "monitoringService": "Platform", "alertTargetIDs": [VMSS],
        "firedDateTime": "2026-01-01T00:00:00Z"}, "alertContext": {},
        "customProperties": {"reimage.allInstances": "true"}}}
    s, body, _ = await h.post("/api/alerts", doc)
    assert s == 202 and body["accepted"][0]["status"] == "AwaitingApproval"
    assert len(h.events("reimager.operation.awaiting-approval")) == 1 and h.reimage_posts() == []


def principal_header(name: str) -> dict[str, str]:
    """What App Service authentication adds to a signed-in caller's request (it strips clients' own)."""
    doc = {"auth_typ": "aad", "name_typ": "name", "role_typ": "roles",
           "claims": [{"typ": "name", "val": name}, {"typ": "preferred_username", "val": f"{name}@contoso.com"}]}
    return {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps(doc).encode()).decode(),
            "X-MS-CLIENT-PRINCIPAL-NAME": f"{name}@contoso.com"}


async def post_as(h: Host, path: str, body: Any, who: str) -> tuple[int, Any]:
    async with h.http.post(h.url + path, json=body, headers={**h.key, **principal_header(who)}) as r:
        return r.status, await r.json()


async def test_a_verified_second_person_approves_and_the_requester_cannot(new_host: NewHost) -> None:
    h: Host = await new_host(settings={**{k: v for k, v in OPEN.items() if k != "APPROVAL_ALLOW_UNVERIFIED"},
                                       "EASY_AUTH_ENABLED": "true"})
    s, asked = await post_as(h, "/api/reimage", {"target": VMSS, "allInstances": True, "requestedBy": "mallory"},
                             "alice")
    assert s == 202 and asked["requestedBy"] == "alice@contoso.com" and asked["requestedByVerified"] == "easyauth"
    op = asked["operationId"]
    s, refused = await post_as(h, f"/api/reimage/{op}/approve", {}, "alice")
    assert s == 403 and refused["error"]["code"] == "SelfApprovalNotAllowed"
    s, approved = await post_as(h, f"/api/reimage/{op}/approve", {"by": "ignored-when-verified"}, "bob")
    assert s == 202 and approved["approvedBy"] == "bob@contoso.com" and approved["approvedByVerified"] == "easyauth"
    [event] = await h.until_completed(1)
    assert event["data"]["approvedBy"] == "bob@contoso.com" and len(h.reimage_posts()) == 2  # the canary, the rest


async def test_a_forged_principal_is_not_an_approver_when_easy_auth_is_off(new_host: NewHost) -> None:
    h: Host = await new_host(settings={k: v for k, v in OPEN.items() if k != "APPROVAL_ALLOW_UNVERIFIED"})
    body = await ask_all(h)
    s, refused = await post_as(h, f"/api/reimage/{body['operationId']}/approve", {}, "bob")
    assert s == 403 and refused["error"]["code"] == "ApproverNotVerified" and h.reimage_posts() == []
