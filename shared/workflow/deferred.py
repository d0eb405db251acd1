"""Requests whose preflight read ARM throttled, resumed once its Retry-After has passed (the sweeper calls this).

Such a request was answered 202 `Queued` and recorded with what it asked, never secrets
(shared/workflow/throttling.py defer). Once `notBefore` has passed, one compare-and-swap takes it (Queued ->
Claimed, under a token, so a second sweeper run or a cancel cannot act on it too), and it goes the way every
request goes: the preflight read (shared with every request for the target within PREFLIGHT_CACHE_SECONDS),
policy, then admission and the POST or the queue (shared/workflow/intake.py). Throttled again: back to Queued
with a new `notBefore`. Refused by policy now: it ends Failed with the refusal, one event (it was accepted).
Waiting longer than QUEUE_MAX_WAIT_MINUTES: it ends Canceled / QueueExpired.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from shared.domain.errors import ComputeThrottled, ErrorCode, ReimagerError
from shared.domain.records import OperationRecord
from shared.domain.request import parse_request
from shared.domain.status import OperationStatus
from shared.rules import policy
from shared.runtime import Runtime
from shared.workflow import fleet
from shared.workflow.completion import end_waiting, finish
from shared.workflow.intake import Intake
from shared.workflow.throttling import wait_of

log = logging.getLogger("reimager.deferred")


def due(record: OperationRecord, now: datetime) -> bool:
    info = record.deferred or {}
    return record.status == OperationStatus.QUEUED and "notBefore" in info and \
        datetime.fromisoformat(info["notBefore"]) <= now


async def resume(runtime: Runtime, client: Any, record: OperationRecord) -> bool:
    """Read the target again for a request whose preflight was throttled, and admit it. Whether it acted."""
    now = runtime.now()
    if not due(record, now):
        return False
    limit = timedelta(minutes=runtime.settings.queue_max_wait_minutes)
    if now - record.created_time > limit:
        await end_waiting(runtime, [record.operation_id], ErrorCode.QUEUE_EXPIRED, "ARM throttled every read of the "
                          f"target for longer than QUEUE_MAX_WAIT_MINUTES ({runtime.settings.queue_max_wait_minutes});"
                          " the request was not reimaged.", only_if=OperationStatus.QUEUED)
        return True
    claimed = await _take(runtime, record, now)
    if claimed is None:
        return False
    try:
        await _admit(runtime, client, claimed)
    except ReimagerError as exc:
        if not exc.extra.get("completed"):  # accepted, then refused: it ends with its one event, saying why
            await finish(runtime, record.operation_id, OperationStatus.FAILED, exc.error_dict(), applied=False,
                         client=client)
    return True


async def _take(runtime: Runtime, record: OperationRecord, now: datetime) -> OperationRecord | None:
    token = uuid.uuid4().hex

    def take(r: OperationRecord) -> OperationRecord | None:
        if not due(r, now):
            return None
        r.status, r.last_updated_time = OperationStatus.CLAIMED, now
        # a claim attempt of its own, as a fresh claim has: what it holds on the target, and until when a same-key
        # request must leave it be (shared/workflow/intake.py)
        r.attempt, r.claimed_until = token[:16], now + timedelta(seconds=runtime.settings.claim_seconds)
        r.deferred = {**(r.deferred or {}), "resumedBy": token}
        return r

    claimed = await runtime.ledger.update(record.operation_id, take)
    return claimed if claimed is not None and (claimed.deferred or {}).get("resumedBy") == token else None


async def _admit(runtime: Runtime, client: Any, record: OperationRecord) -> None:
    settings = runtime.settings
    assert record.deferred is not None
    request = parse_request(record.deferred["request"], default_subscription_id=settings.default_subscription_id,
                            max_instances=settings.max_instances_per_request)
    target = request.resolved_target
    policy.check_scope(target, settings)
    try:
        model = await runtime.compute.get_model(target)
    except ComputeThrottled as exc:
        await _wait_again(runtime, record, exc)
        return
    try:
        checked = await fleet.preflight(runtime, request, model)  # a Flexible member: its set's (read now)
    except ComputeThrottled as exc:
        await _wait_again(runtime, record, exc)
        return
    gov, call = checked.governed, checked.call

    def ready(r: OperationRecord) -> OperationRecord | None:
        if r.status != OperationStatus.CLAIMED:
            return None
        r.instance_ids, r.cooldown_keys = checked.instances, checked.cooldown_keys
        r.lease_key, r.scale_set = gov.target.lock_key, gov.scale_set
        r.options, r.last_updated_time = call.options(), runtime.now()
        return r

    stored = await runtime.ledger.update(record.operation_id, ready)
    if stored is None:
        return
    if stored.lease_key != record.lease_key:  # a Flexible member, now its set's: listed under the set too
        await runtime.ledger.index(stored)
    log.info("resuming %s for %s: ARM answered its preflight read", record.operation_id, record.target)
    await Intake(runtime, client).admit_and_submit(stored, call, capacity=gov.capacity, target_id=gov.target.vm_id,
                                                   secret=False, symptom=not request.all_instances)


async def _wait_again(runtime: Runtime, record: OperationRecord, error: ComputeThrottled) -> None:
    now, wait = runtime.now(), wait_of(error)

    def queued(r: OperationRecord) -> OperationRecord | None:
        if r.status != OperationStatus.CLAIMED:
            return None
        r.status, r.last_updated_time = OperationStatus.QUEUED, now
        r.deferred = {**(r.deferred or {}), "notBefore": (now + timedelta(seconds=wait)).isoformat(),
                      "retryAfter": wait, "throttled": error.error_dict()}
        r.deferred.pop("resumedBy", None)
        return r

    await runtime.ledger.update(record.operation_id, queued)
    log.info("ARM still throttles reads of %s: %s waits %d s more", record.target, record.operation_id, wait)
