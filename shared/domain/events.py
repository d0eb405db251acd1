"""Reimager's events: CloudEvents 1.0, their data, and the publisher port that sends them.

Event ids are derived from the operation id and type, so a re-sent event carries the same
MessageId and Service Bus duplicate detection drops it.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.domain.errors import ApiError
from shared.domain.status import EventStatusValue


class EventType(StrEnum):
    """Every CloudEvents `type` reimager publishes (docs/events.md)."""

    ACCEPTED = "reimager.operation.accepted"
    COMPLETED = "reimager.operation.completed"
    REJECTED = "reimager.request.rejected"
    QUEUED = "reimager.operation.queued"
    AWAITING_APPROVAL = "reimager.operation.awaiting-approval"
    SUSPENDED = "reimager.target.suspended"
    RESUMED = "reimager.target.resumed"
    REPLY_FAILED = "reimager.operation.reply-failed"


CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
SOURCE = "/reimager"
_NAMESPACE = uuid.UUID("9b1f4a52-3c3e-4d7e-9a57-6d1c0f3b2a10")

Trigger = Literal["http", "alert", "queue", "chatops", "operator", "breaker", "batch"]


class EventData(BaseModel):
    """The `data` of every reimager event. Holds no secrets: requests' secrets never reach it."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    operation_id: str | None = Field(None, description="Durable instance id of the operation (None if rejected).")
    request_id: str | None = None
    correlation_id: str | None = None
    target: str | None = Field(None, description="Normalised ARM id of the target.")
    instance_ids: list[str] | None = None
    status: EventStatusValue
    error: ApiError | None = None
    trigger: Trigger
    requested_by: str | None = None
    reason: str | None = None
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    duration_seconds: float | None = None
    polls: int = 0
    requested_by_verified: str | None = Field(
        None, description="How requestedBy was verified: easyauth, slack, teams or unverified.")
    batch_id: str | None = Field(None, description="The ARM operation (batch) this request was part of.")
    health: Literal["Healthy", "Unhealthy", "Unknown"] | None = None
    health_detail: dict[str, str] | None = Field(
        None, description='Per instance ("" for a VM): Healthy, Unhealthy or Unknown, and what its view said.')
    queue_position: int | None = Field(None, description="Queued: requests ahead of this one, plus one.")
    cancelled_by: str | None = None
    approved_by: str | None = None
    requested_by_identity: str | None = Field(
        None, description="The verified identity behind requestedBy (entra:<object id>, slack:<team>/<user>, ...).")
    approved_by_verified: str | None = Field(None, description="How approvedBy was verified.")
    approved_by_identity: str | None = Field(None, description="The verified identity behind approvedBy.")
    cancelled_by_verified: str | None = Field(None, description="How cancelledBy was verified.")
    cancelled_by_identity: str | None = Field(None, description="The verified identity behind cancelledBy.")
    freeze: dict[str, Any] | None = Field(
        None, description="The freeze that held the request for approval: source (window or tag), window (as "
        "written), start and until.")
    approval_group: str | None = Field(
        None, description="The approval group (g-...) the request was held in as one decision with others.")
    suspension: dict[str, Any] | None = Field(
        None, description="Target events: since, reason, by, code (BreakerPercent, BreakerFailures or CanaryFailed) "
        "and the evidence (what tripped the breaker; for CanaryFailed the canary batch, its instances, its requests, "
        "its end and its health detail).")
    canary: dict[str, Any] | None = Field(
        None, description="The scale set's canary (the batch that went first while the rest waited): batchId, "
        "instanceIds, role (canary: this request was in it; after: it went after the canary passed; waited: the "
        "canary's failure ended it), outcome (running, passed or failed) and the canary's status, health and "
        "healthDetail.")
    evidence: dict[str, Any] | None = Field(
        None, description="What was captured before the reimage wiped the OS disk: mode, container, status and per "
        "instance the serial console log, the instance view and the OS disk snapshot (each captured, skipped or "
        "failed, with a link or why).")
    reply: dict[str, Any] | None = Field(
        None, description="reimager.operation.reply-failed: the ReplyTo queue, the attempts made and the last "
        "error (the completion event reached the topic; its ReplyTo copy could not be delivered).")


class CloudEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    type: EventType
    source: str = SOURCE
    subject: str | None = None
    id: str
    time: datetime
    datacontenttype: Literal["application/json"] = "application/json"
    data: EventData

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.to_json())
        return out


def build_event(event_type: EventType, data: EventData, *, time: datetime | None = None,
                unique: str | None = None) -> CloudEvent:
    """Build an event; its id is stable for (operation, type) so re-sends are detected as duplicates."""
    # The completion id includes the final status: a re-send of one outcome keeps its id (Service Bus
    # dedup drops it), two different outcomes never share one.
    seed = f"{data.operation_id or unique or uuid.uuid4()}|{event_type}"
    if event_type == EventType.COMPLETED:
        seed += f"|{data.status}"
    return CloudEvent(type=event_type, subject=data.target, id=str(uuid.uuid5(_NAMESPACE, seed)),
                      time=time or datetime.now(UTC), data=data)


class Publisher(Protocol):
    """Where events go: the events topic (`publish`), and a request's ReplyTo queue (`reply`), each on its own,
    so a ReplyTo that cannot be reached never makes the topic's copy be sent again."""

    async def publish(self, event: CloudEvent) -> None: ...

    async def reply(self, event: CloudEvent, queue: str, correlation_id: str | None) -> None: ...

    async def close(self) -> None: ...


def data_schema() -> dict[str, Any]:
    return EventData.model_json_schema(by_alias=True, mode="serialization")
