"""shared/workflow/batches.py: a batch formed from queued requests is sealed and POSTed once, however often its
activity runs; what ARM answers decides whether its requests go back to the queue or end."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shared.domain.errors import ErrorCode
from shared.domain.events import EventType
from shared.domain.ids import operation_id
from shared.domain.request import parse_request
from shared.domain.status import OperationStatus
from shared.domain.targets import parse_target
from shared.workflow import batches
from shared.workflow.intake import Intake
from tests.unit.workflow.fakes import VMSS, World, arm_error, make_world, unreachable

LOCK = parse_target(VMSS).lock_key
# Batches by themselves: the canary that would cut a storm's first batch is test_canary.py's.
NO_CANARY = {"CANARY_INSTANCES": "0"}


@pytest.fixture
def world() -> World:
    return make_world(**NO_CANARY)


async def queue_two(world: World) -> str:
    """Two requests for instances 1 and 2 of the set: both queue; the first formed the batch. Its id."""
    intake = Intake(world.runtime, world.durable)
    for key, instance in (("k1", "1"), ("k2", "2")):
        await intake.submit(parse_request({"target": VMSS, "instanceIds": [instance], "requestId": key}),
                            trigger="alert")
    target = await world.ledger.get_target(LOCK)
    assert target.batch is not None and [e.operation_id for e in target.queue] == [operation_id("k1"),
                                                                                   operation_id("k2")]
    return target.batch.batch_id


async def statuses(world: World, *keys: str) -> list[OperationStatus]:
    records = [await world.ledger.get(operation_id(k)) for k in keys]
    return [r.status for r in records if r is not None]


async def test_submit_seals_and_posts_the_union_once_even_when_run_twice(world: World) -> None:
    batch_id = await queue_two(world)
    first = await batches.submit(world.runtime, world.durable, batch_id)
    second = await batches.submit(world.runtime, world.durable, batch_id)  # the activity ran again
    assert first["outcome"] == "submitted" and second == first
    assert world.compute.bodies() == [{"instanceIds": ["1", "2"]}]
    batch = await world.ledger.get(batch_id)
    assert batch is not None and batch.members == [operation_id("k1"), operation_id("k2")]
    assert batch.status == OperationStatus.ACCEPTED
    assert await statuses(world, "k1", "k2") == [OperationStatus.ACCEPTED] * 2
    for key in ("k1", "k2"):
        member = await world.ledger.get(operation_id(key))
        assert member is not None and member.batch_id == batch_id and member.submitted_at is not None
    assert (await world.ledger.get_target(LOCK)).queue == []
    assert len(world.publisher.of(EventType.ACCEPTED)) == 2


async def test_a_throttled_post_keeps_the_batch_and_sends_it_again_after_retry_after() -> None:
    """ARM answered 429 (Retry-After 30): nothing was applied. The batch keeps its members and its lease and waits
    Retry-After (the orchestrator's timer); asked again sooner, it says how long is left and sends nothing; then
    the same requests go in one POST. The global slot is given back meanwhile (one slot for one POST)."""
    world = make_world(GLOBAL_MAX_REIMAGES_PER_HOUR="1", **NO_CANARY)
    batch_id = await queue_two(world)
    world.compute.answers.append(arm_error(429, "TooManyRequests", "throttled"))
    assert await batches.submit(world.runtime, world.durable, batch_id) == {"outcome": "throttled", "retryAfter": 30}
    assert await world.ledger.global_slots_free(world.clock(), 1)
    assert await statuses(world, "k1", "k2") == [OperationStatus.QUEUED] * 2
    batch = await world.ledger.get(batch_id)
    assert batch is not None and batch.status == OperationStatus.CLAIMED and batch.members == [
        operation_id("k1"), operation_id("k2")]
    world.clock.advance(seconds=10)
    assert await batches.submit(world.runtime, world.durable, batch_id) == {"outcome": "throttled", "retryAfter": 20}
    assert len(world.compute.posts) == 1
    world.clock.advance(seconds=20)
    assert (await batches.submit(world.runtime, world.durable, batch_id))["outcome"] == "submitted"
    assert world.compute.bodies() == [{"instanceIds": ["1", "2"]}] * 2
    assert await statuses(world, "k1", "k2") == [OperationStatus.ACCEPTED] * 2


async def test_an_unreachable_arm_requeues_the_members_and_gives_the_global_slot_back() -> None:
    world = make_world(GLOBAL_MAX_REIMAGES_PER_HOUR="1", **NO_CANARY)
    batch_id = await queue_two(world)
    world.compute.answers.append(unreachable())
    assert await batches.submit(world.runtime, world.durable, batch_id) == {"outcome": "requeued"}
    assert await world.ledger.global_slots_free(world.clock(), 1)  # nothing was sent: the slot serves another
    target = await world.ledger.get_target(LOCK)
    assert [e.operation_id for e in target.queue] == [operation_id("k1"), operation_id("k2")]
    assert await statuses(world, "k1", "k2") == [OperationStatus.QUEUED] * 2
    batch = await world.ledger.get(batch_id)
    assert batch is not None and batch.status == OperationStatus.CANCELED  # ended quietly: no event of its own
    assert world.publisher.of(EventType.COMPLETED) == []
    assert len(world.compute.posts) == 1


async def test_a_refused_post_ends_every_member_failed_with_arms_error(world: World) -> None:
    batch_id = await queue_two(world)
    world.compute.answers.append(arm_error(409, "OperationNotAllowed", "the set is being updated"))
    assert await batches.submit(world.runtime, world.durable, batch_id) == {"outcome": "ended",
                                                                             "status": OperationStatus.FAILED}
    assert await statuses(world, "k1", "k2") == [OperationStatus.FAILED] * 2
    events = world.publisher.of(EventType.COMPLETED)
    assert sorted(e.data.operation_id for e in events) == sorted([operation_id("k1"), operation_id("k2")])
    for event in events:
        assert event.data.error is not None and event.data.error.code == ErrorCode.COMPUTE_ERROR
        assert event.data.error.details[0].code == "OperationNotAllowed"
    member = await world.ledger.get(operation_id("k1"))
    assert member is not None and not member.applied
    target = await world.ledger.get_target(LOCK)
    assert target.lease_owner is None and target.cooldowns == {}  # refused: nothing applied, no cooldown


async def test_a_second_run_while_the_first_is_submitting_raises_batch_being_submitted(world: World) -> None:
    batch_id = await queue_two(world)
    release = world.compute.hold()
    first = asyncio.create_task(batches.submit(world.runtime, world.durable, batch_id))
    await world.compute.posted.wait()  # the first run's POST is in flight
    with pytest.raises(batches.BatchBeingSubmitted):
        await batches.submit(world.runtime, world.durable, batch_id)
    release.set()
    assert (await first)["outcome"] == "submitted"
    assert len(world.compute.posts) == 1


async def test_a_run_after_the_submitter_stopped_mid_post_ends_the_batch_lost_and_never_posts_again(
        world: World) -> None:
    batch_id = await queue_two(world)
    world.compute.hold()  # never released: the submitter dies with its POST on the wire
    first = asyncio.create_task(batches.submit(world.runtime, world.durable, batch_id))
    await world.compute.posted.wait()
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    world.clock.advance(seconds=301)  # past SUBMIT_TIMEOUT_SECONDS
    answer = await batches.submit(world.runtime, world.durable, batch_id)
    assert answer == {"outcome": "ended", "status": OperationStatus.FAILED} and len(world.compute.posts) == 1
    assert await statuses(world, "k1", "k2") == [OperationStatus.FAILED] * 2
    for event in world.publisher.of(EventType.COMPLETED):
        assert event.data.error is not None and event.data.error.code == ErrorCode.SUBMISSION_LOST
    assert len(world.publisher.of(EventType.COMPLETED)) == 2
    cooldowns = (await world.ledger.get_target(LOCK)).cooldowns  # ARM may be reimaging them: cooldown starts
    assert sorted(cooldowns) == ["1", "2"] and {c.operation_id for c in cooldowns.values()} == {batch_id}
