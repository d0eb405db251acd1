"""When ARM throttles: nothing fails for it, nothing is sent twice, and nobody waits inside a trigger.

Compute answers a throttled call 429 with a Retry-After of a minute or more (120 and 1,200 s are seen; research
notes `arm.md` A2), longer than an alert's webhook or a queue message's lock may wait. So a throttled request
waits in the ledger, `Queued`, and goes on after Retry-After (docs/operations.md "When ARM throttles"):
- a poll or health read: the monitor waits Retry-After on a durable timer and reads again; a read whose bucket
  runs low is held back the same way (`hold`, `throttled`; the deadline moves by the time waited);
- a batch's POST: the batch keeps its requests and its lease, and is POSTed again after Retry-After
  (`hold_batch`, `not_before`) under the same key: one global-budget slot, given back and taken again;
- a lead's POST (a VM, or the first request of an idle target): it waits in its target's queue and a batch
  (which handles a VM as a set of one) sends it after Retry-After (`wait_for_arm`);
- the preflight read: the request is recorded Queued with what it asked (never secrets) and read again after
  Retry-After by the sweeper (`defer`; shared/workflow/deferred.py resumes it).
A request carrying osProfile secrets cannot wait (secrets are never stored): it is still answered 503 with
Retry-After. So is one that needs approval, or a dry run: they are answered after a fresh read, or not at all.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from shared.adapters.telemetry import EVENT_ARM_HELD, track_event
from shared.domain.arm_call import OperationState
from shared.domain.errors import ComputeError, ComputeThrottled, ReimagerError
from shared.domain.events import EventType, Trigger
from shared.domain.ids import operation_id
from shared.domain.principal import Principal
from shared.domain.records import OperationRecord, QueueEntry
from shared.domain.request import ReimageRequest
from shared.domain.status import OperationStatus
from shared.domain.targets import parse_target
from shared.rules import admission, policy
from shared.rules.admission import lease_until
from shared.runtime import Runtime
from shared.settings import Settings
from shared.workflow.completion import publish_info
from shared.workflow.orchestration import start_batch

log = logging.getLogger("reimager.throttling")
COMPUTE_WINDOW_SECONDS = 60  # a 429 without Retry-After: Compute's window ("1 min after getting throttled", CTL)


def wait_of(error: ReimagerError | None) -> int:
    return int(error.retry_after) if error is not None and error.retry_after else COMPUTE_WINDOW_SECONDS


def can_wait(error: ReimagerError, record_options: dict[str, Any]) -> bool:
    """ARM throttled (429: nothing was applied) a request that may wait: one without secrets."""
    return isinstance(error, ComputeThrottled) and "osProfile" not in record_options


# ---- reads: polls and health ----------------------------------------------------------------------------
def hold(kind: str, runtime: Runtime, target: str | None) -> dict[str, Any] | None:
    """A read of `kind` on `target` that should wait because a bucket it draws on runs low: the monitor's answer."""
    if not target:
        return None
    delay = runtime.compute.read_delay(kind, target)
    if delay <= 0:
        return None
    seen = runtime.compute.quota.resources.get((target.lower(), kind))
    track_event(EVENT_ARM_HELD, target=target, arm_call=kind, retry_after_seconds=delay,
                arm_remaining=seen.lowest if seen is not None else None)
    log.info("holding a %s read of %s for %.1f s: ARM's remaining requests run low", kind, target, delay)
    return {"state": OperationState.RUNNING, "done": False, "held": True, "retryAfter": delay}


def throttled(kind: str, target: str | None, retry_after: float | None) -> dict[str, Any]:
    """A read ARM answered 429: the monitor's answer (wait Retry-After, however long, and read again)."""
    wait = float(retry_after) if retry_after else float(COMPUTE_WINDOW_SECONDS)
    log.info("ARM throttled a %s read of %s: reading again in %.0f s", kind, target, wait)
    return {"state": OperationState.RUNNING, "done": False, "throttled": True, "retryAfter": wait}


