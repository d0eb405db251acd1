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


class MonitorInput(BaseModel):
    """Orchestration input, carried across continue_as_new. Holds no secrets (it is stored)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    operation_id: str
    url: str | None
    mode: str
    submitted_at: datetime
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
                   polls_per_generation=settings.polls_per_generation, expected_seconds=expected_seconds)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _retry(first_seconds: int, attempts: int) -> Any:
    import azure.durable_functions as df

    return df.RetryOptions(first_retry_interval_in_milliseconds=first_seconds * 1000,
                           max_number_of_attempts=attempts)


def monitor_orchestrator(context: Any) -> Generator[Any, Any, Any]:
    state = MonitorInput.model_validate(decode(context.get_input()))
    if not state.url:
        err = {"code": "NoOperationUrl", "message": "ARM accepted the reimage but returned no operation URL"}
        return (yield from _finish(context, state, "Failed", err))
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


def _finish(context: Any, state: MonitorInput, status: str, error: dict[str, Any] | None,
            arm_status: str | None = None) -> Generator[Any, Any, Any]:
    outcome = decode((yield context.call_activity_with_retry(FINISH_ACTIVITY, _retry(5, 20), {
        "operationId": state.operation_id, "status": status, "error": error, "polls": state.polls,
        "armStatus": arm_status})))
    return outcome


# ---- activities ---------------------------------------------------------------------------
class TransientReadError(RuntimeError):
    """The status read failed; the orchestrator's retry will try again."""


async def poll_operation(runtime: Runtime, payload: dict[str, Any]) -> dict[str, Any]:
    from shared.compute import UntrustedOperationUrl  # azure-core: only activities need it

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

    await runtime.ledger.update(payload["operationId"], progress)
    return result.to_dict()


async def finish_operation(runtime: Runtime, payload: dict[str, Any]) -> dict[str, Any]:
    from shared import completion

    record = await completion.finish(runtime, payload["operationId"], payload["status"], payload.get("error"),
                                     applied=True, polls=payload.get("polls"), arm_status=payload.get("armStatus"))
    return record.view() if record is not None else {}
