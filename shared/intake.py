"""The one path every entry surface shares: preflight -> policy -> claim -> submit -> hand off.

Claim before submit: the durable instance id comes from the idempotency key, so a second
request with the same key finds the claim and never POSTs again. The orchestration input holds
no secrets; the secrets go to ARM from here, in memory only.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared import policy, runtime
from shared.compute import ComputeClient
from shared.durable_data import decode
from shared.errors import ReimagerError
from shared.events import ACCEPTED, EventData, Publisher, Trigger, build_event
from shared.ids import lock_id, operation_id
from shared.models import ReimageRequest
from shared.monitor import LOCK, MONITOR, SUBMIT_FAILED, SUBMITTED, MonitorState
from shared.settings import Settings

log = logging.getLogger("reimager.intake")
TERMINAL = {"Succeeded", "Failed", "Canceled", "TimedOut"}


@dataclass
class Outcome:
    """What an entry surface answers: an HTTP status, a JSON body and headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_error(cls, exc: ReimagerError) -> Outcome:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        return cls(exc.status, exc.body(), headers)


def _runtime(status: Any) -> str | None:
    value = getattr(status, "runtime_status", None)
    return getattr(value, "value", value)


def operation_view(status: Any) -> dict[str, Any] | None:
    """The public view of an operation, from its durable status; None if there is no such instance."""
    runtime = _runtime(status)
    if runtime is None:
        return None
    state = MonitorState.model_validate(decode(status.input_) or {})
    custom = decode(status.custom_status) or {}
    error = custom.get("error")
    if runtime in ("Running", "Pending", "ContinuedAsNew"):
        current = custom.get("status") or "Accepted"
    elif runtime == "Completed":
        output = decode(status.output) or {}
        current, error = output.get("status", "Failed"), output.get("error")
    else:
        current = "Failed"
        error = error or {"code": "OrchestrationFailed", "message": f"the monitor ended as {runtime}"}

    def iso(value: Any) -> str | None:
        return value.isoformat() if isinstance(value, datetime) else value

    return {"operationId": state.operation_id, "requestId": state.request_id, "status": current,
            "target": state.target, "instanceIds": state.instance_ids, "trigger": state.trigger,
            "requestedBy": state.requested_by, "createdTime": iso(status.created_time),
            "lastUpdatedTime": iso(status.last_updated_time), "polls": custom.get("polls", state.polls),
            "error": error}


