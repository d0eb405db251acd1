"""Who may reimage a target now: pure decisions on one target's ledger record.

Every function here takes the target record (read with its ETag), values and the clock's now,
and returns the record to write (or None) with what was decided. The caller writes it by
compare-and-swap and retries on conflict, so each decision is one atomic write whatever the
concurrency: the lease and the running batch, the queue, cooldowns, the fleet-budget window,
the breaker and suspension all live on the same entity.

A scale set runs one ARM reimage at a time (a second operation preempts the first), so requests
for a busy set wait in its queue, and each batch is one POST for the union of the queued
requests with equal options, within the batch cap and the fleet budget.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.records import BatchEntry, BudgetEntry, Cooldown, QueueEntry, TargetRecord
from shared.domain.status import FAILED_OUTCOMES, OperationStatus
from shared.rules import canary
from shared.rules.policy import cooldown_error, cooling
from shared.rules.poll_schedule import remember
from shared.settings import Settings


def new_batch_id() -> str:
    return f"b-{uuid.uuid4().hex}"


def batch_cap(capacity: int, settings: Settings) -> int:
    """At most MAX_BATCH_PERCENT of the set per POST: at least 1, at most MAX_INSTANCES_PER_REQUEST."""
    return max(1, min(capacity * settings.max_batch_percent // 100, settings.max_instances_per_request))


def fleet_budget(capacity: int, settings: Settings) -> int:
    return max(1, capacity * settings.fleet_budget_percent // 100)


def _window(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.fleet_window_minutes)


def prune(record: TargetRecord, now: datetime, settings: Settings) -> None:
    cutoff = now - _window(settings)
    record.prune(now)
    record.window = [e for e in record.window if e.at > cutoff]
    record.requested = {k: t for k, t in record.requested.items() if t > cutoff}


def budget_used(record: TargetRecord) -> int:
    return sum(e.count for e in record.window)


def budget_frees_at(record: TargetRecord, settings: Settings) -> datetime | None:
    if not record.window:
        return None
    return min(e.at for e in record.window) + _window(settings)


def _fits_budget(record: TargetRecord, count: int, settings: Settings) -> bool:
    """Scale sets only (a VM is bounded by its cooldown). An empty window admits one batch whatever its
    size, else a request larger than the budget would wait forever; it already passed
    MAX_INSTANCES_PER_REQUEST (and approval)."""
    if not is_scale_set(record):
        return True
    used = budget_used(record)
    return used == 0 or used + count <= fleet_budget(record.capacity, settings)


def is_scale_set(record: TargetRecord) -> bool:
    return "/virtualmachinescalesets/" in record.key.lower()


def suspend(record: TargetRecord, now: datetime, reason: str, evidence: dict[str, Any],
            by: str = "breaker", code: str | None = None) -> list[QueueEntry]:
    """Suspend the target; the waiting requests leave the queue (the caller ends them Canceled). `code` says which
    rule: BreakerPercent, BreakerFailures or CanaryFailed."""
    record.suspended = {"since": now.isoformat(), "reason": reason, "by": by, "evidence": evidence,
                        "announced": False}
    if code is not None:
        record.suspended["code"] = code
    ended, record.queue = record.queue, []
    return ended


def suspended_error(record: TargetRecord) -> ReimagerError:
    info = record.suspended or {}
    return ReimagerError(ErrorCode.TARGET_SUSPENDED,
        f"The target is suspended since {info.get('since', '?')} ({info.get('reason', 'no reason given')}); an "
        "operator must resume it: POST /api/targets/resume.", target="target",
        extra={"suspension": {**{k: info.get(k) for k in ("since", "reason", "by", "evidence")},
                              **({"code": info["code"]} if "code" in info else {})}})


@dataclass
class Admission:
    """What admission decided for one request."""

    kind: Literal["lead", "joined", "queued", "refused"]
    error: ReimagerError | None = None
    batch_id: str | None = None
    position: int | None = None
    formed: str | None = None  # a batch whose lease this write reserved: the caller starts it
    suspension: dict[str, Any] | None = None  # this write suspended the target: the caller announces it
    ended: list[QueueEntry] = field(default_factory=list)  # queue entries the caller must end Canceled
    durations: list[float] | None = None  # a lead: the target's recent durations, for its poll schedule


def members_of(entries: list[QueueEntry]) -> list[str]:
    """Every request waiting in these entries (an entry's first request and the ones that rode it)."""
    return [member for entry in entries for member in entry.members]


def _lead(record: TargetRecord, owner: str, operation_id: str, keys: list[str], options: dict[str, Any],
          now: datetime, until: datetime, settings: Settings) -> None:
    record.lease_owner, record.lease_until = owner, until
    record.batch = BatchEntry(batch_id=operation_id, owner=owner, members=[operation_id], keys=list(keys),
                              options=options, started=now)
    _provisional(record, owner, operation_id, keys, until, settings)
    if is_scale_set(record):
        record.window.append(BudgetEntry(owner=owner, count=len(keys), at=now))


def _provisional(record: TargetRecord, owner: str, operation_id: str, keys: list[str], until: datetime,
                 settings: Settings) -> None:
    # Written with the lease, so a lease that outlives its holder still keeps the target from a second reimage.
    if settings.cooldown_minutes > 0:
        for key in keys:
            record.cooldowns[key] = Cooldown(until=until + timedelta(minutes=settings.cooldown_minutes),
                                             operation_id=operation_id, owner=owner)


def admit_request(record: TargetRecord, *, owner: str, keys: list[str], options: dict[str, Any], secret: bool,
                  capacity: int, target_id: str, now: datetime, until: datetime, settings: Settings,
                  batch_id: str | None = None, symptom: bool = True, operation_id: str | None = None,
                  approved: bool = False) -> tuple[TargetRecord | None, Admission]:
    """Lead (submit now, from the caller, with its secrets in memory), join the running batch, queue, or refuse.

    A scale-set request with no secrets always queues, even on an idle set: the batch formed for it
    gathers the requests that arrive with it (an alert storm) into one POST. `symptom` is False for a
    deliberate whole-set request (allInstances): the breaker counts instances asked for one by one, as
    symptoms, not a deliberate decision to reimage them all. `owner` is the request's holder (its claim
    attempt), which the lease, provisional cooldowns and budget entry are held by; `operation_id` names the
    request in the queue and the batch (default: the owner, for a holder that is an operation id).
    """
    operation_id = operation_id or owner
    write = False
    if record.capacity != capacity or record.target_id != target_id:
        record.capacity, record.target_id, write = capacity, target_id, True
    if record.suspended:
        return None, Admission("refused", suspended_error(record))
    again = _decided_before(record, owner, operation_id, now)
    if again is not None:
        return None, again
    prune(record, now, settings)
    scale_set = is_scale_set(record)
    if scale_set and symptom:
        fresh, tripped = _count_requested(record, keys, capacity, now, settings)
        if tripped is not None:
            return record, tripped
        write = write or fresh
    running = record.batch if record.lease_held(now) else None
    if (running is not None and running.members and not secret and running.options == options
            and set(keys) <= set(running.keys)):
        running.members.append(operation_id)  # its instances are being reimaged with these options: no second POST
        return record, Admission("joined", batch_id=running.batch_id)
    # Busy before cooling: the running batch's provisional cooldowns are not a cooldown yet.
    hit = cooling(record, keys, now, record.lease_owner if running is not None else None)
    busy = record.lease_held(now) or bool(record.queue)
    refusal = cooldown_error(*hit, now) if hit is not None else (
        _cannot_wait(record, len(keys), busy, now, settings) if secret else None)
    if refusal is not None:
        return (record if write else None), Admission("refused", refusal)
    if not busy and (secret or not scale_set):
        _lead(record, owner, operation_id, keys, options, now, until, settings)
        return record, Admission("lead", batch_id=operation_id, durations=list(record.durations))
    admission = Admission("queued", position=_enqueue(record, operation_id, keys, options, now, approved))
    admission.formed = form_batch(record, now, until, settings, batch_id)
    return record, admission


def _decided_before(record: TargetRecord, owner: str, operation_id: str, now: datetime) -> Admission | None:
    """What an earlier run of this same request was admitted as (a retried step), if anything."""
    if owner == record.lease_owner and record.lease_held(now):
        return Admission("lead", batch_id=operation_id)
    if record.batch is not None and operation_id in record.batch.members:
        return Admission("joined", batch_id=record.batch.batch_id)
    found = record.queued(operation_id)
    return Admission("queued", position=found[0]) if found is not None else None


MAX_RIDERS = 500  # requests sharing one queue entry (row); more start a new one


def _enqueue(record: TargetRecord, operation_id: str, keys: list[str], options: dict[str, Any],
             now: datetime, approved: bool = False) -> int:
    """Queue the request: onto the entry that already waits for the same instances with the same options (one
    row, one place in line), else a new entry at the back. Its position (1 = next)."""
    for position, entry in enumerate(record.queue, 1):
        if entry.keys == list(keys) and entry.options == options and len(entry.riders) < MAX_RIDERS:
            entry.riders.append(operation_id)
            entry.approved = entry.approved or approved
            return position
    record.queue.append(QueueEntry(operation_id=operation_id, keys=list(keys), options=options, queued_at=now,
                                   approved=approved))
    return len(record.queue)


def _count_requested(record: TargetRecord, keys: list[str], capacity: int, now: datetime, settings: Settings
                     ) -> tuple[bool, Admission | None]:
    """Count the instances asked for (the breaker's evidence); whether any was new, and the refusal that
    suspends the set when more than BREAKER_PERCENT of it was asked for within the window."""
    fresh = [k for k in keys if k not in record.requested]
    for key in fresh:
        record.requested[key] = now
    if not fresh or len(record.requested) <= capacity * settings.breaker_percent / 100:
        return bool(fresh), None
    evidence = {"distinctInstancesRequested": len(record.requested), "capacity": capacity,
                "breakerPercent": settings.breaker_percent, "windowMinutes": settings.fleet_window_minutes}
    ended = suspend(record, now, f"{len(record.requested)} of {capacity} instances were asked to be reimaged "
                    f"within {settings.fleet_window_minutes} minutes, more than BREAKER_PERCENT "
                    f"{settings.breaker_percent}%: a systemic failure that reimaging will not cure", evidence,
                    code="BreakerPercent")
    return True, Admission("refused", suspended_error(record), suspension=record.suspended, ended=ended)


def _cannot_wait(record: TargetRecord, count: int, busy: bool, now: datetime, settings: Settings
                 ) -> ReimagerError | None:
    """A request carrying secrets cannot wait in the queue (secrets are never stored): refused when the target
    is busy or its budget is spent."""
    if busy:
        holder = record.lease_owner or "queued requests"
        return ReimagerError(
            ErrorCode.OPERATION_IN_PROGRESS, f"Another reimage is in flight on this target ({holder}); a request "
            "carrying osProfile secrets cannot wait in the queue, because secrets are never stored. Ask again "
            "when it has ended.", target="target", extra={"operationId": record.lease_owner})
    if not _fits_budget(record, count, settings):
        return _budget_error(record, now, settings)
    return None


def _budget_error(record: TargetRecord, now: datetime, settings: Settings) -> ReimagerError:
    frees = budget_frees_at(record, settings) or now
    wait = max(1, math.ceil((frees - now).total_seconds()))
    return ReimagerError(ErrorCode.FLEET_BUDGET_EXHAUSTED,
        f"{budget_used(record)} instances of this set were reimaged in the last {settings.fleet_window_minutes} "
        f"minutes; FLEET_BUDGET_PERCENT {settings.fleet_budget_percent}% allows "
        f"{fleet_budget(record.capacity, settings)}. A request carrying secrets cannot wait; ask again after "
        f"{frees.isoformat()}.", target="target", retry_after=wait)


def _selection(record: TargetRecord, now: datetime, settings: Settings
               ) -> tuple[list[QueueEntry], list[QueueEntry]]:
    """The next batch from the queue: entries with the head's options, in arrival order, within the batch
    cap and the fleet budget; and entries to end because their instances are now cooling down."""
    chosen: list[QueueEntry] = []
    cooled: list[QueueEntry] = []
    keys: set[str] = set()
    cap = batch_cap(record.capacity, settings)
    used = budget_used(record) if is_scale_set(record) else 0
    room = fleet_budget(record.capacity, settings) - used if is_scale_set(record) else cap
    # A canary went ahead of the batch it cleared: that batch is admitted as the first of an empty window would be
    # (else a request wider than the budget would wait a window, and meet a canary again when it ends).
    canary_ahead = record.canary if record.canary is not None and record.canary.outcome == "passed" else None
    ahead = sum(e.count for e in record.window if canary_ahead is not None and e.owner == canary_ahead.batch_id)
    options: dict[str, Any] | None = None
    for entry in record.queue:
        if cooling(record, entry.keys, now) is not None:
            cooled.append(entry)
            continue
        if options is not None and entry.options != options:
            continue
        union = keys | set(entry.keys)
        first = options is None
        if not first and (len(union) > cap or len(union) > room):
            continue
        if first and used - ahead > 0 and len(union) > room:
            break  # over budget: wait for the window to free
        options = entry.options
        chosen.append(entry)
        keys = union
    return chosen, cooled


def form_batch(record: TargetRecord, now: datetime, until: datetime, settings: Settings,
               batch_id: str | None = None) -> str | None:
    """Reserve the free target's lease for a batch of queued work, when there is work that may go now.

    The batch is sealed later (see `seal`), so requests arriving meanwhile ride the same POST."""
    if record.suspended or not record.queue or record.lease_held(now):
        return None
    prune(record, now, settings)
    chosen, cooled = _selection(record, now, settings)
    if not chosen and not cooled:
        return None
    owner = batch_id or new_batch_id()
    record.lease_owner, record.lease_until = owner, until
    record.batch = BatchEntry(batch_id=owner, owner=owner, members=[], keys=[], options={}, started=now, formed=True)
    return owner


@dataclass
class Sealed:
    """The batch's membership, fixed when it is about to be POSTed."""

    members: list[str]
    keys: list[str]
    options: dict[str, Any]
    ended: list[QueueEntry] = field(default_factory=list)  # cooling down since they queued: end Canceled
    lost: bool = False  # the lease is no longer this batch's
    canary: dict[str, Any] | None = None  # the set's canary as its members carry it (shared/rules/canary.py)
    partial: list[str] = field(default_factory=list)  # members whose other instances wait for the canary's verdict


def _canary_of(record: TargetRecord, batch_id: str) -> tuple[dict[str, Any] | None, list[str]]:
    """What the members of batch `batch_id` carry about the set's canary: they are it, or go after it."""
    c = record.canary
    if c is None:
        return None, []
    if c.batch_id == batch_id:
        return c.doc("canary"), list(c.partial)
    return (c.doc("after"), []) if c.outcome == "passed" else (None, [])


def seal(record: TargetRecord, batch_id: str, now: datetime, settings: Settings) -> tuple[TargetRecord | None, Sealed]:
    batch = record.batch
    if batch is None or batch.batch_id != batch_id or record.lease_owner != batch_id:
        return None, Sealed([], [], {}, lost=True)
    if batch.members:  # sealed already (an activity runs at least once)
        doc, partial = _canary_of(record, batch_id)
        return None, Sealed(list(batch.members), list(batch.keys), dict(batch.options), canary=doc, partial=partial)
    prune(record, now, settings)
    if is_scale_set(record):
        canary.recover(record)
    chosen, cooled = _selection(record, now, settings)
    state = None
    if is_scale_set(record):
        chosen, taken, state = canary.cut(record, chosen, batch_id, now, settings)
    else:
        taken = chosen
    gone = {id(e) for e in (*taken, *cooled)}
    record.queue = [e for e in record.queue if id(e) not in gone]
    if not chosen:
        record.lease_owner = record.lease_until = None
        record.batch = None
        return record, Sealed([], [], {}, ended=cooled)
    if state is not None:
        record.canary = state
    keys = sorted({k for e in chosen for k in e.keys}, key=lambda k: (len(k), k))
    batch.members = members_of(chosen)
    batch.keys, batch.options = keys, chosen[0].options
    assert record.lease_until is not None
    _provisional(record, batch_id, batch_id, keys, record.lease_until, settings)
    if is_scale_set(record):
        record.window.append(BudgetEntry(owner=batch_id, count=len(keys), at=now))
    doc, partial = _canary_of(record, batch_id)
    return record, Sealed(list(batch.members), keys, dict(batch.options), ended=cooled, canary=doc, partial=partial)


@dataclass
class Handoff:
    """What ending a batch leaves the caller to do."""

    members: list[str] = field(default_factory=list)  # requests that rode the batch: end them too
    formed: str | None = None  # the next batch, whose lease was handed over in the same write
    suspension: dict[str, Any] | None = None
    ended: list[QueueEntry] = field(default_factory=list)  # waiting requests ended by a suspension


def release(record: TargetRecord, owner: str, keys: list[str], status: str, ended: datetime, *,
            applied: bool, unhealthy: bool, now: datetime, until: datetime, settings: Settings,
            next_batch_id: str | None = None, operation_id: str | None = None, health: str | None = None,
            health_detail: dict[str, str] | None = None, duration: float | None = None,
            withdrawn: list[str] | None = None) -> tuple[TargetRecord | None, Handoff]:
    """End `owner`'s hold on the target: cooldowns from its end (when it may have been applied), provisional
    ones withdrawn (when it certainly was not), the failure streak and the breaker, and the lease, only if
    `owner` still holds it, handed straight to the next batch of queued work (no gap for a newcomer).
    `owner` is the holder (a request's claim attempt, or a batch); `operation_id` names it in cooldowns. When it
    was the set's canary, its verdict is given here (shared/rules/canary.py): it passed, or it suspends the set.
    `duration`: how long ARM took, when it succeeded (remembered for the learned poll schedule). `withdrawn`: keys
    ARM certainly did not reimage although the rest may have been (a Flexible batch's refused members): their
    provisional cooldowns and their count in the fleet budget are withdrawn."""
    operation_id = operation_id or owner
    if record.batch is not None and record.batch.holder == owner:
        keys = sorted(set(keys) | set(record.batch.keys))
    gone = set(withdrawn or ()) & set(keys) if applied else set()
    changed = _end_cooldowns(record, owner, operation_id, [k for k in keys if k not in gone], ended,
                             settings.cooldown_minutes if applied else 0)
    if gone:
        changed = _end_cooldowns(record, owner, operation_id, sorted(gone), ended, 0) or changed
    if gone and record.lease_owner == owner:  # once: the release that ends its lease (a release may run twice)
        record.window = [e if e.owner != owner else e.model_copy(update={"count": max(0, e.count - len(gone))})
                         for e in record.window]
        record.window = [e for e in record.window if e.count > 0 or e.owner != owner]
        changed = True
    handoff = Handoff()
    if not applied:
        kept = [e for e in record.window if e.owner != owner]
        changed = changed or len(kept) != len(record.window)
        record.window = kept
    if record.lease_owner != owner:
        return (record if changed else None), handoff
    if record.batch is not None and record.batch.holder == owner:
        handoff.members = list(record.batch.members)
    record.lease_owner = record.lease_until = None
    record.batch = None
    if status == OperationStatus.SUCCEEDED:
        record.durations = remember(record.durations, duration)
    failed = canary.conclude(record, operation_id, status=status, health=health or (
        "Unhealthy" if unhealthy else None), health_detail=health_detail, applied=applied, now=now, settings=settings)
    if record.suspended and record.queue:  # suspended while the canary ran: what it held back ends with the rest
        handoff.ended, record.queue = record.queue, []
        handoff.suspension = record.suspended
    elif failed is not None:
        handoff.ended = suspend(record, now, canary.failure_reason(failed), failed, by="canary",
                                code=canary.CANARY_FAILED)
        handoff.suspension = record.suspended
    elif applied:  # the outcome counts toward the failure streak
        _count_outcome(record, operation_id, status, unhealthy, now, settings, handoff)
    prune(record, now, settings)
    handoff.formed = form_batch(record, now, until, settings, next_batch_id)
    if handoff.formed is not None:
        assert record.batch is not None
        record.batch.handed_from = operation_id
    return record, handoff


def _end_cooldowns(record: TargetRecord, owner: str, operation_id: str, keys: list[str], ended: datetime,
                   minutes: int) -> bool:
    """Cooldowns run `minutes` from the end (0: the reimage certainly did not happen, or there is no cooldown:
    `owner`'s provisional ones are withdrawn). Whether anything changed."""
    changed = False
    for key in keys:
        c = record.cooldowns.get(key)
        if minutes <= 0:
            if c is not None and c.holder == owner:
                del record.cooldowns[key]
                changed = True
            continue
        want = Cooldown(until=ended + timedelta(minutes=minutes), operation_id=operation_id, owner=owner)
        if (c is None or c.holder == owner or c.until < want.until) and c != want:
            record.cooldowns[key] = want
            changed = True
    return changed


def _count_outcome(record: TargetRecord, operation_id: str, status: str, unhealthy: bool, now: datetime,
                   settings: Settings, handoff: Handoff) -> None:
    """The failure streak, and the breaker when it reaches BREAKER_FAILURES."""
    bad = status in FAILED_OUTCOMES or unhealthy
    record.consecutive_failures = record.consecutive_failures + 1 if bad else 0
    if bad and record.consecutive_failures >= settings.breaker_failures and not record.suspended:
        evidence = {"consecutiveFailures": record.consecutive_failures, "lastOperation": operation_id,
                    "lastStatus": "Unhealthy" if unhealthy and status == OperationStatus.SUCCEEDED else status}
        handoff.ended = suspend(record, now, f"{record.consecutive_failures} reimages in a row ended Failed, "
                                "TimedOut or Unhealthy (BREAKER_FAILURES)", evidence, code="BreakerFailures")
        handoff.suspension = record.suspended


def requeue(record: TargetRecord, owner: str, now: datetime, entries: list[QueueEntry]
            ) -> tuple[TargetRecord | None, bool]:
    """Give the lease back and put the batch's requests at the head of the queue (the global budget is spent:
    nothing was sent). False if `owner` no longer holds the lease."""
    if record.lease_owner != owner:
        return None, False
    record.lease_owner = record.lease_until = None
    record.batch = None
    if record.canary is not None and record.canary.batch_id == owner:
        record.canary = None  # it was not sent: the entries put back carry every instance; the next batch decides
    record.cooldowns = {k: c for k, c in record.cooldowns.items() if c.holder != owner}
    record.window = [e for e in record.window if e.owner != owner]
    waiting = set(members_of(record.queue))
    record.queue = [e for e in entries if e.operation_id not in waiting] + record.queue
    return record, True


def _take_out(record: TargetRecord, operation_id: str) -> QueueEntry | None:
    """Remove one request from the queue: its own entry, or its place on a shared one (the next rider takes the
    entry over). The request's entry as it waited, without the others."""
    found = record.queued(operation_id)
    if found is None:
        return None
    _, entry = found
    alone = entry.model_copy(update={"operation_id": operation_id, "riders": [], "row": None, "etag": None})
    if entry.operation_id == operation_id and not entry.riders:
        record.queue = [e for e in record.queue if e is not entry]
    elif entry.operation_id == operation_id:
        entry.operation_id = entry.riders.pop(0)
    else:
        entry.riders.remove(operation_id)
    return alone


def withdraw(record: TargetRecord, operation_id: str) -> tuple[TargetRecord | None, QueueEntry | None]:
    """Take a waiting request out of the queue (cancel, expiry); None if it is not waiting any more."""
    entry = _take_out(record, operation_id)
    return (record if entry is not None else None), entry


def forget(record: TargetRecord, operation_id: str) -> tuple[TargetRecord | None, bool]:
    """Undo a request's place in the queue or in a running batch (its record is gone: the sweeper freed it)."""
    changed = _take_out(record, operation_id) is not None
    if record.batch is not None and record.batch.batch_id != operation_id and operation_id in record.batch.members:
        record.batch.members = [m for m in record.batch.members if m != operation_id]
        changed = True
    return (record if changed else None), changed


def expire(record: TargetRecord, now: datetime, max_wait: timedelta) -> tuple[TargetRecord | None, list[QueueEntry]]:
    old = [e for e in record.queue if now - e.queued_at > max_wait]
    if not old:
        return None, []
    record.queue = [e for e in record.queue if now - e.queued_at <= max_wait]
    return record, old


def resume(record: TargetRecord, now: datetime, by: str, reason: str | None) -> tuple[TargetRecord | None,
                                                                                       dict[str, Any] | None]:
    if not record.suspended:
        return None, None
    was = record.suspended
    record.suspended = None
    record.consecutive_failures = 0
    record.requested = {}
    record.canary = None  # after a failed canary, the next storm's first batch is a canary again
    return record, {**was, "resumedAt": now.isoformat(), "resumedBy": by, "resumeReason": reason}


def announced(record: TargetRecord) -> tuple[TargetRecord | None, None]:
    if not record.suspended or record.suspended.get("announced"):
        return None, None
    record.suspended = {**record.suspended, "announced": True}
    return record, None


def lease_until(settings: Settings, now: datetime) -> datetime:
    """How long a lease taken now holds: the submission, the operation and its health check, and a margin."""
    return now + timedelta(seconds=settings.submit_timeout_seconds,
                           minutes=settings.operation_timeout_minutes + settings.health_grace_minutes + 10)
