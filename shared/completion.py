"""Admission and completion against the ledger: the lease, cooldowns and the one terminal event.

Every step here is idempotent, because the callers (an activity, the sweeper, a retried trigger)
run at least once: a terminal status is written by one compare-and-swap that only the first
finisher wins, the lease is released only by its owner, and the event is sent under a
"sending" mark so a second run does not send it again (a crash mid-send is re-sent by the
sweeper with the same event id, which Service Bus duplicate detection drops).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from shared import policy
from shared.errors import ApiError
from shared.events import COMPLETED, EventData, build_event
from shared.ledger import OperationRecord, TargetRecord
from shared.runtime import Runtime

log = logging.getLogger("reimager.completion")
SENDING = "sending:"
STALE_SEND = timedelta(minutes=5)


def lease_until(runtime: Runtime, now: datetime) -> datetime:
    s = runtime.settings
    return now + timedelta(seconds=s.submit_timeout_seconds, minutes=s.operation_timeout_minutes + 10)


async def admit(runtime: Runtime, record: OperationRecord) -> None:
    """One compare-and-swap on the target: take the lease (and provisional cooldowns), or refuse."""
    now = runtime.now()
    until = lease_until(runtime, now)

    def decide(target: TargetRecord) -> tuple[TargetRecord | None, policy.Admission]:
        return policy.admit(target, record.operation_id, record.cooldown_keys, now, until,
                            runtime.settings.cooldown_minutes)

    admission = await runtime.ledger.change_target(record.lease_key, decide)
    if admission.error is not None:
        raise admission.error


async def release_lease(runtime: Runtime, record: OperationRecord, *, applied: bool) -> None:
    """End the operation's hold on its target: cooldowns from its end (when it may have been applied),
    the failure streak, and the lease itself only if this operation still owns it."""
    ended = record.completed_at or runtime.now()
    minutes = runtime.settings.cooldown_minutes

    def decide(target: TargetRecord) -> tuple[TargetRecord | None, None]:
        return policy.release(target, record.operation_id, record.cooldown_keys, record.status, ended,
                              minutes if applied else None), None

    await runtime.ledger.change_target(record.lease_key, decide)


async def finish(runtime: Runtime, operation_id: str, status: str, error: dict[str, Any] | None, *,
                 applied: bool, polls: int | None = None, arm_status: str | None = None,
                 health: str | None = None) -> OperationRecord | None:
    """Make the operation terminal (first finisher wins), release its target and send its one event."""
    now = runtime.now()

    def terminal(r: OperationRecord) -> OperationRecord | None:
        if r.terminal:
            return None
        r.status, r.error, r.completed_at, r.last_updated_time = status, error, now, now
        r.secret_fingerprint = None  # polls are over: nothing left to recognise a secret in (docs/operations.md)
        r.applied = r.applied or applied
        r.health = health
        if polls is not None:
            r.polls = max(r.polls, polls)
        if arm_status is not None:
            r.arm_status = arm_status
        return r

    record = await runtime.ledger.update(operation_id, terminal)
    if record is None:
        return None
    await release_lease(runtime, record, applied=record.applied)
    return await send_completion(runtime, record)


async def send_completion(runtime: Runtime, record: OperationRecord, *, stale: bool = False) -> OperationRecord:
    """Send the terminal event once: mark 'sending' by CAS, send, then record the event id."""
    token = f"{SENDING}{uuid.uuid4().hex}@{runtime.now().isoformat()}"

    def mark(r: OperationRecord) -> OperationRecord | None:
        if r.event_id is not None and not (stale and is_stale(r.event_id, runtime.now())):
            return None
        r.event_id = token
        return r

    marked = await runtime.ledger.update(record.operation_id, mark)
    if marked is None or marked.event_id != token:
        return marked or record  # sent, or being sent, by someone else
    event = build_event(COMPLETED, event_data(marked), time=marked.completed_at or runtime.now())
    try:
        await runtime.publisher.publish(event, reply_to=marked.reply_to,
                                        reply_correlation_id=marked.reply_correlation_id)
    except BaseException:
        await runtime.ledger.update(record.operation_id, lambda r: _unmark(r, token))
        raise
    log.info("published %s for %s: %s", event.type, marked.operation_id, marked.status)

    def sent(r: OperationRecord) -> OperationRecord | None:
        r.event_id = event.id
        return r

    done = await runtime.ledger.update(record.operation_id, sent)
    await runtime.ledger.settled(record.operation_id)
    return done or marked


def _unmark(record: OperationRecord, token: str) -> OperationRecord | None:
    if record.event_id != token:
        return None
    record.event_id = None
    return record


def is_stale(event_id: str, now: datetime) -> bool:
    if not event_id.startswith(SENDING):
        return False
    try:
        since = datetime.fromisoformat(event_id.rsplit("@", 1)[1])
    except (IndexError, ValueError):
        return True
    return now - since > STALE_SEND


def event_data(record: OperationRecord) -> EventData:
    error = None
    if record.error:
        error = ApiError.model_validate({k: v for k, v in record.error.items() if k in ApiError.model_fields})
    duration = None
    if record.submitted_at is not None and record.completed_at is not None:
        duration = (record.completed_at - record.submitted_at).total_seconds()
    return EventData(
        operation_id=record.operation_id, request_id=record.request_id, correlation_id=record.correlation_id,
        target=record.target, instance_ids=record.instance_ids, status=record.public_status,
        error=error, trigger=record.trigger,
        requested_by=record.requested_by, requested_by_verified=record.requested_by_verified,
        reason=record.reason, submitted_at=record.submitted_at, completed_at=record.completed_at,
        duration_seconds=duration, polls=record.polls, batch_id=record.batch_id, health=record.health)
