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

from shared.adapters.telemetry import EVENT_BATCH_SUBMITTED, track_event
from shared.domain.arm_call import ArmCall
from shared.domain.errors import ErrorCode
from shared.domain.events import EventType
from shared.domain.records import OperationRecord, QueueEntry, TargetRecord
from shared.domain.status import SUBMITTED, OperationStatus
from shared.domain.targets import TargetKind, parse_target
from shared.rules import admission
from shared.rules.admission import lease_until
from shared.runtime import Runtime
from shared.workflow import fleet, submission, throttling
from shared.workflow.completion import end_waiting, finish, publish_info
from shared.workflow.orchestration import start_batch
from shared.workflow.submission import lost_error, with_uncertain

log = logging.getLogger("reimager.batches")


class BatchBeingSubmitted(RuntimeError):
    """Another run of this activity is POSTing the batch right now; the orchestrator's retry asks again."""


def _submitted(batch: OperationRecord) -> dict[str, Any]:
    arm = batch.arm or {}
    assert batch.submitted_at is not None
    if "members" in arm:  # a Flexible set's batch: its members' own operations (shared/workflow/fleet.py)
        return {"outcome": "submitted", "url": None, "mode": "members", "submittedAt": batch.submitted_at.isoformat(),
                "retryAfter": None}
    return {"outcome": "submitted", "url": arm.get("asyncOperationUrl") or arm.get("locationUrl"),
            "mode": "async" if arm.get("asyncOperationUrl") else "location",
            "submittedAt": batch.submitted_at.isoformat(), "retryAfter": arm.get("retryAfter")}


async def _end_quietly(runtime: Runtime, batch_id: str) -> None:
    """A batch that sent nothing and carries no request: it ends without an event of its own."""
    now = runtime.now()

    def ended(r: OperationRecord) -> OperationRecord | None:
        if r.terminal:
            return None
        r.status, r.completed_at, r.last_updated_time = OperationStatus.CANCELED, now, now
        r.error = {"code": ErrorCode.NOTHING_TO_SEND, "message": "every request of this batch left the queue before "
                   "it was sent"}
        return r

    await runtime.ledger.update(batch_id, ended)
    await runtime.ledger.settled(batch_id)


async def kick(runtime: Runtime, client: Any, lease_key: str) -> str | None:
    """Form a batch of the target's queued work if the target is free (after a batch ended empty, or from
    the sweeper); start it."""
    now = runtime.now()
    until = lease_until(runtime.settings, now)
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
    """Seal the batch from its target's queue and POST it once (shared/workflow/submission.py), whatever the
    number of runs of this activity. Answers the orchestrator: submitted (with the operation URL), ended,
    empty, requeued or lost."""
    batch = await runtime.ledger.get(batch_id)
    if batch is None:
        return {"outcome": "lost"}
    before = await _decided_before(runtime, client, batch)
    if before is not None:
        return before
    record = await _seal(runtime, client, batch)
    if record is None:
        return {"outcome": "empty"}
    slot, frees = await runtime.ledger.take_global_slot(batch_id, runtime.now(),
                                                        runtime.settings.global_max_reimages_per_hour)
    if slot is None:
        log.info("batch %s waits: GLOBAL_MAX_REIMAGES_PER_HOUR is spent until %s", batch_id, frees)
        return await _requeue(runtime, record)
    if fleet.is_flexible_batch(record):  # one single-VM POST per member, at most the cap at once
        outcome = await fleet.submit(runtime, record)
    else:
        call = ArmCall.for_batch(parse_target(record.target), record.options, record.cooldown_keys,
                                 runtime.settings.compute_api_version)
        outcome = await submission.submit(runtime, client, record, call)
    if isinstance(outcome, submission.Uncertain):  # ended Failed/SubmissionUncertain with the members' events
        return {"outcome": "ended", "status": OperationStatus.FAILED}
    if isinstance(outcome, submission.NotApplied):
        return await _not_applied(runtime, client, record, slot, outcome)
    stored = outcome.record
    track_event(EVENT_BATCH_SUBMITTED, batch_id=batch_id, batch_size=len(stored.cooldown_keys),
                target=stored.target, instance_count=len(stored.members or []))
    log.info("submitted batch %s: %d instances for %d requests on %s", batch_id, len(stored.cooldown_keys),
             len(stored.members or []), stored.target)
    if outcome.finished:
        return {"outcome": "ended", "status": OperationStatus.SUCCEEDED}
    for member in await _mark_members(runtime, stored, OperationStatus.ACCEPTED, submitted=True):
        await publish_info(runtime, EventType.ACCEPTED, member)
    return _submitted(stored)


