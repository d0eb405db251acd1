"""shared/adapters/arm/lro.py: ARM's answers to a poll (Azure-AsyncOperation or Location) read into an
operation state, Retry-After in both its forms, and ARM's own duration of an operation."""

import json
from email.utils import formatdate

import pytest

from shared.adapters.arm.lro import arm_duration, interpret, parse_retry_after
from shared.domain.arm_call import OperationState

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


@pytest.mark.parametrize("status", [400, 404, 409, 429, 500, 503])
def test_error_status_in_async_mode_is_a_read_failure(status: int) -> None:
    """ARM RPC, Azure-AsyncOperation: a 4xx/5xx is a failure to read the status, not of the operation."""
    r = interpret("async", status, {"Retry-After": "3"}, '{"error": {"code": "Boom"}}', NOW)
    assert r.read_failed and r.state is OperationState.RUNNING and r.retry_after == 3


@pytest.mark.parametrize("status", [400, 409, 500])
def test_location_failure_status_with_cloud_error_is_terminal(status: int) -> None:
    """ARM RPC, Location: a finished operation answers as it would have synchronously, failures included."""
    body = json.dumps({"error": {"code": "OperationPreempted", "message": "preempted"}})
    r = interpret("location", status, {}, body, NOW)
    assert (r.state, r.error_code, r.error_message, r.read_failed, r.status_code) == (
        OperationState.FAILED, "OperationPreempted", "preempted", False, status)


@pytest.mark.parametrize("status", [401, 403, 404, 408, 429, 502, 503, 504])
def test_location_transient_or_read_statuses_are_read_failures(status: int) -> None:
    r = interpret("location", status, {"Retry-After": "3"}, '{"error": {"code": "Boom", "message": "m"}}', NOW)
    assert r.read_failed and r.state is OperationState.RUNNING and r.retry_after == 3 and r.error_code == "Boom"


@pytest.mark.parametrize("body", [b"", b"<html>bad gateway</html>", b'{"error": "text"}', b'{"error": {}}', b"[]"])
def test_location_error_without_cloud_error_is_a_read_failure(body: bytes) -> None:
    r = interpret("location", 500, {}, body, NOW)
    assert r.read_failed and r.state is OperationState.RUNNING


def test_unreadable_200_is_a_read_failure() -> None:
    assert interpret("async", 200, {}, b"not json", NOW).read_failed
    assert interpret("async", 200, {}, b"[]", NOW).read_failed


def test_arm_duration_from_the_recorded_exchange() -> None:
    """The recorded exchange's final Azure-AsyncOperation body: seven fractional digits."""
    body = ('{"startTime": "2021-03-26T02:54:44.2789122+00:00", "endTime": "2021-03-26T02:57:21.0132777+00:00", '
            '"status": "Succeeded", "name": "1f15739c-d053-4233-86f9-fac11a59467f"}')
    result = interpret("async", 200, {}, body, NOW)
    assert result.state is OperationState.SUCCEEDED and result.arm_seconds == pytest.approx(156.7344, abs=1e-3)
    running = '{"startTime": "2021-03-26T02:54:44.2789122+00:00", "status": "InProgress"}'
    assert interpret("async", 200, {}, running, NOW).arm_seconds is None
    assert interpret("location", 200, {}, b"", NOW).arm_seconds is None
    assert arm_duration({"startTime": "x", "endTime": "2021-03-26T02:57:21Z"}) is None
