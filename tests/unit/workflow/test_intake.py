"""shared/workflow/intake.py: what one request becomes (lead, duplicate, queued, awaiting approval, refused)
and what a POST's answer does to its key, its cooldown and its one completion event."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.domain.errors import ComputeError, ErrorCode, ReimagerError
from shared.domain.events import EventType
from shared.domain.ids import operation_id
from shared.domain.request import parse_request
from shared.domain.status import OperationStatus
from shared.domain.targets import parse_target
from shared.workflow.completion import finish
from shared.workflow.intake import Accepted, Intake
from shared.workflow.orchestration import MONITOR
from tests.unit.workflow.fakes import VM, VMSS, World, arm_error, uncertain

LOCK = parse_target(VM).lock_key


async def submit(world: World, **body: Any) -> Accepted:
    result = await Intake(world.runtime, world.durable).submit(parse_request(body), trigger="http")
    assert isinstance(result, Accepted)
    return result


async def refused(world: World, **body: Any) -> ReimagerError:
    with pytest.raises(ReimagerError) as info:
        await submit(world, **body)
    return info.value


async def test_a_vm_lead_posts_once_and_starts_its_monitor(world: World) -> None:
    answer = await submit(world, target=VM, requestId="k1")
    assert not answer.duplicate and answer.record.status == OperationStatus.ACCEPTED
    assert len(world.compute.posts) == 1 and world.compute.posts[0].target.id.lower() == VM.lower()
    assert [(name, iid) for name, iid, _ in world.durable.started] == [(MONITOR, operation_id("k1"))]
    stored = await world.ledger.get(operation_id("k1"))
    assert stored is not None and stored.status == OperationStatus.ACCEPTED and stored.applied
    assert stored.arm is not None and stored.arm["asyncOperationUrl"]
    lead = await world.ledger.get(operation_id("k1"))
    assert lead is not None and (await world.ledger.get_target(LOCK)).lease_owner == lead.holder
    assert len(world.publisher.of(EventType.ACCEPTED)) == 1 and world.publisher.of(EventType.COMPLETED) == []


async def test_a_second_submit_with_the_same_key_answers_the_operation_without_a_post(world: World) -> None:
    first = await submit(world, target=VM, requestId="k1")
    again = await submit(world, target=VM, requestId="k1")
    assert again.duplicate and again.record.operation_id == first.record.operation_id
    assert len(world.compute.posts) == 1 and len(world.durable.started) == 1


async def test_a_refused_post_frees_the_key_so_a_retry_posts_again(world: World) -> None:
    world.compute.answers.append(arm_error(400, "OperationNotAllowed", "busy"))
    error = await refused(world, target=VM, requestId="k1")
    assert isinstance(error, ComputeError) and error.arm_status == 400
    assert error.error.details[0].code == "OperationNotAllowed"
    # The key keeps the refusal (deliveries that waited on it share it); it is no operation, and a retry takes it.
    kept = await world.ledger.get(operation_id("k1"))
    assert kept is not None and kept.status == OperationStatus.REFUSED and await world.ledger.unsettled() == []
    target = await world.ledger.get_target(LOCK)
    assert target.lease_owner is None and target.cooldowns == {}  # nothing was applied: no cooldown
    assert world.publisher.of(EventType.COMPLETED) == []
    answer = await submit(world, target=VM, requestId="k1")  # the retry
    assert answer.record.status == OperationStatus.ACCEPTED and len(world.compute.posts) == 2


@pytest.mark.parametrize("answer", [uncertain(), arm_error(500, "InternalExecutionError", "oops")],
                         ids=["no-answer", "5xx"])
async def test_a_post_that_may_have_been_applied_ends_failed_once_and_is_never_sent_again(
        world: World, answer: ComputeError) -> None:
    world.compute.answers.append(answer)
    error = await refused(world, target=VM, requestId="k1")
    assert error.extra.get("completed") is True and error.extra.get("operationId") == operation_id("k1")
    stored = await world.ledger.get(operation_id("k1"))
    assert stored is not None and stored.status == OperationStatus.FAILED and stored.applied
    assert stored.error is not None and stored.error["code"] == answer.code
    assert stored.error["details"][0]["code"] == answer.error.details[0].code  # ARM's own, kept
    [event] = world.publisher.of(EventType.COMPLETED)
    assert event.data.operation_id == operation_id("k1") and event.data.status == OperationStatus.FAILED
    cooldown = (await world.ledger.get_target(LOCK)).cooldowns[""]
    assert cooldown.operation_id == operation_id("k1") and cooldown.until > world.clock()
    again = await submit(world, target=VM, requestId="k1")  # the same key: the ended operation, no POST
    assert again.duplicate and again.record.status == OperationStatus.FAILED
    assert (await refused(world, target=VM, requestId="k2")).code == ErrorCode.COOLDOWN_ACTIVE  # a new key
    assert len(world.compute.posts) == 1 and world.durable.started == []
    assert len(world.publisher.of(EventType.COMPLETED)) == 1


async def test_a_scale_set_request_queues_and_forms_a_batch(world: World) -> None:
    answer = await submit(world, target=VMSS, instanceIds=["3"], requestId="k1")
    assert answer.record.status == OperationStatus.QUEUED and world.compute.posts == []
    target = await world.ledger.get_target(parse_target(VMSS).lock_key)
    assert [e.operation_id for e in target.queue] == [operation_id("k1")]
    assert target.batch is not None and target.batch.formed and target.lease_owner == target.batch.batch_id
    batch = await world.ledger.get(target.batch.batch_id)
    assert batch is not None and batch.is_batch and batch.status == OperationStatus.CLAIMED
    [(name, instance, state)] = world.durable.started
    assert (name, instance, state["submit"]) == (MONITOR, target.batch.batch_id, True)
    assert len(world.publisher.of(EventType.QUEUED)) == 1


async def test_a_request_that_needs_approval_waits_with_its_event(world: World) -> None:
    answer = await submit(world, target=VMSS, instanceIds=[str(i) for i in range(6)], requestId="k1")
    assert answer.record.status == OperationStatus.AWAITING_APPROVAL
    assert answer.record.error is not None and answer.record.error["code"] == ErrorCode.APPROVAL_REQUIRED
    [event] = world.publisher.of(EventType.AWAITING_APPROVAL)
    assert event.data.operation_id == operation_id("k1")
    assert world.compute.posts == [] and world.durable.started == []
    target = await world.ledger.get_target(parse_target(VMSS).lock_key)
    assert target.lease_owner is None and target.queue == []  # admission waits for the approval


async def test_a_cooldown_refusal_frees_the_key(world: World) -> None:
    await submit(world, target=VM, requestId="k1")
    await finish(world.runtime, operation_id("k1"), OperationStatus.SUCCEEDED, None, applied=True)
    error = await refused(world, target=VM, requestId="k2")
    assert error.code == ErrorCode.COOLDOWN_ACTIVE and error.extra["cooldown"]["operationId"] == operation_id("k1")
    assert await world.ledger.get(operation_id("k2")) is None
    assert await world.ledger.unsettled() == []  # nothing left for the sweeper either
    world.clock.advance(minutes=31)
    answer = await submit(world, target=VM, requestId="k2")  # the same key, once the cooldown is over
    assert answer.record.status == OperationStatus.ACCEPTED and len(world.compute.posts) == 2


class _Died(BaseException):
    """The owner's process stops here: no handler runs (a BaseException, as a kill leaves no clean-up)."""


