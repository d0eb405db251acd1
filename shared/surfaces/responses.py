"""The HTTP API's response bodies, as models: shared/surfaces/http.py shapes every answer through them, and
scripts/generate_schemas.py writes docs/openapi.yaml from them, so the spec cannot drift from what
the API sends (a field the API sends but the model lacks is a validation error in the tests).

Bodies are dumped with `exclude_unset`: a key the API did not set is absent, as before (for
example `health` and `batchId` appear only on terminal operations).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.domain.errors import ApiError
from shared.domain.events import Trigger

OperationStatus = Literal["Queued", "AwaitingApproval", "Accepted", "Running", "Verifying", "Succeeded", "Failed",
                          "Canceled", "TimedOut"]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def body(self) -> dict[str, Any]:
        """The JSON body: camelCase, only the keys that were set."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class ReplyDelivery(_Body):
    queue: str
    status: Literal["sending", "pending", "sent", "failed"]
    attempts: int = Field(description="Sends tried so far (one at once, then one per sweep; at most 5)")
    error: str | None = Field(None, description="The last send's error, when it failed")


class Operation(_Body):
    """An operation's status (GET /api/reimage/{operationId}) and the answer to an accepted request."""

    operation_id: str = Field(description="The operation's id: deterministic from the idempotency key")
    request_id: str | None = Field(None, description="The idempotency key: requestId, MessageId, or alertId+target")
    status: OperationStatus
    target: str = Field(description="Normalised ARM id of the target")
    instance_ids: list[str] | None = Field(None, description="Scale sets: exactly the instances reimaged")
    trigger: Trigger
    requested_by: str | None = None
    requested_by_verified: str | None = Field(
        None, description="How requestedBy was verified: easyauth, slack, teams or unverified")
    reason: str | None = None
    correlation_id: str | None = None
    created_time: Timestamp | None = None
    last_updated_time: Timestamp | None = None
    submitted_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    polls: int = 0
    arm_status: str | None = Field(None, description="ARM's last reported status of the reimage operation")
    error: ApiError | None = None
    health: Literal["Healthy", "Unhealthy", "Unknown"] | None = Field(
        None, description="Terminal operations: the target's health after the reimage")
    health_detail: dict[str, str] | None = Field(
        None, description='Terminal operations: per instance ("" for a VM), its health and what its view said')
    batch_id: str | None = Field(None, description="The ARM operation (batch) it rides: itself when it was "
                                 "submitted on its own, a b-... batch when it was coalesced with others")
    queue_position: int | None = Field(None, description="Queued: its place in the target's queue (1 = next)")
    cancelled_by: str | None = Field(None, description="Canceled by an operator: who")
    approved_by: str | None = Field(None, description="Who approved it (a second person; see requestedBy)")
    approved_by_verified: str | None = Field(None, description="How approvedBy was verified")
    members: list[str] | None = Field(None, description="A batch (b-...): the operations it carries")
    reply: ReplyDelivery | None = Field(None, description="A queue message with ReplyTo: how the completion "
                                        "event's ReplyTo copy fared")
    status_url: str | None = Field(None, description="Where to poll this operation (also the Location header)")
    duplicate: bool | None = Field(None, description="true: this answers an earlier request with the same "
                                   "idempotency key; nothing new was submitted")


class Check(BaseModel):
    """One dry-run check. Checks may add facts of their own (osType, code, message...)."""

    model_config = ConfigDict(extra="allow")

    name: str
    result: Literal["passed", "failed", "skipped"]


class Plan(BaseModel):
    """The ARM call a dry run would make; secrets redacted as ***."""

    model_config = ConfigDict(extra="forbid")

    operation: str
    method: Literal["POST"]
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None


class DryRun(_Body):
    """A dry run (the cmdlet's -WhatIf): what would be sent, and every check with its result."""

    dry_run: Literal[True]
    target: str
    passed: bool = Field(description="true when every check passed: the real request would pass policy")
    plan: Plan | None = Field(description="null when the instances cannot be known (allInstances on a scale set "
                              "that could not be read)")
    checks: list[Check] = Field(description="Every check in order, passed, failed (with the code the real request "
                                "gets) or skipped (with why); a dry run does not stop at the first failure")


class AlertAccepted(_Body):
    target: str
    operation_id: str | None = None
    status: OperationStatus | None = None
    status_url: str | None = None
    dry_run: bool | None = None
    passed: bool | None = None
    plan: Plan | None = None
    checks: list[Check] | None = None
    duplicate: bool | None = None


class AlertRefused(_Body):
    target: str
    error: ApiError
    operation_id: str | None = None


class AlertIgnored(_Body):
    target: str
    reason: str


class AlertResult(_Body):
    """The answer to an action group webhook: what acted, what was refused, what was ignored and why."""

    alert_id: str
    accepted: list[AlertAccepted]
    refused: list[AlertRefused]
    ignored: list[AlertIgnored]


class ActionRequest(BaseModel):
    """The body of cancel / approve / reject. `by` is recorded as unverified: a verified caller (App Service
    authentication) is taken from the platform's header instead."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, min_length=1, max_length=256)
    by: str | None = Field(None, min_length=1, max_length=256)


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="ARM id of the VM or scale set to resume")
    reason: str | None = Field(None, max_length=256)


class TargetLease(_Body):
    owner: str = Field(description="The operation or batch holding the target")
    until: Timestamp


class TargetBatch(_Body):
    batch_id: str
    members: list[str] = Field(description="The requests riding it (empty until it is sealed, just before its POST)")
    instance_ids: list[str]
    options: dict[str, Any]
    started: Timestamp
    sealed: bool


class QueuedRequest(_Body):
    operation_id: str
    instance_ids: list[str] | None
    options: dict[str, Any]
    queued_at: Timestamp
    position: int


class TargetCooldown(_Body):
    until: Timestamp
    operation_id: str


class FleetBudget(_Body):
    used: int = Field(description="Instances reimaged in the window")
    limit: int = Field(description="FLEET_BUDGET_PERCENT of the set's capacity")
    batch_cap: int = Field(description="Largest batch: MAX_BATCH_PERCENT of the capacity")
    window_minutes: int
    frees_at: Timestamp | None


class Breaker(_Body):
    distinct_instances_requested: int
    breaker_percent: int
    consecutive_failures: int
    breaker_failures: int


class TargetState(_Body):
    """GET /api/targets?id=: what holds a target, what waits for it, and what limits it."""

    target: str
    capacity: int | None = Field(description="Scale sets: instances now (as of the last request)")
    lease: TargetLease | None
    batch: TargetBatch | None
    queue: list[QueuedRequest]
    cooldowns: dict[str, TargetCooldown] = Field(description='Per instance ("vm" for a VM)')
    budget: FleetBudget | None
    breaker: Breaker
    suspended: dict[str, Any] | None = Field(description="since, reason, by, evidence (and, once lifted, who and "
                                             "why)")
