"""The sweeper (a timer trigger): nothing waits forever, and nothing is lost when a step crashes.

It walks the ledger's list of unsettled operations (an index partition, not a scan) and, for
each one whose owner has gone quiet for longer than it may:
- Claimed (no POST yet): ends it Failed/NotSubmitted with its event, releasing what its claim held (it reached
  nothing; a same-key delivery may have been answered with it, so it does not just vanish);
- Submitting (the POST may have gone out): ends it Failed/SubmissionLost, cooldown included;
- Accepted/Running without a monitor: starts the monitor again;
- terminal without its event: sends the event (same id; Service Bus drops a duplicate);
- terminal with its ReplyTo copy owed: one more attempt (bounded; then recorded failed, with an event).

And for queued work, per target: admits the queue when the target has no live lease (a crashed
hand-off, an expired lease, a budget window that freed), ends requests queued longer than
QUEUE_MAX_WAIT_MINUTES Canceled/QueueExpired, ends requests whose batch ended, restarts a batch
whose orchestration is gone, and announces a suspension that was not announced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from shared.adapters.durable_payload import decode
from shared.domain.errors import ErrorCode
from shared.domain.records import OperationRecord
from shared.domain.status import IN_PROGRESS, SUBMITTED, OperationStatus
from shared.rules import admission
from shared.runtime import Runtime
from shared.workflow import approvals, batches, deferred
from shared.workflow.completion import (
    SENDING,
    announce_suspension,
    deliver_reply,
    end_waiting,
    finish,
    finish_member,
    is_stale,
    release_holder,
    reply_settled,
    send_completion,
)
from shared.workflow.orchestration import MonitorInput, start_batch, start_monitor
from shared.workflow.submission import lost_error

log = logging.getLogger("reimager.sweeper")
# A monitor is started (an event sent) right after the write that records it; give it time to appear. Never
# longer than SUBMIT_TIMEOUT_SECONDS, after which its owner counts as gone anyway.
MONITOR_GRACE = timedelta(minutes=2)
# Durable runtime statuses of an orchestration that will not go on by itself.
_ENDED = ("Failed", "Terminated", "Canceled")


@dataclass
class SweepReport:
    lost: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    replied: list[str] = field(default_factory=list)  # ReplyTo copies attempted again
    settled: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)  # batches formed from a queue
    ended: list[str] = field(default_factory=list)  # requests whose batch had ended, or that left their queue
    released: list[str] = field(default_factory=list)  # leases of claim attempts that were taken over
    grouped: list[str] = field(default_factory=list)  # approval-group members given their group's decision
    resumed: list[str] = field(default_factory=list)  # requests read again after ARM throttled their preflight

    def to_dict(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.__dict__.items() if v}


async def sweep(runtime: Runtime, client: Any) -> SweepReport:
    report = SweepReport()
    ledger, now = runtime.ledger, runtime.now()
    quiet = timedelta(seconds=runtime.settings.submit_timeout_seconds)
    targets: dict[str, list[OperationRecord]] = {}  # targets with queued requests, and those requests
    for operation_id in await ledger.unsettled():
        record = await ledger.get(operation_id)
        if record is None:
            await ledger.settled(operation_id)
            report.settled.append(operation_id)
            continue
        age = now - record.last_updated_time
        try:
            if record.status == OperationStatus.QUEUED and record.deferred is None:  # (deferred: waits for ARM)
                targets.setdefault(record.lease_key, []).append(record)
            await _sweep_one(runtime, client, record, age, quiet, report)
        except Exception:  # one bad record must not stop the sweep of the others
            log.exception("sweeping %s failed", operation_id)
    for lease_key, queued in sorted(targets.items()):
        try:
            await _sweep_target(runtime, client, lease_key, quiet, report)
            await _sweep_strays(runtime, lease_key, queued, quiet, report)
        except Exception:
            log.exception("sweeping target %s failed", lease_key)
    if any(report.to_dict().values()):
        log.info("sweep: %s", report.to_dict())
    return report


async def _sweep_strays(runtime: Runtime, lease_key: str, queued: list[OperationRecord], quiet: timedelta,
                        report: SweepReport) -> None:
    """Queued requests that are in neither the target's queue nor its batch (a decision that took them out and
    never ended them: a crash, or a write whose outcome was lost) end with their event instead of waiting
    forever. A lease held by a request's claim attempt that no longer holds its key is released."""
    target = await runtime.ledger.get_target(lease_key)
    now = runtime.now()
    members = set(target.batch.members) if target.batch is not None else set()
    strays = [r.operation_id for r in queued if now - r.last_updated_time > quiet
              and target.queued(r.operation_id) is None and r.operation_id not in members]
    if strays:
        report.ended += [r.operation_id for r in await end_waiting(
            runtime, strays, ErrorCode.QUEUE_LOST, "The request left its target's queue without being sent (a "
            "crash, or a ledger write whose answer was lost); nothing was reimaged for it.",
            only_if=OperationStatus.QUEUED)]
    holder = target.lease_owner if target.lease_held(now) else None
    if holder is not None and "@" in holder:
        operation_id, attempt = holder.split("@", 1)
        record = await runtime.ledger.get(operation_id)
        if record is None or record.attempt != attempt:
            await release_holder(runtime, lease_key, holder, operation_id)
            report.released.append(holder)