async def _claim_then_die(world: World, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """A delivery of `key` claims it and dies before its index rows (the sweeper's work list) are written."""
    index = world.ledger.index

    async def dies(record: Any) -> None:
        raise _Died

    monkeypatch.setattr(world.ledger, "index", dies)
    with pytest.raises(_Died):
        await submit(world, target=VM, requestId=key)
    monkeypatch.setattr(world.ledger, "index", index)


async def test_a_delivery_joined_to_a_dead_claim_is_promised_and_the_sweeper_sees_it(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.workflow.intake._JOIN_WAIT_SECONDS", 0.1)
    await _claim_then_die(world, monkeypatch, "k9")
    assert await world.ledger.unsettled() == []
    joined = await submit(world, target=VM, requestId="k9")  # waits for the claim, then is answered with it
    assert joined.duplicate and joined.record.status == OperationStatus.CLAIMED and joined.record.promised
    assert await world.ledger.unsettled() == [operation_id("k9")]  # the sweeper will end it if nobody sends it


async def test_a_promised_claim_taken_over_and_refused_ends_with_its_one_event(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Answered 202 while Claimed, then taken over once the claim ran out, and refused (the VM cooled down
    meanwhile): the promised operation ends Failed with one event, never a refusal that leaves it unknown (404)."""
    monkeypatch.setattr("shared.workflow.intake._JOIN_WAIT_SECONDS", 0.1)
    await submit(world, target=VM, requestId="k1")
    await finish(world.runtime, operation_id("k1"), OperationStatus.SUCCEEDED, None, applied=True)
    await _claim_then_die(world, monkeypatch, "k9")  # it claims before admission, which would refuse it
    assert (await submit(world, target=VM, requestId="k9")).duplicate
    world.clock.advance(seconds=world.runtime.settings.claim_seconds + 1)
    error = await refused(world, target=VM, requestId="k9")  # takes the dead claim over; the cooldown refuses it
    assert error.code == ErrorCode.COOLDOWN_ACTIVE and error.extra.get("completed") is True
    stored = await world.ledger.get(operation_id("k9"))
    assert stored is not None and stored.status == OperationStatus.FAILED
    events = [e for e in world.publisher.of(EventType.COMPLETED) if e.data.operation_id == operation_id("k9")]
    assert [e.data.error.code for e in events if e.data.error] == [ErrorCode.COOLDOWN_ACTIVE]
    assert len(world.compute.posts) == 1  # only k1's


async def test_a_slow_owner_refused_by_arm_after_a_delivery_joined_it_ends_with_one_event(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner stalls between its claim and its index rows; a same-key delivery is answered 202 with it (a
    promise); then ARM refuses the owner's POST. The operation ends Failed with one event carrying ARM's refusal,
    never a refusal kept quietly on the key."""
    monkeypatch.setattr("shared.workflow.intake._JOIN_WAIT_SECONDS", 0.1)
    index, stalled = world.ledger.index, asyncio.Event()

    async def slow_once(record: Any) -> None:
        monkeypatch.setattr(world.ledger, "index", index)
        await stalled.wait()
        await index(record)

    monkeypatch.setattr(world.ledger, "index", slow_once)
    world.compute.answers.append(arm_error(409, "OperationNotAllowed", "the VM is deallocating"))
    owner = asyncio.create_task(submit(world, target=VM, requestId="k1"))
    await asyncio.sleep(0.01)
    joined = await submit(world, target=VM, requestId="k1")
    assert joined.duplicate and joined.record.promised
    stalled.set()
    with pytest.raises(ComputeError):
        await owner
    stored = await world.ledger.get(operation_id("k1"))
    assert stored is not None and stored.status == OperationStatus.FAILED
    events = [e for e in world.publisher.of(EventType.COMPLETED) if e.data.operation_id == operation_id("k1")]
    assert len(events) == 1 and len(world.compute.posts) == 1
    error = events[0].data.error
    assert error is not None and "OperationNotAllowed" in [error.code, *(d.code for d in error.details)], error
