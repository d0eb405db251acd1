"""What operators do to operations and targets: approve, reject or cancel a waiting request; read a target's
state; resume a suspended target.

HTTP and chat both call these, and each answers in its own terms (shared/surfaces/operators.py,
shared/surfaces/chat/endpoints.py). Every change is one compare-and-swap in the ledger, so an operator racing
a batch either takes the request out of the queue (it ends Canceled, with one event) or finds it already on
its way to ARM (NotCancellable).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from shared.domain.arm_call import ArmCall
from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.events import EventType
from shared.domain.principal import Principal
from shared.domain.records import OperationRecord, TargetRecord
from shared.domain.status import OperationStatus
from shared.domain.targets import Target, parse_target
from shared.rules import admission
from shared.rules.policy import check_scope
from shared.runtime import Runtime
from shared.workflow import batches
from shared.workflow.completion import end_waiting, finish, publish_target_event
from shared.workflow.intake import Intake

_AWAITING = OperationStatus.AWAITING_APPROVAL


@dataclass(frozen=True)
class Acted:
    """The operation after an operator's action. `ended`: the action ended it (a rejection, a cancel, an approval
    whose submission failed); otherwise it went on (an approval admitted it)."""

    record: OperationRecord
    ended: bool


def _label(who: Principal | None) -> str:
    return who.name if who is not None else "unknown"


def _not_waiting(record: OperationRecord) -> ReimagerError:
    return ReimagerError(ErrorCode.NOT_AWAITING_APPROVAL, f"Operation {record.operation_id} is "
                         f"{record.public_status}, not waiting for approval.", target="operationId",
                         extra={"operationId": record.operation_id, "status": record.public_status})


def _check_approver(runtime: Runtime, record: OperationRecord, who: Principal | None) -> Principal:
    if who is None or (not who.is_verified and not runtime.settings.approval_allow_unverified):
        raise ReimagerError(ErrorCode.APPROVER_NOT_VERIFIED, "An approval must come from a verified person (App "
                            "Service authentication, or a signed Slack or Teams request); "
                            "APPROVAL_ALLOW_UNVERIFIED is off.", target="approvedBy")
    if record.requested_by and who.name.casefold() == record.requested_by.casefold():
        raise ReimagerError(ErrorCode.SELF_APPROVAL_NOT_ALLOWED, f"{who.name} asked for this reimage and cannot "
                            "also approve it: a second person must.", target="approvedBy")
    return who


async def approve(runtime: Runtime, client: Any, operation_id: str, who: Principal | None,
                  reason: str | None) -> Acted:
    """A second person's yes: the request goes on to admission (it may lead, ride a batch or queue)."""
    record = await operation(runtime, operation_id)
    if record.status != _AWAITING:
        raise _not_waiting(record)
    approver = _check_approver(runtime, record, who)
    now = runtime.now()

    def approved(r: OperationRecord) -> OperationRecord | None:
        if r.status != _AWAITING:
            return None
        r.status, r.error, r.last_updated_time = OperationStatus.CLAIMED, None, now
        r.claimed_until = now + timedelta(seconds=runtime.settings.claim_seconds)
        r.approved_by, r.approved_by_verified = approver.name, approver.verified
        if reason:
            r.reason = f"{r.reason or ''} (approved: {reason})".strip()[:512]
        return r

    claimed = await runtime.ledger.update(operation_id, approved)
    if claimed is None or claimed.status != OperationStatus.CLAIMED or claimed.approved_by != approver.name:
        raise _not_waiting(claimed or record)
    try:
        target = parse_target(claimed.target)
        model = await runtime.compute.get_model(target)  # again: the set may have changed while it waited
        capacity = len(model.instance_ids) if model.instance_ids is not None else 1
        call = ArmCall.for_batch(target, claimed.options, claimed.cooldown_keys,
                                 runtime.settings.compute_api_version)
        result = await Intake(runtime, client).admit_and_submit(claimed, call, capacity=capacity,
                                                                target_id=target.vm_id, secret=False, symptom=False)
    except ReimagerError as exc:
        if not exc.extra.get("completed"):  # approved, then refused: it ends with its one event, saying why
            await finish(runtime, operation_id, OperationStatus.FAILED, exc.error_dict(), applied=False,
                         client=client)
        return Acted(await operation(runtime, operation_id), ended=True)
    return Acted(result.record, ended=False)


async def reject(runtime: Runtime, operation_id: str, who: Principal | None, reason: str | None) -> Acted:
    """A second person's no: the request ends Canceled (one event)."""
    await operation(runtime, operation_id)  # OperationNotFound for no such operation
    by = _label(who)
    message = f"Rejected by {by}" + (f": {reason}" if reason else ".")
    ended = await end_waiting(runtime, [operation_id], ErrorCode.APPROVAL_REJECTED, message, cancelled_by=by,
                              only_if=_AWAITING)
    if not ended:
        raise _not_waiting(await operation(runtime, operation_id))
    return Acted(ended[0], ended=True)


async def operation(runtime: Runtime, operation_id: str, *, batches_too: bool = False) -> OperationRecord:
    """The request (or, with `batches_too`, the batch) with this id; OperationNotFound otherwise, and never a
    ledger read for an id that cannot be one."""
    record = None
    if operation_id.startswith(("op-", "b-") if batches_too else "op-") and len(operation_id) <= 64:
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
                                  cancelled_by=by, only_if=_AWAITING)
        if not ended:
            raise _not_cancellable(await operation(runtime, operation_id))
        return Acted(ended[0], ended=True)
    if record.status not in (OperationStatus.QUEUED, OperationStatus.CLAIMED):
        raise _not_cancellable(record)
    entry = await runtime.ledger.change_target(record.lease_key, lambda t: admission.withdraw(t, operation_id))
    if entry is None:  # a batch took it meanwhile
        raise _not_cancellable(await operation(runtime, operation_id))
    await end_waiting(runtime, [entry], ErrorCode.CANCELED_BY_OPERATOR, message, cancelled_by=by)
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