async def _sweep_target(runtime: Runtime, client: Any, lease_key: str, quiet: timedelta,
                        report: SweepReport) -> None:
    now = runtime.now()
    max_wait = timedelta(minutes=runtime.settings.queue_max_wait_minutes)
    old = await runtime.ledger.change_target(lease_key, lambda t: admission.expire(t, now, max_wait))
    if old:
        report.expired += [r.operation_id for r in await end_waiting(
            runtime, old, ErrorCode.QUEUE_EXPIRED, f"The request waited longer than QUEUE_MAX_WAIT_MINUTES "
            f"({runtime.settings.queue_max_wait_minutes}) for its target and was not reimaged.")]
    await announce_suspension(runtime, lease_key)
    target = await runtime.ledger.get_target(lease_key)
    if target.batch is not None and target.batch.formed and target.lease_held(now) \
            and now - target.batch.started > quiet:
        batch = await runtime.ledger.get(target.batch.batch_id)
        if batch is None:
            # The lease was handed to a batch, then its starter died before creating it: create and start it now.
            await start_batch(runtime, client, lease_key, target.batch.batch_id,
                                         target.target_id or lease_key)
            report.restarted.append(target.batch.batch_id)
            return
        if batch.status == OperationStatus.CLAIMED:
            # Created, but its starter may have died before the sweeper's index entry or the orchestration.
            await runtime.ledger.watch(batch)
            await _sweep_batch(runtime, client, batch, now - batch.last_updated_time, quiet, report)
            return
    if await runtime.ledger.global_slots_free(now, runtime.settings.global_max_reimages_per_hour):
        formed = await batches.kick(runtime, client, lease_key)
        if formed is not None:
            report.admitted.append(formed)


async def _sweep_member(runtime: Runtime, record: OperationRecord, age: timedelta, quiet: timedelta,
                        report: SweepReport) -> None:
    """A request riding a batch (or a joined lead): it ends when its batch ends."""
    assert record.batch_id is not None
    batch = await runtime.ledger.get(record.batch_id)
    if batch is not None and batch.terminal:
        await finish_member(runtime, record.operation_id, batch)
        report.ended.append(record.operation_id)
    elif batch is None and age > quiet:
        target = await runtime.ledger.get_target(record.lease_key)
        riding = target.batch is not None and record.operation_id in target.batch.members
        waiting = target.queued(record.operation_id) is not None
        if not riding and not waiting:
            await end_waiting(runtime, [record.operation_id], ErrorCode.BATCH_LOST, "The batch this request was "
                                         "part of was lost before it was sent; nothing was reimaged for it.")
            report.ended.append(record.operation_id)


async def _monitor_gone(client: Any, operation_id: str, ended: tuple[str | None, ...]) -> tuple[bool, Any]:
    """Whether the orchestration of `operation_id` is in one of the durable runtime statuses `ended` (None: it
    does not exist), and its status."""
    status = await client.get_status(operation_id)
    runtime_status = getattr(getattr(status, "runtime_status", None), "value", None)
    return runtime_status in ended, status


async def _sweep_batch(runtime: Runtime, client: Any, record: OperationRecord, age: timedelta, quiet: timedelta,
                       report: SweepReport) -> None:
    """A batch record before its POST was confirmed: restart its orchestration if it is gone."""
    if age <= quiet:
        return
    gone, _ = await _monitor_gone(client, record.operation_id, (None, *_ENDED, "Completed"))
    if gone and await start_monitor(client, runtime, record, MonitorInput.for_batch(record, runtime.settings)):
        report.restarted.append(record.operation_id)


