"""The ARM client's quota bookkeeping and shared reads, without a network (shared/adapters/arm/quota.py, reads.py)."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from shared.adapters.arm.quota import QuotaTracker, parse_remaining, resource_of
from shared.adapters.arm.reads import SharedReads

SET = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_remaining_counts_are_read_whatever_the_names_and_header_form() -> None:
    joined = ["Microsoft.Compute/HighCostGetVMScaleSet3Min;170,Microsoft.Compute/HighCostGetVMScaleSet30Min;852"]
    assert parse_remaining(joined) == {"Microsoft.Compute/HighCostGetVMScaleSet3Min": 170,
                                       "Microsoft.Compute/HighCostGetVMScaleSet30Min": 852}
    split = ["Microsoft.Compute/GetOperation;3", "Microsoft.Compute/GetOperationSubscription;4990"]
    assert parse_remaining(split) == {"Microsoft.Compute/GetOperation": 3,
                                      "Microsoft.Compute/GetOperationSubscription": 4990}
    assert parse_remaining(["garbage", "x;y", ";5"]) == {}
    assert resource_of(f"{SET}/virtualMachines/3/instanceView") == SET.lower()
    assert resource_of("/subscriptions/s1/providers/Microsoft.Compute/locations/w/operations/1") is None


def test_a_low_count_holds_the_next_read_of_that_kind_until_it_has_refilled() -> None:
    clock = Clock()
    tracker = QuotaTracker(clock, low_water=3)
    headers = CIMultiDict([("x-ms-ratelimit-remaining-resource", "Microsoft.Compute/GetOperation;2"),
                           ("x-ms-ratelimit-remaining-resource", "Microsoft.Compute/GetOperationSubscription;4000"),
                           ("x-ms-ratelimit-remaining-subscription-reads", "240")])
    tracker.observe("/subscriptions/s1/providers/Microsoft.Compute/locations/w/operations/1", "GET", headers,
                    resource=SET, kind="poll")
    assert tracker.delay("", "poll", SET) == 12.0  # two tokens short of 4, one every 6 s
    assert tracker.delay("", "health", SET) == 0.0  # another kind of call draws on other buckets
    clock.now += 7
    assert tracker.delay("", "poll", SET) == 5.0
    clock.now += 5
    assert tracker.delay("", "poll", SET) == 0.0
    view = tracker.view(SET)
    assert view["calls"]["poll"]["lowest"] == 2 and view["subscription"] == {"reads": 240}


def test_arms_own_read_count_holds_every_read_briefly_and_a_429_blocks_until_retry_after() -> None:
    clock = Clock()
    tracker = QuotaTracker(clock, low_water=3)
    tracker.observe(f"{SET}/virtualMachines", "GET", {"x-ms-ratelimit-remaining-subscription-reads": "5"},
                    resource=SET, kind="health")
    assert 0 < tracker.delay("", "poll", SET) <= 1.1  # ARM refills 25 a second
    tracker.block(SET, "model", 120)
    assert tracker.blocked_for(SET, ("model", "instances")) == 120
    assert tracker.view(SET)["throttledUntil"].keys() == {"model"}
    clock.now += 121
    assert tracker.blocked_for(SET, ("model",)) == 0


class Loads:
    """A read that takes a moment, counting how often it reached 'ARM'; `fail`: it raises instead."""

    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail = 0, fail

    async def __call__(self) -> int:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError("429")
        return self.calls


async def test_concurrent_reads_are_one_and_results_are_kept_only_their_age_bound() -> None:
    clock = Clock()
    reads: SharedReads[int] = SharedReads(5, clock)
    load = Loads()
    assert await asyncio.gather(*(reads.get("k", load) for _ in range(50))) == [1] * 50
    assert load.calls == 1 and reads.loads == 1 and reads.shared == 49
    clock.now += 5
    assert await reads.get("k", load) == 1  # exactly the bound: still served
    clock.now += 0.5
    assert await reads.get("k", load) == 2  # older than the bound: read again


async def test_an_error_is_shared_by_those_waiting_but_never_kept() -> None:
    reads: SharedReads[int] = SharedReads(5, Clock())
    fails = Loads(fail=True)
    results = await asyncio.gather(*(reads.get("k", fails) for _ in range(10)), return_exceptions=True)
    assert fails.calls == 1 and all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError):
        await reads.get("k", fails)
    assert fails.calls == 2
