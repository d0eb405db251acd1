"""What operators do to operations and targets: approve, reject or cancel a waiting request; read a target's
state; resume a suspended target.

HTTP and chat both call these, and each answers in its own terms (shared/surfaces/operators.py,
shared/surfaces/chat/endpoints.py). Every change is one compare-and-swap in the ledger, so an operator racing
a batch either takes the request out of the queue (it ends Canceled, with one event) or finds it already on
its way to ARM (NotCancellable).
"""

from __future__ import annotations

from typing import Any, Literal

from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.events import EventType
from shared.domain.principal import Principal, as_verification, entra
from shared.domain.records import GroupDecision, OperationRecord, TargetRecord
from shared.domain.status import OperationStatus
from shared.domain.targets import Target
from shared.rules import admission
from shared.rules.four_eyes import second_person
from shared.rules.policy import check_scope
from shared.runtime import Runtime
from shared.workflow import approvals, batches
from shared.workflow.approvals import Acted as Acted  # re-exported: chat and tests name it here
from shared.workflow.completion import end_waiting, publish_target_event

_AWAITING = OperationStatus.AWAITING_APPROVAL


def _label(who: Principal | None) -> str:
    return who.name if who is not None else "unknown"


def _not_waiting(record: OperationRecord) -> ReimagerError:
    return ReimagerError(ErrorCode.NOT_AWAITING_APPROVAL, f"Operation {record.operation_id} is "
                         f"{record.public_status}, not waiting for approval.", target="operationId",
                         extra={"operationId": record.operation_id, "status": record.public_status})


def requester_of(record: OperationRecord) -> Principal:
    """Who asked, as recorded. A record written before identities were recorded: a Slack name is its identity,
    and a Teams name holds the Entra object id when it is a GUID (from.aadObjectId; from.id never is one)."""
    name, verified = record.requested_by or "", record.requested_by_verified
    identity = record.requested_by_identity
    if identity is None and verified == "slack" and name.startswith("slack:"):
        identity = name
    elif identity is None and verified == "teams" and name.startswith("teams:"):
        identity = entra(name.split(":", 1)[1]) or name
    how = as_verification(verified)
    return Principal(name, how, identity if how != "unverified" else None)


def check_approver(runtime: Runtime, record: OperationRecord, who: Principal | None) -> Principal:
    """The approver, if they are a verified second person (shared/rules/four_eyes.py); else the refusal, naming
    the rule that refused."""
    if who is None or (not who.is_verified and not runtime.settings.approval_allow_unverified):
        raise ReimagerError(ErrorCode.APPROVER_NOT_VERIFIED, "An approval must come from a verified person (App "
                            "Service authentication, or a signed Slack or Teams request); "
                            "APPROVAL_ALLOW_UNVERIFIED is off.", target="approvedBy", extra={"rule": "verified"})
    refusal = second_person(requester_of(record), who, runtime.settings.approver_aliases)
    if refusal is not None:
        raise refusal.error()
    return who


async def approve(runtime: Runtime, client: Any, operation_id: str, who: Principal | None,
                  reason: str | None) -> Acted:
    """A second person's yes: the request goes on to admission (it may lead, ride a batch or queue). For a member
    of an approval group (or the group's id), the whole group."""
    record = await operation(runtime, operation_id, groups_too=True)
    if record.status != _AWAITING:
        raise _not_waiting(record)
    approver = check_approver(runtime, record, who)
    if record.approval_group is not None:
        return await _decide_group(runtime, client, record, "approve", approver, reason)
    acted = await approvals.admit_approved(runtime, client, record, approver, reason)
    if acted is None:
        raise _not_waiting(await operation(runtime, operation_id))
    return acted


async def _decide_group(runtime: Runtime, client: Any, record: OperationRecord, action: Literal["approve", "reject"],
                        who: Principal | None, reason: str | None) -> Acted:
    """One decision for the group `record` is in (or is): made once, then carried out on every member."""
    assert record.approval_group is not None
    group_id = record.approval_group.group_id
    decision = GroupDecision(action=action, by=_label(who), by_verified=who.verified if who else None,
                             by_identity=who.identity if who else None, reason=reason, at=runtime.now())
    group = await approvals.decide(runtime, group_id, decision)
    held = approvals.decision_of(group)
    if held is None or held.action != action:  # another decision came first (or it timed out): not this one
        raise ReimagerError(ErrorCode.NOT_AWAITING_APPROVAL, f"Approval group {group_id} was already decided"
                            + (f" ({held.action} by {held.by})" if held else " (it timed out)") + ".",
                            target="operationId", extra={"operationId": record.operation_id, "groupId": group_id})
    # The decision holds (this one, or the same one made first): carry it out; members done already are skipped.
    done = await approvals.carry_out(runtime, client, group)
    if record.operation_id == group_id:
        return Acted(group, ended=action == "reject")
    mine = done.get(record.operation_id)
    return mine or Acted(await operation(runtime, record.operation_id), ended=action == "reject")


