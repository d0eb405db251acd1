"""shared/rules/poll_schedule.py: when the monitor polls next, anchored to submission and learned from history."""

import math

import pytest

from shared.rules.poll_schedule import expected_duration, next_poll_delay, next_poll_offset


@pytest.mark.parametrize(("retry_after", "expected"), [(None, 15), (0, 5), (3, 5), (30, 30), (9999, 120)])
def test_poll_delay_clamped(retry_after: float | None, expected: int) -> None:
    assert next_poll_delay(retry_after, 5, 120, 15) == expected


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


def test_expected_duration_is_the_median_of_the_recent_past() -> None:
    assert expected_duration([]) is None
    assert expected_duration([600]) == 600
    assert expected_duration([600, 5000, 610]) == 610  # one slow outlier does not move it
    assert expected_duration([10, 20, 30, 40, 50, 9999, 9999, 9999]) == 30  # only the last five count
    assert expected_duration([0, -1]) is None
