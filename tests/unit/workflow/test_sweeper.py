"""shared/workflow/sweeper.py: what a crashed or stalled step left behind is repaired, and only once it is stale
(a record younger than the time its owner may take is left alone)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from azure.durable_functions.models.OrchestrationRuntimeStatus import OrchestrationRuntimeStatus

from shared.domain.errors import ErrorCode
from shared.domain.events import EventType
from shared.domain.ids import operation_id
from shared.domain.records import OperationRecord
from shared.domain.request import parse_request
from shared.domain.status import OperationStatus
from shared.domain.targets import parse_target
from shared.workflow.completion import finish
from shared.workflow.intake import Intake
from shared.workflow.orchestration import MONITOR
from shared.workflow.sweeper import sweep
from tests.unit.workflow.fakes import VM, VMSS, World, make_world

LOCK = parse_target(VM).lock_key
QUIET = 300  # SUBMIT_TIMEOUT_SECONDS' default: how long an owner may take before the sweeper steps in


@pytest.fixture(autouse=True)
def no_swallowed_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The sweeper logs and skips a record it fails on; here that is a failure, not a quiet pass."""
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def submit(world: World, **body: Any) -> str:
    result = await Intake(world.runtime, world.durable).submit(parse_request(body), trigger="http")
    return result.record.operation_id  # type: ignore[union-attr]


async def claimed_then_crashed(world: World, key: str) -> OperationRecord:
    """A request that claimed its key and died before admission (the claim and the index entry only)."""
    now = world.clock()
    record = OperationRecord(operation_id=operation_id(key), request_id=key, target=VM, lease_key=LOCK,
                             cooldown_keys=[""], trigger="http", created_time=now, last_updated_time=now)
    won, record = await world.ledger.claim(record)
    assert won
    await world.ledger.index(record)
    return record


async def test_a_stale_claimed_record_ends_not_submitted_with_its_event(world: World) -> None:
    """Its owner stopped before the POST; a same-key delivery may have been answered with it, so it ends with
    its one event (nothing was reimaged), rather than vanishing."""
    record = await claimed_then_crashed(world, "k1")
    world.clock.advance(seconds=QUIET - 1)
    assert (await sweep(world.runtime, world.durable)).lost == []  # its owner may still be working
    assert await world.ledger.get(record.operation_id) is not None
    world.clock.advance(seconds=2)
    report = await sweep(world.runtime, world.durable)
    assert report.lost == [record.operation_id]
    ended = await world.ledger.get(record.operation_id)
    assert ended is not None and ended.status == OperationStatus.FAILED and not ended.applied
    assert ended.error is not None and ended.error["code"] == "NotSubmitted"
    assert [e.data.operation_id for e in world.publisher.of(EventType.COMPLETED)] == [record.operation_id]
    assert world.compute.posts == [] and await world.ledger.unsettled() == []
    target = await world.ledger.get_target(LOCK)
    assert target.lease_owner is None and target.cooldowns == {}  # nothing was applied: no cooldown


async def test_a_stale_submitting_record_ends_failed_submission_lost_with_its_cooldown(world: World) -> None:
    world.compute.answers.append(RuntimeError("the worker died with the POST on the wire"))
    with pytest.raises(RuntimeError):
        await submit(world, target=VM, requestId="k1")
    op = operation_id("k1")
    stuck = await world.ledger.get(op)
    assert stuck is not None and stuck.status == OperationStatus.SUBMITTING
    world.clock.advance(seconds=QUIET + 1)
    report = await sweep(world.runtime, world.durable)
    assert report.lost == [op]
    ended = await world.ledger.get(op)
    assert ended is not None and ended.status == OperationStatus.FAILED and ended.applied
    assert ended.error is not None and ended.error["code"] == ErrorCode.SUBMISSION_LOST
    [event] = world.publisher.of(EventType.COMPLETED, op)
    assert event.data.error is not None and event.data.error.code == ErrorCode.SUBMISSION_LOST
    target = await world.ledger.get_target(LOCK)
    assert target.cooldowns[""].operation_id == op and target.lease_owner is None
    assert len(world.compute.posts) == 1  # never sent again
    await sweep(world.runtime, world.durable)
    assert len(world.publisher.of(EventType.COMPLETED, op)) == 1


