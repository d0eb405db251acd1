"""shared/workflow/completion.py: the first finisher wins, one completion event per operation, the lease is
released only by its owner and handed to the next batch in the same write, and waiting requests end only
from the status the caller names."""

from __future__ import annotations

from typing import Any

from shared.domain.errors import ErrorCode
from shared.domain.events import EventType
from shared.domain.request import parse_request
from shared.domain.status import OperationStatus
from shared.domain.targets import parse_target
from shared.workflow.completion import end_waiting, finish, release_lease
from shared.workflow.intake import Intake
from shared.workflow.orchestration import MONITOR
from tests.unit.workflow.fakes import VM, VMSS, World

SET_LOCK = parse_target(VMSS).lock_key


async def submit(world: World, **body: Any) -> str:
    result = await Intake(world.runtime, world.durable).submit(parse_request(body), trigger="http")
    return result.record.operation_id  # type: ignore[union-attr]


async def test_the_first_finisher_wins_and_a_second_finish_changes_nothing(world: World) -> None:
    op = await submit(world, target=VM, requestId="k1")
    done = await finish(world.runtime, op, OperationStatus.SUCCEEDED, None, applied=True, polls=3)
    assert done is not None and done.status == OperationStatus.SUCCEEDED
    before = world.ledger.ops[op]
    world.clock.advance(minutes=1)
    late = await finish(world.runtime, op, OperationStatus.FAILED, {"code": ErrorCode.TIMED_OUT, "message": "x"},
                        applied=True, polls=9)
    assert late is not None and late.status == OperationStatus.SUCCEEDED  # the first outcome stands
    assert world.ledger.ops[op] == before  # not a byte changed: same document, same ETag
    [event] = world.publisher.of(EventType.COMPLETED, op)
    assert event.data.status == OperationStatus.SUCCEEDED and event.data.polls == 3
    stored = await world.ledger.get(op)
    assert stored is not None and stored.event_id == event.id
    assert op not in await world.ledger.unsettled()


async def test_a_finish_racing_another_write_still_sends_exactly_one_event(world: World) -> None:
    op = await submit(world, target=VM, requestId="k1")

    def concurrent_finisher(operation_id: str) -> None:  # another finisher's write lands first
        record_json, _ = world.ledger.ops[operation_id]
        world.ledger.ops[operation_id] = (record_json.replace('"status":"Accepted"', '"status":"Running"'),
                                          'W/"elsewhere"')

    world.ledger.before_replace = concurrent_finisher
    done = await finish(world.runtime, op, OperationStatus.SUCCEEDED, None, applied=True)
    assert done is not None and done.status == OperationStatus.SUCCEEDED  # the CAS lost once, then won
    await finish(world.runtime, op, OperationStatus.SUCCEEDED, None, applied=True)
    assert len(world.publisher.of(EventType.COMPLETED, op)) == 1


async def test_release_is_only_for_the_owner_and_hands_the_lease_to_the_next_batch(world: World) -> None:
    # A request with secrets leads on the idle set (it cannot wait); one without queues behind it.
    lead = await submit(world, target=VMSS, instanceIds=["1"], requestId="lead",
                        osProfile={"adminPassword": "Str0ng-Passw0rd!"})
    waiting = await submit(world, target=VMSS, instanceIds=["2"], requestId="waiting")
    target = await world.ledger.get_target(SET_LOCK)
    held = await world.ledger.get(lead)
    assert held is not None and target.lease_owner == held.holder  # held by the lead's claim attempt
    assert [e.operation_id for e in target.queue] == [waiting]

    await finish(world.runtime, lead, OperationStatus.SUCCEEDED, None, applied=True, client=world.durable)
    target = await world.ledger.get_target(SET_LOCK)
    assert target.batch is not None and target.batch.formed
    batch_id = target.batch.batch_id
    assert target.lease_owner == batch_id != lead  # handed over in the same write
    assert target.cooldowns["1"].operation_id == lead
    assert [iid for name, iid, _ in world.durable.started if name == MONITOR][-1] == batch_id  # started
    # A late release by the former owner (a retried activity) leaves the new owner's lease alone.
    stale = await world.ledger.get(lead)
    assert stale is not None
    await release_lease(world.runtime, stale, applied=True)
    after = await world.ledger.get_target(SET_LOCK)
    assert after.lease_owner == batch_id and after.lease_until == target.lease_until
    assert after.batch is not None and after.batch.batch_id == batch_id


async def test_end_waiting_ends_only_requests_in_the_only_if_status(world: World) -> None:
    wide = await submit(world, target=VMSS, instanceIds=[str(i) for i in range(10, 16)], requestId="wide")
    queued = await submit(world, target=VMSS, instanceIds=["3"], requestId="queued")
    ended = await end_waiting(world.runtime, [wide, queued], ErrorCode.APPROVAL_TIMED_OUT, "nobody approved",
                              only_if=OperationStatus.AWAITING_APPROVAL)
    assert [r.operation_id for r in ended] == [wide]
    gone = await world.ledger.get(wide)
    assert gone is not None and gone.status == OperationStatus.CANCELED
    assert gone.error == {"code": ErrorCode.APPROVAL_TIMED_OUT, "message": "nobody approved"}
    still = await world.ledger.get(queued)
    assert still is not None and still.status == OperationStatus.QUEUED and still.error is None
    assert [e.data.operation_id for e in world.publisher.of(EventType.COMPLETED)] == [wide]
    # The same call again (a retry) answers with the same ending and sends nothing; another ending does not
    # claim it.
    again = await end_waiting(world.runtime, [wide], ErrorCode.APPROVAL_TIMED_OUT, "nobody approved",
                              only_if=OperationStatus.AWAITING_APPROVAL)
    assert [r.operation_id for r in again] == [wide] and len(world.publisher.of(EventType.COMPLETED)) == 1
    assert await end_waiting(world.runtime, [wide], ErrorCode.CANCELED_BY_OPERATOR, "canceled") == []
    kept = await world.ledger.get(wide)
    assert kept is not None and kept.error is not None and kept.error["code"] == ErrorCode.APPROVAL_TIMED_OUT
