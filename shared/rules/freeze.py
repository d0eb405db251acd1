"""Freezes: is reimaging frozen for this target now? A pure decision over FREEZE_WINDOWS, the target's tags and the
clock's now (passed in).

During a freeze every request is held AwaitingApproval: a second, verified person's approval is the break-glass,
as for allInstances. A target is frozen by a window of FREEZE_WINDOWS, or by its own tag FREEZE_TAG (default
`reimager-freeze`) whose value is the time until which it is frozen (ISO 8601; a date alone means to the end of that
day; no offset means UTC). A tag whose value is not a time still freezes (default deny: someone meant it), until the
tag is changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from shared.domain.freeze import Window, parse_instant
from shared.domain.records import ApprovalGroup


@dataclass(frozen=True)
class Freeze:
    """The freeze that holds a request: where it comes from, as written, and the occurrence it is in."""

    source: Literal["window", "tag"]
    window: str
    start: datetime | None
    until: datetime | None  # None: a tag value that is not a time

    def doc(self) -> dict[str, Any]:
        """As recorded on the operation and carried by its events."""
        return {"source": self.source, "window": self.window,
                "start": self.start.isoformat() if self.start else None,
                "until": self.until.isoformat() if self.until else None}

    @property
    def reason(self) -> str:
        if self.source == "tag":
            until = f"until {self.until.isoformat()}" if self.until else "(its value is not a time, so until the " \
                "tag is changed)"
            return f"the target is frozen by its tag {self.window} {until}"
        assert self.until is not None
        return f"reimaging is frozen by the FREEZE_WINDOWS window {self.window!r} until {self.until.isoformat()}"


def _tag_until(value: str) -> datetime | None:
    text = value.strip()
    try:
        if len(text) == 10:  # a date: frozen to the end of that day
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC) + timedelta(days=1)
        return parse_instant(text)
    except ValueError:
        return None


def tag_freeze(tags: Mapping[str, str] | None, tag_name: str, now: datetime) -> Freeze | None:
    """The target's freeze tag, if it freezes the target now (tag names are compared ignoring case, as Azure
    does)."""
    value = next((v for k, v in (tags or {}).items() if k.lower() == tag_name.lower()), None)
    if value is None:
        return None
    until = _tag_until(str(value))
    if until is not None and until <= now:
        return None
    return Freeze("tag", f"{tag_name}={str(value)[:256]}", None, until)


def active(windows: Sequence[Window], tags: Mapping[str, str] | None, tag_name: str, now: datetime
           ) -> Freeze | None:
    """The freeze in force for a target now, or None. Of several, the one that ends last (a tag without a time
    before any)."""
    found: list[Freeze] = []
    for window in windows:
        occurrence = window.occurrence(now)
        if occurrence is not None:
            found.append(Freeze("window", window.text, *occurrence))
    tagged = tag_freeze(tags, tag_name, now) if tag_name else None
    if tagged is not None:
        found.append(tagged)
    if not found:
        return None
    far = datetime.max.replace(tzinfo=UTC)
    return max(found, key=lambda f: f.until or far)


def held(approval: str | None, frozen: Freeze | None, group: ApprovalGroup | None) -> str | None:
    """Why a request waits for a second person, or None: its width (policy.needs_approval), a freeze, the group it
    is held in."""
    reasons = [approval, frozen.reason if frozen else None, group.reason if group else None]
    return "; ".join(r for r in reasons if r) or None
