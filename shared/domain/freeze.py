"""Freeze windows (FREEZE_WINDOWS), parsed: recurring ones (a cron expression and a duration) and one-off ISO 8601
intervals, all in UTC. Pure: `occurrence(now)` says which occurrence of a window, if any, holds `now`.

FREEZE_WINDOWS is a list separated by `;` (or new lines). Each entry is one of:
- a recurring window: a cron expression (5 fields: minute hour day month day-of-week, or NCRONTAB's 6 with the
  second first), then an ISO 8601 duration: `0 18 * * Fri P2DT14H` is every Friday 18:00 for 62 hours;
- a one-off ISO 8601 interval: `2026-12-24T00:00Z/2026-12-27T00:00Z` or `2026-12-24T00:00Z/P3D`.

Cron fields take `*`, numbers, ranges `a-b`, steps `/n` and lists `a,b`; months and days of the week also take
English names (Jan, Fri); a day of the week is 0-6 (Sunday = 0). A window may restrict the day of the month or the
day of the week, not both: cron and NCRONTAB disagree on what both mean (either, or both), and a freeze must mean
one thing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

MAX_RECURRING = timedelta(days=31)  # a recurring window's duration (bounds the search for its occurrence)
_DURATION = re.compile(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", re.IGNORECASE)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_ITEM = re.compile(r"(\*|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/([0-9]+))?")


def parse_duration(text: str) -> timedelta:
    """ISO 8601 weeks, days, hours, minutes, seconds (`P2DT14H`); years and months have no fixed length."""
    match = _DURATION.fullmatch(text.strip())
    if not match or not any(match.groups()) or text.strip().upper().endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration such as PT4H or P2DT12H (weeks, days, hours, "
                         "minutes, seconds)")
    weeks, days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date-time; no offset means UTC. Returned in UTC."""
    value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def _value(text: str, low: int, names: Sequence[str]) -> int:
    if text.isdigit():
        return int(text)
    if len(text) == 3 and text.lower() in names:
        return names.index(text.lower()) + low
    raise ValueError(f"{text!r} is not a number{' or a name' if names else ''}")


def _field(text: str, low: int, high: int, names: Sequence[str] = ()) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        if not match:
            raise ValueError(f"cron field {text!r} is not valid")
        span, step = match.group(1), int(match.group(2) or 1)
        if step == 0:
            raise ValueError(f"cron field {text!r}: a step of 0")
        if span == "*":
            first, last = low, high
        else:
            first_text, _, last_text = span.partition("-")
            first = _value(first_text, low, names)
            last = _value(last_text, low, names) if last_text else (high if match.group(2) else first)
        if not low <= first <= last <= high:
            raise ValueError(f"cron field {text!r}: outside {low}-{high}")
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int] | None  # None: any day of the month
    months: frozenset[int]
    weekdays: frozenset[int] | None  # None: any day of the week (0 = Sunday)

    @classmethod
    def parse(cls, text: str) -> Cron:
        fields = text.split()
        if len(fields) == 5:
            fields = ["0", *fields]
        if len(fields) != 6:
            raise ValueError(f"{text!r} is not a cron expression of 5 fields (minute hour day month day-of-week) "
                             "or 6 (NCRONTAB: second first)")
        second, minute, hour, day, month, weekday = fields
        if day != "*" and weekday != "*":
            raise ValueError(f"{text!r} restricts both the day of the month and the day of the week; cron and "
                             "NCRONTAB disagree on what that means, so give one of them as *")
        return cls(_field(second, 0, 59), _field(minute, 0, 59), _field(hour, 0, 23),
                   None if day == "*" else _field(day, 1, 31), _field(month, 1, 12, _MONTHS),
                   None if weekday == "*" else _field(weekday, 0, 6, _DAYS))

    def _day(self, day: date) -> bool:
        return (day.month in self.months and (self.days is None or day.day in self.days)
                and (self.weekdays is None or (day.isoweekday() % 7) in self.weekdays))

    def _latest_time(self, upto: time | None) -> time | None:
        """The latest time of day this matches at or before `upto` (None: any time of the day)."""
        for hour in sorted(self.hours, reverse=True):
            if upto is not None and hour > upto.hour:
                continue
            for minute in sorted(self.minutes, reverse=True):
                if upto is not None and hour == upto.hour and minute > upto.minute:
                    continue
                bound = upto.second if upto is not None and (hour, minute) == (upto.hour, upto.minute) else 59
                second = max((s for s in self.seconds if s <= bound), default=None)
                if second is not None:
                    return time(hour, minute, second)
        return None

    def latest_start(self, now: datetime, lookback: timedelta) -> datetime | None:
        """The latest time at or before `now` (UTC) that this matches, no earlier than `now - lookback`."""
        now = now.astimezone(UTC)
        for back in range(lookback.days + 2):
            day = now.date() - timedelta(days=back)
            if not self._day(day):
                continue
            found = self._latest_time(now.time() if back == 0 else None)
            if found is not None:
                start = datetime.combine(day, found, UTC)
                return start if now - start <= lookback else None
        return None


@dataclass(frozen=True)
class Window:
    """One FREEZE_WINDOWS entry: a one-off interval (`start`, `end`) or a recurring one (`cron`, `duration`)."""

    text: str
    start: datetime | None = None
    end: datetime | None = None
    cron: Cron | None = None
    duration: timedelta | None = None

    def occurrence(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The occurrence of this window that `now` is in: (start, end), or None."""
        if self.cron is not None and self.duration is not None:
            start = self.cron.latest_start(now, self.duration)
            return (start, start + self.duration) if start is not None and now < start + self.duration else None
        assert self.start is not None and self.end is not None
        return (self.start, self.end) if self.start <= now < self.end else None


def _one_off(text: str) -> Window:
    first, sep, second = text.partition("/")
    if not sep:
        raise ValueError("a one-off window is an ISO 8601 interval start/end or start/duration")
    try:
        start = parse_instant(first)
        end = start + parse_duration(second) if second.strip().upper().startswith("P") else parse_instant(second)
    except ValueError as exc:
        raise ValueError(f"not an ISO 8601 interval start/end or start/duration: {exc}") from None
    if end <= start:
        raise ValueError("the interval ends before it starts")
    return Window(text, start=start, end=end)


def _recurring(text: str) -> Window:
    expression, _, duration_text = text.rpartition(" ")
    duration = parse_duration(duration_text)
    if not timedelta(0) < duration <= MAX_RECURRING:
        raise ValueError("a recurring window's duration must be more than 0 and at most 31 days")
    return Window(text, cron=Cron.parse(expression), duration=duration)


def parse_windows(text: str) -> tuple[Window, ...]:
    """FREEZE_WINDOWS, every entry checked; ValueError naming the entry that is not valid."""
    windows = []
    entries = [e.strip() for e in re.split(r"[;\n]", text) if e.strip()]
    if len(entries) > 100:
        raise ValueError("at most 100 windows")
    for number, entry in enumerate(entries, 1):
        entry = " ".join(entry.split())
        try:
            windows.append(_recurring(entry) if " " in entry else _one_off(entry))
        except ValueError as exc:
            raise ValueError(f"entry {number} ({entry[:80]!r}): {exc}") from None
    return tuple(windows)
