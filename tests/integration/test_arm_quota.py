"""ARM quota: reimager is throttled like Compute throttles, and frugal by design.

Real concurrency through devhost (hostile by default: every activity runs twice, events are delivered twice), on a
virtual clock where Retry-After matters, with the simulator's throttling on (devhost/compute/throttle.py): the
published limits unless a test narrows one bucket to make it run out where it wants, and says so.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.transport import AioHttpTransport

from devhost.clock import VirtualClock
from devhost.compute import ArmLimits, Fault
from devhost.compute.limits import PolicyLimits
from devhost.host import DEMO_GROUP, DEMO_SUBSCRIPTION
from tests.integration.conftest import BASE, LINUX_VM, Host
from tests.integration.test_storms import OPEN, alert

NewHost = Callable[..., Any]
SET = f"{BASE}/virtualMachineScaleSets/storm"
PEER_SET = f"{BASE}/virtualMachineScaleSets/peer"
API = "2024-07-01"


def narrowed(policy: str, rate: tuple[float, float], retry_after: int = 60) -> ArmLimits:
    """Azure's limits with one policy's per-resource bucket narrowed, so it runs out where a test wants it to."""
    limits = ArmLimits.azure()
    subscription = limits.policies[policy].subscription
    policies = {**limits.policies, policy: PolicyLimits(resource=rate, subscription=subscription)}
    return limits.model_copy(update={"policies": policies, "compute_retry_after_seconds": retry_after})


def reads_of(h: Host, set_id: str, since: int = 0) -> list[dict[str, Any]]:
    """The GETs charged to a scale set: its model, its instances and views, and its operations' status."""
    name = set_id.rsplit("/", 1)[1].lower()
    ops = {o.id for o in h.dh.sim.operations.values() if o.lock_key == set_id.lower()}
    return [r for r in h.dh.sim.requests[since:] if r["method"] == "GET" and (
        f"/virtualmachinescalesets/{name}" in r["path"].lower() or r["path"].rsplit("/", 1)[-1] in ops)]


def polls_of(h: Host) -> list[dict[str, Any]]:
    return [r for r in h.dh.sim.requests if r["method"] == "GET" and "/operations/" in r["path"]]


# ---- the storm, side by side with a peer -------------------------------------------------------------------------
class IssuerCredential:
    """A token from devhost's identity endpoint, for the peer (what a runbook's managed identity would get)."""

    def __init__(self, h: Host) -> None:
        self.issuer = h.dh.issuer

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        token, expires = self.issuer.issue()
        return AccessToken(token, expires)

    async def close(self) -> None:
        return None


