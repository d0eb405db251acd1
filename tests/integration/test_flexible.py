"""Flexible scale sets are governed by their set, exactly like Uniform ones; instance protection, locks and Azure's
automatic repairs leave machines alone.

Real concurrency on devhost (hostile by default: activities run twice, events are delivered twice; the ARM
simulator throttles with Azure's published limits), with action groups re-sending the same alerts. A Flexible set's
members are VMs of their own (devhost/compute/fleet.py): its batches are single-VM POSTs sent together.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections import Counter
from typing import Any

import aiohttp

from devhost.compute import Fault
from devhost.host import DEMO_SUBSCRIPTION
from tests.integration.conftest import BASE, LINUX_VM, Host, NewHost, checks
from tests.integration.test_storms import OPEN, alert

FLEX = f"{BASE}/virtualMachineScaleSets/flex"
UNIFORM = f"{BASE}/virtualMachineScaleSets/storm"
GROUP = BASE.split("/providers/")[0]
CAP = 20 * 20 // 100  # MAX_BATCH_PERCENT 20 of a 20-member set
REPAIRS = {"automaticRepairsPolicy": {"enabled": True, "gracePeriod": "PT10M"}}


def vm_alert(vm_id: str, alert_id: str) -> dict[str, Any]:
    """An Azure Monitor alert on a VM (a Flexible member is a VM of its own: its alerts name the VM)."""
    doc = alert("0", alert_id)
    doc["data"]["essentials"]["alertTargetIDs"] = [vm_id]
    return doc


async def flex_host(new_host: NewHost, members: int = 20, *, settings: dict[str, str] | None = None,
                    **set_properties: Any) -> tuple[Host, list[dict[str, Any]]]:
    h: Host = await new_host(settings={**OPEN, **(settings or {})}, operation_seconds=10.0, retry_after=None)
    h.dh.sim.seed_scale_set(FLEX, members, flexible=True, **set_properties)
    return h, h.dh.sim.members(FLEX)


async def alert_storm(h: Host, vm_ids: list[str], prefix: str = "a") -> list[tuple[int, Any]]:
    """One alert per VM, all at once; then the whole storm again, as action groups re-send."""
    async def one(i: int, vm_id: str) -> tuple[int, Any]:
        s, body, _ = await h.post("/api/alerts", vm_alert(vm_id, f"{prefix}-{i}"))
        return s, body

    results: list[tuple[int, Any]] = []
    for _ in range(2):
        results += await asyncio.gather(*(one(i, v) for i, v in enumerate(vm_ids)))
    return results


def posts(h: Host) -> list[dict[str, Any]]:
    return [p for p in h.reimage_posts() if "/flex" in p["path"].lower()]


def max_in_flight(h: Host, lock_keys: set[str]) -> int:
    """The most ARM operations running at once on these resources (from the simulator's own operations)."""
    ops = [o for o in h.dh.sim.operations.values() if o.lock_key in lock_keys]
    edges = sorted([(o.started, 1) for o in ops] + [(o.end, -1) for o in ops])
    return max(itertools.accumulate(step for _, step in edges), default=0)


async def arm_post(h: Host, path: str, body: dict[str, Any], api: str = "2024-07-01") -> tuple[int, Any]:
    """A call straight to ARM (what an operator's `az` would send), with a token from devhost's identity."""
    async with aiohttp.ClientSession() as http, http.post(
            f"{h.dh.arm_url}{path}", params={"api-version": api}, json=body,
            headers={"Authorization": f"Bearer {h.dh.issuer.issue()[0]}"}) as r:
        return r.status, await r.text()


async def later(h: Host, seconds: float) -> None:
    """Let virtual time pass, running what falls due (past PREFLIGHT_CACHE_SECONDS: the next request reads ARM)."""
    until = h.dh.clock.now() + seconds
    with contextlib.suppress(TimeoutError):
        await h.settle(lambda: h.dh.clock.now() >= until, max_virtual_seconds=seconds)
    if h.dh.clock.now() < until:
        h.dh.clock.set(until)  # type: ignore[attr-defined]
        await h.settle(lambda: True)


# ---- the storm -----------------------------------------------------------------------------------------------------
async def test_a_storm_on_a_flexible_set_rides_batches_of_single_vm_posts(new_host: NewHost) -> None:
    """12 alerts on 12 members of a 20-member Flexible set, each re-sent: every alert accepted and none refused as
    busy; the first batch is a canary of one member (one single-VM POST), and nothing else is sent before it ended
    healthy; then each other member is POSTed exactly once with the single-VM API in batches, never more than the
    cap in flight, no scale-set POST; each request ends with one completion event naming its batch and its own
    member's health."""
    h, members = await flex_host(new_host)
    chosen = members[:12]
    results = await alert_storm(h, [m["id"] for m in chosen])
    assert {s for s, _ in results} == {202} and [r for _, b in results for r in b["refused"]] == []
    assert all(len(b["accepted"]) == 1 for _, b in results)
    events = await h.until_completed(12)
    assert len(events) == 12 and set(Counter(e["data"]["operationId"] for e in events).values()) == {1}
    sent = sorted(posts(h), key=lambda p: p["at"])
    assert all("/virtualMachineScaleSets/" not in p["path"] for p in sent)  # never a scale-set call
    assert Counter(p["path"].rsplit("/", 2)[1] for p in sent) == Counter({m["name"]: 1 for m in chosen})
    assert all(p["status"] == 202 for p in sent)
    assert max_in_flight(h, {m["id"].lower() for m in members}) <= CAP
    # the canary: one member, alone, passed; every other POST after it ended healthy
    [canary] = [e["data"] for e in events if e["data"]["canary"]["role"] == "canary"]
    assert canary["canary"]["outcome"] == "passed" and canary["health"] == "Healthy"
    assert canary["canary"]["instanceIds"] == canary["instanceIds"] == [sent[0]["path"].rsplit("/", 2)[1]]
    assert min(p["at"] for p in sent[1:]) >= _ts(canary["completedAt"])
    rest = [e["data"] for e in events if e["data"]["batchId"] != canary["batchId"]]
    assert len(rest) == 11 and all(d["canary"]["role"] == "after" and d["canary"]["batchId"] == canary["batchId"]
                                   for d in rest)
    batches = {e["data"]["batchId"] for e in events}
    assert len(batches) == 1 + math.ceil(11 / CAP) and all(b.startswith("b-") for b in batches)
    for e in events:
        d = e["data"]
        assert d["status"] == "Succeeded" and d["health"] == "Healthy", d
        assert d["instanceIds"] == [d["target"].rsplit("/", 1)[1]] and list(d["healthDetail"]) == d["instanceIds"]
    again = await alert_storm(h, [m["id"] for m in chosen])  # action groups' late re-sends: duplicates
    assert all(a.get("duplicate") for _, b in again for a in b["accepted"]) and len(posts(h)) == 12


async def test_with_the_default_breaker_the_same_storm_suspends_the_set_with_one_event(new_host: NewHost) -> None:
    h, members = await flex_host(new_host, settings={"BREAKER_PERCENT": "50"})
    results = await alert_storm(h, [m["id"] for m in members[:12]])
    refused = {r["error"]["code"] for _, b in results for r in b["refused"]}
    assert refused == {"TargetSuspended"}
    await h.settle(lambda: len(h.events("reimager.target.suspended")) >= 1, max_virtual_seconds=600)
    await later(h, 120)
    [suspended] = h.events("reimager.target.suspended")
    assert suspended["data"]["target"].lower() == FLEX.lower()
    assert suspended["data"]["suspension"]["evidence"]["distinctInstancesRequested"] == 11
    assert {e["data"]["error"]["code"] for e in h.completed()} == {"TargetSuspended"} and posts(h) == []
    s, view = await h.get(f"/api/targets?id={FLEX}")
    assert s == 200 and view["suspended"]["by"] == "breaker"


async def test_an_unhealthy_canary_suspends_a_flexible_set_after_one_post_and_ends_the_rest(
        new_host: NewHost) -> None:
    """A bad image on a Flexible set: its canary is one member's single-VM POST, which comes back unhealthy; the set
    is suspended (one event, CanaryFailed, naming the canary) and every request that waited ends Canceled /
    TargetSuspended with its one event. No other member is POSTed."""
    h, members = await flex_host(new_host, settings={"HEALTH_GRACE_MINUTES": "2"})
    h.dh.sim.faults.append(Fault.model_validate({"match": "flex_", "healthAfter": "unhealthy", "times": 100}))
    results = await alert_storm(h, [m["id"] for m in members[:12]])
    accepted = {a["operationId"] for _, b in results for a in b["accepted"]}
    assert len(accepted) == 12 and [r for _, b in results for r in b["refused"]] == []
    events = await h.until_completed(12)
    await h.settle(lambda: len(h.events("reimager.target.suspended")) >= 1, max_virtual_seconds=600)
    [post] = posts(h)  # the canary, alone
    assert post["status"] == 202 and "/virtualMachineScaleSets/" not in post["path"]
    name = post["path"].rsplit("/", 2)[1]
    [suspended] = h.events("reimager.target.suspended")
    info = suspended["data"]["suspension"]
    assert suspended["data"]["target"].lower() == FLEX.lower()
    assert info["code"] == "CanaryFailed" and info["by"] == "canary" and info["evidence"]["instanceIds"] == [name]
    assert info["evidence"]["health"] == "Unhealthy" and "unhealthy" in info["evidence"]["healthDetail"][name].lower()
    assert set(Counter(e["data"]["operationId"] for e in events).values()) == {1}
    assert {e["data"]["operationId"] for e in events} == accepted
    [first] = [e["data"] for e in events if e["data"]["instanceIds"] == [name]]
    assert first["status"] == "Succeeded" and first["health"] == "Unhealthy" and first["canary"]["outcome"] == "failed"
    others = [e["data"] for e in events if e["data"]["instanceIds"] != [name]]
    assert len(others) == 11 and {(d["status"], d["error"]["code"]) for d in others} == {("Canceled",
                                                                                           "TargetSuspended")}
    assert all(d["canary"]["role"] == "waited" and d["canary"]["batchId"] == info["evidence"]["canary"]
               for d in others)
    await later(h, 120)
    assert len(posts(h)) == 1 and len(h.events("reimager.target.suspended")) == 1
    s, view = await h.get(f"/api/targets?id={FLEX}")
    assert view["suspended"]["code"] == "CanaryFailed" and view["canary"]["outcome"] == "failed"


# ---- one fleet model ---------------------------------------------------------------------------------------------
async def test_a_members_cooldown_budget_and_approval_count_against_its_set(new_host: NewHost) -> None:
    h, members = await flex_host(new_host, settings={"FLEET_BUDGET_PERCENT": "30"})
    first = members[0]
    s, body, _ = await h.reimage({"target": first["id"], "requestId": "by-vm"})
    assert s == 202 and body["instanceIds"] == [first["name"]]
    await h.until_completed(1)
    for listed_by in (first["id"], FLEX):  # its history is the member's and its set's
        s, page = await h.get(f"/api/reimage?target={listed_by}")
        assert s == 200 and [o["operationId"] for o in page["value"]] == [body["operationId"]], listed_by
    # cooldown: the member's, kept on its set, whichever way it is named
    s, body, _ = await h.reimage({"target": FLEX, "instanceIds": [first["name"].upper()], "requestId": "by-set"})
    assert s == 429 and body["error"]["code"] == "CooldownActive" and body["cooldown"]["instance"] == first["name"]
    s, body, _ = await h.reimage({"target": first["id"], "requestId": "by-vm-again"})
    assert s == 429 and body["error"]["code"] == "CooldownActive"
    # approval: more members than APPROVAL_ABOVE_INSTANCES in one request
    s, body, _ = await h.reimage({"target": FLEX, "instanceIds": [m["name"] for m in members[1:7]],
                                  "requestId": "six"})
    assert s == 202 and body["status"] == "AwaitingApproval" and "APPROVAL_ABOVE_INSTANCES" in body["error"]["message"]
    # budget: 30% of 20 within the window; 1 spent, 5 more go, the rest waits for the window
    for m in members[7:14]:
        s, body, _ = await h.reimage({"target": m["id"], "requestId": f"budget-{m['name']}"})
        assert s == 202 and body["status"] == "Queued", body
    await h.settle(lambda: len(h.completed()) >= 6, max_virtual_seconds=1800)
    await later(h, 600)
    assert len(posts(h)) == 6 and len(h.completed()) == 6
    s, view = await h.get(f"/api/targets?id={FLEX}")
    assert view["budget"]["used"] == 6 and len(view["queue"]) == 2
    # a freeze tag on the set holds a member's request for approval
    h.dh.sim.upsert(FLEX, {"tags": {"reimager-freeze": "2027-01-01"}}, patch=True)
    await later(h, 10)
    s, body, _ = await h.reimage({"target": members[15]["id"], "requestId": "frozen"})
    assert s == 202 and body["status"] == "AwaitingApproval" and body["freeze"]["source"] == "tag"


async def test_all_instances_on_a_flexible_set_names_the_members_needs_approval_and_is_never_a_set_call(
        new_host: NewHost) -> None:
    h, members = await flex_host(new_host, settings={"MAX_INSTANCES_PER_REQUEST": "100",
                                                     "APPROVAL_ALLOW_UNVERIFIED": "true"})
    names = sorted((m["name"] for m in members), key=lambda n: (len(n), n))
    s, plan, _ = await h.reimage({"target": FLEX, "allInstances": True, "dryRun": True})
    assert s == 200 and [c["path"].rsplit("/", 2)[1] for c in plan["calls"]] == names
    assert plan["plan"] == plan["calls"][0] and all("/virtualMachines/" in c["path"] and
                                                     "ScaleSets" not in c["path"] for c in plan["calls"])
    s, body, _ = await h.reimage({"target": FLEX, "allInstances": True, "requestId": "all", "requestedBy": "alice"})
    assert s == 202 and body["status"] == "AwaitingApproval" and body["instanceIds"] == names
    assert posts(h) == []
    s, approved, _ = await h.post(f"/api/reimage/{body['operationId']}/approve", {"by": "bob"})
    assert s == 202, approved
    [event] = await h.until_completed(1)
    d = event["data"]
    assert d["status"] == "Succeeded" and d["health"] == "Healthy" and sorted(d["healthDetail"]) == sorted(names)
    sent = sorted(posts(h), key=lambda p: p["at"])
    assert sorted(p["path"].rsplit("/", 2)[1] for p in sent) == sorted(names)  # each member, once
    assert all("/virtualMachineScaleSets/" not in p["path"] for p in sent)
    assert max_in_flight(h, {m["id"].lower() for m in members}) <= CAP  # 20 members, CAP at a time
    # an approved request's first member is the set's canary: alone, and the rest only once it ended healthy
    assert d["canary"]["role"] == "canary" and d["canary"]["outcome"] == "passed"
    assert d["canary"]["instanceIds"] == [names[0]] == [sent[0]["path"].rsplit("/", 2)[1]]
    canary_end = max(o.end for o in h.dh.sim.operations.values() if o.lock_key.endswith(names[0].lower()))
    assert min(p["at"] for p in sent[1:]) >= canary_end and len(h.completed()) == 1


# ---- automatic repairs ---------------------------------------------------------------------------------------------
async def test_automatic_repairs_running_refuse_and_suspended_proceed(new_host: NewHost) -> None:
    h: Host = await new_host(settings=OPEN, operation_seconds=10.0, retry_after=None)
    h.dh.sim.seed_scale_set(UNIFORM, 10, **REPAIRS)
    s, body, _ = await h.reimage({"target": UNIFORM, "instanceIds": ["3"], "requestId": "r1"})
    assert s == 409 and body["error"]["code"] == "AutomaticRepairsActive"
    assert "az vmss set-orchestration-service-state" in body["error"]["message"] and "--action Suspend" in \
        body["error"]["message"] and "AUTOMATIC_REPAIRS=allow" in body["error"]["message"]
    s, answer, _ = await h.post("/api/alerts", alert("4", "repairs-alert"))
    assert s == 200 and answer["accepted"] == [] and answer["refused"] == []
    assert "automatic instance repairs" in answer["ignored"][0]["reason"]
    s, plan, _ = await h.reimage({"target": UNIFORM, "instanceIds": ["3"], "dryRun": True})
    assert checks(plan)["automaticRepairs"]["result"] == "failed" and plan["passed"] is False
    assert h.reimage_posts() == []
    # the operator suspends them, as the message says (az vmss set-orchestration-service-state ... --action Suspend)
    s, _ = await arm_post(h, f"{UNIFORM}/setOrchestrationServiceState",
                          {"serviceName": "AutomaticRepairs", "action": "Suspend"})
    assert s == 200 and h.dh.sim.repairs(UNIFORM) == "Suspended"
    await later(h, 10)
    s, plan, _ = await h.reimage({"target": UNIFORM, "instanceIds": ["3"], "dryRun": True})
    assert checks(plan)["automaticRepairs"] == {"name": "automaticRepairs", "result": "passed",
                                                "serviceState": "Suspended"}
    s, body, _ = await h.reimage({"target": UNIFORM, "instanceIds": ["3"], "requestId": "r2"})
    assert s == 202
    [event] = await h.until_completed(1)
    assert event["data"]["status"] == "Succeeded"


async def test_a_flexible_sets_repairs_refuse_unless_read_suspended_or_allowed(new_host: NewHost) -> None:
    """A Flexible set's instance view may be refused (the simulator's default): enabled repairs whose state cannot
    be read are taken to be running. Readable and Suspended, or AUTOMATIC_REPAIRS=allow: the request proceeds."""
    h, members = await flex_host(new_host, 4, **REPAIRS)
    s, body, _ = await h.reimage({"target": members[0]["id"], "requestId": "f1"})
    assert s == 409 and body["error"]["code"] == "AutomaticRepairsActive" and body["automaticRepairs"] == "Unknown"
    h.dh.sim.flex_set_instance_view = True
    s, _ = await arm_post(h, f"{FLEX}/setOrchestrationServiceState", {"serviceName": "AutomaticRepairs",
                                                                        "action": "Suspend"})
    assert s == 200
    await later(h, 10)
    s, body, _ = await h.reimage({"target": members[0]["id"], "requestId": "f2"})
    assert s == 202, body
    [event] = await h.until_completed(1)
    assert event["data"]["status"] == "Succeeded" and [p["path"].rsplit("/", 2)[1] for p in posts(h)] == \
        [members[0]["name"]]


async def test_automatic_repairs_allow_reimages_beside_them(new_host: NewHost) -> None:
    h, members = await flex_host(new_host, 4, settings={"AUTOMATIC_REPAIRS": "allow"}, **REPAIRS)
    s, body, _ = await h.reimage({"target": members[1]["id"], "requestId": "f3"})
    assert s == 202, body
    s, plan, _ = await h.reimage({"target": members[1]["id"], "dryRun": True})
    assert checks(plan)["automaticRepairs"]["result"] == "passed"
    [event] = await h.until_completed(1)
    assert event["data"]["status"] == "Succeeded"


# ---- protection and locks ------------------------------------------------------------------------------------------
async def test_a_protected_instance_or_a_locked_vm_is_refused_before_arm(new_host: NewHost) -> None:
    h, members = await flex_host(new_host, 4)
    h.dh.sim.seed_scale_set(UNIFORM, 6)
    h.dh.sim.protect(f"{UNIFORM}/virtualMachines/2")
    s, body, _ = await h.reimage({"target": UNIFORM, "instanceIds": ["1", "2"], "requestId": "p1"})
    assert s == 403 and body["error"]["code"] == "InstanceProtected" and body["protected"] == ["2"]
    s, body, _ = await h.reimage({"target": UNIFORM, "allInstances": True, "requestId": "p2"})
    assert s == 403 and body["error"]["code"] == "InstanceProtected"
    s, plan, _ = await h.reimage({"target": UNIFORM, "instanceIds": ["2"], "dryRun": True})
    assert checks(plan)["instanceProtection"]["result"] == "failed"
    h.dh.sim.lock(members[1]["id"])  # a ReadOnly lock: Flexible's instance protection
    h.dh.sim.lock(LINUX_VM, "vm-lock")
    await later(h, 10)  # the group's locks were read a moment ago: a new read sees them
    s, body, _ = await h.reimage({"target": members[1]["id"], "requestId": "l1"})
    assert s == 403 and body["error"]["code"] == "TargetLocked" and body["lock"]["name"] == "do-not-touch"
    s, body, _ = await h.reimage({"target": FLEX, "instanceIds": [members[1]["name"]], "requestId": "l2"})
    assert s == 403 and body["error"]["code"] == "TargetLocked"
    s, body, _ = await h.reimage({"target": LINUX_VM, "requestId": "l3"})
    assert s == 403 and body["error"]["code"] == "TargetLocked"
    s, plan, _ = await h.reimage({"target": members[1]["id"], "dryRun": True})
    assert checks(plan)["lock"]["result"] == "failed" and checks(plan)["lock"]["code"] == "TargetLocked"
    assert h.reimage_posts() == []  # every refusal came before ARM
    # a lock the check did not see (the group's locks were read a moment ago): ARM's ScopeLocked, nothing applied
    s, body, _ = await h.reimage({"target": members[2]["id"], "dryRun": True})
    assert s == 200 and body["passed"] is True
    h.dh.sim.lock(f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/{GROUP.rsplit('/', 1)[1]}", "group-lock")
    s, body, _ = await h.reimage({"target": LINUX_VM.replace("web-linux-01", "app-win-01"), "requestId": "l4"})
    assert s == 403 and body["error"]["code"] == "TargetLocked" and body["error"]["details"][0]["code"] == \
        "ScopeLocked"
    assert [p["status"] for p in h.reimage_posts()] == [409]


# ---- both modes, side by side --------------------------------------------------------------------------------------
def _kind(request: dict[str, Any]) -> str:
    path = request["path"]
    if "/operations/" in path:
        return "poll"
    if path.endswith("/instanceView") or request["query"].get("$expand"):
        return "views"  # health reads, and evidence's one read of the batch's machines before its POSTs
    return "locks" if "Microsoft.Authorization" in path else "preflight"


async def _storm(h: Host, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """Send the alerts at once, then again (the action groups' re-sends); wait until every request ended: what it
    cost in ARM calls, and how long until every machine was reimaged and healthy (virtual seconds)."""
    from datetime import datetime

    start, before, done = h.dh.clock.now(), len(h.dh.sim.requests), len(h.completed())
    for _ in range(2):
        await asyncio.gather(*(h.post("/api/alerts", a) for a in alerts))
    events = (await h.until_completed(done + len(alerts)))[done:]
    calls = h.dh.sim.requests[before:]
    gets = [r for r in calls if r["method"] == "GET"]
    last = max(datetime.fromisoformat(e["data"]["completedAt"]).timestamp() for e in events)
    return {"posts": sum(1 for r in calls if r["method"] == "POST"), "reads": len(gets),
            "kinds": dict(Counter(_kind(r) for r in gets)), "throttled": sum(1 for r in calls if r["status"] == 429),
            "healthySeconds": round(last - start), "healthy": all(e["data"]["health"] == "Healthy" for e in events),
            "succeeded": all(e["data"]["status"] == "Succeeded" for e in events)}


async def test_both_modes_storms_side_by_side(new_host: NewHost) -> None:
    """The same storm (12 alerts on 12 of 20 machines, each re-sent) on a Uniform set and on a Flexible set, with
    Azure's published limits: ARM never answers 429; both go canary first (one machine, then batches of the cap):
    the Uniform set is 4 batch POSTs, the Flexible set 12 single-VM POSTs in 4 batches; the figures are
    docs/operations.md's "Flexible scale sets" table."""
    h, members = await flex_host(new_host)
    h.dh.sim.seed_scale_set(UNIFORM, 20)
    uniform = await _storm(h, [alert(str(i), f"u-{i}") for i in range(12)])
    await later(h, 60)
    flexible = await _storm(h, [vm_alert(m["id"], f"f-{i}") for i, m in enumerate(members[:12])])
    print(f"\nRESULT storm_modes uniform={uniform} flexible={flexible}")
    for side in (uniform, flexible):
        assert side["throttled"] == 0 and side["succeeded"] and side["healthy"]
    assert (uniform["posts"], flexible["posts"]) == (4, 12)
    # per member: its VM's GET, its operation's status, its instance view; per set: its model, members, locks; per
    # batch: evidence's read of its machines (4 batches: the canary, then 3 of the cap)
    assert flexible["kinds"]["preflight"] <= 12 + 2 + 2 and flexible["reads"] <= 3 * 12 + 5 + 4
    assert flexible["healthySeconds"] <= uniform["healthySeconds"] + 30


# ---- a batch's members end on their own ----------------------------------------------------------------------------
async def test_each_member_of_a_batch_ends_with_its_own_outcome(new_host: NewHost) -> None:
    """One batch of four members: ARM throttles one member's POST (it is sent once its Retry-After has passed), fails
    another's operation, and refuses a third (a lock set after the check): each request ends with its own member's
    outcome and one event naming the batch; the throttled member is reimaged, nothing is POSTed twice."""
    # no canary here (CANARY_INSTANCES=0): this is about one batch's members, the canary about the first batch
    h, members = await flex_host(new_host, settings={"BREAKER_FAILURES": "5", "CANARY_INSTANCES": "0"})
    throttled, failed, locked, fine = members[:4]
    h.dh.sim.faults += [
        Fault.model_validate({"match": f"{throttled['name']}/reimage", "status": 429, "retryAfter": 90}),
        Fault.model_validate({"match": f"{failed['name']}/reimage", "outcome": "Failed",
                              "code": "OSProvisioningTimedOut", "message": "the OS did not come back"})]
    await asyncio.gather(*(h.post("/api/alerts", vm_alert(m["id"], f"own-{i}")) for i, m in enumerate(members[:4])))
    h.dh.sim.lock(locked["id"], "late-lock")  # after the preflight read the locks, before the batch is sent
    events = await h.until_completed(4)
    by_vm = {e["data"]["target"].rsplit("/", 1)[1]: e["data"] for e in events}
    assert len({d["batchId"] for d in by_vm.values()}) == 1
    assert by_vm[fine["name"]]["status"] == "Succeeded" and by_vm[fine["name"]]["health"] == "Healthy"
    assert by_vm[throttled["name"]]["status"] == "Succeeded" and by_vm[throttled["name"]]["health"] == "Healthy"
    assert by_vm[failed["name"]]["status"] == "Failed" and by_vm[failed["name"]]["error"]["code"] == \
        "OSProvisioningTimedOut" and by_vm[failed["name"]]["health"] is None
    assert by_vm[locked["name"]]["status"] == "Failed" and by_vm[locked["name"]]["error"]["code"] == "TargetLocked"
    sent = [(p["path"].rsplit("/", 2)[1], p["status"]) for p in posts(h)]
    assert Counter(name for name, status in sent if status == 202) == Counter(
        {throttled["name"]: 1, failed["name"]: 1, fine["name"]: 1})
    assert (throttled["name"], 429) in sent and (locked["name"], 409) in sent
    retried = [p["at"] for p in posts(h) if throttled["name"] in p["path"]]
    assert retried[1] - retried[0] >= 90  # not before ARM's Retry-After
    [batch] = {d["batchId"] for d in by_vm.values()}
    s, view = await h.get(f"/api/reimage/{batch}")
    assert view["status"] == "Failed"  # a batch with a failed member counts toward the failure streak
    s, target = await h.get(f"/api/targets?id={FLEX}")
    assert target["breaker"]["consecutiveFailures"] == 1
    # the member ARM refused was not reimaged: no cooldown, no count in the fleet budget, `applied: false`
    ledger = h.dh.runtime.ledger  # type: ignore[union-attr]
    applied = {n: (await ledger.get(by_vm[n]["operationId"])).applied for n in (locked["name"], fine["name"])}
    assert applied == {locked["name"]: False, fine["name"]: True}
    assert set(target["cooldowns"]) == {fine["name"], throttled["name"], failed["name"]}
    assert target["budget"]["used"] == 3, target["budget"]


async def test_a_request_with_secrets_names_one_member_and_is_sent_from_intake(new_host: NewHost) -> None:
    """osProfile secrets are never stored, so such a request leads: its member's single-VM POST from intake, its
    health read by the member's name, the set's lease and cooldown; naming two members is refused."""
    h: Host = await new_host(settings=OPEN, operation_seconds=10.0, retry_after=None)
    h.dh.sim.flex_reimage_any_os_disk = True  # osProfile is for a managed OS disk (the spec's reading allows it)
    h.dh.sim.seed_scale_set(FLEX, 3, flexible=True, ephemeral=False)
    members = h.dh.sim.members(FLEX)
    secret = {"osProfile": {"adminPassword": "Str0ng-Passw0rd!"}}
    s, body, _ = await h.reimage({"target": FLEX, "instanceIds": [m["name"] for m in members[:2]], **secret})
    assert s == 400 and body["error"]["target"] == "osProfile"
    s, body, _ = await h.reimage({"target": members[0]["id"], "requestId": "secret", **secret})
    assert s == 202 and body["status"] == "Accepted"
    [post] = posts(h)
    assert post["path"].endswith(f"/virtualMachines/{members[0]['name']}/reimage") and "osProfile" in post["body"]
    [event] = await h.until_completed(1)
    d = event["data"]
    assert d["status"] == "Succeeded" and d["health"] == "Healthy" and list(d["healthDetail"]) == [members[0]["name"]]
    s, body, _ = await h.reimage({"target": FLEX, "instanceIds": [members[0]["name"]], "requestId": "again"})
    assert s == 429 and body["error"]["code"] == "CooldownActive"


async def test_a_lead_sent_to_the_set_reads_its_members_own_health(new_host: NewHost) -> None:
    """A request with secrets sent to the set naming one member leads (its member's single-VM POST from intake): its
    health is its member's own VM's view (the set has no instance path for it), so an unhealthy member is Unhealthy,
    not Unknown, and counts toward the set's breaker."""
    h: Host = await new_host(settings={**OPEN, "HEALTH_GRACE_MINUTES": "2"}, operation_seconds=10.0,
                             retry_after=None)
    h.dh.sim.flex_reimage_any_os_disk = True
    h.dh.sim.seed_scale_set(FLEX, 3, flexible=True, ephemeral=False)
    member = h.dh.sim.members(FLEX)[0]
    h.dh.sim.faults.append(Fault.model_validate({"match": member["name"], "healthAfter": "unhealthy", "times": 100}))
    s, body, _ = await h.reimage({"target": FLEX, "instanceIds": [member["name"]], "requestId": "lead",
                                  "osProfile": {"adminPassword": "Str0ng-Passw0rd!"}})
    assert s == 202 and body["status"] == "Accepted", body
    [event] = await h.until_completed(1)
    d = event["data"]
    assert d["status"] == "Succeeded" and d["health"] == "Unhealthy", d
    assert list(d["healthDetail"]) == [member["name"]] and "unhealthy" in d["healthDetail"][member["name"]].lower()
    s, target = await h.get(f"/api/targets?id={FLEX}")
    assert target["breaker"]["consecutiveFailures"] == 1, target["breaker"]


async def test_a_throttled_read_of_a_members_set_waits_queued_and_completes_once(new_host: NewHost) -> None:
    """An alert on a Flexible member whose set's read ARM throttles (429, Retry-After 120) is not refused: it waits
    Queued (the re-send joins it), is admitted once ARM answers, and ends with one event; its history is its VM's
    and, once resumed under its set, its set's."""
    h, members = await flex_host(new_host, members=3)
    h.dh.sim.faults.append(Fault.model_validate({"match": "virtualMachineScaleSets/flex", "method": "GET",
                                                 "status": 429, "retryAfter": 120}))
    s, body, _ = await h.post("/api/alerts", vm_alert(members[0]["id"], "set-throttled"))
    assert s == 202 and body["refused"] == [] and body["accepted"][0]["status"] == "Queued", body
    op = body["accepted"][0]["operationId"]
    s, again, _ = await h.post("/api/alerts", vm_alert(members[0]["id"], "set-throttled"))
    assert s == 202 and again["accepted"][0]["operationId"] == op
    [event] = await h.until_completed(1)
    assert event["data"]["operationId"] == op and event["data"]["status"] == "Succeeded"
    assert event["data"]["instanceIds"] == [members[0]["name"]]
    [post] = posts(h)
    assert post["path"].endswith(f"/virtualMachines/{members[0]['name']}/reimage")
    for listed_by in (members[0]["id"], FLEX):  # resumed under its set: listed there too, as any member request
        s, page = await h.get(f"/api/reimage?target={listed_by}")
        assert s == 200 and [o["operationId"] for o in page["value"]] == [op], listed_by


async def test_a_member_in_another_resource_group_is_refused_never_its_namesake_reimaged(new_host: NewHost) -> None:
    """A VM in another resource group joined the set under the name one of the set's own members has: a request for
    it is refused as not found (the set's resource group lists no such member), and the namesake is not POSTed."""
    h, members = await flex_host(new_host, members=2)
    other = f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/other-rg/providers/Microsoft.Compute/virtualMachines"
    twin = f"{other}/{members[0]['name']}"
    h.dh.sim.upsert(twin, {"location": "westus", "properties": {
        "virtualMachineScaleSet": {"id": FLEX}, "storageProfile": {"osDisk": {
            "osType": "Linux", "diffDiskSettings": {"option": "Local"}}}}})
    assert twin.lower() in {m["id"].lower() for m in h.dh.sim.members(FLEX)}  # a member of the set, elsewhere
    s, body, _ = await h.reimage({"target": twin, "requestId": "twin"})
    assert s == 404 and body["error"]["code"] == "TargetNotFound" and body["error"]["target"] == "target", body
    s, body, _ = await h.post("/api/alerts", vm_alert(twin, "twin-alert"))
    assert body["accepted"] == [] and h.reimage_posts() == []
    await later(h, 120)
    assert h.reimage_posts() == []  # members[0], its namesake in the set's group, is left alone


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
