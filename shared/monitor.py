"""The durable timer loop: one orchestration owns each reimage from claim to completion event.

claim -> wait (bounded) for Submitted/SubmitFailed -> poll at ARM's pace -> publish exactly one
completion event -> release the target. Orchestrator code must be deterministic: time comes
from the context, and everything that touches the network runs in an activity.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from shared import runtime
from shared.durable_data import decode
from shared.errors import ApiError
from shared.events import COMPLETED, EventData, EventType, Trigger, build_event
from shared.ids import cooldown_id
from shared.operations import OperationState, next_poll_delay
from shared.settings import get_settings

log = logging.getLogger("reimager.monitor")

MONITOR = "reimage_monitor"
LOCK = "reimage_lock"
COOLDOWN = "reimage_cooldown"
POLL_ACTIVITY = "poll_reimage_operation"
PUBLISH_ACTIVITY = "publish_reimage_event"
RELEASE_ACTIVITY = "release_reimage_target"
SUBMITTED, SUBMIT_FAILED, RELEASE = "Submitted", "SubmitFailed", "Release"


class MonitorState(BaseModel):
    """Orchestration input, carried across continue_as_new. Holds no secrets (it is stored)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    operation_id: str
    request_id: str
    correlation_id: str | None = None
    target: str
    lock_id: str
    cooldown_keys: list[str] = []
    instance_ids: list[str] | None = None
    trigger: Trigger
    requested_by: str | None = None
    reason: str | None = None
    reply_to: str | None = None
    reply_correlation_id: str | None = None
    submission: dict[str, Any] | None = None
    submitted_at: datetime | None = None
    polls: int = 0
    read_failures: int = 0
    last_retry_after: float | None = None
    generation: int = 0

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _status(state: MonitorState, status: str, arm_status: str | None = None,
            error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": status, "target": state.target, "instanceIds": state.instance_ids, "polls": state.polls,
            "armStatus": arm_status, "submittedAt": state.submitted_at.isoformat() if state.submitted_at else None,
            "readFailures": state.read_failures, "error": error}


def _retry(first_seconds: int, attempts: int) -> Any:
    import azure.durable_functions as df

    return df.RetryOptions(first_retry_interval_in_milliseconds=first_seconds * 1000,
                           max_number_of_attempts=attempts)


def monitor_orchestrator(context: Any) -> Generator[Any, Any, dict[str, Any]]:
    settings = get_settings()
    state = MonitorState.model_validate(context.get_input())
    if state.submission is None:
        context.set_custom_status(_status(state, "Accepted"))
        timer = context.create_timer(context.current_utc_datetime + timedelta(seconds=settings.submit_timeout_seconds))
        submitted = context.wait_for_external_event(SUBMITTED)
        failed = context.wait_for_external_event(SUBMIT_FAILED)
        winner = yield context.task_any([submitted, failed, timer])
        if winner is timer:
            lost = {"code": "SubmissionLost", "message": "the reimage was claimed but its submission was not "
                    f"confirmed within {settings.submit_timeout_seconds} s; if the caller crashed after sending it, "
                    "ARM may still be reimaging the target: check it before asking again"}
            return (yield from _finish(context, state, "Failed", lost, submitted_to_arm=False))
        timer.cancel()
        if winner is failed:
            return (yield from _finish(context, state, "Failed", (decode(failed.result) or {}).get("error"),
                                       submitted_to_arm=False))
        state.submission = dict(decode(submitted.result) or {})
        state.submitted_at = context.current_utc_datetime
        state.last_retry_after = state.submission.get("retryAfter")
        if state.submission.get("statusCode") == 200:
            return (yield from _finish(context, state, "Succeeded", None))
        context.set_custom_status(_status(state, "Running"))

    url = state.submission.get("asyncOperationUrl") or state.submission.get("locationUrl")
    mode = "async" if state.submission.get("asyncOperationUrl") else "location"
    if not url:
        err = {"code": "NoOperationUrl", "message": "ARM accepted the reimage but returned no operation URL"}
        return (yield from _finish(context, state, "Failed", err))
    assert state.submitted_at is not None
    deadline = state.submitted_at + timedelta(minutes=settings.operation_timeout_minutes)
    polls_this_generation = 0
    while True:
        delay = next_poll_delay(state.last_retry_after, settings.poll_min_seconds, settings.poll_max_seconds,
                                settings.poll_default_seconds)
        fire_at = min(context.current_utc_datetime + timedelta(seconds=delay), deadline)
        yield context.create_timer(fire_at)
        arm_status = None
        try:
            result = yield context.call_activity_with_retry(
                POLL_ACTIVITY, _retry(settings.poll_min_seconds, 3), {"url": url, "mode": mode})
        except Exception:  # the status could not be read, even after retries: keep polling to the deadline
            result = None
            state.read_failures += 1
        state.polls += 1
        if result is not None:
            state.last_retry_after = result.get("retryAfter")
            arm_status = result["state"]
            if result.get("untrusted"):
                err = {"code": "UntrustedOperationUrl", "message": result.get("errorMessage")}
                return (yield from _finish(context, state, "Failed", err))
            if OperationState(arm_status).terminal:
                arm_error = None if arm_status == "Succeeded" else {
                    "code": result.get("errorCode"), "message": result.get("errorMessage")}
                return (yield from _finish(context, state, arm_status, arm_error))
        context.set_custom_status(_status(state, "Running", arm_status))
        if context.current_utc_datetime >= deadline:
            err = {"code": "TimedOut", "message": f"the operation did not finish within "
                   f"{settings.operation_timeout_minutes} minutes; ARM may still complete it"}
            return (yield from _finish(context, state, "TimedOut", err))
        polls_this_generation += 1
        if polls_this_generation >= settings.polls_per_generation:
            state.generation += 1
            context.continue_as_new(state.dump())  # keeps the history small on long operations
            return {}