class VirtualSleepTransport(AioHttpTransport):  # type: ignore[misc]
    """The peer's waits (polling interval, Retry-After) on devhost's virtual clock."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock

    async def sleep(self, duration: float) -> None:
        await self.clock.sleep(duration)


async def run_peer(h: Host, instances: list[str]) -> list[str]:
    """One azure-mgmt-compute begin_reimage per alert, each waiting for its poller (bench/storm_vmss.py's peer)."""
    from azure.mgmt.compute.aio import ComputeManagementClient

    clock = h.dh.clock
    assert isinstance(clock, VirtualClock)
    outcomes: list[str] = []
    peer = ComputeManagementClient(IssuerCredential(h), DEMO_SUBSCRIPTION, base_url=h.dh.arm_url,  # type: ignore[arg-type]
                                   transport=VirtualSleepTransport(clock))

    async def runbook(instance: str) -> None:
        try:
            poller = await peer.virtual_machine_scale_set_vms.begin_reimage(DEMO_GROUP, "peer", instance,
                                                                             enforce_https=False)
            await poller.result()
            outcomes.append("Succeeded")
        except HttpResponseError as exc:
            outcomes.append(getattr(exc.error, "code", None) or str(exc.status_code))

    task = asyncio.ensure_future(asyncio.gather(*(runbook(i) for i in instances)))
    assert h.dh.engine is not None
    while not task.done():  # move virtual time only once every request in flight has landed
        await asyncio.sleep(0.05)
        await h.dh.engine.idle()
        deadline = clock.next_deadline()
        if deadline is not None and not task.done():
            clock.set(deadline)
    await task
    await peer.close()
    return outcomes


@pytest.mark.timeout(600)
async def test_a_storm_of_100_alerts_is_never_throttled_and_reads_the_set_a_few_times(new_host: NewHost) -> None:
    """100 alerts, each re-sent once, on 100 instances of one set, with Compute's and ARM's published limits:
    reimager is answered 429 by ARM 0 times, accepts every alert, reimages every instance once with one completion
    event per request, and reads the set at most 30 times: a canary of one instance, then batches of 20, each read
    once for its evidence before its POST (one list page), polled once on the default schedule (ARM takes 10 s per
    reimage and sends no Retry-After, as the recorded exchange) and read for health once or twice."""
    h: Host = await new_host(settings=OPEN, operation_seconds=10.0, retry_after=None)
    h.dh.sim.seed_scale_set(SET, 100)
    h.dh.sim.seed_scale_set(PEER_SET, 100)
    start = len(h.dh.sim.requests)
    results: list[tuple[int, Any]] = []
    for _ in range(2):  # the storm, then the action groups' re-sends
        async def one(i: int) -> tuple[int, Any]:
            s, body, _ = await h.post("/api/alerts", alert(str(i), f"alert-{i}"))
            return s, body
        results += await asyncio.gather(*(one(i) for i in range(100)))
    assert {s for s, _ in results} == {202}
    assert all(b["accepted"] and not b["refused"] for _, b in results)
    events = await h.until_completed(100)
    posts = [p for p in h.reimage_posts() if "/storm/" in p["path"]]
    reimaged = Counter(i for p in posts if p["status"] == 202 for i in p["body"]["instanceIds"])
    reads = reads_of(h, SET, start)
    throttled = [r for r in h.dh.sim.requests[start:] if r["status"] == 429]
    assert throttled == []
    assert len(events) == 100 and set(Counter(e["data"]["operationId"] for e in events).values()) == {1}
    assert {e["data"]["status"] for e in events} == {"Succeeded"}
    assert len(reimaged) == 100 and set(reimaged.values()) == {1}
    kinds = Counter("poll" if "/operations/" in r["path"] else ("evidence" if _before_a_post(h, r) else "health")
                    if "$expand" in r["query"] else "preflight" for r in reads)
    assert len(posts) == 1 + 5 and len(posts[0]["body"]["instanceIds"]) == 1  # the canary, then 5
    assert kinds["evidence"] == len(posts) and len(reads) <= 30, kinds

    peer_start = len(h.dh.sim.requests)
    outcomes = await run_peer(h, [str(i) for i in range(100)])
    peer_requests = h.dh.sim.requests[peer_start:]
    peer_reads = reads_of(h, PEER_SET, peer_start)
    peer_throttled = [r for r in peer_requests if r["status"] == 429]
    print(f"\nRESULT quota_storm alerts=100 resent=100 posts={len(posts)} reads={len(reads)} "
          f"preflight_reads={kinds['preflight']} poll_reads={kinds['poll']} health_reads={kinds['health']} "
          f"evidence_reads={kinds['evidence']} "
          f"throttled=0 completions={len(events)} | peer posts="
          f"{sum(1 for r in peer_requests if r['method'] == 'POST')} reads={len(peer_reads)} "
          f"throttled={len(peer_throttled)} outcomes={dict(Counter(outcomes))}")
    assert len(peer_throttled) > 0  # the peer, on the same simulator and limits, is throttled


def _before_a_post(h: Host, read: dict[str, Any]) -> bool:
    """A read of the set's views made for the evidence of the POST that follows it (the next write on the set)."""
    log = h.dh.sim.requests
    at = next(i for i, r in enumerate(log) if r is read)
    following = next((r for r in log[at + 1:] if r["method"] != "GET" and "/storm" in r["path"]), None)
    return following is not None and following["path"].endswith("/reimage") and not any(
        r["method"] == "GET" and "$expand" in r["query"] and "/storm" in r["path"] for r in log[at + 1:log.index(
            following)])


# ---- polls -------------------------------------------------------------------------------------------------------
async def test_a_poll_throttled_for_120_s_ends_with_arms_outcome_not_timed_out(new_host: NewHost) -> None:
    """The operation's status may be read once a minute (its Get Operation bucket narrowed to 1), and Compute blocks
    for 120 s once throttled. ARM finishes in 30 s; the operation timeout is 1 minute. The monitor waits the whole
    Retry-After, polls again, and ends Succeeded: the deadline counts ARM's time, not the time ARM made us wait."""
    h: Host = await new_host(settings={"OPERATION_TIMEOUT_MINUTES": "1"}, operation_seconds=30.0, retry_after=10,
                             arm_limits=narrowed("GetOperation", (1, 1), retry_after=120))
    s, body, _ = await h.reimage({"target": LINUX_VM, "requestId": "poll-throttled"})
    assert s == 202
    [event] = await h.until_completed()
    assert event["data"]["status"] == "Succeeded", event["data"]
    polls = polls_of(h)
    assert [p["status"] for p in polls] == [200, 429, 200]  # running (held a while: the bucket was empty), 429, done
    assert polls[2]["at"] - polls[1]["at"] >= 120  # nothing asked before Retry-After had passed


async def test_low_remaining_counts_slow_the_polls_before_arm_throttles(new_host: NewHost) -> None:
    """ARM asks for a poll every 2 s; the operation's Get Operation bucket holds 6 and refills 6 a minute. Once its
    remaining count is at ARM_QUOTA_LOW_WATER (3), the next poll waits for tokens instead of following Retry-After,
    so ARM never has to answer 429."""
    h: Host = await new_host(operation_seconds=60.0, retry_after=2, arm_limits=narrowed("GetOperation", (6, 6)))
    await h.reimage({"target": LINUX_VM, "requestId": "slowed"})
    [event] = await h.until_completed()
    assert event["data"]["status"] == "Succeeded"
    polls = polls_of(h)
    assert [p for p in polls if p["status"] == 429] == []
    gaps = [round(b["at"] - a["at"]) for a, b in itertools.pairwise(polls)]
    assert gaps[:2] == [2, 2]  # ARM's own pace while the bucket is full
    assert gaps[2] >= 6 and all(g >= 6 for g in gaps[2:])  # then held: at least a token's refill between polls
    assert len(polls) < 60 / 2  # fewer polls than Retry-After alone would have sent
    assert h.events() and any(e["type"] == "reimager.operation.completed" for e in h.events())


# ---- the preflight read ------------------------------------------------------------------------------------------
async def test_a_throttled_preflight_queues_the_alert_and_admits_it_after_retry_after(new_host: NewHost) -> None:
    h: Host = await new_host(settings=OPEN)
    h.dh.sim.seed_scale_set(SET, 10)
    h.dh.sim.faults.append(Fault.model_validate({"match": "storm", "method": "GET", "status": 429, "retryAfter": 120}))
    start = h.dh.clock.now()
    s, body, _ = await h.post("/api/alerts", alert("3", "throttled-preflight"))
    assert s == 202 and body["refused"] == [] and body["accepted"][0]["status"] == "Queued"
    op = body["accepted"][0]["operationId"]
    s, again, _ = await h.post("/api/alerts", alert("3", "throttled-preflight"))  # the action group's re-send
    assert s == 202 and again["accepted"][0]["operationId"] == op
    s, view = await h.get(f"/api/reimage/{op}")
    assert view["status"] == "Queued"
    [event] = await h.until_completed()
    assert event["data"]["operationId"] == op and event["data"]["status"] == "Succeeded"
    reads = reads_of(h, SET)
    assert reads[0]["status"] == 429 and all(r["at"] - start >= 120 for r in reads[1:])  # not asked before
    [post] = [p for p in h.reimage_posts() if "/storm/" in p["path"]]
    assert post["body"]["instanceIds"] == ["3"]


# ---- the POST, from a queue message ------------------------------------------------------------------------------
async def test_a_queue_message_whose_post_is_throttled_waits_and_is_sent_once_after_retry_after(
        new_host: NewHost) -> None:
    """The VM's Update VM bucket holds 1 (narrowed) and Compute blocks for 120 s once throttled: the message's POST
    meets 429 + Retry-After 120. The message is completed, never redelivered or dead-lettered; the request waits
    Queued and a batch sends it once, after the wait; one completion event."""
    h: Host = await new_host(settings={"COOLDOWN_MINUTES": "0"}, operation_seconds=20.0,
                             arm_limits=narrowed("UpdateVM", (1, 1), retry_after=120))
    async with aiohttp.ClientSession() as http:  # someone else reimaged the VM a moment ago: the bucket is empty
        auth = {"Authorization": f"Bearer {h.dh.issuer.issue()[0]}"}
        async with http.post(f"{h.dh.arm_url}{LINUX_VM}/reimage", params={"api-version": API}, headers=auth) as r:
            assert r.status == 202
    await h.settle(lambda: True)
    start = time.monotonic()
    s, out = await h.queue({"target": LINUX_VM}, messageId="m-throttled-post")
    assert s == 202 and (out["settlement"], out["deliveryCount"]) == ("completed", 1)
    [event] = await h.until_completed()
    assert event["data"]["status"] == "Succeeded" and event["data"]["requestId"] == "m-throttled-post"
    mine = h.reimage_posts()[1:]
    assert [p["status"] for p in mine] == [429, 202]
    assert mine[1]["at"] - mine[0]["at"] >= 120
    _, dead = await h.get("/devhost/servicebus/deadletter")
    assert dead == [] and time.monotonic() - start < 60
    assert len(h.completed()) == 1


async def test_a_low_write_bucket_shrinks_the_next_batch_instead_of_meeting_429(new_host: NewHost) -> None:
    """The subscription's scale-set Update bucket (a set's reimage is charged one token per instance) is narrowed
    to 30, refilled 6 a minute. After the canary, the first batch of 20 leaves 10: the next batch is sealed
    smaller, to what is left above ARM_QUOTA_LOW_WATER, rather than POSTing 20 into a 429."""
    limits = ArmLimits.azure()
    policies = {**limits.policies, "VMScaleSetUpdate": PolicyLimits(resource=(4, 12), subscription=(6, 30))}
    h: Host = await new_host(settings=OPEN, operation_seconds=10.0, retry_after=None,
                             arm_limits=limits.model_copy(update={"policies": policies}))
    h.dh.sim.seed_scale_set(SET, 100)
    await asyncio.gather(*(h.post("/api/alerts", alert(str(i), f"shrink-{i}")) for i in range(40)))
    events = await h.until_completed(40)
    assert {e["data"]["status"] for e in events} == {"Succeeded"}
    posts = [p for p in h.reimage_posts() if "/storm/" in p["path"]]
    assert [p["status"] for p in posts if p["status"] == 429] == []
    sizes = [len(p["body"]["instanceIds"]) for p in posts]
    # the canary (its token refilled while it ran), a batch of 20 (10 left), then what is left above the low water
    assert sizes[:2] == [1, 20] and sizes[2] <= 30 - 20 - 3 and sum(sizes) == 40
