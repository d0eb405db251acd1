"""The durable timer loop: one orchestration per submitted ARM operation, polling it to the end.

It is started only after ARM accepted the POST (the ledger holds the claim and the lease), so
it coordinates nothing: it polls at ARM's pace, then one activity settles the operation in the
ledger and sends its single completion event. Orchestrator code is deterministic: time comes
from the context, every value it needs was copied into its input when the operation was
accepted (it never reads settings or the environment), and the network is touched only in
activities.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import datetime, timedelta
from typing import Any

import azure.durable_functions as df

from shared.adapters import durable_time
from shared.adapters.durable_payload import decode
from shared.domain.arm_call import OperationState
from shared.domain.errors import ErrorCode
from shared.domain.health import Health
from shared.domain.status import OperationStatus
from shared.rules.poll_schedule import next_poll_offset
from shared.workflow.orchestration import FINISH_ACTIVITY, HEALTH_ACTIVITY, POLL_ACTIVITY, SUBMIT_ACTIVITY, MonitorInput

durable_time.install()  # every later replay reads its history timestamps without dateutil

Steps = Generator[Any, Any, Any]


def _retry(first_seconds: int, attempts: int) -> df.RetryOptions:
    return df.RetryOptions(first_retry_interval_in_milliseconds=first_seconds * 1000,
                           max_number_of_attempts=attempts)


def monitor_orchestrator(context: Any) -> Steps:
    state = MonitorInput.model_validate(decode(context.get_input()))
    if state.submit:  # a batch: let the storm gather, then seal and POST it from an activity
        ended = yield from _submit_batch(context, state)
        if ended is not None:
            return ended  # ended (refused, uncertain, empty) or requeued: the activity settled it
    if state.health_since is not None:
        return (yield from _verify(context, state))
    if not state.url and state.mode != "members":  # a Flexible batch reads its members' own operations
        err = {"code": ErrorCode.NO_OPERATION_URL, "message": "ARM accepted the reimage but returned no operation URL"}
        return (yield from _finish(context, state, OperationStatus.FAILED, err))
    return (yield from _poll(context, state))


def _submit_batch(context: Any, state: MonitorInput) -> Steps:
    """Gather, then seal and POST the batch. None when it was submitted (state now holds its operation URL),
    else the activity's answer: the batch ended or went back to the queue. ARM throttled the POST (or its
    Retry-After has not passed): wait that long on a timer and ask again; the batch keeps its requests."""
    if state.gather_seconds > 0:
        yield context.create_timer(context.current_utc_datetime + timedelta(seconds=state.gather_seconds))
    while True:
        sent = decode((yield context.call_activity_with_retry(
            SUBMIT_ACTIVITY, _retry(state.poll_min_seconds, 10), {"operationId": state.operation_id})))
        if sent.get("outcome") != "throttled":
            break
        yield context.create_timer(context.current_utc_datetime + timedelta(seconds=float(sent["retryAfter"])))
    if sent.get("outcome") != "submitted":
        return sent
    state.submit, state.url, state.mode = False, sent.get("url"), sent.get("mode", "async")
    state.submitted_at = datetime.fromisoformat(sent["submittedAt"])
    state.last_retry_after = sent.get("retryAfter")
    return None


def _waited(result: Any) -> float | None:
    """Seconds a read asks to wait before the next one: ARM throttled it (429) or a bucket ran low; else None."""
    if isinstance(result, dict) and (result.get("throttled") or result.get("held")):
        return max(1.0, float(result.get("retryAfter") or 60))
    return None


def _poll(context: Any, state: MonitorInput) -> Steps:
    """Poll on the anchored schedule until ARM says the operation ended, the deadline passes, or this generation
    has polled enough (continue_as_new keeps the history, and so replay, small). A throttled or held poll waits
    its Retry-After however long it is, then polls at once; the deadline moves by the time waited."""
    assert state.submitted_at is not None
    polls_this_generation = 0
    while True:
        deadline = state.submitted_at + timedelta(minutes=state.operation_timeout_minutes,
                                                  seconds=state.throttled_seconds)
        if not state.poll_now:
            elapsed = (context.current_utc_datetime - state.submitted_at).total_seconds()
            offset = next_poll_offset(elapsed, state.last_retry_after, state.expected_seconds,
                                      state.poll_min_seconds, state.poll_max_seconds, state.poll_default_seconds,
                                      state.earliest_seconds)
            yield context.create_timer(min(state.submitted_at + timedelta(seconds=offset), deadline))
        result = yield from _read_status(context, state)
        wait = _waited(result)
        state.poll_now = wait is not None
        if wait is not None:
            state.throttled_seconds += wait
            yield context.create_timer(context.current_utc_datetime + timedelta(seconds=wait))
        elif isinstance(result, dict) and (result.get("untrusted") or OperationState(result["state"]).terminal):
            return (yield from _ended(context, state, result))
        elif context.current_utc_datetime >= deadline:
            arm_status = result["state"] if isinstance(result, dict) else None
            err = {"code": ErrorCode.TIMED_OUT, "message": f"the operation did not finish within "
                   f"{state.operation_timeout_minutes} minutes; ARM may still complete it"}
            return (yield from _finish(context, state, OperationStatus.TIMED_OUT, err, arm_status))
        polls_this_generation += 1
        if polls_this_generation >= state.polls_per_generation:
            state.generation += 1
            context.continue_as_new(state.dump())
            return None


def _read_status(context: Any, state: MonitorInput) -> Steps:
    """One poll activity: its answer, or None when the status could not be read even after retries."""
    try:
        result = decode((yield context.call_activity_with_retry(
            POLL_ACTIVITY, _retry(state.poll_min_seconds, 3),
            {"operationId": state.operation_id, "url": state.url, "mode": state.mode, "polls": state.polls + 1,
             "target": state.target})))
    except Exception:  # the status could not be read, even after retries: keep polling to the deadline
        result = None
    if _waited(result) is None:
        state.polls += 1
        if isinstance(result, dict):
            state.last_retry_after = result.get("retryAfter")
    return result


def _ended(context: Any, state: MonitorInput, result: dict[str, Any]) -> Steps:
    """ARM's operation ended (or pointed polling off the ARM host): verify health, or finish with ARM's outcome."""
    arm_status = result["state"]
    if result.get("untrusted"):
        err = {"code": ErrorCode.UNTRUSTED_OPERATION_URL, "message": str(result.get("errorMessage") or "")}
        return (yield from _finish(context, state, OperationStatus.FAILED, err))
    if arm_status == OperationState.SUCCEEDED and state.health_grace_minutes > 0:
        state.health_since = context.current_utc_datetime
        return (yield from _verify(context, state))
    arm_error = None if arm_status == OperationState.SUCCEEDED else {
        "code": result.get("errorCode") or arm_status, "message": result.get("errorMessage") or ""}
    return (yield from _finish(context, state, OperationStatus(arm_status), arm_error, arm_status))


def _verify(context: Any, state: MonitorInput) -> Steps:
    """ARM says Succeeded: read the instance views until every machine is healthy or the grace ends.
    A view that cannot be read counts as Unknown; nothing here waits past the grace, but a throttled or held read
    moves the grace by the time it waited. A paged list is read one page per read."""
    assert state.health_since is not None
    reads = 0
    while True:
        grace_ends = state.health_since + timedelta(minutes=state.health_grace_minutes,
                                                    seconds=state.health_held_seconds)
        final = context.current_utc_datetime >= grace_ends
        try:
            health = decode((yield context.call_activity_with_retry(
                HEALTH_ACTIVITY, _retry(state.poll_min_seconds, 3),
                {"operationId": state.operation_id, "final": final, "page": state.health_page,
                 "seen": state.health_seen})))
        except Exception:
            health = {"done": True, "health": Health.UNKNOWN, "detail": None}
        reads += 1
        wait = _waited(health)
        if wait is not None:
            state.health_held_seconds += wait
            yield context.create_timer(context.current_utc_datetime + timedelta(seconds=wait))
        elif health.get("done") or final:
            return (yield from _finish(context, state, OperationStatus.SUCCEEDED, None, OperationState.SUCCEEDED,
                                       health=health.get("health"), health_detail=health.get("detail")))
        else:
            state.health_page, state.health_seen = health.get("page"), health.get("seen") or {}
            yield context.create_timer(min(context.current_utc_datetime + timedelta(
                seconds=max(state.poll_min_seconds, state.poll_default_seconds)), grace_ends))
        if reads >= state.polls_per_generation:
            context.continue_as_new(state.dump())
            return None


def _finish(context: Any, state: MonitorInput, status: OperationStatus, error: dict[str, Any] | None,
            arm_status: str | None = None, *, health: str | None = None,
            health_detail: dict[str, str] | None = None) -> Steps:
    outcome = decode((yield context.call_activity_with_retry(FINISH_ACTIVITY, _retry(5, 20), {
        "operationId": state.operation_id, "status": status, "error": error, "polls": state.polls,
        "armStatus": arm_status, "health": health, "healthDetail": health_detail})))
    return outcome