def _finish(context: Any, state: MonitorState, status: str, error: dict[str, Any] | None,
            submitted_to_arm: bool = True) -> Generator[Any, Any, dict[str, Any]]:
    now: datetime = context.current_utc_datetime
    data = EventData(
        operation_id=state.operation_id, request_id=state.request_id, correlation_id=state.correlation_id,
        target=state.target, instance_ids=state.instance_ids, status=status,
        error=ApiError(code=error.get("code") or "Unknown", message=error.get("message") or "") if error else None,
        trigger=state.trigger, requested_by=state.requested_by, reason=state.reason,
        submitted_at=state.submitted_at, completed_at=now,
        duration_seconds=(now - state.submitted_at).total_seconds() if state.submitted_at else None,
        polls=state.polls,
    )
    outcome = data.model_dump(mode="json", by_alias=True)
    context.set_custom_status(_status(state, status, None, outcome["error"]))
    yield context.call_activity_with_retry(RELEASE_ACTIVITY, _retry(2, 10), {
        "lockId": state.lock_id, "operationId": state.operation_id, "status": status,
        "submitted": submitted_to_arm, "cooldownKeys": state.cooldown_keys, "endedAt": now.isoformat()})
    yield context.call_activity_with_retry(PUBLISH_ACTIVITY, _retry(5, 20), {
        "type": COMPLETED, "data": outcome, "time": now.isoformat(),
        "replyTo": state.reply_to, "replyCorrelationId": state.reply_correlation_id})
    return outcome


def lock_orchestrator(context: Any) -> Generator[Any, Any, dict[str, Any]]:
    """Held while an operation runs on a VM or scale set; a start on it while running is refused."""
    inp = context.get_input() or {}
    timer = context.create_timer(context.current_utc_datetime + timedelta(seconds=int(inp.get("holdSeconds", 3600))))
    release = context.wait_for_external_event(RELEASE)
    winner = yield context.task_any([release, timer])
    if winner is timer:
        return {"operationId": inp.get("operationId"), "released": False, "expired": True}
    timer.cancel()
    return {**(decode(release.result) or {}), "released": True}


def cooldown_orchestrator(context: Any) -> Generator[Any, Any, dict[str, Any]]:
    """Runs until the cooldown ends; intake refuses the target while it is running."""
    inp = context.get_input() or {}
    yield context.create_timer(datetime.fromisoformat(inp["until"]))
    return {"operationId": inp.get("operationId"), "ended": True}


# ---- activities ---------------------------------------------------------------------------
class TransientReadError(RuntimeError):
    """The status read failed; the orchestrator's retry will try again."""


async def poll_operation(payload: dict[str, Any]) -> dict[str, Any]:
    from shared.compute import UntrustedOperationUrl  # azure-core: only activities need it

    try:
        result = await runtime.compute().poll(payload["url"], payload["mode"])
    except UntrustedOperationUrl as exc:
        return {"state": "Failed", "untrusted": True, "errorCode": exc.code, "errorMessage": exc.error.message}
    if result.read_failed:
        raise TransientReadError(f"operation status read failed: HTTP {result.status_code} {result.error_code or ''}")
    return result.to_dict()


async def publish_event(payload: dict[str, Any]) -> dict[str, Any]:
    event_type: EventType = payload["type"]
    event = build_event(event_type, EventData.model_validate(payload["data"]),
                        time=datetime.fromisoformat(payload["time"]))
    await runtime.publisher().publish(event, reply_to=payload.get("replyTo"),
                                      reply_correlation_id=payload.get("replyCorrelationId"))
    log.info("published %s for %s: %s", event.type, event.data.operation_id, event.data.status)
    return {"eventId": event.id}


async def release_target(payload: dict[str, Any], client: Any) -> dict[str, Any]:
    """End the target's lock and, after a real submission, start its cooldowns."""
    settings = get_settings()
    try:
        await client.raise_event(payload["lockId"], RELEASE, {
            "operationId": payload["operationId"], "status": payload["status"], "submitted": payload["submitted"],
            "endedAt": payload["endedAt"]})
    except Exception as exc:  # already released or expired: nothing to do
        log.info("lock %s not released: %s", payload["lockId"], exc)
    started = []
    if payload["submitted"] and settings.cooldown_minutes > 0:
        until = datetime.fromisoformat(payload["endedAt"]) + timedelta(minutes=settings.cooldown_minutes)
        for key in payload.get("cooldownKeys", []):
            try:
                await client.start_new(COOLDOWN, cooldown_id(key), {"until": until.isoformat(),
                                                                    "operationId": payload["operationId"]})
                started.append(key)
            except Exception as exc:  # a cooldown already running covers it
                log.info("cooldown for %s not started: %s", key, exc)
    return {"cooldowns": started}
