"""What operators do to operations and targets: cancel a waiting request, see a target, resume it.

HTTP and chatops both call these; each answers an `Outcome`. Every change is one
compare-and-swap in the ledger, so an operator racing a batch either takes the request out of
the queue (it ends Canceled, with one event) or finds it already on its way to ARM (409).
"""

from __future__ import annotations

from typing import Any

from shared import runtime
from shared.domain.arm_call import ArmCall
from shared.domain.errors import ReimagerError
from shared.domain.events import RESUMED
from shared.domain.principal import Principal
from shared.domain.records import OperationRecord
from shared.domain.targets import parse_target
from shared.rules import admission
from shared.surfaces.http import Outcome, guarded
from shared.surfaces.operators import _target_key, target_view
from shared.workflow import batches
from shared.workflow.completion import end_waiting, finish, publish_target_event

Who = Principal  # whoever acts: verified (App Service authentication, Slack, Teams) or a typed, unverified name


def _label(who: Who | None) -> str:
    return who.name if who is not None else "unknown"


def _not_waiting(record: OperationRecord) -> ReimagerError:
    return ReimagerError(409, "NotAwaitingApproval", f"Operation {record.operation_id} is {record.public_status}, "
                         "not waiting for approval.", target="operationId",
                         extra={"operationId": record.operation_id, "status": record.public_status})


async def approve(operation_id: str, who: Who | None, reason: str | None, client: Any = None) -> Outcome:
    """A second person's yes: the request goes on to admission (it may lead, ride a batch or queue)."""
    async def work() -> Outcome:
        rt = runtime.get()
        record = await _operation(operation_id)
        if record.status != "AwaitingApproval":
            raise _not_waiting(record)
        if who is None or (who.verified == "unverified" and not rt.settings.approval_allow_unverified):
            raise ReimagerError(403, "ApproverNotVerified", "An approval must come from a verified person (App "
                                "Service authentication, or a signed Slack or Teams request); "
                                "APPROVAL_ALLOW_UNVERIFIED is off.", target="approvedBy")
        if record.requested_by and who.name.casefold() == record.requested_by.casefold():
            raise ReimagerError(403, "SelfApprovalNotAllowed", f"{who.name} asked for this reimage and cannot also "
                                "approve it: a second person must.", target="approvedBy")
        now = rt.now()

        def approved(r: OperationRecord) -> OperationRecord | None:
            if r.status != "AwaitingApproval":
                return None
            r.status, r.error, r.last_updated_time = "Claimed", None, now
            r.approved_by, r.approved_by_verified = who.name, who.verified
            if reason:
                r.reason = f"{r.reason or ''} (approved: {reason})".strip()[:512]
            return r

        claimed = await rt.ledger.update(operation_id, approved)
        if claimed is None or claimed.status != "Claimed" or claimed.approved_by != who.name:
            raise _not_waiting(claimed or record)
        from shared.workflow.intake import Intake

        intake = Intake(rt, client)
        try:
            target = parse_target(claimed.target)
            model = await rt.compute.get_model(target)  # again: the set may have changed while it waited
            capacity = len(model.instance_ids) if model.instance_ids is not None else 1
            call = ArmCall.for_batch(target, claimed.options, claimed.cooldown_keys, rt.settings.compute_api_version)
            result = await intake.admit_and_submit(claimed, call, capacity=capacity, target_id=target.vm_id,
                                                   secret=False, symptom=False)
        except ReimagerError as exc:
            if exc.extra.get("completed"):
                return Outcome(200, (await _operation(operation_id)).view())
            await finish(rt, operation_id, "Failed", exc.error_dict(), applied=False, client=client)
            return Outcome(200, (await _operation(operation_id)).view())
        return Outcome(202, result.record.view())

    return await guarded(work())