async def _decided_before(runtime: Runtime, client: Any, batch: OperationRecord) -> dict[str, Any] | None:
    """The answer when an earlier run (or ARM's throttling) already decided this batch's step; None: seal and POST."""
    if batch.terminal:
        return {"outcome": "ended", "status": batch.status}
    if batch.status in SUBMITTED:
        return _submitted(batch)  # a first run POSTed it and recorded the answer
    if batch.status == OperationStatus.SUBMITTING:
        return await _being_submitted(runtime, client, batch)
    wait = throttling.not_before(batch, runtime.now())
    if wait > 0:  # ARM throttled it (or its lead): not before its Retry-After
        return {"outcome": "throttled", "retryAfter": wait}
    return None


async def _not_applied(runtime: Runtime, client: Any, record: OperationRecord, slot: str,
                       outcome: submission.NotApplied) -> dict[str, Any]:
    """ARM certainly did not apply the POST: no budget spent."""
    await runtime.ledger.give_back_global_slot(slot, record.operation_id)
    if outcome.unavailable:  # throttled, or never connected: the same POST may go later
        if throttling.can_wait(outcome.error, record.options):  # after ARM's Retry-After, the same requests
            return await throttling.hold_batch(runtime, record, outcome.error)
        return await _requeue(runtime, record)
    # ARM refused it: its requests end with ARM's answer
    await finish(runtime, record.operation_id, OperationStatus.FAILED, outcome.error.error_dict(), applied=False,
                 client=client)
    return {"outcome": "ended", "status": OperationStatus.FAILED}


async def _being_submitted(runtime: Runtime, client: Any, batch: OperationRecord) -> dict[str, Any]:
    """Another run is POSTing it now (the orchestrator's retry asks again), or its submitter stopped long ago:
    then ARM may be reimaging, and the batch ends SubmissionLost (never a second POST)."""
    if runtime.now() - batch.last_updated_time < timedelta(seconds=runtime.settings.submit_timeout_seconds):
        raise BatchBeingSubmitted(batch.operation_id)
    error = with_uncertain(lost_error("the batch was being submitted when its submitter stopped; ARM may still "
                                      "be reimaging the target: check it before asking again"))
    await finish(runtime, batch.operation_id, OperationStatus.FAILED, error, applied=True, client=client)
    return {"outcome": "ended", "status": OperationStatus.FAILED}


async def _seal(runtime: Runtime, client: Any, batch: OperationRecord) -> OperationRecord | None:
    """Fix the batch's membership from the queue (one CAS on the target) and take the batch to Submitting under
    a token, so only this run POSTs. None: nothing to send (the batch ended quietly)."""
    now, batch_id = runtime.now(), batch.operation_id
    settings = throttling.within_quota(runtime, batch.target)
    sealed = await runtime.ledger.change_target(batch.lease_key, lambda t: admission.seal(
        t, batch_id, now, settings))
    if sealed.ended:
        await end_waiting(runtime, sealed.ended, ErrorCode.COOLDOWN_ACTIVE, "An instance of this request was "
                          "reimaged while it waited; COOLDOWN_MINUTES refuses another reimage so soon.")
    if sealed.lost or not sealed.members:
        await _end_quietly(runtime, batch_id)
        if not sealed.lost:
            await kick(runtime, client, batch.lease_key)
        return None
    target = parse_target(batch.target)
    token = uuid.uuid4().hex

    def submitting(r: OperationRecord) -> OperationRecord | None:
        if r.status != OperationStatus.CLAIMED:
            return None
        r.status, r.last_updated_time = OperationStatus.SUBMITTING, now
        r.members, r.cooldown_keys, r.options = sealed.members, sealed.keys, sealed.options
        r.instance_ids = None if target.kind is TargetKind.VM else sealed.keys
        r.arm = {"submitter": token}
        r.canary = {**sealed.canary, "partial": sealed.partial} if sealed.canary is not None else None
        return r

    record = await runtime.ledger.update(batch_id, submitting)
    if record is None or (record.arm or {}).get("submitter") != token:
        raise BatchBeingSubmitted(batch_id)  # another run took it to Submitting: it POSTs, not this one
    await _mark_members(runtime, record, OperationStatus.ACCEPTED)
    return record


async def _mark_members(runtime: Runtime, batch: OperationRecord, status: OperationStatus, *,
                        submitted: bool = False) -> list[OperationRecord]:
    now = runtime.now()
    out: list[OperationRecord] = []
    for member_id in batch.members or []:
        def mark(r: OperationRecord) -> OperationRecord | None:
            if r.terminal or r.status not in (OperationStatus.CLAIMED, OperationStatus.QUEUED,
                                              OperationStatus.ACCEPTED):
                return None
            r.status, r.batch_id, r.queue_position, r.last_updated_time = status, batch.operation_id, None, now
            if submitted:
                r.submitted_at = batch.submitted_at
            if batch.canary is not None and (r.canary or {}).get("role") != "canary":  # it is, or goes after, it
                r.canary = {k: v for k, v in batch.canary.items() if k != "partial"}
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
            r.status, r.batch_id, r.last_updated_time = OperationStatus.QUEUED, None, now
            return r

        await runtime.ledger.update(entry.operation_id, back)
    await _end_quietly(runtime, batch.operation_id)
    return {"outcome": "requeued"}
