"""shared/workflow/approvals.py and the four-eyes side of operators.py on fakes: an approval group's one decision
(first wins, the timeout included), and who the requester of a record is."""

from __future__ import annotations

import pytest

from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.ids import group_id, operation_id
from shared.domain.principal import Principal
from shared.domain.records import ApprovalGroup, GroupDecision, OperationRecord
from shared.domain.request import parse_request
from shared.domain.status import OperationStatus
from shared.workflow import approvals, operators
from shared.workflow.intake import Intake
from tests.unit.workflow.fakes import VM, VMSS, World, make_world

OID = "0b2f7c1e-5a44-4e8e-9d0b-6f6c2a1d9e01"


async def held_group(world: World) -> tuple[str, list[str]]:
    """Two requests held as one group (as an alert naming too many machines makes them)."""
    gid = group_id("alert|a-1")
    bodies = [({"target": VM}, "k-vm"), ({"target": VMSS, "instanceIds": ["1"]}, "k-set")]
    members = [operation_id(key) for _, key in bodies]
    group = ApprovalGroup(group_id=gid, size=2, reason="the alert names 2 machines")
    await approvals.open_group(world.runtime, approvals.group_record(group, members, target=VM,
                                                                     requested_by="azure-monitor:r",
                                                                     runtime=world.runtime))
    for body, key in bodies:
        await Intake(world.runtime, world.durable).submit(parse_request({**body, "requestedBy": "azure-monitor:r"}),
                                                          trigger="alert", default_key=key, group=group)
    return gid, members


async def status(world: World, operation: str) -> OperationStatus:
    record = await world.ledger.get(operation)
    assert record is not None
    return record.status


async def test_the_first_decision_wins_and_a_later_one_is_refused_naming_it() -> None:
    world = make_world(APPROVAL_ALLOW_UNVERIFIED="true")
    gid, members = await held_group(world)
    assert [await status(world, m) for m in members] == [OperationStatus.AWAITING_APPROVAL] * 2
    assert world.compute.posts == []
    rejected = await operators.reject(world.runtime, members[1], Principal("carol", "unverified"), "no")
    assert rejected.ended and [await status(world, m) for m in members] == [OperationStatus.CANCELED] * 2
    late = await approvals.decide(world.runtime, gid, GroupDecision(action="approve", by="bob", at=world.clock.now))
    held = approvals.decision_of(late)
    assert held is not None and (held.action, held.by) == ("reject", "carol")  # the first decision holds
    for target in (gid, members[0]):
        with pytest.raises(ReimagerError) as refused:
            await operators.approve(world.runtime, world.durable, target, Principal("bob", "unverified"), None)
        assert refused.value.code is ErrorCode.NOT_AWAITING_APPROVAL
    assert world.compute.posts == []


async def test_an_approval_after_the_timeout_loses_to_it() -> None:
    world = make_world(APPROVAL_ALLOW_UNVERIFIED="true", APPROVAL_TIMEOUT_MINUTES="30")
    gid, members = await held_group(world)
    world.clock.advance(minutes=31)
    with pytest.raises(ReimagerError) as refused:
        await operators.approve(world.runtime, world.durable, members[0], Principal("bob", "unverified"), None)
    assert refused.value.code is ErrorCode.NOT_AWAITING_APPROVAL and "timed out" in refused.value.error.message
    for member in members:  # the sweeper's turn: the group expires, each member ends once
        record = await world.ledger.get(member)
        assert record is not None and await approvals.sweep_member(world.runtime, world.durable, record) == "expire"
    assert [await status(world, m) for m in members] == [OperationStatus.CANCELED] * 2
    assert world.compute.posts == []


def record(name: str, verified: str, identity: str | None = None) -> OperationRecord:
    now = make_world().clock.now
    return OperationRecord(operation_id="op-1", request_id="k", target=VM, lease_key="k", trigger="chatops",
                           requested_by=name, requested_by_verified=verified, requested_by_identity=identity,
                           created_time=now, last_updated_time=now)


@pytest.mark.parametrize(("name", "verified", "identity"), [
    ("slack:T1/U1", "slack", "slack:T1/U1"),  # a Slack name is its identity
    (f"teams:{OID}", "teams", f"entra:{OID}"),  # a Teams name holds the Entra object id (aadObjectId)...
    ("teams:29:abc", "teams", "teams:29:abc"),  # ...or the channel account id (from.id, never a GUID)
    ("alice@contoso.com", "easyauth", None),  # an Easy Auth name is not an identity
    ("slack:T1/U1", "unverified", None),  # typed: no identity at all
])
def test_the_requester_of_a_record_written_before_identities(name: str, verified: str, identity: str | None) -> None:
    assert operators.requester_of(record(name, verified)).identity == identity
    assert operators.requester_of(record(name, verified, "entra:x")).identity == (
        "entra:x" if verified != "unverified" else None)
