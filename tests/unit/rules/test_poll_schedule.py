"""shared/rules/poll_schedule.py: when the monitor polls next, anchored to submission and learned from history."""

import math

import pytest

from shared.rules.poll_schedule import earliest_end, expected_duration, next_poll_delay, next_poll_offset, remember


@pytest.mark.parametrize(("retry_after", "expected"), [(None, 15), (0, 5), (3, 5), (30, 30), (9999, 120)])
def test_poll_delay_clamped(retry_after: float | None, expected: int) -> None:
    assert next_poll_delay(retry_after, 5, 120, 15) == expected


def poll_times(duration: float, retry_after: float | None, expected: float | None, latency: float,
               minimum: float = 1, maximum: float = 120, default: float = 15,
               earliest: float | None = None) -> list[float]:
    """Seconds after submission at which the loop polls an operation of `duration` seconds, each poll
    (timer + activity + replay) taking `latency` seconds before the next delay is computed."""
    times, elapsed = [], 0.0
    while True:
        at = next_poll_offset(elapsed, retry_after, expected, minimum, maximum, default, earliest)
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


def test_learned_schedule_polls_from_the_earliest_likely_end_every_fraction_of_the_median() -> None:
    # median 600 s, earliest likely end 400 s: a step of 15 % of 600 = 90 s from 400 on
    assert poll_times(480, None, 600, 0.5, earliest=400) == [490]
    assert poll_times(700, None, 600, 0.5, earliest=400) == [490, 580, 670, 760]
    # short operations: steps never below the minimum
    assert poll_times(3, None, 0.2, 0.0, minimum=1, earliest=0.1) == [1, 2, 3]
    # durations that hardly vary: the first poll at the median, which finds it done
    assert poll_times(100, None, 100, 0.5, earliest=100) == [100]


def test_an_input_from_before_the_earliest_end_was_learned_waits_for_the_expected_duration() -> None:
    # monitors started by an older version carry only `expected`: their first poll is at it, as it was
    assert poll_times(590, None, 600, 0.5) == [600]
    assert poll_times(700, None, 600, 0.5) == [600, 690, 780]


def test_a_later_poll_on_the_learned_grid_after_a_late_one() -> None:
    assert next_poll_offset(500, None, 600, 1, 120, 15, 400) == 580  # 490 + 90: 500 is on the way from 490


def test_with_retry_after_and_history_the_grid_points_before_the_earliest_end_are_skipped() -> None:
    # Retry-After 10, earliest likely end 43 s: the first poll at 50 s (the first grid point after it), then every 10 s
    assert poll_times(71, 10, 150, 0.2, earliest=43) == [50, 60, 70, 80]
    assert poll_times(30, 10, 150, 0.2, earliest=43) == [50]  # ended before the earliest end: one poll
    assert poll_times(5, 10, 150, 0.2, earliest=2) == [10]  # never sooner than ARM asked
    assert poll_times(71, 10, 150, 0.2) == [10.0 * k for k in range(1, 9)]  # no history: ARM's grid


def test_expected_duration_is_the_median_of_the_recent_past() -> None:
    assert expected_duration([]) is None
    assert expected_duration([600, 610]) is None  # too few to say how they vary
    assert expected_duration([600, 5000, 610]) == 610  # one slow outlier does not move it
    assert expected_duration([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 9999, 9999, 9999]) == 55  # the last ten
    assert expected_duration([0, -1, 5]) is None


def test_earliest_end_is_the_low_bound_of_a_prediction_interval_of_the_recent_past() -> None:
    assert earliest_end([100, 100]) is None
    assert earliest_end([100, 100, 100]) == 100  # no spread: no earlier than the shortest
    spread = [150 * math.exp(z) for z in (-0.6, -0.3, 0.0, 0.3, 0.6)]
    low = earliest_end(spread)
    # lognormal through them: log-spread 0.47; t(4 dof) 3.747 x 0.47 x sqrt(1.2) = 1.94 below the log-mean
    assert low is not None and math.isclose(low, 150 * math.exp(-1.94), rel_tol=0.01)
    # the same spread seen ten times: the spread is surer, the bound nearer (t 2.821 instead of 3.747)
    more = earliest_end(spread * 2)
    assert more is not None and low < more < min(spread)


def test_remember_keeps_the_last_ten_newest_first() -> None:
    assert remember([], None) == []
    assert remember([5.0], 0) == [5.0]
    assert remember([float(i) for i in range(10)], 99.0) == [99.0, *[float(i) for i in range(9)]]