# ---- a batch's POST ---------------------------------------------------------------------------------------
def within_quota(runtime: Runtime, target: str) -> Settings:
    """The settings a batch is sealed with: its cap shrunk to what the last POST on the target left in ARM's
    buckets (a scale set's reimage is charged one token per instance), above ARM_QUOTA_LOW_WATER, when that was
    seen within the last minute; else the settings as they are."""
    settings = runtime.settings
    room = runtime.compute.quota.room(parse_target(target).vm_id, "submit")
    if room is None or room - settings.arm_quota_low_water >= settings.max_instances_per_request:
        return settings
    cap = max(1, room - settings.arm_quota_low_water)
    log.info("sealing the next batch of %s at %d instances: ARM's buckets run low (%d left)", target, cap, room)
    return settings.model_copy(update={"max_instances_per_request": cap})



def not_before(batch: OperationRecord, now: datetime) -> float:
    """Seconds left before a throttled batch may be POSTed again (0: now)."""
    stamp = (batch.arm or {}).get("notBefore")
    if batch.status != OperationStatus.CLAIMED or not stamp:
        return 0.0
    return max(0.0, (datetime.fromisoformat(stamp) - now).total_seconds())


async def hold_batch(runtime: Runtime, batch: OperationRecord, error: ComputeError) -> dict[str, Any]:
    """ARM throttled the batch's POST: back to Claimed with its membership sealed and a not-before time, its
    requests Queued again; the orchestrator waits Retry-After and submits it again (the same requests)."""
    wait = wait_of(error)
    now = runtime.now()
    token = (batch.arm or {}).get("submitter")

    def claimed(r: OperationRecord) -> OperationRecord | None:
        if r.status != OperationStatus.SUBMITTING or (r.arm or {}).get("submitter") != token:
            return None
        r.status, r.last_updated_time = OperationStatus.CLAIMED, now
        r.arm = {"notBefore": (now + timedelta(seconds=wait)).isoformat(), "throttled": error.error_dict()}
        return r

    await runtime.ledger.update(batch.operation_id, claimed)
    for member in batch.members or []:
        await runtime.ledger.update(member, lambda r: _back_in_queue(r, batch.operation_id, now, keep=True))
    log.info("ARM throttled batch %s for %s: POSTed again in %d s", batch.operation_id, batch.target, wait)
    return {"outcome": "throttled", "retryAfter": wait}


def _back_in_queue(r: OperationRecord, held_by: str, now: datetime, *, keep: bool) -> OperationRecord | None:
    """A request that rode (or led) `held_by`, back to Queued. `keep`: it stays in that batch (sealed)."""
    if r.terminal or r.batch_id != held_by:
        return None
    r.status, r.last_updated_time = OperationStatus.QUEUED, now
    r.batch_id = held_by if keep else None
    return r


# ---- a lead's POST ----------------------------------------------------------------------------------------
async def wait_for_arm(runtime: Runtime, client: Any, record: OperationRecord, error: ComputeError,
                       slot: str | None) -> OperationRecord | None:
    """ARM throttled a lead's POST (nothing was applied): the lead and the requests riding it wait in the
    target's queue, and a new batch holding the lease sends them after Retry-After. None: the lead no longer
    held the target (nothing was changed; the caller gives the request back as before)."""
    wait, now = wait_of(error), runtime.now()
    if slot is not None:
        await runtime.ledger.give_back_global_slot(slot, record.operation_id)
    held = await runtime.ledger.get_target(record.lease_key)
    riders = [m for m in (held.batch.members if held.batch and held.batch.batch_id == record.operation_id else [])
              if m != record.operation_id]
    entries = [QueueEntry(operation_id=record.operation_id, keys=record.cooldown_keys, options=record.options,
                          queued_at=record.created_time)]
    for rider in [r for r in [await runtime.ledger.get(m) for m in riders] if r is not None and not r.terminal]:
        entries.append(QueueEntry(operation_id=rider.operation_id, keys=rider.cooldown_keys, options=rider.options,
                                  queued_at=rider.created_time))
    batch_id, until = admission.new_batch_id(), lease_until(runtime.settings, now)

    def requeued(t: Any) -> tuple[Any, tuple[bool, str | None]]:
        changed, ok = admission.requeue(t, record.holder, now, entries)
        if changed is None:
            return None, (ok, None)
        return t, (ok, admission.form_batch(t, now, until, runtime.settings, batch_id))

    ok, formed = await runtime.ledger.change_target(record.lease_key, requeued)
    if not ok:
        return None
    stored = None
    for entry in entries:
        back = await runtime.ledger.update(entry.operation_id, lambda r: _back_in_queue(
            r, record.operation_id, now, keep=False))
        stored = back if entry.operation_id == record.operation_id else stored
    if formed is not None:
        await _start_held_batch(runtime, client, record, formed, now + timedelta(seconds=wait))
    log.info("ARM throttled %s for %s: it waits in the queue; a batch sends it in %d s", record.operation_id,
             record.target, wait)
    if stored is not None:
        await publish_info(runtime, EventType.QUEUED, stored)
    return stored


