"""Canary first, end to end on devhost (hostile durable: activities run twice, events delivered twice).

A storm's first batch on a scale set reimages one instance; the rest waits Queued for its verdict. A canary that
comes back unhealthy (a bad image: devhost's `healthAfter` reimage fault) suspends the set: 1 POST, one suspension
event naming the canary, every other request Canceled/TargetSuspended with one event. A healthy one lets the storm
go on in batches under the cap.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from devhost.compute import Fault
from tests.integration.conftest import Host
from tests.integration.test_storms import SET, posts, send_storm, storm_host

NewHost = Any
GRACE = {"HEALTH_GRACE_MINUTES": "2"}


def by_op(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["data"]["operationId"] for e in events)


async def test_an_unhealthy_canary_suspends_the_set_after_one_post_and_ends_the_rest(new_host: NewHost) -> None:
    h: Host = await storm_host(new_host, capacity=20, **GRACE)
    h.dh.sim.faults.append(Fault.model_validate({"match": "reimage", "healthAfter": "unhealthy", "times": 100}))
    results = await send_storm(h, 12, retries=0)
    assert {s for s, _ in results} == {202}
    accepted = [a["operationId"] for _, b in results for a in b["accepted"]]
    assert len(accepted) == 12
    events = await h.until_completed(12)
    await h.settle(lambda: len(h.events("reimager.target.suspended")) >= 1, max_virtual_seconds=600)
    assert len(posts(h)) == 1 and len(posts(h)[0]["body"]["instanceIds"]) == 1  # the canary alone
    [canary_instance] = posts(h)[0]["body"]["instanceIds"]
    [suspended] = h.events("reimager.target.suspended")
    info = suspended["data"]["suspension"]
    assert info["code"] == "CanaryFailed" and info["by"] == "canary"
    evidence = info["evidence"]
    assert evidence["instanceIds"] == [canary_instance] and evidence["health"] == "Unhealthy"
    assert "unhealthy" in evidence["healthDetail"][canary_instance].lower()
    assert evidence["canary"] in info["reason"]
    assert set(by_op(events).values()) == {1} and set(by_op(events)) == set(accepted)  # one event each
    [first] = [e["data"] for e in events if e["data"]["operationId"] in evidence["members"]]
    assert first["status"] == "Succeeded" and first["health"] == "Unhealthy"  # ARM succeeded; the machine did not
    assert first["canary"]["role"] == "canary" and first["canary"]["outcome"] == "failed"
    assert first["batchId"] == evidence["canary"]
    others = [e["data"] for e in events if e["data"]["operationId"] not in evidence["members"]]
    assert len(others) == 11
    assert {(d["status"], d["error"]["code"]) for d in others} == {("Canceled", "TargetSuspended")}
    assert all(d["canary"]["role"] == "waited" and d["canary"]["batchId"] == evidence["canary"] for d in others)
    s, view = await h.get(f"/api/targets?id={SET}")
    assert view["suspended"]["code"] == "CanaryFailed" and view["canary"]["outcome"] == "failed"
    s, status = await h.get(f"/api/reimage/{others[0]['operationId']}")
    assert status["canary"]["role"] == "waited" and status["canary"]["healthDetail"] == evidence["healthDetail"]


async def test_a_healthy_canary_goes_first_then_the_storm_goes_on_in_batches_under_the_cap(new_host: NewHost) -> None:
    h: Host = await storm_host(new_host, capacity=20, **GRACE)
    results = await send_storm(h, 12, retries=1)
    accepted = {a["operationId"] for _, b in results for a in b["accepted"]}
    assert len(accepted) == 12 and not [r for _, b in results for r in b.get("refused", [])]
    await h.settle(lambda: len(posts(h)) >= 1, max_virtual_seconds=60)
    [first_sent] = posts(h)[0]["body"]["instanceIds"]
    queued = next(a["operationId"] for _, b in results for a in b["accepted"]
                  if not a["target"].endswith(f"/virtualMachines/{first_sent}"))
    s, waiting = await h.get(f"/api/reimage/{queued}")  # while the canary runs, a queued request says it waits
    assert waiting["status"] == "Queued" and waiting["canary"]["role"] == "waiting"
    assert waiting["canary"]["outcome"] == "running" and waiting["canary"]["instanceIds"] == [first_sent]
    events = await h.until_completed(12)
    sent = posts(h)
    assert [len(p["body"]["instanceIds"]) for p in sent] == [1, 4, 4, 3]  # the canary, then the cap (20 % of 20)
    canary_instance = sent[0]["body"]["instanceIds"][0]
    assert all(d["status"] == "Succeeded" and d["health"] == "Healthy" for d in (e["data"] for e in events))
    assert set(by_op(events).values()) == {1} and set(by_op(events)) == accepted
    [first] = [e["data"] for e in events if e["data"]["instanceIds"] == [canary_instance]]
    canary_batch = first["batchId"]
    assert first["canary"]["role"] == "canary" and first["canary"]["outcome"] == "passed"
    rest = [e["data"] for e in events if e["data"]["batchId"] != canary_batch]
    assert len(rest) == 11 and all(d["canary"] == {**d["canary"], "role": "after", "batchId": canary_batch,
                                                   "outcome": "passed"} for d in rest)
    # nothing after the canary was sent before the canary had ended healthy
    assert min(p["at"] for p in sent[1:]) >= max(0.0, _ts(first["completedAt"]))
    assert waiting["canary"]["batchId"] == canary_batch
    s, view = await h.get(f"/api/targets?id={SET}")
    assert view["canary"]["outcome"] == "passed" and view["canary"]["batchId"] == canary_batch


async def test_an_approved_whole_set_request_goes_one_instance_first_then_the_rest(new_host: NewHost) -> None:
    h: Host = await storm_host(new_host, capacity=6, APPROVAL_ALLOW_UNVERIFIED="true", **GRACE)
    s, body, _ = await h.reimage({"target": SET, "allInstances": True, "requestedBy": "alice", "requestId": "all"})
    assert s == 202 and body["status"] == "AwaitingApproval"
    op = body["operationId"]
    s, body, _ = await h.post(f"/api/reimage/{op}/approve", {"by": "bob"})
    assert s == 202 and body["status"] == "Queued", body
    [event] = await h.until_completed(1)
    sent = [p["body"]["instanceIds"] for p in posts(h)]
    assert sent == [["0"], ["1", "2", "3", "4", "5"]]  # one instance, its verdict, then the rest in one POST
    d = event["data"]
    assert d["status"] == "Succeeded" and d["health"] == "Healthy"
    assert sorted(d["healthDetail"], key=int) == ["0", "1", "2", "3", "4", "5"]  # the canary's part and the rest
    assert d["canary"]["role"] == "canary" and d["canary"]["outcome"] == "passed"
    assert d["canary"]["instanceIds"] == ["0"] and d["batchId"] != d["canary"]["batchId"]
    assert len(h.completed()) == 1  # one completion event for the request, however many POSTs it took
    # its evidence covers every instance: the canary's, captured before the first POST, and the rest's
    assert sorted(d["evidence"]["instances"], key=int) == ["0", "1", "2", "3", "4", "5"]
    assert {i["instanceView"]["status"] for i in d["evidence"]["instances"].values()} == {"captured"}


async def test_an_approved_request_whose_canary_fails_ends_suspended_having_reimaged_only_the_canary(
        new_host: NewHost) -> None:
    h: Host = await storm_host(new_host, capacity=6, APPROVAL_ALLOW_UNVERIFIED="true", **GRACE)
    h.dh.sim.faults.append(Fault.model_validate({"match": "reimage", "healthAfter": "unhealthy", "times": 100}))
    s, body, _ = await h.reimage({"target": SET, "allInstances": True, "requestedBy": "alice", "requestId": "all"})
    s, _, _ = await h.post(f"/api/reimage/{body['operationId']}/approve", {"by": "bob"})
    [event] = await h.until_completed(1)
    assert [p["body"]["instanceIds"] for p in posts(h)] == [["0"]]
    d = event["data"]
    assert d["status"] == "Canceled" and d["error"]["code"] == "TargetSuspended"
    assert d["canary"]["role"] == "canary" and d["canary"]["outcome"] == "failed"
    assert d["health"] == "Unhealthy" and list(d["healthDetail"]) == ["0"]
    await h.settle(lambda: len(h.events("reimager.target.suspended")) >= 1, max_virtual_seconds=600)
    assert len(h.events("reimager.target.suspended")) == 1


async def test_canary_instances_zero_turns_it_off(new_host: NewHost) -> None:
    h: Host = await storm_host(new_host, capacity=20, CANARY_INSTANCES="0")
    await send_storm(h, 8, retries=0)
    events = await h.until_completed(8)
    assert [len(p["body"]["instanceIds"]) for p in posts(h)] == [4, 4]
    assert all(e["data"]["canary"] is None for e in events)


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