async def reject(operation_id: str, who: Who | None, reason: str | None, client: Any = None) -> Outcome:
    """A second person's no: the request ends Canceled (one event)."""
    async def work() -> Outcome:
        rt = runtime.get()
        await _operation(operation_id)  # 404 for no such operation
        by = _label(who)
        message = f"Rejected by {by}" + (f": {reason}" if reason else ".")
        ended = await end_waiting(rt, [operation_id], "ApprovalRejected", message, cancelled_by=by,
                                             only_if="AwaitingApproval")
        if not ended:
            raise _not_waiting(await _operation(operation_id))
        return Outcome(200, ended[0].view())

    return await guarded(work())


async def _operation(operation_id: str) -> OperationRecord:
    record = None
    if operation_id.startswith("op-") and len(operation_id) <= 64:
        record = await runtime.get().ledger.get(operation_id)
    if record is None:
        raise ReimagerError(404, "OperationNotFound", "No such operation.", target="operationId")
    return record


def _not_cancellable(record: OperationRecord) -> ReimagerError:
    if record.terminal:
        why = f"it already ended {record.status}"
    else:
        why = ("it was already submitted to ARM" + (f" in batch {record.batch_id}" if record.batch_id else "") +
               "; ARM has no way to stop a reimage once it has accepted it, so it will run to the end and its "
               "completion event will follow")
    return ReimagerError(409, "NotCancellable", f"Operation {record.operation_id} cannot be canceled: {why}.",
                         target="operationId", extra={"operationId": record.operation_id, "status": record.status})


async def cancel(operation_id: str, who: Who | None, reason: str | None, client: Any = None) -> Outcome:
    """End a Queued or AwaitingApproval request Canceled (one event); anything submitted is 409."""
    async def work() -> Outcome:
        rt = runtime.get()
        record = await _operation(operation_id)
        by = _label(who)
        message = f"Canceled by {by}" + (f": {reason}" if reason else ".")
        if record.status == "AwaitingApproval":
            ended = await end_waiting(rt, [operation_id], "CanceledByOperator", message,
                                                 cancelled_by=by, only_if="AwaitingApproval")
            if not ended:
                raise _not_cancellable(await _operation(operation_id))
            return Outcome(200, ended[0].view())
        if record.terminal or record.status not in ("Queued", "Claimed"):
            raise _not_cancellable(record)
        entry = await rt.ledger.change_target(record.lease_key, lambda t: admission.withdraw(t, operation_id))
        if entry is None:  # a batch took it meanwhile
            raise _not_cancellable(await _operation(operation_id))
        await end_waiting(rt, [entry], "CanceledByOperator", message, cancelled_by=by)
        return Outcome(200, (await _operation(operation_id)).view())

    return await guarded(work())


async def resume(body: Any, who: Who | None, client: Any = None) -> Outcome:
    """Lift a suspension: one reimager.target.resumed event; the target takes requests again."""
    async def work() -> Outcome:
        if not isinstance(body, dict) or not isinstance(body.get("target"), str):
            raise ReimagerError(400, "InvalidRequest", 'The body must be {"target": "<ARM id>", "reason": "..."}.',
                                target="target")
        extra = set(body) - {"target", "reason"}
        if extra:
            raise ReimagerError(400, "InvalidRequest", f"Unknown field {sorted(extra)[0]!r}; the fields are target "
                                "and reason.", target=sorted(extra)[0])
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 256):
            raise ReimagerError(400, "InvalidRequest", "reason must be text of at most 256 characters.",
                                target="reason")
        vm_id, key = _target_key(body["target"])
        rt = runtime.get()
        by = _label(who)
        lifted = await rt.ledger.change_target(key, lambda t: admission.resume(t, rt.now(), by, reason))
        if lifted is None:
            raise ReimagerError(409, "NotSuspended", "The target is not suspended.", target="target")
        record = await rt.ledger.get_target(key)
        await publish_target_event(rt, RESUMED, record, lifted)
        await batches.kick(rt, client, key)
        return Outcome(200, target_view(record, vm_id))

    return await guarded(work())
