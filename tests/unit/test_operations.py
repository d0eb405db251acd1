import json
from email.utils import formatdate

import pytest

from shared.operations import OperationState, interpret, next_poll_delay, parse_retry_after

NOW = 1_767_225_600.0


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("7", 7.0), ("0", 0.0), ("soon", None), ("-3", None),
    (formatdate(NOW + 30, usegmt=True), 30.0), (formatdate(NOW - 30, usegmt=True), 0.0),
])
def test_retry_after_forms(value: str | None, expected: float | None) -> None:
    got = parse_retry_after(value, NOW)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(("status", "state"), [
    ("InProgress", OperationState.RUNNING), ("Running", OperationState.RUNNING), ("Accepted", OperationState.RUNNING),
    ("Succeeded", OperationState.SUCCEEDED), ("Failed", OperationState.FAILED), ("Canceled", OperationState.CANCELED),
    ("succeeded", OperationState.SUCCEEDED),
])
def test_async_operation_statuses(status: str, state: OperationState) -> None:
    r = interpret("async", 200, {}, json.dumps({"status": status}), NOW)
    assert r.state is state and not r.read_failed


def test_preempted_carries_arm_error() -> None:
    body = {"status": "Failed", "error": {"code": "OperationPreempted", "message": "preempted by a later op"}}
    r = interpret("async", 200, {"Retry-After": "5"}, json.dumps(body), NOW)
    assert (r.state, r.error_code, r.error_message) == (OperationState.FAILED, "OperationPreempted",
                                                        "preempted by a later op")


def test_failed_without_error_gets_a_code() -> None:
    assert interpret("async", 200, {}, '{"status": "Failed"}', NOW).error_code == "OperationFailed"


@pytest.mark.parametrize(("status", "state"), [(202, OperationState.RUNNING), (200, OperationState.SUCCEEDED),
                                               (204, OperationState.SUCCEEDED)])
def test_location_mode(status: int, state: OperationState) -> None:
    assert interpret("location", status, {}, b"", NOW).state is state


def test_location_mode_reports_failure_body() -> None:
    body = json.dumps({"status": "Failed", "error": {"code": "X", "message": "m"}})
    assert interpret("location", 200, {}, body, NOW).state is OperationState.FAILED


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
@pytest.mark.parametrize("mode", ["async", "location"])
def test_error_status_is_a_read_failure(status: int, mode: str) -> None:
    r = interpret(mode, status, {"Retry-After": "3"}, '{"error": {"code": "Boom"}}', NOW)  # type: ignore[arg-type]
    assert r.read_failed and r.state is OperationState.RUNNING and r.retry_after == 3


def test_unreadable_200_is_a_read_failure() -> None:
    assert interpret("async", 200, {}, b"not json", NOW).read_failed
    assert interpret("async", 200, {}, b"[]", NOW).read_failed


@pytest.mark.parametrize(("retry_after", "expected"), [(None, 15), (0, 5), (3, 5), (30, 30), (9999, 120)])
def test_poll_delay_clamped(retry_after: float | None, expected: int) -> None:
    assert next_poll_delay(retry_after, 5, 120, 15) == expected
