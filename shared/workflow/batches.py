"""Batches formed from queued requests: sealed, submitted and health-checked from activities.

Activities run at least once, so each step is guarded by the ledger: the seal is a
compare-and-swap on the target (a second run finds the membership already fixed), and the
batch record moves Claimed -> Submitting by compare-and-swap under a token before the POST; a
run that finds it Submitting never POSTs again. Batches carry no secrets by construction (a
request with osProfile never waits).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from shared.domain.arm_call import ArmCall
from shared.domain.errors import ComputeError, ComputeUnavailable, SubmissionUncertain
from shared.domain.events import EventType
from shared.domain.health import Health
from shared.domain.records import OperationRecord, QueueEntry, TargetRecord
from shared.domain.targets import TargetKind, parse_target
from shared.rules import admission
from shared.rules.admission import lease_until
from shared.runtime import Runtime
from shared.workflow.completion import end_waiting, finish, publish_info, with_uncertain
from shared.workflow.orchestration import start_batch

log = logging.getLogger("reimager.batches")


class BatchBeingSubmitted(RuntimeError):
    """Another run of this activity is POSTing the batch right now; the orchestrator's retry asks again."""


def _submitted(batch: OperationRecord) -> dict[str, Any]:
    arm = batch.arm or {}
    assert batch.submitted_at is not None
    return {"outcome": "submitted", "url": arm.get("asyncOperationUrl") or arm.get("locationUrl"),
            "mode": "async" if arm.get("asyncOperationUrl") else "location",
            "submittedAt": batch.submitted_at.isoformat(), "retryAfter": arm.get("retryAfter")}


async def _end_quietly(runtime: Runtime, batch_id: str) -> None:
    """A batch that sent nothing and carries no request: it ends without an event of its own."""
    now = runtime.now()

    def ended(r: OperationRecord) -> OperationRecord | None:
        if r.terminal:
            return None
        r.status, r.completed_at, r.last_updated_time = "Canceled", now, now
        r.error = {"code": "NothingToSend", "message": "every request of this batch left the queue before it was sent"}
        return r

    await runtime.ledger.update(batch_id, ended)
    await runtime.ledger.settled(batch_id)


async def kick(runtime: Runtime, client: Any, lease_key: str) -> str | None:
    """Form a batch of the target's queued work if the target is free (after a batch ended empty, or from
    the sweeper); start it."""
    now = runtime.now()
    until = lease_until(runtime, now)
    batch_id = admission.new_batch_id()
    formed, target_id = await runtime.ledger.change_target(
        lease_key, lambda t: _form(t, now, until, runtime, batch_id))
    if formed is not None:
        await start_batch(runtime, client, lease_key, formed, target_id or lease_key)
    return formed


def _form(target: TargetRecord, now: datetime, until: datetime, runtime: Runtime, batch_id: str
          ) -> tuple[TargetRecord | None, tuple[str | None, str | None]]:
    formed = admission.form_batch(target, now, until, runtime.settings, batch_id)
    return (target if formed else None), (formed, target.target_id)


async def submit(runtime: Runtime, client: Any, batch_id: str) -> dict[str, Any]:
    ledger, settings = runtime.ledger, runtime.settings
    batch = await ledger.get(batch_id)
    if batch is None:
        return {"outcome": "lost"}
    if batch.terminal:
        return {"outcome": "ended", "status": batch.status}
    if batch.status in ("Accepted", "Running", "Verifying"):
        return _submitted(batch)  # a first run POSTed it and recorded the answer
    now = runtime.now()
    if batch.status == "Submitting":
        if now - batch.last_updated_time < timedelta(seconds=settings.submit_timeout_seconds):
            raise BatchBeingSubmitted(batch_id)
        await finish(runtime, batch_id, "Failed", _uncertain_error(), applied=True, client=client)
        return {"outcome": "ended", "status": "Failed"}

    sealed = await ledger.change_target(batch.lease_key, lambda t: admission.seal(t, batch_id, now, settings))
    if sealed.ended:
        await end_waiting(runtime, sealed.ended, "CooldownActive", "An instance of this request was "
                                     "reimaged while it waited; COOLDOWN_MINUTES refuses another reimage so soon.")
    if sealed.lost or not sealed.members:
        await _end_quietly(runtime, batch_id)
        if not sealed.lost:
            await kick(runtime, client, batch.lease_key)
        return {"outcome": "empty"}

    target = parse_target(batch.target)
    token = uuid.uuid4().hex

    def submitting(r: OperationRecord) -> OperationRecord | None:
        if r.status != "Claimed":
            return None
        r.status, r.last_updated_time = "Submitting", now
        r.members, r.cooldown_keys, r.options = sealed.members, sealed.keys, sealed.options
        r.instance_ids = None if target.kind is TargetKind.VM else sealed.keys
        r.arm = {"submitter": token}
        return r

    record = await ledger.update(batch_id, submitting)
    if record is None or (record.arm or {}).get("submitter") != token:
        raise BatchBeingSubmitted(batch_id)  # another run took it to Submitting: it POSTs, not this one
    await _mark_members(runtime, record, "Accepted")
    slot, frees = await ledger.take_global_slot(batch_id, runtime.now(), settings.global_max_reimages_per_hour)
    if slot is None:
        log.info("batch %s waits: GLOBAL_MAX_REIMAGES_PER_HOUR is spent until %s", batch_id, frees)
        return await _requeue(runtime, record)
    call = ArmCall.for_batch(target, record.options, record.cooldown_keys, settings.compute_api_version)
    try:
        submission = await runtime.compute.submit(call)
    except SubmissionUncertain as exc:
        await finish(runtime, batch_id, "Failed", with_uncertain(exc.error_dict()),
                                applied=True, client=client)
        return {"outcome": "ended", "status": "Failed"}
    except ComputeError as exc:
        if exc.arm_status >= 500 or exc.arm_status == 408:  # it may have been applied: never sent again
            await finish(runtime, batch_id, "Failed", with_uncertain(exc.error_dict()),
                                    applied=True, client=client)
        elif isinstance(exc, ComputeUnavailable):  # throttled, or never connected: certainly not applied
            await ledger.give_back_global_slot(slot, batch_id)
            return await _requeue(runtime, record)
        else:  # ARM refused it: nothing was applied; its requests end with ARM's answer
            await finish(runtime, batch_id, "Failed", exc.error_dict(), applied=False, client=client)
        return {"outcome": "ended", "status": "Failed"}
    now = runtime.now()

    def accepted(r: OperationRecord) -> OperationRecord:
        r.status, r.applied, r.submitted_at, r.last_updated_time = "Accepted", True, now, now
        r.arm = submission.to_dict()
        return r

    stored = await ledger.update(batch_id, accepted)
    assert stored is not None
    log.info("submitted batch %s: %d instances for %d requests on %s", batch_id, len(stored.cooldown_keys),
             len(stored.members or []), stored.target)
    if submission.status_code == 200:  # finished synchronously
        await finish(runtime, batch_id, "Succeeded", None, applied=True, client=client)
        return {"outcome": "ended", "status": "Succeeded"}
    for member in await _mark_members(runtime, stored, "Accepted", submitted=True):
        await publish_info(runtime, EventType.ACCEPTED, member)
    return _submitted(stored)


