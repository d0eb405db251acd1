"""Approved requests go on to admission; approval groups are decided once and carried out on every member.

An approval group holds requests that one decision releases or ends (an alert naming more machines than
MAX_TARGETS_PER_ALERT). Its record (`g-...`, in the operations table, never listed or swept itself) holds the
members and, once made, the one decision: `approve`, `reject` or `expire` (nobody answered within
APPROVAL_TIMEOUT_MINUTES). The decision is one compare-and-swap on that record, so two operators (or an operator and
the sweeper's timeout) cannot split a group: the first decision wins and every later one adopts it. Carrying it out
is a compare-and-swap per member, each idempotent: a member still AwaitingApproval whose group has a decision is
approved (or ended) by whoever sees it next, the operator's call or the sweeper, so a crash halfway through the
group never leaves some members approved and the others waiting for a decision that was already made.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.principal import Principal, as_verification
from shared.domain.records import ApprovalGroup, GroupDecision, OperationRecord
from shared.domain.status import OperationStatus
from shared.runtime import Runtime
from shared.workflow import fleet
from shared.workflow.completion import end_waiting, finish
from shared.workflow.intake import Intake

log = logging.getLogger("reimager.approvals")
_AWAITING = OperationStatus.AWAITING_APPROVAL
GROUP_PREFIX = "g-"
_PARALLEL = 8  # members admitted at once when a group is approved
_ENDING = {"reject": (ErrorCode.APPROVAL_REJECTED, "Rejected"), "expire": (ErrorCode.APPROVAL_TIMED_OUT, "")}


@dataclass(frozen=True)
class Acted:
    """The operation after an operator's action. `ended`: the action ended it (a rejection, a cancel, an approval
    whose submission failed); otherwise it went on (an approval admitted it)."""

    record: OperationRecord
    ended: bool


async def admit_approved(runtime: Runtime, client: Any, record: OperationRecord, approver: Principal,
                         reason: str | None) -> Acted | None:
    """Approved: AwaitingApproval -> Claimed by compare-and-swap, then admission (lead, ride a batch or queue),
    with the target read again. None when the request was no longer waiting (someone else moved it)."""
    now = runtime.now()

    def approved(r: OperationRecord) -> OperationRecord | None:
        if r.status != _AWAITING:
            return None
        r.status, r.error, r.last_updated_time = OperationStatus.CLAIMED, None, now
        r.claimed_until = now + timedelta(seconds=runtime.settings.claim_seconds)
        r.approved_by, r.approved_by_verified = approver.name, approver.verified
        r.approved_by_identity = approver.identity
        if reason:
            r.reason = f"{r.reason or ''} (approved: {reason})".strip()[:512]
        return r

    claimed = await runtime.ledger.update(record.operation_id, approved)
    if claimed is None or claimed.status != OperationStatus.CLAIMED or claimed.approved_by != approver.name:
        return None
    try:
        # again: the set may have changed while it waited (a Flexible member's: its set; shared/workflow/fleet.py)
        gov, call = await fleet.recheck(runtime, claimed)
        result = await Intake(runtime, client).admit_and_submit(claimed, call, capacity=gov.capacity,
                                                                target_id=gov.target.vm_id, secret=False,
                                                                symptom=False)
    except ReimagerError as exc:
        if not exc.extra.get("completed"):  # approved, then refused: it ends with its one event, saying why
            await finish(runtime, record.operation_id, OperationStatus.FAILED, exc.error_dict(), applied=False,
                         client=client)
        ended = await runtime.ledger.get(record.operation_id)
        return Acted(ended or claimed, ended=True)
    return Acted(result.record, ended=False)


# ---- approval groups ---------------------------------------------------------------------------------------
def group_record(group: ApprovalGroup, members: list[str], *, target: str, requested_by: str | None,
                 runtime: Runtime) -> OperationRecord:
    now = runtime.now()
    return OperationRecord(operation_id=group.group_id, request_id=group.group_id, target=target, lease_key="",
                           trigger="alert", status=_AWAITING, requested_by=requested_by, created_time=now,
                           last_updated_time=now, approval_group=group.model_copy(update={"members": members}))


async def open_group(runtime: Runtime, record: OperationRecord) -> OperationRecord:
    """Create the group record before its members (insert-if-absent: a redelivered alert finds it there)."""
    _, stored = await runtime.ledger.claim(record)
    return stored


def expired(runtime: Runtime, group: OperationRecord) -> bool:
    return runtime.now() - group.created_time > timedelta(minutes=runtime.settings.approval_timeout_minutes)


def decision_of(group: OperationRecord) -> GroupDecision | None:
    return group.approval_group.decision if group.approval_group is not None else None


async def decide(runtime: Runtime, group_id: str, decision: GroupDecision) -> OperationRecord:
    """The group's one decision, by compare-and-swap on its record: the first wins. Returns the group record with
    the decision that holds (maybe another one than asked for: the caller adopts or reports it)."""
    def decided(r: OperationRecord) -> OperationRecord | None:
        if r.approval_group is None or r.approval_group.decision is not None:
            return None
        if decision.action != "expire" and expired(runtime, r):
            return None  # too late: the sweeper expires it
        r.approval_group.decision = decision
        r.status = OperationStatus.ACCEPTED if decision.action == "approve" else OperationStatus.CANCELED
        r.last_updated_time = decision.at
        return r

    stored = await runtime.ledger.update(group_id, decided)
    if stored is None or stored.approval_group is None:
        raise ReimagerError(ErrorCode.OPERATION_NOT_FOUND, "No such approval group.", target="operationId")
    return stored


def _principal(decision: GroupDecision) -> Principal:
    return Principal(decision.by or "unknown", as_verification(decision.by_verified), decision.by_identity)


async def apply(runtime: Runtime, client: Any, member_id: str, group: OperationRecord) -> Acted | None:
    """Carry the group's decision out on one member, if it still waits in this group (idempotent)."""
    decision = decision_of(group)
    member = await runtime.ledger.get(member_id)
    if (decision is None or member is None or member.status != _AWAITING or member.approval_group is None
            or member.approval_group.group_id != group.operation_id):
        return None
    who = _principal(decision)
    if decision.action == "approve":
        return await admit_approved(runtime, client, member, who, decision.reason)
    code, verb = _ENDING[decision.action]
    message = (f"{verb} by {who.name}, for its whole approval group {group.operation_id}" +
               (f": {decision.reason}." if decision.reason else ".")) if verb else (
        f"Nobody approved its approval group {group.operation_id} within APPROVAL_TIMEOUT_MINUTES "
        f"({runtime.settings.approval_timeout_minutes}); nothing was reimaged.")
    ended = await end_waiting(runtime, [member_id], code, message, only_if=_AWAITING,
                              cancelled_by=who.name if verb else None, by=who if verb else None,
                              when=lambda r: r.approval_group is not None
                              and r.approval_group.group_id == group.operation_id)
    return Acted(ended[0], ended=True) if ended else None


