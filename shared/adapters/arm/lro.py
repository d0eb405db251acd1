"""Interpreting ARM async-operation poll responses (Azure-AsyncOperation and Location styles)."""

from __future__ import annotations

import json
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from shared.domain.arm_call import OperationState, PollMode, PollResult
from shared.domain.errors import (
    ComputeConflict,
    ComputeError,
    ComputeThrottled,
    ComputeUnavailable,
    DetailCode,
    ErrorCode,
    TargetNotFound,
)


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
        return PollResult(OperationState.RUNNING, retry_after, DetailCode.UNREADABLE_STATUS,
                          "the operation status response had no status", status_code, read_failed=True)
    state = _TERMINAL.get(doc["status"].lower(), OperationState.RUNNING)
    err_doc = doc.get("error")
    err: dict[str, Any] = err_doc if isinstance(err_doc, dict) else {}
    code, message = err.get("code"), err.get("message")
    if state is OperationState.FAILED and not code:
        code, message = ErrorCode.OPERATION_FAILED, message or "ARM reported the operation as Failed"
    if state is OperationState.CANCELED and not code:
        code, message = ErrorCode.OPERATION_CANCELED, message or "ARM reported the operation as Canceled"
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


def error_from_response(status: int, headers: dict[str, str], body: bytes, what: str, now: float) -> ComputeError:
    code = message = target = None
    try:
        doc = json.loads(body) if body else {}
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict):
            code, message, target = err.get("code"), err.get("message"), err.get("target")
    except ValueError:
        pass
    retry = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"), now)
    retry_after = int(retry + 0.999) if retry is not None else None
    kw: dict[str, Any] = {"arm_status": status, "arm_code": code, "arm_message": message, "arm_target": target,
                          "retry_after": retry_after}
    said = f"ARM answered {status} {code or ''}: {message or 'no message'}".strip()
    if status == 404:
        return TargetNotFound(ErrorCode.TARGET_NOT_FOUND, f"{what}: {said}", **kw)
    if status == 409 and code == "ScopeLocked":  # a ReadOnly lock: nothing was applied (LOCKS; arm.md B9)
        return ComputeError(ErrorCode.TARGET_LOCKED, f"{what}: the resource is under a ReadOnly lock ({said})", **kw)
    if status == 409:
        return ComputeConflict(ErrorCode.OPERATION_IN_PROGRESS, f"{what}: {said}", **kw)
    if status == 429:
        return ComputeThrottled(ErrorCode.COMPUTE_UNAVAILABLE, f"{what}: ARM is throttling ({said})",
                                **kw)
    if status >= 500 or status == 408:
        return ComputeUnavailable(ErrorCode.COMPUTE_UNAVAILABLE, f"{what}: {said}", **kw)
    return ComputeError(ErrorCode.COMPUTE_ERROR, f"{what}: {said}", **kw)