async def reject(runtime: Runtime, operation_id: str, who: Principal | None, reason: str | None) -> Acted:
    """A second person's no: the request ends Canceled (one event). For a member of an approval group (or the
    group's id), every member still waiting in it."""
    record = await operation(runtime, operation_id, groups_too=True)  # OperationNotFound for no such operation
    if record.approval_group is not None and record.status == _AWAITING:
        return await _decide_group(runtime, None, record, "reject", who, reason)
    by = _label(who)
    message = f"Rejected by {by}" + (f": {reason}" if reason else ".")
    ended = await end_waiting(runtime, [operation_id], ErrorCode.APPROVAL_REJECTED, message, cancelled_by=by,
                              only_if=_AWAITING, by=who)
    if not ended:
        raise _not_waiting(await operation(runtime, operation_id))
    return Acted(ended[0], ended=True)


async def operation(runtime: Runtime, operation_id: str, *, batches_too: bool = False,
                    groups_too: bool = False) -> OperationRecord:
    """The request (or, with `batches_too`, the batch; with `groups_too`, the approval group) with this id;
    OperationNotFound otherwise, and never a ledger read for an id that cannot be one."""
    record = None
    prefixes = ("op-", *(("b-",) if batches_too else ()), *((approvals.GROUP_PREFIX,) if groups_too else ()))
    if operation_id.startswith(prefixes) and len(operation_id) <= 64:
        record = await runtime.ledger.get(operation_id)
    if record is None or record.status is OperationStatus.REFUSED:  # a refused POST made no operation
        raise ReimagerError(ErrorCode.OPERATION_NOT_FOUND, "No such operation.", target="operationId")
    return record


def _not_cancellable(record: OperationRecord) -> ReimagerError:
    if record.terminal:
        why = f"it already ended {record.status}"
    else:
        why = ("it was already submitted to ARM" + (f" in batch {record.batch_id}" if record.batch_id else "") +
               "; ARM has no way to stop a reimage once it has accepted it, so it will run to the end and its "
               "completion event will follow")
    return ReimagerError(ErrorCode.NOT_CANCELLABLE, f"Operation {record.operation_id} cannot be canceled: {why}.",
                         target="operationId", extra={"operationId": record.operation_id, "status": record.status})


async def cancel(runtime: Runtime, operation_id: str, who: Principal | None, reason: str | None) -> Acted:
    """End a Queued or AwaitingApproval request Canceled (one event); anything submitted is NotCancellable."""
    record = await operation(runtime, operation_id)
    by = _label(who)
    message = f"Canceled by {by}" + (f": {reason}" if reason else ".")
    if record.status == _AWAITING:
        ended = await end_waiting(runtime, [operation_id], ErrorCode.CANCELED_BY_OPERATOR, message,
                                  cancelled_by=by, only_if=_AWAITING, by=who)
        if not ended:
            raise _not_cancellable(await operation(runtime, operation_id))
        return Acted(ended[0], ended=True)
    if record.status not in (OperationStatus.QUEUED, OperationStatus.CLAIMED):
        raise _not_cancellable(record)
    if record.deferred is not None and record.status == OperationStatus.QUEUED:  # waiting for ARM, not in a queue
        ended = await end_waiting(runtime, [operation_id], ErrorCode.CANCELED_BY_OPERATOR, message, cancelled_by=by,
                                  only_if=OperationStatus.QUEUED)
        if ended:
            return Acted(ended[0], ended=True)
    entry = await runtime.ledger.change_target(record.lease_key, lambda t: admission.withdraw(t, operation_id))
    if entry is None:  # a batch took it meanwhile
        raise _not_cancellable(await operation(runtime, operation_id))
    await end_waiting(runtime, [entry], ErrorCode.CANCELED_BY_OPERATOR, message, cancelled_by=by, by=who)
    return Acted(await operation(runtime, operation_id), ended=True)


async def target_state(runtime: Runtime, target: Target) -> TargetRecord:
    """The ledger's record of a VM or scale set (inside ALLOWED_SCOPES only)."""
    check_scope(target, runtime.settings)
    return await runtime.ledger.get_target(target.lock_key)


async def resume(runtime: Runtime, client: Any, target: Target, who: Principal | None,
                 reason: str | None) -> TargetRecord:
    """Lift a suspension: one reimager.target.resumed event; the target takes requests again."""
    check_scope(target, runtime.settings)
    by = _label(who)
    lifted = await runtime.ledger.change_target(target.lock_key, lambda t: admission.resume(t, runtime.now(), by,
                                                                                           reason))
    if lifted is None:
        raise ReimagerError(ErrorCode.NOT_SUSPENDED, "The target is not suspended.", target="target")
    record = await runtime.ledger.get_target(target.lock_key)
    await publish_target_event(runtime, EventType.RESUMED, record, lifted)
    await batches.kick(runtime, client, target.lock_key)
    return record