@dataclass
class Intake:
    settings: Settings
    client: Any  # DurableOrchestrationClient
    compute: ComputeClient
    publisher: Publisher | None = None

    async def submit(self, request: ReimageRequest, *, trigger: Trigger, default_key: str | None = None,
                     reply_to: str | None = None, reply_correlation_id: str | None = None,
                     base_url: str = "") -> Outcome:
        key = request.request_id or default_key or f"auto:{uuid.uuid4()}"
        op_id = operation_id(key)
        target = request.resolved_target
        existing = await self.client.get_status(op_id, show_input=True)
        view = operation_view(existing)
        if view is not None:
            return self._duplicate(view, target.id, base_url)

        policy.check_scope(target, self.settings)
        model = await self.compute.get_model(target)
        policy.check_model(request, model, self.settings)
        await policy.check_cooldown(request, self.client)
        call = request.arm_call(self.settings.compute_api_version)
        if request.dry_run:
            return Outcome(200, {"dryRun": True, "target": target.id, "plan": call.plan(), "checks": [
                {"name": "scope", "result": "passed"}, {"name": "targetExists", "result": "passed"},
                {"name": "protectTag", "result": "passed"}, {"name": "instanceCount", "result": "passed"},
                {"name": "targetModel", "result": "passed", "osType": model.os_type,
                 "ephemeralOSDisk": model.ephemeral_os_disk},
                {"name": "cooldown", "result": "passed"}]})

        state = MonitorState(
            operation_id=op_id, request_id=key, correlation_id=request.correlation_id, target=target.id,
            lock_id=lock_id(target.lock_key), cooldown_keys=policy.cooldown_keys(request),
            instance_ids=request.effective_instance_ids, trigger=trigger, requested_by=request.requested_by,
            reason=request.reason, reply_to=reply_to, reply_correlation_id=reply_correlation_id)
        claimed = await self._claim(state, base_url)
        if claimed is not None:
            return claimed
        try:
            submission = await self.compute.submit(call)
        except ReimagerError as exc:
            await self._raise(op_id, SUBMIT_FAILED, {"error": exc.error.model_dump(exclude_none=True)})
            exc.extra["operationId"] = op_id
            raise
        await self._raise(op_id, SUBMITTED, submission.to_dict())
        log.info("submitted %s %s for %s (%s)", call.operation.value, target.id, op_id, trigger)
        await self._publish_accepted(state)
        status_url = f"{base_url}/api/reimage/{op_id}"
        retry = str(max(1, int(submission.retry_after or self.settings.poll_default_seconds)))
        return Outcome(202, {"operationId": op_id, "status": "Accepted", "statusUrl": status_url,
                             "target": target.id, "instanceIds": state.instance_ids},
                       {"Location": status_url, "Retry-After": retry})

    def _duplicate(self, view: dict[str, Any], target_id: str, base_url: str) -> Outcome:
        if view["target"].lower() != target_id.lower():
            raise ReimagerError(409, "RequestIdConflict", "This requestId was already used for another target.",
                                target="requestId", extra={"operationId": view["operationId"]})
        status_url = f"{base_url}/api/reimage/{view['operationId']}"
        body = {**view, "statusUrl": status_url, "duplicate": True}
        if view["status"] in TERMINAL:
            return Outcome(200, body)
        return Outcome(202, body, {"Location": status_url, "Retry-After": str(self.settings.poll_default_seconds)})

    async def _claim(self, state: MonitorState, base_url: str) -> Outcome | None:
        """Take the target's lock, then start the monitor. None means claimed: go on and submit."""
        hold = self.settings.submit_timeout_seconds + self.settings.operation_timeout_minutes * 60 + 600
        lock_input = {"operationId": state.operation_id, "target": state.target, "holdSeconds": hold}
        for attempt in range(2):
            try:
                await self.client.start_new(LOCK, state.lock_id, lock_input)
                break
            except Exception:  # the extension refuses a start on a running instance
                lock = await self.client.get_status(state.lock_id, show_input=True)
                if _runtime(lock) in ("Running", "Pending"):
                    holder = (decode(lock.input_) or {}).get("operationId")
                    if holder == state.operation_id:  # the same key, racing: one claim, one POST
                        view = operation_view(await self.client.get_status(state.operation_id, show_input=True))
                        if view is not None:
                            return self._duplicate(view, state.target, base_url)
                        return Outcome(202, {"operationId": state.operation_id, "status": "Accepted",
                                             "target": state.target, "instanceIds": state.instance_ids,
                                             "statusUrl": f"{base_url}/api/reimage/{state.operation_id}",
                                             "duplicate": True})
                    raise ReimagerError(409, "OperationInProgress",
                                        f"Another reimage is in flight on this target: {holder}.", target="target",
                                        extra={"operationId": holder}) from None
                if attempt == 1:
                    raise ReimagerError(503, "DurableUnavailable", "Could not claim the target; try again.",
                                        transient=True, retry_after=5) from None
        try:
            await self.client.start_new(MONITOR, state.operation_id, state.dump())
        except Exception:
            await self._raise(state.lock_id, "Release", {"operationId": state.operation_id, "submitted": False})
            raise ReimagerError(503, "DurableUnavailable", "Could not start the operation; try again.",
                                transient=True, retry_after=5) from None
        return None

    async def _raise(self, instance_id: str, event: str, data: dict[str, Any]) -> None:
        for attempt in range(3):
            try:
                await self.client.raise_event(instance_id, event, data)
                return
            except Exception:
                if attempt == 2:
                    log.exception("could not raise %s on %s", event, instance_id)
                    return  # the monitor's bounded wait turns this into a terminal event
                await asyncio.sleep(0.2 * (attempt + 1))

    async def _publish_accepted(self, state: MonitorState) -> None:
        if self.publisher is None:
            return
        data = EventData(operation_id=state.operation_id, request_id=state.request_id,
                         correlation_id=state.correlation_id, target=state.target, instance_ids=state.instance_ids,
                         status="Accepted", trigger=state.trigger, requested_by=state.requested_by,
                         reason=state.reason, submitted_at=runtime.now())
        try:
            await self.publisher.publish(build_event(ACCEPTED, data))
        except Exception:  # the completion event is the guarantee; accepted is informational
            log.warning("could not publish the accepted event for %s", state.operation_id, exc_info=True)