async def _mark_members(runtime: Runtime, batch: OperationRecord, status: str, *,
                        submitted: bool = False) -> list[OperationRecord]:
    now = runtime.now()
    out: list[OperationRecord] = []
    for member_id in batch.members or []:
        def mark(r: OperationRecord) -> OperationRecord | None:
            if r.terminal or r.status not in ("Claimed", "Queued", "Accepted"):
                return None
            r.status, r.batch_id, r.queue_position, r.last_updated_time = status, batch.operation_id, None, now
            if submitted:
                r.submitted_at = batch.submitted_at
            return r

        record = await runtime.ledger.update(member_id, mark)
        if record is not None:
            out.append(record)
    return out


async def _requeue(runtime: Runtime, batch: OperationRecord) -> dict[str, Any]:
    """Nothing was sent: the requests go back to the head of the queue, the batch ends quietly, and the
    sweeper forms a new one when the budget allows."""
    entries: list[QueueEntry] = []
    now = runtime.now()
    for member_id in batch.members or []:
        member = await runtime.ledger.get(member_id)
        if member is not None and not member.terminal:
            entries.append(QueueEntry(operation_id=member_id, keys=member.cooldown_keys, options=member.options,
                                      queued_at=member.created_time))
    await runtime.ledger.change_target(batch.lease_key, lambda t: admission.requeue(
        t, batch.operation_id, now, entries))
    for entry in entries:
        def back(r: OperationRecord) -> OperationRecord | None:
            if r.terminal or r.batch_id != batch.operation_id:
                return None
            r.status, r.batch_id, r.last_updated_time = "Queued", None, now
            return r

        await runtime.ledger.update(entry.operation_id, back)
    await _end_quietly(runtime, batch.operation_id)
    return {"outcome": "requeued"}


def _uncertain_error() -> dict[str, Any]:
    return with_uncertain({
        "code": "SubmissionLost", "message": "the batch was being submitted when its submitter stopped; ARM may "
        "still be reimaging the target: check it before asking again"})


async def read_health(runtime: Runtime, operation_id: str, *, final: bool) -> dict[str, Any]:
    """One read of the instance views (one list call for a scale set). done=True when every machine is
    healthy, or on the final read (then what is not healthy is Unhealthy, and an unreadable view Unknown)."""
    now = runtime.now()

    def verifying(r: OperationRecord) -> OperationRecord | None:
        if r.terminal or r.status == "Verifying":
            return None
        r.status, r.last_updated_time = "Verifying", now
        return r

    record = await runtime.ledger.update(operation_id, verifying)
    if record is None:
        return {"done": True, "health": Health.UNKNOWN.value, "detail": None}
    target = parse_target(parse_target(record.target).vm_id)
    keys = record.cooldown_keys or [""]
    try:
        views = await runtime.compute.instance_health(target, None if target.kind is TargetKind.VM else keys)
    except ComputeError as exc:
        if not final:
            raise
        return {"done": True, "health": Health.UNKNOWN.value,
                "detail": {k: f"{Health.UNKNOWN.value}: {exc.error.message}" for k in keys}}
    detail: dict[str, str] = {}
    states: list[Health] = []
    for key in keys:
        view = views.get(key)
        state, text = (view.health, view.detail) if view is not None else (Health.UNKNOWN, "no instance view")
        if final and state is Health.PENDING:
            state, text = Health.UNHEALTHY, f"not healthy within HEALTH_GRACE_MINUTES ({text})"
        states.append(state)
        detail[key] = f"{state.value}: {text}"
    if all(s is Health.HEALTHY for s in states):
        return {"done": True, "health": Health.HEALTHY.value, "detail": detail}
    if not final:
        return {"done": False}
    worst = Health.UNHEALTHY if Health.UNHEALTHY in states else Health.UNKNOWN
    return {"done": True, "health": worst.value, "detail": detail}