async def _sweep_one(runtime: Runtime, client: Any, record: OperationRecord, age: timedelta, quiet: timedelta,
                     report: SweepReport) -> None:
    if record.is_batch and record.status in IN_PROGRESS:
        await _sweep_batch(runtime, client, record, age, quiet, report)
    elif (not record.terminal and not record.is_batch and record.batch_id is not None
          and record.batch_id != record.operation_id):
        await _sweep_member(runtime, record, age, quiet, report)
    elif record.status == OperationStatus.AWAITING_APPROVAL or (
            record.deferred is not None and record.status == OperationStatus.QUEUED):
        await _sweep_waiting(runtime, client, record, report)
    elif record.status == OperationStatus.CLAIMED and age > quiet:
        await _sweep_claimed(runtime, client, record, report)
    elif record.status == OperationStatus.SUBMITTING and age > quiet:
        error = lost_error("the reimage was claimed but its submission was not confirmed within "
                           f"{int(quiet.total_seconds())} s; if the caller crashed after sending it, ARM may still "
                           "be reimaging the target: check it before asking again")
        await finish(runtime, record.operation_id, OperationStatus.FAILED, error, applied=True)
        report.lost.append(record.operation_id)
    elif record.status in SUBMITTED and age > min(MONITOR_GRACE, quiet):
        await _sweep_monitored(runtime, client, record, report)
    elif record.terminal:
        await _sweep_terminal(runtime, record, age > min(MONITOR_GRACE, quiet), report)
    elif record.status is OperationStatus.REFUSED:  # a refused POST's key: nothing to end
        await runtime.ledger.settled(record.operation_id)
        report.settled.append(record.operation_id)
    # Queued: swept per target (_sweep_target)


async def _sweep_waiting(runtime: Runtime, client: Any, record: OperationRecord, report: SweepReport) -> None:
    """Waiting for a person (approval) or for ARM (a throttled preflight)."""
    if record.status == OperationStatus.QUEUED:
        if await deferred.resume(runtime, client, record):  # its throttled preflight's Retry-After has passed
            report.resumed.append(record.operation_id)
    elif record.approval_group is not None:
        if await approvals.sweep_member(runtime, client, record):  # its group's decision, or the group's timeout
            report.grouped.append(record.operation_id)
    else:
        await _sweep_approval(runtime, record, report)


async def _sweep_approval(runtime: Runtime, record: OperationRecord, report: SweepReport) -> None:
    limit = timedelta(minutes=runtime.settings.approval_timeout_minutes)
    if runtime.now() - record.created_time > limit:
        await end_waiting(runtime, [record.operation_id], ErrorCode.APPROVAL_TIMED_OUT, "Nobody approved this "
                          f"reimage within APPROVAL_TIMEOUT_MINUTES ({int(limit.total_seconds() // 60)}); nothing "
                          "was reimaged.", only_if=OperationStatus.AWAITING_APPROVAL)
        report.expired.append(record.operation_id)


async def _sweep_claimed(runtime: Runtime, client: Any, record: OperationRecord, report: SweepReport) -> None:
    """Claimed and quiet: its owner stopped before the POST (it reached nothing). It may have been answered 202
    (a same-key delivery joined it), so it ends with its event rather than vanishing; what its claim attempt
    held on the target is released first (finish releases it as not applied)."""
    target = await runtime.ledger.get_target(record.lease_key)
    if target.queued(record.operation_id) is not None:
        return  # it was queued and crashed before saying so: the queue carries it
    why = ("It was approved, but the approval's call stopped before the reimage was sent" if record.approved_by
           else "Its request stopped after claiming it, before the reimage was sent")
    await finish(runtime, record.operation_id, OperationStatus.FAILED, {
        "code": ErrorCode.NOT_SUBMITTED, "message": f"{why}; nothing was reimaged. Ask again."}, applied=False,
        client=client)
    report.lost.append(record.operation_id)


async def _sweep_monitored(runtime: Runtime, client: Any, record: OperationRecord, report: SweepReport) -> None:
    """Submitted: its monitor must be running; start it again if it is gone or failed."""
    gone, status = await _monitor_gone(client, record.operation_id, (None, *_ENDED))
    if not gone:
        return
    if status is not None and getattr(status, "runtime_status", None) is not None:
        log.warning("monitor of %s ended %s (%s); starting it again", record.operation_id,
                    status.runtime_status.value, decode(getattr(status, "output", None)))
    if await start_monitor(client, runtime, record):
        report.restarted.append(record.operation_id)


async def _sweep_terminal(runtime: Runtime, record: OperationRecord, quiet: bool, report: SweepReport) -> None:
    """Ended: its event must have been sent to the topic (a send that crashed is sent again, with the same id),
    and its ReplyTo copy delivered or given up on (one more attempt per sweep; never the topic's copy again)."""
    if record.event_id is None or is_stale(record.event_id, runtime.now()):
        if quiet:
            await send_completion(runtime, record, stale=True)
            report.resent.append(record.operation_id)
    elif record.event_id.startswith(SENDING):
        return
    elif not reply_settled(record):
        done = await deliver_reply(runtime, record)
        report.replied.append(record.operation_id)
        if reply_settled(done):
            await runtime.ledger.settled(record.operation_id)
    else:
        await runtime.ledger.settled(record.operation_id)
        report.settled.append(record.operation_id)
