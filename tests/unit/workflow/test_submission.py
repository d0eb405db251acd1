"""shared/workflow/submission.py: the one place a reimage POST is sent, and what ARM's answer means for the
operation (Submitting -> Accepted, ended here, or handed back to the caller untouched)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.domain.arm_call import ArmCall, Submission
from shared.domain.errors import ComputeError, ErrorCode
from shared.domain.events import EventType
from shared.domain.records import OperationRecord
from shared.domain.request import parse_request
from shared.domain.status import OperationStatus
from shared.domain.targets import parse_target
from shared.workflow import submission
from tests.unit.workflow.fakes import VM, World, accepted_202, arm_error, uncertain, unreachable

TARGET = parse_target(VM)


async def submitting(world: World) -> OperationRecord:
    """An operation as a lead leaves it just before the POST: claimed, holding the lease, Submitting."""
    now = world.clock()
    record = OperationRecord(operation_id="op-1", request_id="k1", target=TARGET.id, lease_key=TARGET.lock_key,
                             cooldown_keys=[""], trigger="http", status=OperationStatus.SUBMITTING,
                             batch_id="op-1", created_time=now, last_updated_time=now)
    won, record = await world.ledger.claim(record)
    assert won
    return record


def call() -> ArmCall:
    return parse_request({"target": VM}).arm_call("2024-07-01")


async def test_a_202_records_the_operation_urls_and_leaves_it_to_the_monitor(world: World) -> None:
    record = await submitting(world)
    world.compute.answers.append(accepted_202(retry_after=7))
    world.clock.advance(seconds=2)
    outcome = await submission.submit(world.runtime, world.durable, record, call())
    assert isinstance(outcome, submission.Posted) and not outcome.finished
    stored = await world.ledger.get("op-1")
    assert stored is not None and stored.status == OperationStatus.ACCEPTED and stored.applied
    assert stored.submitted_at == world.clock() and stored.arm == accepted_202(retry_after=7).to_dict()
    assert world.publisher.events == []  # the caller announces it; nothing ended


async def test_a_200_means_arm_finished_so_the_operation_ends_succeeded(world: World) -> None:
    record = await submitting(world)
    world.compute.answers.append(Submission(200, None, None, None, "arm-request"))
    outcome = await submission.submit(world.runtime, world.durable, record, call())
    assert isinstance(outcome, submission.Posted) and outcome.finished
    stored = await world.ledger.get("op-1")
    assert stored is not None and stored.status == OperationStatus.SUCCEEDED
    assert [e.data.status for e in world.publisher.of(EventType.COMPLETED)] == [OperationStatus.SUCCEEDED]


async def test_no_answer_ends_the_operation_failed_applied_with_the_cooldown(world: World) -> None:
    record = await submitting(world)
    world.compute.answers.append(uncertain())
    outcome = await submission.submit(world.runtime, world.durable, record, call())
    assert isinstance(outcome, submission.Uncertain)
    stored = await world.ledger.get("op-1")
    assert stored is not None and stored.status == OperationStatus.FAILED and stored.applied
    assert stored.error is not None and stored.error["code"] == ErrorCode.SUBMISSION_UNCERTAIN
    target = await world.ledger.get_target(TARGET.lock_key)
    assert target.cooldowns[""].until == world.clock() + timedelta(minutes=30)
    assert len(world.publisher.of(EventType.COMPLETED)) == 1


@pytest.mark.parametrize(("answer", "unavailable"), [(arm_error(400), False), (arm_error(409), False),
                                                     (arm_error(429), True), (unreachable(), True)],
                         ids=["400", "409", "429", "unreachable"])
async def test_a_certain_refusal_is_handed_back_untouched(world: World, answer: ComputeError,
                                                          unavailable: bool) -> None:
    record = await submitting(world)
    world.compute.answers.append(answer)
    outcome = await submission.submit(world.runtime, world.durable, record, call())
    assert isinstance(outcome, submission.NotApplied) and outcome.unavailable is unavailable
    assert outcome.error is answer
    stored = await world.ledger.get("op-1")
    assert stored is not None and stored.status == OperationStatus.SUBMITTING and stored.etag == record.etag
    assert world.publisher.events == [] and (await world.ledger.get_target(TARGET.lock_key)).cooldowns == {}
