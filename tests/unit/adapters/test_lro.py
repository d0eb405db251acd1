import json
import math
from email.utils import formatdate

import pytest

from shared.adapters.arm.lro import arm_duration, interpret, parse_retry_after
from shared.domain.arm_call import OperationState
from shared.rules.poll_schedule import expected_duration, next_poll_delay, next_poll_offset

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


@pytest.mark.parametrize(("retry_after", "expected"), [(None, 15), (0, 5), (3, 5), (30, 30), (9999, 120)])
def test_poll_delay_clamped(retry_after: float | None, expected: int) -> None:
    assert next_poll_delay(retry_after, 5, 120, 15) == expected


# ---- the poll schedule (shared.rules.poll_schedule.next_poll_offset) ---------------------------------
def poll_times(duration: float, retry_after: float | None, expected: float | None, latency: float,
               minimum: float = 1, maximum: float = 120, default: float = 15) -> list[float]:
    """Seconds after submission at which the loop polls an operation of `duration` seconds, each poll
    (timer + activity + replay) taking `latency` seconds before the next delay is computed."""
    times, elapsed = [], 0.0
    while True:
        at = next_poll_offset(elapsed, retry_after, expected, minimum, maximum, default)
        assert at > elapsed
        times.append(at)
        if at >= duration:
            return times
        elapsed = at + latency


@pytest.mark.parametrize("latency", [0.0, 0.05, 0.4])
def test_retry_after_polls_are_anchored_to_submission(latency: float) -> None:
    """Every R seconds from submission, however long each poll takes: lag does not drift per poll."""
    times = poll_times(60, 3, None, latency)
    assert times == [3.0 * k for k in range(1, 21)]
    assert len(times) == math.ceil(60 / 3)  # ceil(D/R): the minimum when following Retry-After


def test_unanchored_would_drift() -> None:
    """The rule the anchoring replaced (delay after each poll) drifts by the latency every poll."""
    elapsed, last = 0.0, 0.0
    for _ in range(20):
        last = elapsed + next_poll_delay(3, 1, 120, 15)
        elapsed = last + 0.4
    assert last > 60 + 7  # 20 polls x 0.4 s of latency, versus exactly 60 anchored
    assert poll_times(60, 3, None, 0.4)[-1] == 60


def test_a_late_poll_skips_to_the_next_grid_point_rather_than_polling_twice() -> None:
    assert next_poll_offset(3.1, 3, None, 1, 120, 15) == 6
    assert next_poll_offset(4.6, 3, None, 1, 120, 15) == 9  # more than half a step late: the next-but-one


def test_retry_after_is_only_guarded_by_the_bounds() -> None:
    assert next_poll_offset(0, 0, None, 1, 120, 15) == 1
    assert next_poll_offset(0, 9999, None, 1, 120, 15) == 120
    assert next_poll_offset(0, 1, None, 1, 120, 15) == 1


def test_without_retry_after_or_history_the_default_grid() -> None:
    assert poll_times(40, None, None, 0.3) == [15, 30, 45]


def test_learned_schedule_waits_for_the_expected_duration_then_polls_closely() -> None:
    # expected 600 s: the first poll at 600 s, then every 60 s
    assert poll_times(590, None, 600, 0.5) == [600]
    assert poll_times(700, None, 600, 0.5) == [600, 660, 720]
    # short operations: steps never below the minimum
    assert poll_times(13, None, 12.5, 0.1, minimum=1) == [12.5, 13.75]
    assert poll_times(3, None, 0.2, 0.0, minimum=1) == [1, 2, 3]


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


def test_expected_duration_is_the_median_of_the_recent_past() -> None:
    assert expected_duration([]) is None
    assert expected_duration([600]) == 600
    assert expected_duration([600, 5000, 610]) == 610  # one slow outlier does not move it
    assert expected_duration([10, 20, 30, 40, 50, 9999, 9999, 9999]) == 30  # only the last five count
    assert expected_duration([0, -1]) is None