async def carry_out(runtime: Runtime, client: Any, group: OperationRecord) -> dict[str, Acted]:
    """The group's decision on every member still waiting in it, a few at a time."""
    members = (group.approval_group.members or []) if group.approval_group else []
    gate = asyncio.Semaphore(_PARALLEL)
    done: dict[str, Acted] = {}

    async def one(member_id: str) -> None:
        async with gate:
            try:
                acted = await apply(runtime, client, member_id, group)
            except ReimagerError as exc:  # one member's failure does not stop the group; the sweeper retries
                log.warning("group %s: %s not carried out: %s", group.operation_id, member_id, exc.code)
                return
            if acted is not None:
                done[member_id] = acted

    await asyncio.gather(*(one(m) for m in members))
    return done


async def sweep_member(runtime: Runtime, client: Any, member: OperationRecord) -> str | None:
    """The sweeper, for a member AwaitingApproval: carry out its group's decision (a crash may have stopped the
    decider halfway), or expire the group once APPROVAL_TIMEOUT_MINUTES passed. Returns the action taken."""
    assert member.approval_group is not None
    group = await runtime.ledger.get(member.approval_group.group_id)
    if group is None:
        return None
    if decision_of(group) is None and expired(runtime, group):
        group = await decide(runtime, group.operation_id, GroupDecision(action="expire", at=runtime.now()))
    decision = decision_of(group)
    if decision is None:
        return None
    await apply(runtime, client, member.operation_id, group)
    return decision.action