async def test_a_terminal_record_without_its_event_gets_it_with_the_same_id(world: World) -> None:
    op = await submit(world, target=VM, requestId="k1")
    world.publisher.fail_next = 1
    with pytest.raises(ConnectionError):
        await finish(world.runtime, op, OperationStatus.SUCCEEDED, None, applied=True)
    [attempt] = world.publisher.of(EventType.COMPLETED, op)
    record = await world.ledger.get(op)
    assert record is not None and record.terminal and record.event_id is None  # the send was undone
    world.clock.advance(seconds=60)
    assert (await sweep(world.runtime, world.durable)).resent == []  # within the monitor's grace
    world.clock.advance(minutes=2)
    report = await sweep(world.runtime, world.durable)
    assert report.resent == [op]
    resent = world.publisher.of(EventType.COMPLETED, op)
    assert len(resent) == 2 and resent[1].id == attempt.id  # Service Bus drops it if the first one did go out
    done = await world.ledger.get(op)
    assert done is not None and done.event_id == attempt.id
    assert op not in await world.ledger.unsettled()


async def test_an_expired_queue_entry_ends_canceled_queue_expired(world: World) -> None:
    op = await submit(world, target=VMSS, instanceIds=["4"], requestId="k1")  # queued; its batch never runs
    world.clock.advance(minutes=239)
    assert (await sweep(world.runtime, world.durable)).expired == []
    world.clock.advance(minutes=2)
    report = await sweep(world.runtime, world.durable)
    assert report.expired == [op]
    record = await world.ledger.get(op)
    assert record is not None and record.status == OperationStatus.CANCELED
    assert record.error is not None and record.error["code"] == ErrorCode.QUEUE_EXPIRED
    [event] = world.publisher.of(EventType.COMPLETED, op)
    assert event.data.status == OperationStatus.CANCELED
    assert (await world.ledger.get_target(parse_target(VMSS).lock_key)).queue == []
    assert world.compute.posts == []


@pytest.mark.parametrize("gone", [None, OrchestrationRuntimeStatus.Failed, OrchestrationRuntimeStatus.Terminated])
async def test_a_submitted_record_whose_orchestration_is_gone_gets_its_monitor_restarted(
        world: World, gone: OrchestrationRuntimeStatus | None) -> None:
    op = await submit(world, target=VM, requestId="k1")
    assert len(world.durable.starts_of(op)) == 1
    world.clock.advance(minutes=3)
    assert (await sweep(world.runtime, world.durable)).restarted == []  # running: left alone
    if gone is None:
        del world.durable.status[op]
    else:
        world.durable.status[op] = gone
    report = await sweep(world.runtime, world.durable)
    assert report.restarted == [op]
    first, again = world.durable.starts_of(op)
    assert again == first and again["operationId"] == op and again["url"]  # the same operation, polled again
    assert [name for name, iid, _ in world.durable.started if iid == op] == [MONITOR, MONITOR]
    assert len(world.compute.posts) == 1


async def test_the_monitors_grace_is_never_longer_than_submit_timeout_seconds() -> None:
    """A host with a short SUBMIT_TIMEOUT_SECONDS counts a silent owner as gone sooner: a monitor lost in a crash
    is started again after it, not after the two minutes' default grace."""
    world = make_world(SUBMIT_TIMEOUT_SECONDS="20")
    op = await submit(world, target=VM, requestId="k1")
    del world.durable.status[op]  # the host died between recording the POST and starting its monitor
    world.clock.advance(seconds=15)
    assert (await sweep(world.runtime, world.durable)).restarted == []
    world.clock.advance(seconds=10)
    assert (await sweep(world.runtime, world.durable)).restarted == [op]
