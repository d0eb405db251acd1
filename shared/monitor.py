"""The durable timer loop: one orchestration per submitted ARM operation, polling it to the end.

It is started only after ARM accepted the POST (the ledger holds the claim and the lease), so
it coordinates nothing: it polls at ARM's pace, then one activity settles the operation in the
ledger and sends its single completion event. Orchestrator code is deterministic: time comes
from the context, every value it needs was copied into its input when the operation was
accepted (it never reads settings or the environment), and the network is touched only in
activities.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from shared.durable_data import decode
from shared.operations import OperationState, next_poll_offset

if TYPE_CHECKING:
    from shared.ledger import OperationRecord
    from shared.runtime import Runtime
    from shared.settings import Settings

log = logging.getLogger("reimager.monitor")

MONITOR = "reimage_monitor"
POLL_ACTIVITY = "poll_reimage_operation"
FINISH_ACTIVITY = "finish_reimage_operation"
SUBMIT_ACTIVITY = "submit_reimage_batch"
HEALTH_ACTIVITY = "read_reimage_health"


class MonitorInput(BaseModel):
    """Orchestration input, carried across continue_as_new. Holds no secrets (it is stored)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    operation_id: str
    url: str | None
    mode: str
    submitted_at: datetime | None
    submit: bool = False  # a batch formed from the queue: gather, then seal and POST from an activity
    gather_seconds: int = 0
    last_retry_after: float | None = None
    polls: int = 0
    read_failures: int = 0
    generation: int = 0
    # Copied from settings when the operation was accepted: replay must not depend on them.
    poll_min_seconds: int
    poll_max_seconds: int
    poll_default_seconds: int
    operation_timeout_minutes: int
    polls_per_generation: int
    health_grace_minutes: int = 0
    health_since: datetime | None = None  # ARM said Succeeded: reading instance views until healthy or grace
    # Learned at acceptance from the target's past operations (shared.operations.expected_duration).
    expected_seconds: float | None = None

    @classmethod
    def for_record(cls, record: OperationRecord, settings: Settings,
                   expected_seconds: float | None = None) -> MonitorInput:
        arm = record.arm or {}
        url = arm.get("asyncOperationUrl") or arm.get("locationUrl")
        assert record.submitted_at is not None
        return cls(operation_id=record.operation_id, url=url,
                   mode="async" if arm.get("asyncOperationUrl") else "location",
                   submitted_at=record.submitted_at, last_retry_after=arm.get("retryAfter"),
                   polls=record.polls, poll_min_seconds=settings.poll_min_seconds,
                   poll_max_seconds=settings.poll_max_seconds, poll_default_seconds=settings.poll_default_seconds,
                   operation_timeout_minutes=settings.operation_timeout_minutes,
                   polls_per_generation=settings.polls_per_generation,
                   health_grace_minutes=settings.health_grace_minutes, expected_seconds=expected_seconds)

    @classmethod
    def for_batch(cls, record: OperationRecord, settings: Settings) -> MonitorInput:
        return cls(operation_id=record.operation_id, url=None, mode="async", submitted_at=None, submit=True,
                   gather_seconds=settings.batch_gather_seconds, poll_min_seconds=settings.poll_min_seconds,
                   poll_max_seconds=settings.poll_max_seconds, poll_default_seconds=settings.poll_default_seconds,
                   operation_timeout_minutes=settings.operation_timeout_minutes,
                   polls_per_generation=settings.polls_per_generation,
                   health_grace_minutes=settings.health_grace_minutes)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _retry(first_seconds: int, attempts: int) -> Any:
    import azure.durable_functions as df

    return df.RetryOptions(first_retry_interval_in_milliseconds=first_seconds * 1000,
                           max_number_of_attempts=attempts)


def monitor_orchestrator(context: Any) -> Generator[Any, Any, Any]:
    state = MonitorInput.model_validate(decode(context.get_input()))
    if state.submit:  # a batch: let the storm gather, then seal and POST it from an activity
        if state.gather_seconds > 0:
            yield context.create_timer(context.current_utc_datetime + timedelta(seconds=state.gather_seconds))
        sent = decode((yield context.call_activity_with_retry(
            SUBMIT_ACTIVITY, _retry(state.poll_min_seconds, 10), {"operationId": state.operation_id})))
        if sent.get("outcome") != "submitted":
            return sent  # ended (refused, uncertain, empty) or requeued: the activity settled it
        state.submit, state.url, state.mode = False, sent.get("url"), sent.get("mode", "async")
        state.submitted_at = datetime.fromisoformat(sent["submittedAt"])
        state.last_retry_after = sent.get("retryAfter")
    if state.health_since is not None:
        return (yield from _verify(context, state))
    if not state.url:
        err = {"code": "NoOperationUrl", "message": "ARM accepted the reimage but returned no operation URL"}
        return (yield from _finish(context, state, "Failed", err))
    assert state.submitted_at is not None
    deadline = state.submitted_at + timedelta(minutes=state.operation_timeout_minutes)
    polls_this_generation = 0
    while True:
        elapsed = (context.current_utc_datetime - state.submitted_at).total_seconds()
        offset = next_poll_offset(elapsed, state.last_retry_after, state.expected_seconds, state.poll_min_seconds,
                                  state.poll_max_seconds, state.poll_default_seconds)
        yield context.create_timer(min(state.submitted_at + timedelta(seconds=offset), deadline))
        arm_status = None
        try:
            result = decode((yield context.call_activity_with_retry(
                POLL_ACTIVITY, _retry(state.poll_min_seconds, 3),
                {"operationId": state.operation_id, "url": state.url, "mode": state.mode, "polls": state.polls + 1})))
        except Exception:  # the status could not be read, even after retries: keep polling to the deadline
            result = None
            state.read_failures += 1
        state.polls += 1
        if isinstance(result, dict):
            state.last_retry_after = result.get("retryAfter")
            arm_status = result["state"]
            if result.get("untrusted"):
                err = {"code": "UntrustedOperationUrl", "message": str(result.get("errorMessage") or "")}
                return (yield from _finish(context, state, "Failed", err))
            if arm_status == "Succeeded" and state.health_grace_minutes > 0:
                state.health_since = context.current_utc_datetime
                return (yield from _verify(context, state))
            if OperationState(arm_status).terminal:
                arm_error = None if arm_status == "Succeeded" else {
                    "code": result.get("errorCode") or arm_status, "message": result.get("errorMessage") or ""}
                return (yield from _finish(context, state, arm_status, arm_error, arm_status))
        if context.current_utc_datetime >= deadline:
            err = {"code": "TimedOut", "message": f"the operation did not finish within "
                   f"{state.operation_timeout_minutes} minutes; ARM may still complete it"}
            return (yield from _finish(context, state, "TimedOut", err, arm_status))
        polls_this_generation += 1
        if polls_this_generation >= state.polls_per_generation:
            state.generation += 1
            context.continue_as_new(state.dump())  # keeps the history (and so replay) small
            return None


