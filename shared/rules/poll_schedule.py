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
