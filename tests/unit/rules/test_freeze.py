"""Freezes, the pure decision (shared/rules/freeze.py) and FREEZE_WINDOWS' parser (shared/domain/freeze.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.freeze import Cron, parse_duration, parse_windows
from shared.domain.records import ApprovalGroup, TargetRecord
from shared.domain.request import parse_request
from shared.rules import dryrun, freeze
from shared.settings import SettingsError, load_settings
from tests.helpers import SENTINEL_PASSWORD

SUB = "7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2910"
VM = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
FRIDAY_EVENING = datetime(2026, 1, 2, 18, 0, tzinfo=UTC)  # 2026-01-02 is a Friday


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def frozen_at(spec: str, when: datetime) -> freeze.Freeze | None:
    return freeze.active(parse_windows(spec), None, "reimager-freeze", when)


@pytest.mark.parametrize(("when", "held"), [
    ("2026-01-02T17:59:59", False), ("2026-01-02T18:00:00", True), ("2026-01-04T23:00:00", True),
    ("2026-01-05T07:59:59", True), ("2026-01-05T08:00:00", False), ("2026-01-07T12:00:00", False),
    ("2026-01-09T18:30:00", True),  # the next Friday
])
def test_a_weekly_window_holds_from_its_start_for_its_duration(when: str, held: bool) -> None:
    found = frozen_at("0 18 * * Fri P2DT14H", at(when))
    assert (found is not None) == held
    if found is not None:
        assert found.source == "window" and found.until is not None and found.start is not None
        assert found.until - found.start == timedelta(days=2, hours=14) and found.start.weekday() == 4


def test_ncrontab_six_fields_names_lists_ranges_and_steps() -> None:
    nightly = "0 30 1 * * Mon-Fri PT2H"  # NCRONTAB: second first; weekdays 01:30-03:30
    assert frozen_at(nightly, at("2026-01-05T02:00:00")) is not None  # a Monday
    assert frozen_at(nightly, at("2026-01-03T02:00:00")) is None  # a Saturday
    assert frozen_at("*/15 9-17 * * 1,3 PT5M", at("2026-01-07T10:47:00")) is not None  # Wednesday 10:45 + 5 min
    assert frozen_at("*/15 9-17 * * 1,3 PT5M", at("2026-01-07T10:51:00")) is None
    assert frozen_at("0 0 25 Dec * P1D", at("2026-12-25T13:00:00")) is not None
    assert frozen_at("0 0 25 Dec * P1D", at("2026-12-26T00:00:00")) is None


def test_a_one_off_interval_by_end_or_by_duration_and_the_later_end_wins() -> None:
    spec = "2026-12-24T00:00Z/2026-12-27T00:00Z; 2026-12-26T00:00:00+01:00/P2D"
    found = frozen_at(spec, at("2026-12-26T12:00:00"))
    assert found is not None and found.until == at("2026-12-27T23:00:00")  # the second one ends later (UTC)
    assert frozen_at(spec, at("2026-12-23T23:59:59")) is None
    assert frozen_at(spec, at("2026-12-28T00:00:00")) is None


@pytest.mark.parametrize(("value", "now", "held", "until"), [
    ("2026-01-03T00:00:00Z", "2026-01-02T12:00:00", True, "2026-01-03T00:00:00+00:00"),
    ("2026-01-02", "2026-01-02T23:00:00", True, "2026-01-03T00:00:00+00:00"),  # a date: to the end of that day
    ("2026-01-02T00:00:00Z", "2026-01-02T12:00:00", False, None),  # past
    ("until the release", "2030-01-01T00:00:00", True, None),  # not a time: frozen until the tag changes
])
def test_the_freeze_tag_holds_until_the_time_in_its_value(value: str, now: str, held: bool,
                                                          until: str | None) -> None:
    found = freeze.active((), {"Reimager-Freeze": value}, "reimager-freeze", at(now))
    assert (found is not None) == held
    if found is not None:
        assert found.source == "tag" and found.doc()["until"] == until
        assert "reimager-freeze" in found.reason


@pytest.mark.parametrize(("spec", "why"), [
    ("0 18 1 * Fri PT1H", "both the day of the month and the day of the week"),
    ("0 18 * * Fri P1M", "not an ISO 8601 duration"),
    ("0 18 * * Fri P32D", "at most 31 days"),
    ("0 25 * * * PT1H", "outside 0-23"),
    ("0 18 * * Fry PT1H", "not a number or a name"),
    ("0 18 * * PT1H", "not a cron expression"),
    ("*/0 * * * * PT1H", "a step of 0"),
    ("2026-12-27T00:00Z/2026-12-24T00:00Z", "ends before it starts"),
    ("2026-12-24", "ISO 8601 interval"),
    ("soon/later", "ISO 8601 interval"),
])
def test_a_bad_window_stops_the_app_naming_the_setting_and_the_entry(spec: str, why: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(FREEZE_WINDOWS=f"2026-01-01T00:00Z/P1D; {spec}")
    assert "FREEZE_WINDOWS" in str(err.value) and "entry 2" in str(err.value) and why in str(err.value)


def test_durations_and_latest_start_bounds() -> None:
    assert parse_duration("P1W") == timedelta(days=7) and parse_duration("PT90M") == timedelta(minutes=90)
    cron = Cron.parse("0 18 * * Fri")
    assert cron.latest_start(at("2026-01-02T18:00:00"), timedelta(hours=1)) == at("2026-01-02T18:00:00")
    assert cron.latest_start(at("2026-01-08T18:00:00"), timedelta(days=2)) is None  # last Friday: too long ago


def test_held_names_every_reason() -> None:
    frozen = frozen_at("2025-12-31T00:00Z/P2D", FRIDAY_EVENING - timedelta(days=1))
    group = ApprovalGroup(group_id="g-1", size=30, reason="the alert names 30 machines")
    assert freeze.held(None, None, None) is None
    why = freeze.held("it reimages every instance", frozen, group)
    assert why is not None and "every instance" in why and "2025-12-31T00:00Z/P2D" in why and "30 machines" in why


def test_the_dry_run_reports_the_freeze_check() -> None:
    s = load_settings(ALLOWED_SCOPES=f"/subscriptions/{SUB}", FREEZE_WINDOWS="2025-12-31T00:00Z/P2D")
    now = at("2026-01-01T00:00:00")
    from shared.domain.arm_call import TargetModel
    model = TargetModel(id=VM, os_type="Linux", ephemeral_os_disk=False)
    run = dryrun.evaluate(parse_request({"target": VM, "dryRun": True}), s, model=model, not_found=None,
                          record=TargetRecord(key="k"), now=now)
    check = {c["name"]: c for c in run.checks}["freeze"]
    assert check["result"] == "failed" and check["code"] == "ApprovalRequired" and not run.passed
    assert check["window"] == "2025-12-31T00:00Z/P2D" and check["until"] == "2026-01-02T00:00:00+00:00"
    secret = parse_request({"target": VM, "dryRun": True, "osProfile": {"adminPassword": SENTINEL_PASSWORD}})
    run = dryrun.evaluate(secret, s, model=model, not_found=None, record=TargetRecord(key="k"), now=now)
    assert {c["name"]: c for c in run.checks}["freeze"]["code"] == "InvalidRequest"
    later = dryrun.evaluate(parse_request({"target": VM, "dryRun": True}), s, model=model, not_found=None,
                            record=TargetRecord(key="k"), now=now + timedelta(days=2))
    assert {c["name"]: c for c in later.checks}["freeze"]["result"] == "passed" and later.passed
    tagged = dryrun.evaluate(parse_request({"target": VM, "dryRun": True}), s, now=now + timedelta(days=2),
                             model=TargetModel(id=VM, os_type="Linux", ephemeral_os_disk=False,
                                               tags={"reimager-freeze": "2026-02-01"}),
                             not_found=None, record=TargetRecord(key="k"))
    assert {c["name"]: c for c in tagged.checks}["freeze"]["source"] == "tag"
