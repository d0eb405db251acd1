"""shared/rules/health.py: one verdict (summarize) over the instances' health, final or within the grace period."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.health import DETAIL_MAX, Health, InstanceHealth
from shared.rules.health import summarize

H = InstanceHealth(Health.HEALTHY, "ok")
U = InstanceHealth(Health.UNHEALTHY, "application health unhealthy")
P = InstanceHealth(Health.PENDING, "application health initializing")
N = InstanceHealth(Health.UNKNOWN, "no instance view")


def test_all_healthy_is_done() -> None:
    s = summarize({"1": H, "2": H}, ["1", "2"])
    assert (s.health, s.done, s.detail, s.counts) == (Health.HEALTHY, True, "2 of 2 healthy", {"Healthy": 2})


@pytest.mark.parametrize("other", [U, P, N])
def test_anything_not_healthy_waits_for_the_grace_period(other: InstanceHealth) -> None:
    s = summarize({"1": H, "2": other}, ["1", "2"])
    assert not s.done and s.health is other.health


def test_final_turns_pending_into_unhealthy() -> None:
    s = summarize({"1": H, "2": P}, ["1", "2"], final=True)
    assert s.done and s.health is Health.UNHEALTHY
    assert "2: unhealthy (not healthy within the grace period (application health initializing))" in s.detail


@pytest.mark.parametrize("healths,expected", [
    ({"1": H, "2": U, "3": N}, Health.UNHEALTHY),
    ({"1": H, "2": N}, Health.UNKNOWN),
    ({"1": N, "2": P}, Health.UNHEALTHY),  # the pending one did not make it
    ({"1": H}, Health.HEALTHY),
])
def test_final_is_worst_of_unhealthy_unknown_healthy(healths: dict[str, InstanceHealth], expected: Health) -> None:
    s = summarize(healths, list(healths), final=True)
    assert s.done and s.health is expected


def test_an_id_with_no_view_is_unknown_and_only_the_asked_ids_count() -> None:
    s = summarize({"1": H, "9": U}, ["1", "2"], final=True)
    assert s.health is Health.UNKNOWN and s.counts == {"Healthy": 1, "Unknown": 1}
    assert s.detail == "1 of 2 healthy; 2: unknown (no instance view)"


def test_ids_default_to_every_instance_read_and_one_instance_keeps_its_own_detail() -> None:
    assert summarize({"": U}).detail == U.detail  # a VM: one entry
    assert summarize({"": H}).health is Health.HEALTHY
    assert summarize({}, []) .health is Health.UNKNOWN


def test_detail_lists_the_worst_first_and_stays_short() -> None:
    healths = {str(i): InstanceHealth(Health.UNHEALTHY, "x" * 300) for i in range(40)}
    healths["7"] = N
    s = summarize(healths, final=True)
    assert s.detail.startswith("0 of 40 healthy; 0: unhealthy") and len(s.detail) <= DETAIL_MAX
    few = summarize({**{str(i): U for i in range(8)}, "8": H})
    assert few.detail.endswith("and 3 more") and "8:" not in few.detail


@given(st.dictionaries(st.sampled_from(["0", "1", "2", "3"]), st.sampled_from([H, U, P, N]), min_size=1),
       st.booleans())
def test_summary_is_worst_of_and_final_is_never_pending(healths: dict[str, InstanceHealth], final: bool) -> None:
    s = summarize(healths, final=final)
    states = {h.health for h in healths.values()}
    if final:
        assert s.done and s.health is not Health.PENDING
    if Health.UNHEALTHY in states or (final and Health.PENDING in states):
        assert s.health is Health.UNHEALTHY
    elif Health.UNKNOWN in states:
        assert s.health is Health.UNKNOWN
    assert s.done == (final or states == {Health.HEALTHY})
    assert sum(s.counts.values()) == len(healths)


def test_results_round_trip_as_json_for_activities() -> None:
    for h in (H, U, P, N):
        assert InstanceHealth.from_dict(json.loads(json.dumps(h.to_dict()))) == h
    s = summarize({"1": H, "2": U}, final=True)
    assert json.loads(json.dumps(s.to_dict())) == {"health": "Unhealthy", "detail": s.detail, "done": True,
                                                   "counts": {"Healthy": 1, "Unhealthy": 1}}
