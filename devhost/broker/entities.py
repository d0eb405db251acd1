"""The namespace's entities as the broker keeps them: queues and the events topic, each with its duplicate
detection window, and the faults queued for sends (`POST /devhost/servicebus/faults`)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

MAX_MESSAGE_BYTES = 256 * 1024  # Standard tier: "256 KB ... includes the size of properties (system and user)"
_DURATION = re.compile(r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")


def duration_seconds(text: str) -> float:
    """An ISO 8601 duration as ARM takes it (`PT1H`, `PT10M`, `P7D`) in seconds."""
    m = _DURATION.match(text.strip())
    if m is None or not any(m.groups()):
        raise ValueError(f"{text!r} is not an ISO 8601 duration such as PT1H")
    d, h, mi, s = (float(g or 0) for g in m.group("d", "h", "m", "s"))
    return d * 86400 + h * 3600 + mi * 60 + s


@dataclass
class Delivered:
    """A message the broker accepted and kept (a queue's messages; the topic's go to its subscriber too)."""

    entity: str
    sequence_number: int
    enqueued_time: datetime
    message_id: str | None
    correlation_id: str | None
    subject: str | None
    content_type: str | None
    reply_to: str | None
    application_properties: dict[str, Any]
    body: bytes

    def public(self) -> dict[str, Any]:
        return {"queue": self.entity, "sequenceNumber": self.sequence_number,
                "enqueuedTime": self.enqueued_time.isoformat(), "messageId": self.message_id,
                "correlationId": self.correlation_id, "subject": self.subject, "contentType": self.content_type,
                "replyTo": self.reply_to, "applicationProperties": self.application_properties,
                "body": self.body.decode("utf-8", errors="replace")}


@dataclass
class Entity:
    name: str
    kind: Literal["queue", "topic"]
    dedupe_window: float | None = None  # seconds; None: no duplicate detection
    send_allowed: bool = True  # False: the app's identity holds no Send claim on it
    seen: dict[str, float] = field(default_factory=dict)  # MessageId -> when first accepted (dedupe history)
    messages: list[Delivered] = field(default_factory=list)  # a queue's (the topic's go to its subscribers)
    _forgotten_at: float = 0.0

    def duplicate(self, message_id: str | None, now: float) -> bool:
        """Within the window a resend of a MessageId is dropped; after it, the broker no longer knows the id."""
        if self.dedupe_window is None or not message_id:
            return False
        first = self.seen.get(message_id)
        if first is not None and now - first < self.dedupe_window:
            return True
        self.seen[message_id] = now
        if now - self._forgotten_at >= 60:  # the broker forgets ids past the window (swept once a minute)
            self._forgotten_at = now
            self.seen = {k: at for k, at in self.seen.items() if now - at < self.dedupe_window}
        return False

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "duplicateDetectionSeconds": self.dedupe_window,
                "sendAllowed": self.send_allowed, "messages": len(self.messages)}


class QueueSpec(BaseModel):
    """`POST /devhost/servicebus/queues`: a queue a ReplyTo may name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=260)
    duplicate_detection: str | None = Field(None, alias="duplicateDetectionHistoryTimeWindow",
                                            description="e.g. PT10M; absent: no duplicate detection")
    send_allowed: bool = Field(True, alias="sendAllowed")


class SendFault(BaseModel):
    """The next `times` sends to a matching entity (a name or a glob; absent: any) fail as the broker fails them.

    `ServerBusy`, `Timeout` (not accepted) and `QuotaExceeded` refuse the message; `AcceptedThenTimeout`
    accepts it, then the send times out (the SDK sends it again: duplicate detection drops the resend)."""

    model_config = ConfigDict(extra="forbid")

    entity: str | None = None
    error: Literal["ServerBusy", "Timeout", "AcceptedThenTimeout", "QuotaExceeded"] = "ServerBusy"
    times: int = Field(1, ge=1)
    _used: int = PrivateAttr(0)

    def take(self, entity: str) -> bool:
        if self.entity is not None and not fnmatch.fnmatch(entity.casefold(), self.entity.casefold()):
            return False
        self._used += 1
        return True

    @property
    def used_up(self) -> bool:
        return self._used >= self.times

    def public(self) -> dict[str, Any]:
        return {**self.model_dump(exclude_none=True), "remaining": self.times - self._used}
