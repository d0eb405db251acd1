"""Alert fan-out bound through devhost: an alert naming more machines than MAX_TARGETS_PER_ALERT makes no POST until
one approval releases all of them; one rejection ends all of them, each with its one event."""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from typing import Any

import pytest

from devhost.host import demo_resources
from shared.domain.errors import ErrorCode, ReimagerError
from shared.workflow import approvals
from tests.integration.conftest import LINUX_VM, Host
from tests.integration.test_freeze import alert

NewHost = Any
OPEN = {"APPROVAL_ALLOW_UNVERIFIED": "true", "COOLDOWN_MINUTES": "0"}


async def fleet(new_host: NewHost, count: int = 30, **settings: str) -> tuple[Host, list[str]]:
    h: Host = await new_host(settings={**OPEN, **settings})
    body = demo_resources()[LINUX_VM]
    vms = [LINUX_VM.replace("web-linux-01", f"web-{i:02d}") for i in range(count)]
    for vm in vms:
        h.dh.sim.upsert(vm, copy.deepcopy(body))
    return h, vms


async def held(h: Host, vms: list[str], alert_id: str = "storm-1") -> dict[str, Any]:
    s, answer, _ = await h.post("/api/alerts", alert(alert_id, *vms))
    assert s == 202, answer
    assert len(answer["accepted"]) == len(vms) and answer["refused"] == []
    assert {a["status"] for a in answer["accepted"]} == {"AwaitingApproval"}
    group = answer["approvalGroup"]
    assert group["groupId"].startswith("g-") and group["size"] == len(vms) and len(group["members"]) == len(vms)
    assert "MAX_TARGETS_PER_ALERT (10)" in group["reason"]
    assert "MAX_TARGETS_PER_ALERT" in answer["accepted"][0]["error"]["message"]
    waiting = h.events("reimager.operation.awaiting-approval")
    assert len(waiting) == len(vms) and {e["data"]["approvalGroup"] for e in waiting} == {group["groupId"]}
    assert h.reimage_posts() == []
    return answer


async def test_an_alert_naming_30_vms_posts_nothing_until_one_approval_releases_them(new_host: NewHost) -> None:
    h, vms = await fleet(new_host, GLOBAL_MAX_REIMAGES_PER_HOUR="20")
    answer = await held(h, vms)
    s, again, _ = await h.post("/api/alerts", alert("storm-1", *vms))  # the action group's retry: nothing new
    assert s == 202 and all(a.get("duplicate") for a in again["accepted"]) and h.reimage_posts() == []
    member = answer["accepted"][7]["operationId"]
    s, refused, _ = await h.post(f"/api/reimage/{member}/approve", {"by": "Azure-Monitor:cpu-stuck "})
    assert s == 403 and refused["error"]["code"] == "SelfApprovalNotAllowed"  # the requester's own name
    s, approved, _ = await h.post(f"/api/reimage/{member}/approve", {"by": "bob", "reason": "storm confirmed"})
    assert s == 202 and approved["approvedBy"] == "bob" and approved["approvalGroup"]["groupId"] \
        == answer["approvalGroup"]["groupId"]
    assert len(h.reimage_posts()) == 20  # one approval released all 30, still under GLOBAL_MAX_REIMAGES_PER_HOUR
    events = await h.until_completed(30)
    assert len(events) == 30 and {e["data"]["status"] for e in events} == {"Succeeded"}
    assert {e["data"]["approvedBy"] for e in events} == {"bob"} and len(h.reimage_posts()) == 30
    s, late, _ = await h.post(f"/api/reimage/{answer['approvalGroup']['groupId']}/approve", {"by": "carol"})
    assert s == 409


async def test_one_rejection_ends_all_30_with_one_event_each(new_host: NewHost) -> None:
    h, vms = await fleet(new_host)
    answer = await held(h, vms)
    group = answer["approvalGroup"]["groupId"]
    s, rejected, _ = await h.post(f"/api/reimage/{group}/reject", {"by": "carol", "reason": "false alarm"})
    assert s == 200 and rejected["approvalGroup"]["decision"]["action"] == "reject"
    events = await h.until_completed(30)
    with contextlib.suppress(TimeoutError):  # a few sweeps later: nothing more is sent or published
        await h.settle(lambda: False, max_virtual_seconds=300)
    events = h.completed()
    assert Counter(e["data"]["operationId"] for e in events) == Counter(a["operationId"] for a in answer["accepted"])
    assert {e["data"]["error"]["code"] for e in events} == {"ApprovalRejected"}
    assert {e["data"]["cancelledBy"] for e in events} == {"carol"} and h.reimage_posts() == []
    member = answer["accepted"][0]["operationId"]
    s, late, _ = await h.post(f"/api/reimage/{member}/approve", {"by": "bob"})
    assert s == 409 and late["error"]["code"] == "NotAwaitingApproval"


async def test_a_small_alert_and_a_dry_run_are_not_held(new_host: NewHost) -> None:
    h, vms = await fleet(new_host, count=12, MAX_TARGETS_PER_ALERT="12")
    s, answer, _ = await h.post("/api/alerts", alert("small", *vms))
    assert s == 202 and "approvalGroup" not in answer and len(h.reimage_posts()) == 12
    doc = alert("dry", *vms, LINUX_VM)
    doc["data"]["customProperties"] = {"reimage.dryRun": "true"}
    s, answer, _ = await h.post("/api/alerts", doc)
    assert s == 202 and "approvalGroup" not in answer and len(h.reimage_posts()) == 12


async def test_a_decision_that_stopped_halfway_is_finished_by_the_sweeper(new_host: NewHost,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    h, vms = await fleet(new_host)
    answer = await held(h, vms)
    real_apply, calls = approvals.apply, []

    async def crashing(runtime: Any, client: Any, member_id: str, group: Any) -> Any:
        calls.append(member_id)
        if len(calls) > 5:  # the decider's storage gives out after five members
            raise ReimagerError(ErrorCode.STORAGE_UNAVAILABLE, "storage is gone")
        return await real_apply(runtime, client, member_id, group)

    monkeypatch.setattr(approvals, "apply", crashing)
    s, approved, _ = await h.post(f"/api/reimage/{answer['approvalGroup']['groupId']}/approve", {"by": "bob"})
    assert s == 202 and approved["approvalGroup"]["decision"]["action"] == "approve"
    assert len(h.reimage_posts()) == 5
    monkeypatch.setattr(approvals, "apply", real_apply)
    events = await h.until_completed(30)  # the sweeper carries the group's decision to the other 25
    assert {e["data"]["status"] for e in events} == {"Succeeded"} and len(h.reimage_posts()) == 30
    assert {e["data"]["approvedBy"] for e in events} == {"bob"}


async def test_nobody_decides_and_the_whole_group_times_out(new_host: NewHost) -> None:
    h, vms = await fleet(new_host, count=11, APPROVAL_TIMEOUT_MINUTES="30")
    answer = await held(h, vms)
    events = await h.until_completed(11)
    assert {e["data"]["error"]["code"] for e in events} == {"ApprovalTimedOut"} and h.reimage_posts() == []
    s, late, _ = await h.post(f"/api/reimage/{answer['accepted'][3]['operationId']}/approve", {"by": "bob"})
    assert s == 409
