"""Admission and completion against the ledger: the lease, batches, cooldowns and the one terminal event.

Every step here is idempotent, because the callers (an activity, the sweeper, a retried trigger)
run at least once: a terminal status is written by one compare-and-swap that only the first
finisher wins, the lease is released only by its owner (and handed to the next batch in the same
write), and the event is sent under a "sending" mark so a second run does not send it again (a
crash mid-send is re-sent by the sweeper with the same event id, which Service Bus duplicate
detection drops).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from shared.domain.errors import ApiError, ErrorCode
from shared.domain.events import CloudEvent, EventData, EventType, build_event
from shared.domain.health import Health
from shared.domain.principal import Principal
from shared.domain.records import OperationRecord, QueueEntry, TargetRecord
from shared.domain.status import EventStatus, OperationStatus
from shared.rules import admission, canary, fleet
from shared.rules.admission import lease_until
from shared.rules.health import member_health
from shared.runtime import Runtime
from shared.workflow.orchestration import start_batch

log = logging.getLogger("reimager.completion")
SENDING = "sending:"
STALE_SEND = timedelta(minutes=5)
REPLY_ATTEMPTS = 5  # sends of a ReplyTo copy (one now, then one per sweep) before it is recorded failed


async def admit(runtime: Runtime, record: OperationRecord, *, secret: bool, capacity: int,
                target_id: str, symptom: bool = True) -> admission.Admission:
    """One compare-and-swap on the target: lead, join the running batch, queue, or refuse.

    A refusal that suspended the target (the breaker) is announced and its waiting requests ended
    before the refusal is raised to the caller."""
    now = runtime.now()
    until = lease_until(runtime.settings, now)
    batch_id = admission.new_batch_id()

    def decide(target: TargetRecord) -> tuple[TargetRecord | None, admission.Admission]:
        return admission.admit_request(target, owner=record.holder, operation_id=record.operation_id,
                                       keys=record.cooldown_keys, options=record.options, secret=secret,
                                       capacity=capacity, target_id=target_id, now=now, until=until,
                                       settings=runtime.settings, batch_id=batch_id, symptom=symptom,
                                       approved=record.approved_by is not None)

    decided = await runtime.ledger.change_target(record.lease_key, decide)
    if decided.suspension is not None:
        await after_suspension(runtime, record.lease_key, decided.ended)
    return decided


async def release_lease(runtime: Runtime, record: OperationRecord, *, applied: bool) -> admission.Handoff:
    """End the operation's (or batch's) hold on its target: cooldowns from its end, the failure streak and
    the breaker, and the lease, only if it still owns it, handed to the next batch in the same write."""
    ended = record.completed_at or runtime.now()
    now = runtime.now()
    until = lease_until(runtime.settings, now)
    batch_id = admission.new_batch_id()

    took = record.arm_seconds
    withdrawn = fleet.not_applied(record) if fleet.is_flexible_batch(record) else None
    if took is None and record.submitted_at is not None and record.completed_at is not None:
        took = (record.completed_at - record.submitted_at).total_seconds()  # includes the detection lag

    def decide(target: TargetRecord) -> tuple[TargetRecord | None, admission.Handoff]:
        return admission.release(target, record.holder, record.cooldown_keys, record.status, ended, applied=applied,
                                 unhealthy=record.health == Health.UNHEALTHY, now=now, until=until,
                                 settings=runtime.settings, next_batch_id=batch_id,
                                 operation_id=record.operation_id, health=record.health,
                                 health_detail=record.health_detail, duration=took, withdrawn=withdrawn)

    return await runtime.ledger.change_target(record.lease_key, decide)


async def release_holder(runtime: Runtime, lease_key: str, holder: str, operation_id: str) -> admission.Handoff:
    """Release what a claim attempt that lost its key still holds on a target (its lease, provisional cooldowns,
    budget entry), as not applied: it never reached ARM (a Submitting record's key is never taken over)."""
    now = runtime.now()
    until = lease_until(runtime.settings, now)
    batch_id = admission.new_batch_id()

    def decide(target: TargetRecord) -> tuple[TargetRecord | None, admission.Handoff]:
        keys = list(target.batch.keys) if target.batch is not None and target.batch.holder == holder else []
        return admission.release(target, holder, keys, OperationStatus.CANCELED, now, applied=False,
                                 unhealthy=False, now=now, until=until, settings=runtime.settings,
                                 next_batch_id=batch_id, operation_id=operation_id)

    return await runtime.ledger.change_target(lease_key, decide)


async def finish(runtime: Runtime, operation_id: str, status: OperationStatus, error: dict[str, Any] | None, *,
                 applied: bool, polls: int | None = None, arm_status: str | None = None,
                 health: str | None = None, health_detail: dict[str, str] | None = None,
                 client: Any = None) -> OperationRecord | None:
    """Make the operation (or batch) terminal, first finisher wins; release its target, end the requests
    that rode it, start the next batch, and send its one event."""
    now = runtime.now()

    def terminal(r: OperationRecord) -> OperationRecord | None:
        if r.terminal:
            return None
        # a Flexible batch with a failed member counts as failed (its failure streak), as a Uniform one would
        ending = fleet.batch_outcome(r, status, error) if fleet.is_flexible_batch(r) else (status, error)
        r.status, r.error, r.completed_at, r.last_updated_time = *ending, now, now
        r.secret_fingerprint = None  # polls are over: nothing left to recognise a secret in (docs/operations.md)
        r.applied = r.applied or applied
        r.health = health if health is not None else r.health
        r.health_detail = health_detail if health_detail is not None else r.health_detail
        if polls is not None:
            r.polls = max(r.polls, polls)
        if arm_status is not None:
            r.arm_status = arm_status
        return r

    record = await runtime.ledger.update(operation_id, terminal)
    if record is None:
        return None
    handoff = await release_lease(runtime, record, applied=record.applied)
    members = [m for m in (record.members or handoff.members) if m != record.operation_id]
    for member in members:
        await finish_member(runtime, member, record)
    if handoff.suspension is not None:
        await after_suspension(runtime, record.lease_key, handoff.ended)
    if handoff.formed is not None:
        await start_batch(runtime, client, record.lease_key, handoff.formed, record.governed_by)
    if record.is_batch:
        await runtime.ledger.settled(record.operation_id)
        return record
    return await send_completion(runtime, record)


async def abandon(runtime: Runtime, client: Any, record: OperationRecord, error: dict[str, Any]) -> None:
    """A lead whose POST ARM certainly refused: give the target back (no cooldown) and end the requests that
    had joined it with ARM's refusal; the caller frees the lead's own key so it may be asked again."""
    handoff = await release_lease(runtime, record, applied=False)
    refused = record.model_copy(update={"status": OperationStatus.FAILED, "error": error, "applied": False})
    for member in handoff.members:
        if member != record.operation_id:
            await finish_member(runtime, member, refused)
    if handoff.formed is not None:
        await start_batch(runtime, client, record.lease_key, handoff.formed, record.governed_by)


async def finish_member(runtime: Runtime, operation_id: str, batch: OperationRecord) -> OperationRecord | None:
    """End a request that rode `batch` with the batch's outcome for its own instances (and, if the set's canary
    reimaged some of them first, the canary's for those). A request only part of which was the canary goes back to
    waiting instead (shared/workflow/canary.py)."""
    member = await runtime.ledger.get(operation_id)
    if member is None or member.terminal:
        return member
    if canary.is_part(batch, operation_id):
        return await _after_canary(runtime, member, batch)
    health, detail = member_health(batch, member.cooldown_keys)
    status, error = batch.status, batch.error
    own = fleet.member_outcome(batch, member.cooldown_keys)  # a Flexible batch: its own members' outcomes
    if own is not None:
        status, error = own[0], own[1]
        health, detail = (health, detail) if own[2] else (None, None)
    health, detail = canary.with_part(member, health, detail)
    mine = fleet.members_applied(batch, member.cooldown_keys)  # a Flexible batch: its own members' POSTs
    applied = batch.applied if mine is None else mine
    now = runtime.now()

    def terminal(r: OperationRecord) -> OperationRecord | None:
        if r.terminal:
            return None
        r.status, r.error, r.completed_at, r.last_updated_time = status, error, now, now
        r.applied, r.batch_id, r.health, r.health_detail = applied, batch.operation_id, health, detail
        r.submitted_at = r.submitted_at or batch.submitted_at
        r.polls, r.arm_status = max(r.polls, batch.polls), batch.arm_status
        r.canary = canary.ended_doc(batch, r)
        return r

    done = await runtime.ledger.update(operation_id, terminal)
    return await send_completion(runtime, done) if done is not None else None


async def _after_canary(runtime: Runtime, member: OperationRecord, batch: OperationRecord) -> OperationRecord | None:
    """A request whose first instances were the set's canary (`batch`), its other instances held for the verdict:
    passed, it waits Queued again for the batch that takes the rest (the verdict's write put them at the head of
    the queue); failed, it ends Canceled/TargetSuspended with its event, like every request that waited."""
    doc = canary.ended_doc(batch, member)
    if doc is None or doc.get("outcome") != "passed":
        target = await runtime.ledger.get_target(member.lease_key)
        failed = canary.failed_doc(target) or {**(doc or {}), "members": [member.operation_id]}
        reason = (target.suspended or {}).get("reason", "the canary did not come back healthy")
        ended = await end_waiting(runtime, [member.operation_id], ErrorCode.TARGET_SUSPENDED, "The target was "
                                  f"suspended after this request's first instances were reimaged as its canary: "
                                  f"{reason}. Its other instances were not reimaged. An operator must resume it "
                                  "(POST /api/targets/resume) before it is reimaged again.", failed=failed)
        return ended[0] if ended else await runtime.ledger.get(member.operation_id)
    now = runtime.now()

    def waiting(r: OperationRecord) -> OperationRecord | None:
        if r.terminal or r.batch_id != batch.operation_id:
            return None  # ended, or already taken by the batch after the canary
        r.status, r.batch_id, r.canary, r.last_updated_time = OperationStatus.QUEUED, None, doc, now
        r.submitted_at = r.submitted_at or batch.submitted_at
        return r

    stored = await runtime.ledger.update(member.operation_id, waiting)
    if stored is not None:
        await publish_info(runtime, EventType.QUEUED, stored)
    return stored


async def end_waiting(runtime: Runtime, waiting: list[QueueEntry] | list[str], code: ErrorCode, message: str, *,
                      cancelled_by: str | None = None, only_if: OperationStatus | None = None,
                      by: Principal | None = None, when: Callable[[OperationRecord], bool] | None = None,
                      failed: dict[str, Any] | None = None) -> list[OperationRecord]:
    """End requests that waited and will not be reimaged (suspension, expiry, cancel, reject, cooldown) Canceled,
    each with its one event. `only_if`: end only a request still in that status (one that nothing else may move
    on meanwhile); `when`: and only one this says yes to. `by`: the operator who ended it (its verification and
    identity are recorded with `cancelled_by`). `failed`: the set's canary whose failure ended them. Returns the
    records this call ended."""
    ended: list[OperationRecord] = []
    now = runtime.now()
    for operation_id in [w for w in waiting if isinstance(w, str)] + admission.members_of(
            [w for w in waiting if not isinstance(w, str)]):
        def canceled(r: OperationRecord) -> OperationRecord | None:
            if r.terminal or (only_if is not None and r.status != only_if) or (when is not None and not when(r)):
                return None
            r.status, r.completed_at, r.last_updated_time = OperationStatus.CANCELED, now, now
            r.error = {"code": code, "message": message}
            r.cancelled_by = cancelled_by
            if by is not None:
                r.cancelled_by_verified, r.cancelled_by_identity = by.verified, by.identity
            if failed is not None:
                canary.waited(r, failed)
            return r

        record = await runtime.ledger.update(operation_id, canceled)
        if (record is not None and record.status == OperationStatus.CANCELED and record.error
                and record.error.get("code") == code and record.cancelled_by == cancelled_by):
            ended.append(await send_completion(runtime, record))
    return ended


async def after_suspension(runtime: Runtime, lease_key: str, ended: list[QueueEntry]) -> None:
    target = await runtime.ledger.get_target(lease_key)
    reason = (target.suspended or {}).get("reason", "no reason given")
    await end_waiting(runtime, ended, ErrorCode.TARGET_SUSPENDED, "The target was suspended while this request "
                      f"waited: {reason}. An operator must resume it (POST /api/targets/resume) before it is "
                      "reimaged again.", failed=canary.failed_doc(target))
    await announce_suspension(runtime, lease_key)


async def announce_suspension(runtime: Runtime, lease_key: str) -> None:
    """Publish the one reimager.target.suspended event, then mark it announced (the sweeper retries)."""
    target = await runtime.ledger.get_target(lease_key)
    if not target.suspended or target.suspended.get("announced"):
        return
    await publish_target_event(runtime, EventType.SUSPENDED, target, target.suspended)
    await runtime.ledger.change_target(lease_key, admission.announced)


async def publish_target_event(runtime: Runtime, kind: EventType, target: TargetRecord,
                               suspension: dict[str, Any]) -> None:
    suspended = kind == EventType.SUSPENDED
    data = EventData(target=target.target_id or target.key,
                     status=EventStatus.SUSPENDED if suspended else EventStatus.RESUMED,
                     trigger="breaker" if suspended else "operator",
                     suspension={k: v for k, v in suspension.items() if k != "announced"})
    # Stable id per suspension: a re-send is a duplicate, a later suspension a new event.
    event = build_event(kind, data, time=runtime.now(), unique=f"{target.key}|{suspension.get('since')}")
    await runtime.publisher.publish(event)


async def send_completion(runtime: Runtime, record: OperationRecord, *, stale: bool = False) -> OperationRecord:
    """Send the terminal event once to the topic (mark 'sending' by CAS, send, record its id), then its ReplyTo
    copy apart (`deliver_reply`): a ReplyTo that cannot be reached never makes the topic's copy be sent again.
    The operation is settled (off the sweeper's list) when both are done."""
    done = await _send_topic(runtime, record, stale=stale)
    if done.event_id is None or done.event_id.startswith(SENDING):
        return done  # being sent by someone else
    done = await deliver_reply(runtime, done)
    if reply_settled(done):
        await runtime.ledger.settled(record.operation_id)
    return done


async def _send_topic(runtime: Runtime, record: OperationRecord, *, stale: bool) -> OperationRecord:
    token = f"{SENDING}{uuid.uuid4().hex}@{runtime.now().isoformat()}"

    def mark(r: OperationRecord) -> OperationRecord | None:
        if r.event_id is not None and not (stale and is_stale(r.event_id, runtime.now())):
            return None
        r.event_id = token
        return r

    marked = await runtime.ledger.update(record.operation_id, mark)
    if marked is None or marked.event_id != token:
        return marked or record  # sent, or being sent, by someone else
    event = completion_event(marked)
    try:
        await runtime.publisher.publish(event)
    except BaseException:
        await runtime.ledger.update(record.operation_id, lambda r: _unmark(r, token))
        raise
    log.info("published %s for %s: %s", event.type, marked.operation_id, marked.status)

    def sent(r: OperationRecord) -> OperationRecord | None:
        r.event_id = event.id
        return r

    return await runtime.ledger.update(record.operation_id, sent) or marked


def completion_event(record: OperationRecord) -> CloudEvent:
    """The one completion event of a terminal operation (the same id however often it is built)."""
    return build_event(EventType.COMPLETED, event_data(record), time=record.completed_at or record.last_updated_time)


def reply_settled(record: OperationRecord) -> bool:
    """No ReplyTo copy is owed: none was asked for, or it was delivered, or it failed for good."""
    return not record.reply_to or (record.reply or {}).get("status") in ("sent", "failed")


async def deliver_reply(runtime: Runtime, record: OperationRecord) -> OperationRecord:
    """One attempt to send the completion event's copy to the request's ReplyTo queue, recorded in the operation
    apart from the topic's; after REPLY_ATTEMPTS failures it is recorded failed, with a log line and a
    reimager.operation.reply-failed event on the topic."""
    if reply_settled(record) or record.reply_to is None:
        return record
    now = runtime.now()
    token = uuid.uuid4().hex

    def claim(r: OperationRecord) -> OperationRecord | None:
        reply = r.reply or {}
        if reply_settled(r) or (reply.get("status") == "sending" and not _stale_reply(reply, now)):
            return None
        r.reply = {**reply, "status": "sending", "token": token, "since": now.isoformat(),
                   "attempts": int(reply.get("attempts", 0)) + 1}
        return r

    claimed = await runtime.ledger.update(record.operation_id, claim)
    if claimed is None or (claimed.reply or {}).get("token") != token:
        return claimed or record  # delivered, failed, or being delivered by someone else
    assert claimed.reply_to is not None
    attempts = int((claimed.reply or {})["attempts"])
    error: str | None = None
    try:
        await runtime.publisher.reply(completion_event(claimed), claimed.reply_to, claimed.reply_correlation_id)
        outcome = "sent"
    except Exception as exc:  # the SDK's own retries are spent: count the attempt, try again on a later sweep
        error = f"{type(exc).__name__}: {exc}"[:512]
        outcome = "failed" if attempts >= REPLY_ATTEMPTS else "pending"
    reply = {"queue": claimed.reply_to, "status": outcome, "attempts": attempts, "error": error,
             "at": runtime.now().isoformat()}

    def recorded(r: OperationRecord) -> OperationRecord | None:
        if (r.reply or {}).get("token") != token:
            return None
        r.reply = reply
        return r

    done = await runtime.ledger.update(record.operation_id, recorded) or claimed
    if outcome == "failed":
        log.warning("could not deliver the completion of %s to its ReplyTo queue %s after %d attempts: %s",
                    record.operation_id, claimed.reply_to, attempts, error)
        await publish_info(runtime, EventType.REPLY_FAILED, done.model_copy(update={"reply": reply}))
    return done


def _stale_reply(reply: dict[str, Any], now: datetime) -> bool:
    try:
        return now - datetime.fromisoformat(str(reply.get("since"))) > STALE_SEND
    except ValueError:
        return True


async def publish_info(runtime: Runtime, kind: EventType, record: OperationRecord) -> None:
    """An informational event (accepted, queued, awaiting approval): the completion event is the guarantee."""
    try:
        await runtime.publisher.publish(build_event(kind, event_data(record), time=runtime.now()))
    except Exception:
        log.warning("could not publish %s for %s", kind, record.operation_id, exc_info=True)


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
        duration_seconds=duration, polls=record.polls, batch_id=record.batch_id, health=record.health,
        health_detail=record.health_detail,
        queue_position=record.queue_position if record.status == OperationStatus.QUEUED else None,
        reply=record.reply if (record.reply or {}).get("status") == "failed" else None,
        cancelled_by=record.cancelled_by, approved_by=record.approved_by,
        requested_by_identity=record.requested_by_identity, approved_by_verified=record.approved_by_verified,
        approved_by_identity=record.approved_by_identity, cancelled_by_verified=record.cancelled_by_verified,
        cancelled_by_identity=record.cancelled_by_identity, freeze=record.freeze,
        approval_group=record.approval_group.group_id if record.approval_group else None, canary=record.canary,
        evidence=record.evidence)
