"""Interpreting ARM async-operation poll responses (Azure-AsyncOperation and Location styles)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Literal

PollMode = Literal["async", "location"]


class OperationState(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def terminal(self) -> bool:
        return self is not OperationState.RUNNING


@dataclass(frozen=True)
class PollResult:
    """What one status read says. `read_failed` means the read itself failed, not the operation."""

    state: OperationState
    retry_after: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    status_code: int = 200
    read_failed: bool = False
    arm_seconds: float | None = None  # ARM's own startTime -> endTime, once finished (Azure-AsyncOperation)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.value, "retryAfter": self.retry_after, "errorCode": self.error_code,
                "errorMessage": self.error_message, "statusCode": self.status_code, "readFailed": self.read_failed,
                "armSeconds": self.arm_seconds}


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds: absent, delta-seconds, or an HTTP-date (RFC 9110)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _body_json(body: bytes | str | None) -> dict[str, Any] | None:
    if not body:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


_TERMINAL = {"succeeded": OperationState.SUCCEEDED, "failed": OperationState.FAILED,
             "canceled": OperationState.CANCELED, "cancelled": OperationState.CANCELED}


# Location polls: statuses that describe the read, never the operation. 401/403: our token or role;
# 404: the operation resource itself is gone or unknown; 408/429/502/503/504: timeouts, throttling
# and gateways, which azure-core's pipeline also treats as transient and retries.
READ_FAILURE_STATUSES = frozenset({401, 403, 404, 408, 429, 502, 503, 504})


def _cloud_error(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    err = (doc or {}).get("error")
    return err if isinstance(err, dict) and isinstance(err.get("code"), str) and err["code"] else None


def location_failure(status_code: int, doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """The CloudError of a finished, failed operation read through its Location URL, else None.

    ARM RPC (async-api-reference.md, "202 Accepted and Location Headers"): the Location URL answers
    202 while the operation runs and, once it is done, "the exact same response that would have been
    returned had the operation been executed synchronously": 200/204 on success, the error status with
    a CloudError body on failure. So a 4xx/5xx carrying a CloudError is the operation's failure, unless
    the status is one that only ever describes the read (READ_FAILURE_STATUSES). A 4xx/5xx without a
    CloudError body is a failed read. (Azure-AsyncOperation is different: there, any 4xx/5xx is a
    failed read, per the same document's "Azure-AsyncOperation Resource format".)
    """
    if status_code < 400 or status_code in READ_FAILURE_STATUSES:
        return None
    return _cloud_error(doc)


def interpret(mode: PollMode, status_code: int, headers: dict[str, str], body: bytes | str | None,
              now: float) -> PollResult:
    """Read one poll response. Any status other than a terminal one means still running (ARM's rule)."""
    lower = {k.lower(): v for k, v in headers.items()}
    retry_after = parse_retry_after(lower.get("retry-after"), now)
    doc = _body_json(body)
    if status_code >= 400:
        failure = location_failure(status_code, doc) if mode == "location" else None
        if failure is not None:
            # Location mode carries no Failed/Canceled distinction: a failure status is Failed, with ARM's code.
            return PollResult(OperationState.FAILED, None, failure["code"], str(failure.get("message") or ""),
                              status_code)
        read_err = _cloud_error(doc) or {}
        return PollResult(OperationState.RUNNING, retry_after, read_err.get("code"), read_err.get("message"),
                          status_code, read_failed=True)
    if mode == "location" and status_code == 202:
        return PollResult(OperationState.RUNNING, retry_after, status_code=status_code)
    if mode == "location" and (doc is None or "status" not in doc):
        return PollResult(OperationState.SUCCEEDED, retry_after, status_code=status_code)
    if doc is None or not isinstance(doc.get("status"), str):
        # A 200 with no readable status is a failed read, not a finished operation.
        return PollResult(OperationState.RUNNING, retry_after, "UnreadableStatus",
                          "the operation status response had no status", status_code, read_failed=True)
    state = _TERMINAL.get(doc["status"].lower(), OperationState.RUNNING)
    err_doc = doc.get("error")
    err: dict[str, Any] = err_doc if isinstance(err_doc, dict) else {}
    code, message = err.get("code"), err.get("message")
    if state is OperationState.FAILED and not code:
        code, message = "OperationFailed", message or "ARM reported the operation as Failed"
    if state is OperationState.CANCELED and not code:
        code, message = "OperationCanceled", message or "ARM reported the operation as Canceled"
    return PollResult(state, retry_after, code if state.terminal else None,
                      message if state.terminal else None, status_code,
                      arm_seconds=arm_duration(doc) if state.terminal else None)


def arm_duration(doc: dict[str, Any]) -> float | None:
    """Seconds from the operation's startTime to its endTime, as ARM reports them (None when absent or bad).

    The recorded exchange carries both, with seven fractional digits (fromisoformat keeps six)."""
    try:
        start = datetime.fromisoformat(str(doc["startTime"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(doc["endTime"]).replace("Z", "+00:00"))
        seconds = (end - start).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def next_poll_delay(retry_after: float | None, minimum: int, maximum: int, default: int) -> int:
    """Seconds to the next poll: Retry-After clamped to [minimum, maximum], else the default."""
    if retry_after is None:
        return default
    return int(min(max(retry_after, minimum), maximum))


# ---- the poll schedule --------------------------------------------------------------------
# Times are seconds since the operation was submitted (the ARM POST's 202): every poll time is a
# point on a grid anchored there, so a poll that runs late does not push every later one back.
FIRST_POLL_FRACTION = 1.0  # learned schedule: the first poll waits this share of the expected duration
AFTER_EXPECTED_FRACTION = 0.1  # then polls every this share of it (within the bounds)
LEARN_FROM_LAST = 5  # past operations of the same target to learn from


def _grid_after(elapsed: float, origin: float, step: float) -> float:
    """The first point of `origin + k * step` (k >= 0) at least half a step after `elapsed`.

    Half a step: a poll that fired on a grid point and took a moment does not poll again at once.
    """
    if elapsed + step / 2 <= origin:
        return origin
    return origin + math.ceil((elapsed + step / 2 - origin) / step) * step


def next_poll_offset(elapsed: float, retry_after: float | None, expected: float | None, minimum: float,
                     maximum: float, default: float) -> float:
    """Seconds after submission at which to poll next, given `elapsed` seconds since submission.

    - ARM sent Retry-After R: every R seconds from submission (R within [minimum, maximum], which
      only guard against absurd values), so the lag behind ARM's own schedule does not grow per poll.
    - No Retry-After but past durations of this target (`expected` seconds): the first poll at
      FIRST_POLL_FRACTION of it, then every AFTER_EXPECTED_FRACTION of it (within the bounds).
    - Neither: every `default` seconds from submission.
    """
    if retry_after is not None:
        return _grid_after(elapsed, 0.0, min(max(retry_after, minimum), maximum))
    if expected is not None and expected > 0:
        first = max(minimum, FIRST_POLL_FRACTION * expected)
        step = min(max(AFTER_EXPECTED_FRACTION * expected, minimum), maximum)
        if elapsed + step / 2 <= first:
            return first
        return _grid_after(elapsed, first, step)
    return _grid_after(elapsed, 0.0, default)


def expected_duration(durations: list[float]) -> float | None:
    """What to expect of the next operation on a target, from its past durations (newest first).

    The median of the last LEARN_FROM_LAST: one slow outlier does not move it. Durations are ARM's own
    (startTime to endTime) where it reported them, else submission to detected completion, which
    includes the detection lag of the schedule that measured it.
    """
    recent = sorted(d for d in durations[:LEARN_FROM_LAST] if d > 0)
    if not recent:
        return None
    middle = len(recent) // 2
    return recent[middle] if len(recent) % 2 else (recent[middle - 1] + recent[middle]) / 2
