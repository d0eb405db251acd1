"""The monitor's poll schedule through devhost (virtual clock): anchored to submission, learned from history."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from shared.rules.poll_schedule import earliest_end
from tests.integration.conftest import LINUX_VM, Host

NewHost = Callable[..., Any]


def poll_offsets(h: Host, op_index: int = -1) -> list[float]:
    """Seconds after the POST at which ARM saw each status read of the op_index-th reimage (first copy of
    each: activities run at least once, so devhost reads twice)."""
    sim = h.dh.sim
    op = sorted(sim.operations.values(), key=lambda o: o.started)[op_index]
    offsets: list[float] = []
    for at in sorted({round(r["at"] - op.started, 3) for r in sim.requests if op.id in r["path"]}):
        if not offsets or at - offsets[-1] > 1.0:  # the duplicate copy of the same poll comes within a second
            offsets.append(at)
    return offsets


async def reimage_and_wait(h: Host, count: int) -> dict[str, Any]:
    s, body, _ = await h.reimage({"target": LINUX_VM})
    assert s == 202, body
    events = await h.until_completed(count)
    return events[-1]["data"]


def slow_status_reads(h: Host, seconds: float) -> None:
    """Each operation-status read takes `seconds` of (virtual) time to answer, as a real GET takes time."""
    sim = h.dh.sim
    answer = sim._operation_status

    def slow(*args: Any) -> Any:
        h.dh.clock.advance(seconds)  # type: ignore[attr-defined]
        return answer(*args)

    sim._operation_status = slow  # type: ignore[method-assign]


async def test_polls_land_on_the_retry_after_grid_from_submission(new_host: NewHost) -> None:
    h = await new_host(retry_after=7, operation_seconds=60.0)
    slow_status_reads(h, 0.4)
    data = await reimage_and_wait(h, 1)
    offsets = poll_offsets(h)
    # every 7 s from the POST although each read takes 0.4 s (a delay after each read would drift 0.4 s a poll)
    assert offsets == [7.0 * k for k in range(1, 10)], offsets
    assert data["polls"] == 9  # ceil(60 / 7)


async def test_without_retry_after_the_first_poll_waits_for_the_learned_duration(new_host: NewHost) -> None:
    h = await new_host(retry_after=None, operation_seconds=100.0, settings={"COOLDOWN_MINUTES": "0"})
    first = await reimage_and_wait(h, 1)
    assert first["polls"] == 7  # no history: the default, every 15 s (105 s)
    for n in (2, 3):  # too little history to say how durations vary: still the default
        assert (await reimage_and_wait(h, n))["polls"] == 7
    fourth = await reimage_and_wait(h, 4)
    # learned: ARM reported 100 s three times (startTime -> endTime), on the target's ledger record; the first poll
    # waits exactly that and finds it done
    assert poll_offsets(h) == [100.0], poll_offsets(h)
    assert fourth["polls"] == 1


async def test_learned_schedule_skips_the_polls_before_the_earliest_likely_end(new_host: NewHost) -> None:
    h = await new_host(retry_after=None, operation_seconds=100.0, settings={"COOLDOWN_MINUTES": "0"})
    name = LINUX_VM.rsplit("/", 1)[-1]
    past = [80.0, 90.0, 100.0, 110.0, 125.0]
    for n, seconds in enumerate(past, 1):
        h.dh.sim.durations[name] = seconds
        await reimage_and_wait(h, n)
    h.dh.sim.durations[name] = 100.0
    await reimage_and_wait(h, len(past) + 1)
    offsets = poll_offsets(h)
    # median 100 s, a step of 15 s; the earliest likely end (the low bound of a prediction interval through the five
    # past durations, about 50 s): the first poll one step after it, then every step until the end, known within one
    earliest = earliest_end(past[::-1])
    assert earliest is not None and 40 < earliest < 80
    assert offsets[0] == pytest.approx(earliest + 15, abs=0.01), offsets
    assert all(b - a == pytest.approx(15, abs=0.01) for a, b in itertools.pairwise(offsets)), offsets
    assert 100 <= offsets[-1] < 115, offsets


# --- Retry-After on a 202 is the app's real next poll ---------------------------------------------------
@pytest.mark.parametrize(("arm_retry_after", "settings", "expected"), [
    (None, {"POLL_DEFAULT_SECONDS": "25"}, 25),
    (1, {"POLL_MIN_SECONDS": "15"}, 15),
    (600, {"POLL_MAX_SECONDS": "20"}, 20),
    (10, {}, 10),
])
async def test_retry_after_on_a_202_is_the_next_poll_and_duplicates_say_the_same(
        new_host: NewHost, arm_retry_after: int | None, settings: dict[str, str], expected: int) -> None:
    h: Host = await new_host(retry_after=arm_retry_after, settings=settings)
    s, first, headers = await h.reimage({"target": LINUX_VM, "requestId": "ra-1"})
    assert s == 202 and int(headers["Retry-After"]) == expected, headers
    s, again, headers = await h.reimage({"target": LINUX_VM, "requestId": "ra-1"})
    assert s == 202 and again["duplicate"] is True and int(headers["Retry-After"]) == expected, headers
    # the orchestration really polls at that pace
    await h.settle(lambda: any("/operations/" in r["path"] for r in h.dh.sim.requests), max_virtual_seconds=600)
    polls = [r for r in h.dh.sim.requests if "/operations/" in r["path"]]
    assert polls
