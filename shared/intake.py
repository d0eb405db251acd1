"""The one path every entry surface shares: preflight -> policy -> claim -> admit -> submit -> monitor.

Every coordination decision is one atomic ledger write: the claim is an insert-if-absent keyed
by the idempotency key; admission is a compare-and-swap on the target's record (lease,
cooldowns, suspension). Durable Functions only runs the timer loop that polls ARM. The core
returns typed results and raises typed errors; entry surfaces shape them for their callers.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

from shared import completion, policy
from shared.compute import ComputeError, SubmissionUncertain, TargetModel
from shared.errors import ReimagerError
from shared.events import ACCEPTED, Trigger, build_event
from shared.ids import operation_id
from shared.ledger import OperationRecord
from shared.models import ArmCall, ReimageRequest
from shared.monitor import MONITOR, MonitorInput
from shared.operations import LEARN_FROM_LAST, expected_duration, next_poll_delay
from shared.runtime import Runtime

log = logging.getLogger("reimager.intake")
IN_PROGRESS = ("Claimed", "Submitting")
_JOIN_WAIT_SECONDS = 5.0  # how long a same-key request waits for the first one's submission


@dataclass(frozen=True)
class Accepted:
    """The request is (or already was) an operation."""

    record: OperationRecord
    retry_after: int
    duplicate: bool = False


@dataclass(frozen=True)
class Planned:
    """A dry run: what would be sent, and every check with its result."""

    target: str
    plan: dict[str, Any]
    checks: list[dict[str, Any]]


Result = Accepted | Planned


@dataclass
class Intake:
    runtime: Runtime
    client: Any  # DurableOrchestrationClient

    @property
    def settings(self) -> Any:
        return self.runtime.settings

    async def submit(self, request: ReimageRequest, *, trigger: Trigger, default_key: str | None = None,
                     reply_to: str | None = None, reply_correlation_id: str | None = None) -> Result:
        given = request.request_id or default_key
        key = given or f"auto:{uuid.uuid4()}"
        op_id = operation_id(key)
        target = request.resolved_target
        ledger = self.runtime.ledger
        if given is not None and not request.dry_run:
            # A fresh key cannot have a record; a given one usually is a retry: answer it without ARM.
            existing = await ledger.get(op_id)
            if existing is not None:
                return await self._joined(existing, request, trigger=trigger, default_key=default_key,
                                          reply_to=reply_to, reply_correlation_id=reply_correlation_id)

        policy.check_scope(target, self.settings)
        model = await self.runtime.compute.get_model(target)
        instances = policy.check_model(request, model, self.settings)
        call = request.arm_call(self.settings.compute_api_version, instance_ids=instances)
        cooldown_keys = policy.cooldown_keys(target, instances)
        if request.dry_run:
            return await self._plan(request, model, call, cooldown_keys)

        now = self.runtime.now()
        record = OperationRecord(
            operation_id=op_id, request_id=key, target=target.id, lease_key=target.lock_key, instance_ids=instances,
            cooldown_keys=cooldown_keys, options=call.options(), trigger=trigger, requested_by=request.requested_by,
            reason=request.reason, correlation_id=request.correlation_id, reply_to=reply_to,
            reply_correlation_id=reply_correlation_id, created_time=now, last_updated_time=now)
        won, existing = await ledger.claim(record)
        if not won:
            return await self._joined(existing, request, trigger=trigger, default_key=default_key,
                                      reply_to=reply_to, reply_correlation_id=reply_correlation_id)
        await ledger.index(record)
        try:
            await completion.admit(self.runtime, record)
        except ReimagerError:
            await self._free(record)
            raise
        record.status, record.last_updated_time = "Submitting", self.runtime.now()
        try:
            record = await ledger.replace(record)  # CAS: fails only if a same-key request took the claim over
        except (ResourceModifiedError, ResourceNotFoundError):
            raise ReimagerError(503, "ClaimLost", "This request stalled and another with the same requestId took "
                                "it over; nothing was sent by this one. Ask again to see that operation.",
                                target="requestId", retry_after=2, transient=True) from None
        return await self._submit(record, call)

    async def _submit(self, record: OperationRecord, call: ArmCall) -> Accepted:
        try:
            submission = await self.runtime.compute.submit(call)
        except SubmissionUncertain as exc:
            # It may have been applied: the operation ends here, and the cooldown still starts.
            await self._uncertain(record, exc)
            raise
        except ComputeError as exc:
            if exc.arm_status >= 500 or exc.arm_status == 408:
                await self._uncertain(record, exc)
                raise
            # ARM refused it (4xx, or throttled after our retries): nothing was applied. Free the key.
            await completion.release_lease(self.runtime, record, applied=False)
            await self._free(record)
            raise
        # Anything else raised above (a bug, a cancellation) leaves the record Submitting: the POST may
        # have gone out, and the sweeper ends it SubmissionLost.
        now = self.runtime.now()

        def accepted(r: OperationRecord) -> OperationRecord:
            r.status, r.applied, r.submitted_at, r.last_updated_time = "Accepted", True, now, now
            r.arm = submission.to_dict()
            return r

        stored = await self.runtime.ledger.update(record.operation_id, accepted)
        assert stored is not None
        log.info("submitted %s %s for %s (%s)", call.operation.value, record.target, record.operation_id,
                 record.trigger)
        if submission.status_code == 200:  # ARM finished synchronously
            await completion.finish(self.runtime, record.operation_id, "Succeeded", None, applied=True)
        else:
            await start_monitor(self.client, self.runtime, stored)
        await self._publish_accepted(stored)
        return Accepted(stored, self.first_poll(submission.retry_after))

    async def _uncertain(self, record: OperationRecord, exc: ReimagerError) -> None:
        """The POST may have been applied: the operation ends Failed, its one event is sent, the cooldown starts."""
        error = exc.error_dict()
        error.setdefault("details", [{"code": "SubmissionUncertain", "message": "the reimage may have been applied; "
                                      "check the target before asking again"}])
        await completion.finish(self.runtime, record.operation_id, "Failed", error, applied=True)
        exc.extra.update(operationId=record.operation_id, completed=True)

    def first_poll(self, retry_after: float | None) -> int:
        s = self.settings
        return next_poll_delay(retry_after, s.poll_min_seconds, s.poll_max_seconds, s.poll_default_seconds)

    async def _free(self, record: OperationRecord) -> None:
        await self.runtime.ledger.release_claim(record)
        await self.runtime.ledger.settled(record.operation_id)

    async def _joined(self, existing: OperationRecord, request: ReimageRequest, **kw: Any) -> Result:
        """Another request holds this key. Wait briefly while it is being submitted, then answer with it."""
        target = request.resolved_target
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _JOIN_WAIT_SECONDS
        record: OperationRecord | None = existing
        while record is not None and record.status in IN_PROGRESS and loop.time() < deadline:
            # Real time, not the runtime's clock: this is a short wait for a concurrent request.
            await asyncio.sleep(0.05)
            record = await self.runtime.ledger.get(existing.operation_id)
        if record is not None and record.status == "Claimed":
            # Claimed for that long and never marked Submitting: its owner died before reaching ARM (a live
            # one takes milliseconds). Take it over by a compare-and-swap delete; if the owner was only slow,
            # its own CAS to Submitting now fails, so still only one POST.
            if await self.runtime.ledger.release_claim(record):
                log.warning("took over %s, claimed but never submitted", record.operation_id)
            record = None
        if record is None:  # the first attempt reached nothing and freed the key: this one may try
            return await self.submit(request, **kw)
        if record.lease_key != target.lock_key or record.target.lower() != target.id.lower():
            raise ReimagerError(409, "RequestIdConflict", "This requestId was already used for another target; "
                                "use a new requestId for a new request.", target="requestId",
                                extra={"operationId": record.operation_id})
        # Submitting: the POST is under way (or its owner died; the sweeper then ends it SubmissionLost).
        # Either way the operation ends with its one event: this request is answered with it.
        return Accepted(record, self.first_poll(None), duplicate=True)

    async def _plan(self, request: ReimageRequest, model: TargetModel, call: ArmCall,
                    cooldown_keys: list[str]) -> Planned:
        target = request.resolved_target
        record = await self.runtime.ledger.get_target(target.lock_key)
        checks: list[dict[str, Any]] = [
            {"name": "scope", "result": "passed"}, {"name": "targetExists", "result": "passed"},
            {"name": "protectTag", "result": "passed"}, {"name": "instanceCount", "result": "passed"},
            {"name": "targetModel", "result": "passed", "osType": model.os_type,
             "ephemeralOSDisk": model.ephemeral_os_disk},
            policy.cooldown_check(record, cooldown_keys, self.runtime.now()),
        ]
        return Planned(target.id, call.plan(), checks)

    async def _publish_accepted(self, record: OperationRecord) -> None:
        try:
            await self.runtime.publisher.publish(build_event(ACCEPTED, completion.event_data(record),
                                                             time=self.runtime.now()))
        except Exception:  # the completion event is the guarantee; accepted is informational
            log.warning("could not publish the accepted event for %s", record.operation_id, exc_info=True)


async def start_monitor(client: Any, runtime: Runtime, record: OperationRecord) -> bool:
    """Hand the ARM operation to the durable timer loop. A failure here is repaired by the sweeper."""
    state = MonitorInput.for_record(record, runtime.settings, await learned_duration(runtime, record))
    try:
        await client.start_new(MONITOR, record.operation_id, state.dump())
        return True
    except Exception:
        log.warning("could not start the monitor for %s; the sweeper will", record.operation_id, exc_info=True)
        return False


async def learned_duration(runtime: Runtime, record: OperationRecord) -> float | None:
    """How long this target's recent reimages took (submission to completion), for the poll schedule
    when ARM sends no Retry-After (shared.operations.next_poll_offset). None: no history, or not needed."""
    if (record.arm or {}).get("retryAfter") is not None:
        return None
    try:
        page = await runtime.ledger.list_operations(lease_key=record.lease_key, top=LEARN_FROM_LAST + 1)
    except Exception:  # learning is an optimisation: the fixed default still works
        log.warning("could not read the history of %s", record.lease_key, exc_info=True)
        return None
    return expected_duration([r.arm_seconds if r.arm_seconds is not None
                              else (r.completed_at - r.submitted_at).total_seconds() for r in page.items
                              if r.operation_id != record.operation_id and r.status == "Succeeded"
                              and r.submitted_at is not None and r.completed_at is not None])