def _verify(context: Any, state: MonitorInput) -> Generator[Any, Any, Any]:
    """ARM says Succeeded: read the instance views until every machine is healthy or the grace ends.
    A view that cannot be read counts as Unknown; nothing here waits past the grace."""
    assert state.health_since is not None
    grace_ends = state.health_since + timedelta(minutes=state.health_grace_minutes)
    reads = 0
    while True:
        final = context.current_utc_datetime >= grace_ends
        try:
            health = decode((yield context.call_activity_with_retry(
                HEALTH_ACTIVITY, _retry(state.poll_min_seconds, 3),
                {"operationId": state.operation_id, "final": final})))
        except Exception:
            health = {"done": True, "health": "Unknown", "detail": None}
        reads += 1
        if health.get("done") or final:
            return (yield from _finish(context, state, "Succeeded", None, "Succeeded", health=health.get("health"),
                                       health_detail=health.get("detail")))
        yield context.create_timer(min(context.current_utc_datetime + timedelta(
            seconds=max(state.poll_min_seconds, state.poll_default_seconds)), grace_ends))
        if reads >= state.polls_per_generation:
            context.continue_as_new(state.dump())
            return None


def _finish(context: Any, state: MonitorInput, status: str, error: dict[str, Any] | None,
            arm_status: str | None = None, *, health: str | None = None,
            health_detail: dict[str, str] | None = None) -> Generator[Any, Any, Any]:
    outcome = decode((yield context.call_activity_with_retry(FINISH_ACTIVITY, _retry(5, 20), {
        "operationId": state.operation_id, "status": status, "error": error, "polls": state.polls,
        "armStatus": arm_status, "health": health, "healthDetail": health_detail})))
    return outcome


# ---- activities ---------------------------------------------------------------------------
class TransientReadError(RuntimeError):
    """The status read failed; the orchestrator's retry will try again."""


async def poll_operation(runtime: Runtime, payload: dict[str, Any]) -> dict[str, Any]:
    from shared.compute import UntrustedOperationUrl  # azure-core: only activities need it
    from shared.redaction import scrub_poll

    try:
        result = await runtime.compute.poll(payload["url"], payload["mode"])
    except UntrustedOperationUrl as exc:
        return {"state": "Failed", "untrusted": True, "errorCode": exc.code, "errorMessage": exc.error.message}
    if result.read_failed:
        raise TransientReadError(f"operation status read failed: HTTP {result.status_code} {result.error_code or ''}")
    polls, arm_status, now = int(payload.get("polls") or 0), result.state.value, runtime.now()

    def progress(r: OperationRecord) -> OperationRecord | None:
        if r.terminal:
            return None
        r.polls, r.arm_status, r.last_updated_time = max(r.polls, polls), arm_status, now
        r.arm_seconds = result.arm_seconds if result.arm_seconds is not None else r.arm_seconds
        if r.status == "Accepted":
            r.status = "Running"
        return r

    stored = await runtime.ledger.update(payload["operationId"], progress)
    # ARM may echo the request's secrets, which are not in memory here: redact them by the record's fingerprint.
    fp = stored.secret_fingerprint if stored is not None else None
    return scrub_poll(result.to_dict(), fp, settled=stored is None or stored.terminal)


async def finish_operation(runtime: Runtime, payload: dict[str, Any], client: Any = None) -> dict[str, Any]:
    from shared import completion

    record = await completion.finish(runtime, payload["operationId"], payload["status"], payload.get("error"),
                                     applied=True, polls=payload.get("polls"), arm_status=payload.get("armStatus"),
                                     health=payload.get("health"), health_detail=payload.get("healthDetail"),
                                     client=client)
    return record.view() if record is not None else {}


async def submit_batch(runtime: Runtime, payload: dict[str, Any], client: Any = None) -> dict[str, Any]:
    from shared import batches

    return await batches.submit(runtime, client, payload["operationId"])


async def read_health(runtime: Runtime, payload: dict[str, Any]) -> dict[str, Any]:
    from shared import batches

    return await batches.read_health(runtime, payload["operationId"], final=bool(payload.get("final")))
