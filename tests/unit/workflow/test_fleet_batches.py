"""shared/workflow/fleet.py against the fakes: a Flexible batch's members are each POSTed once, whatever runs of its
activities overlap, and a member whose sender stopped mid-send is never sent again."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from shared.domain.arm_call import OperationState, PollResult
from shared.domain.errors import ComputeThrottled, ErrorCode
from shared.domain.records import OperationRecord
from shared.domain.status import OperationStatus
from shared.domain.targets import parse_target
from shared.workflow import fleet
from shared.workflow.submission import NotApplied, Posted
from tests.unit.workflow.fakes import RG, START, World, accepted_202

FLEX = f"{RG}/virtualMachineScaleSets/flex"
NAMES = ["flex_0a1b2c3d", "flex_1b2c3d4e", "flex_2c3d4e5f", "flex_3d4e5f60"]


async def batch(world: World, status: OperationStatus, members: dict[str, dict[str, Any]], **arm: Any
                ) -> OperationRecord:
    record = OperationRecord(operation_id="b-flex", request_id="b-flex", target=FLEX,
                             lease_key=parse_target(FLEX).lock_key, trigger="batch", members=["op-1"],
                             cooldown_keys=list(members), options={"operation": "VirtualMachines_Reimage"},
                             created_time=START, last_updated_time=START, status=status,
                             arm={"members": members, **arm}, batch_id="b-flex")
    await world.ledger.claim(record)
    stored = await world.ledger.get("b-flex")
    assert stored is not None
    return stored


def pending(*names: str) -> dict[str, dict[str, Any]]:
    return {n: {"state": "pending", "vm": f"{RG}/virtualMachines/{n}"} for n in names}


async def test_overlapping_runs_send_each_member_once(world: World) -> None:
    record = await batch(world, OperationStatus.RUNNING, pending(*NAMES[:3]), cap=10)
    held = world.compute.hold()
    first = asyncio.ensure_future(fleet._send_more(world.runtime, record))
    await world.compute.posted.wait()  # the first run is POSTing, its members marked `sending`
    second = await fleet._send_more(world.runtime, record)  # a second run of the same step, meanwhile
    held.set()
    await first
    assert sorted(c.target.name for c in world.compute.posts) == NAMES[:3]
    assert second.arm is not None and {m["state"] for m in second.arm["members"].values()} == {"sending"}
    stored = await world.ledger.get("b-flex")
    assert stored is not None and stored.arm is not None
    assert {m["state"] for m in stored.arm["members"].values()} == {"running"} and stored.applied


async def test_the_first_send_keeps_to_the_cap(world: World) -> None:
    await world.ledger.change_target(parse_target(FLEX).lock_key, lambda t: (
        t.model_copy(update={"capacity": 10}), None))  # 20% of 10: two at a time
    record = await batch(world, OperationStatus.SUBMITTING, pending(*NAMES), submitter="t")
    outcome = await fleet.submit(world.runtime, record)
    assert isinstance(outcome, Posted) and len(world.compute.posts) == 2
    stored = outcome.record
    assert stored.status == OperationStatus.ACCEPTED and stored.arm is not None and stored.arm["cap"] == 2
    assert [m["state"] for m in stored.arm["members"].values()] == ["running", "running", "pending", "pending"]


async def test_a_batch_arm_throttles_entirely_is_not_applied_and_waits(world: World) -> None:
    throttled = ComputeThrottled(ErrorCode.COMPUTE_UNAVAILABLE, "throttled", arm_status=429, arm_code="TooMany",
                                 arm_message="slow down", retry_after=60)
    world.compute.answers = [throttled, throttled]
    record = await batch(world, OperationStatus.SUBMITTING, pending(*NAMES[:2]), submitter="u")
    outcome = await fleet.submit(world.runtime, record)
    assert isinstance(outcome, NotApplied) and outcome.unavailable  # nothing reached ARM: the whole batch waits
    assert len(world.compute.posts) == 1  # a set of 1 (the target record knows no capacity yet): one at a time


async def test_a_member_whose_sender_stopped_mid_send_ends_lost_and_is_never_sent_again(world: World) -> None:
    stale = (START - timedelta(hours=1)).isoformat()
    members = {NAMES[0]: {"state": "sending", "vm": f"{RG}/virtualMachines/{NAMES[0]}", "token": "gone",
                          "since": stale},
               NAMES[1]: {"state": "Succeeded", "vm": f"{RG}/virtualMachines/{NAMES[1]}"}}
    await batch(world, OperationStatus.RUNNING, members, cap=2)
    answer = await fleet.poll(world.runtime, "b-flex", 1)
    stored = await world.ledger.get("b-flex")
    assert stored is not None and stored.arm is not None
    lost = stored.arm["members"][NAMES[0]]
    assert lost["state"] == "Failed" and lost["error"]["code"] == ErrorCode.SUBMISSION_LOST and lost["applied"]
    assert world.compute.posts == [] and answer["state"] == "Succeeded"  # the other member's health comes next


async def test_a_poll_reads_each_running_member_and_records_its_end(world: World) -> None:
    sub = accepted_202()
    members = {n: {"state": "running", "vm": f"{RG}/virtualMachines/{n}", "url": sub.async_operation_url,
                   "mode": "async"} for n in NAMES[:2]}
    await batch(world, OperationStatus.ACCEPTED, members, cap=2)

    async def poll(url: str, mode: str, resource: str | None = None) -> PollResult:
        failed = resource is not None and resource.endswith(NAMES[1])
        return PollResult(OperationState.FAILED if failed else OperationState.SUCCEEDED,
                          error_code="OSProvisioningTimedOut" if failed else None)

    world.compute.poll = poll  # type: ignore[attr-defined]
    answer = await fleet.poll(world.runtime, "b-flex", 1)
    stored = await world.ledger.get("b-flex")
    assert stored is not None and stored.arm is not None and stored.status == OperationStatus.RUNNING
    assert {k: m["state"] for k, m in stored.arm["members"].items()} == {NAMES[0]: "Succeeded", NAMES[1]: "Failed"}
    assert answer["state"] == "Succeeded" and stored.polls == 1


async def test_the_batchs_arm_time_is_its_longest_members_once_the_last_ends(world: World) -> None:
    """The learned poll schedule reads a batch's arm_seconds (else its wall time, health check included): a Flexible
    batch's is its longest member operation, set when the last member ends."""
    sub = accepted_202()
    members = {n: {"state": "running", "vm": f"{RG}/virtualMachines/{n}", "url": f"{sub.async_operation_url}{i}",
                   "mode": "async"} for i, n in enumerate(NAMES[:2])}
    await batch(world, OperationStatus.ACCEPTED, members, cap=2)
    took = {NAMES[0]: 40.0, NAMES[1]: 95.0}
    done: set[str] = {NAMES[0]}

    async def poll(url: str, mode: str, resource: str | None = None) -> PollResult:
        name = next(n for n in NAMES[:2] if resource is not None and resource.endswith(n))
        if name not in done:
            return PollResult(OperationState.RUNNING)
        return PollResult(OperationState.SUCCEEDED, arm_seconds=took[name])

    world.compute.poll = poll  # type: ignore[attr-defined]
    await fleet.poll(world.runtime, "b-flex", 1)
    stored = await world.ledger.get("b-flex")
    assert stored is not None and stored.arm_seconds is None  # a member still runs
    done.add(NAMES[1])
    await fleet.poll(world.runtime, "b-flex", 2)
    stored = await world.ledger.get("b-flex")
    assert stored is not None and stored.arm_seconds == 95.0