async def _start_held_batch(runtime: Runtime, client: Any, record: OperationRecord, batch_id: str,
                            not_before_time: datetime) -> None:
    """Create the batch's record with its not-before time first, then start it (start_batch finds the record)."""
    now = runtime.now()
    target_id = parse_target(record.governed_by).vm_id
    batch = OperationRecord(operation_id=batch_id, request_id=batch_id, target=target_id, lease_key=record.lease_key,
                            trigger="batch", members=[], created_time=now, last_updated_time=now, batch_id=batch_id,
                            arm={"notBefore": not_before_time.isoformat()})
    await runtime.ledger.claim(batch)
    await start_batch(runtime, client, record.lease_key, batch_id, target_id)


# ---- the preflight read -----------------------------------------------------------------------------------
def deferrable(request: ReimageRequest, settings: Any) -> bool:
    """A request whose preflight ARM throttled may wait for it: no secrets, and no second person's approval
    (that is decided on a fresh read, and paged at once)."""
    return (request.os_profile is None and not request.dry_run
            and policy.needs_approval(request, request.effective_instance_ids, settings) is None)


def wire(request: ReimageRequest) -> dict[str, Any]:
    """What the request asked, as it can be parsed again (never secrets: a request with osProfile never waits)."""
    doc = request.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={
        "target", "subscription_id", "resource_group_name", "vm_name", "vm_scale_set_name", "os_profile",
        "dry_run", "request_id", "requested_by", "reason", "correlation_id"})
    return {"target": request.resolved_target.id, **doc}


async def defer(runtime: Runtime, request: ReimageRequest, error: ComputeError, *, key: str, trigger: Trigger,
                reply_to: str | None, reply_correlation_id: str | None, principal: Principal | None
                ) -> tuple[bool, OperationRecord]:
    """Record a request whose preflight read ARM throttled: claimed, Queued, with what it asked and when to read
    again. (won, record); not won: another request holds the key (the caller answers with it)."""
    now, target = runtime.now(), request.resolved_target
    instances = request.effective_instance_ids
    verified = principal if principal is not None and principal.is_verified else None
    wait = wait_of(error)
    record = OperationRecord(
        operation_id=operation_id(key), request_id=key, target=target.id, lease_key=target.lock_key,
        instance_ids=instances, cooldown_keys=policy.cooldown_keys(target, instances), trigger=trigger,
        requested_by=verified.name if verified else request.requested_by,
        requested_by_verified=verified.verified if verified else "unverified", reason=request.reason,
        correlation_id=request.correlation_id, reply_to=reply_to, reply_correlation_id=reply_correlation_id,
        created_time=now, last_updated_time=now, status=OperationStatus.QUEUED,
        evidence_mode=request.capture_evidence or runtime.settings.evidence,
        deferred={"request": wire(request), "notBefore": (now + timedelta(seconds=wait)).isoformat(),
                  "retryAfter": wait, "throttled": error.error_dict()})
    won, existing = await runtime.ledger.claim(record)
    if not won:
        return False, existing
    await runtime.ledger.index(record)
    await publish_info(runtime, EventType.QUEUED, record)
    log.info("ARM throttled the preflight of %s for %s: queued, read again in %d s", record.operation_id,
             record.target, wait)
    return True, record
