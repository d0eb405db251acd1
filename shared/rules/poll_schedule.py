"""When to poll an ARM operation next: Retry-After, a learned duration, or the default."""

from __future__ import annotations

import math


def next_poll_delay(retry_after: float | None, minimum: int, maximum: int, default: int) -> int:
    """Seconds to the next poll: Retry-After clamped to [minimum, maximum], else the default."""
    if retry_after is None:
        return default
    return int(min(max(retry_after, minimum), maximum))


# Times are seconds since the operation was submitted (the ARM POST's 202): every poll time is a
# point on a grid anchored there, so a poll that runs late does not push every later one back.
AFTER_EXPECTED_FRACTION = 0.15  # learned schedule: after the earliest likely end, poll every this share of the median
LEARN_FROM_LAST = 10  # past durations of the same target to learn from (kept on its ledger record)
MIN_HISTORY = 3  # fewer past durations say nothing of their spread: poll as if there were none
# The earliest likely end: the lower bound of a one-sided 99 % prediction interval for the next duration, from a
# lognormal fitted to the past ones (durations of one kind of operation vary by a factor, not by seconds). Before it
# the operation has almost surely not ended: no poll there. Student's t for n - 1 degrees of freedom (n past
# durations): with few of them the spread itself is uncertain, and the bound stays wide.
T99_ONE_SIDED = {2: 6.965, 3: 4.541, 4: 3.747, 5: 3.365, 6: 3.143, 7: 2.998, 8: 2.896, 9: 2.821}


def _grid_after(elapsed: float, origin: float, step: float) -> float:
    """The first point of `origin + k * step` (k >= 0) at least half a step after `elapsed`.

    Half a step: a poll that fired on a grid point and took a moment does not poll again at once.
    """
    if elapsed + step / 2 <= origin:
        return origin
    return origin + math.ceil((elapsed + step / 2 - origin) / step) * step


def next_poll_offset(elapsed: float, retry_after: float | None, expected: float | None, minimum: float,
                     maximum: float, default: float, earliest: float | None = None) -> float:
    """Seconds after submission at which to poll next, given `elapsed` seconds since submission.

    - ARM sent Retry-After R: every R seconds from submission (R within [minimum, maximum], which
      only guard against absurd values), so the lag behind ARM's own schedule does not grow per poll;
      with history, the grid points before the earliest likely end (`earliest`) are skipped: a poll there
      would only hear InProgress. Never sooner than ARM asked.
    - No Retry-After but history (`expected`: the median of the past durations, `earliest`): the first poll
      one step after the earliest likely end (at the latest at the median), then every AFTER_EXPECTED_FRACTION
      of the median (within the bounds): an operation that ends after `earliest` is known within one step.
    - Neither: every `default` seconds from submission.
    """
    if retry_after is not None:
        step = min(max(retry_after, minimum), maximum)
        at = _grid_after(elapsed, 0.0, step)
        if earliest is not None and at < earliest:
            return max(step, math.ceil(earliest / step) * step)
        return at
    if expected is not None and expected > 0:
        step = min(max(AFTER_EXPECTED_FRACTION * expected, minimum), maximum)
        # one step after the earliest likely end, and no later than the median (durations that hardly vary)
        first = max(minimum, min(expected, (earliest if earliest is not None else expected) + step))
        return _grid_after(elapsed, first, step)
    return _grid_after(elapsed, 0.0, default)


def expected_duration(durations: list[float]) -> float | None:
    """What to expect of the next operation on a target, from its past durations (newest first).

    The median of the last LEARN_FROM_LAST: one slow outlier does not move it. Durations are ARM's own
    (startTime to endTime) where it reported them, else submission to detected completion, which
    includes the detection lag of the schedule that measured it. None below MIN_HISTORY.
    """
    recent = sorted(d for d in durations[:LEARN_FROM_LAST] if d > 0)
    if len(recent) < MIN_HISTORY:
        return None
    middle = len(recent) // 2
    return recent[middle] if len(recent) % 2 else (recent[middle - 1] + recent[middle]) / 2


def earliest_end(durations: list[float]) -> float | None:
    """The earliest the next operation on a target is likely to end, from its last LEARN_FROM_LAST durations (newest
    first): the lower bound of a one-sided 99 % prediction interval under a lognormal fit, never above the shortest
    of them. None below MIN_HISTORY."""
    recent = [d for d in durations[:LEARN_FROM_LAST] if d > 0]
    if len(recent) < MIN_HISTORY:
        return None
    n = len(recent)
    logs = [math.log(d) for d in recent]
    mean = sum(logs) / n
    spread = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    return min(min(recent), math.exp(mean - T99_ONE_SIDED[n - 1] * spread * math.sqrt(1 + 1 / n)))


def remember(durations: list[float], seconds: float | None) -> list[float]:
    """A target's recent durations (newest first) after an operation of `seconds` succeeded."""
    if seconds is None or seconds <= 0:
        return durations
    return [round(seconds, 3), *durations][:LEARN_FROM_LAST]
