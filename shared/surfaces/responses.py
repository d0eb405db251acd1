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


class FreezeHold(_Body):
    """The freeze that held a request for approval (FREEZE_WINDOWS, or the target's freeze tag)."""

    source: Literal["window", "tag"] = Field(description="window: FREEZE_WINDOWS; tag: the target's FREEZE_TAG")
    window: str = Field(description="The FREEZE_WINDOWS entry as written, or the tag and its value")
    start: Timestamp | None = Field(None, description="When this occurrence of the window began (null for a tag)")
    until: Timestamp | None = Field(None, description="When it ends (null: a tag value that is not a time, "
                                    "treated as frozen until the tag is changed)")


class GroupDecisionView(_Body):
    action: Literal["approve", "reject", "expire"]
    by: str | None = None
    by_verified: str | None = None
    by_identity: str | None = None
    reason: str | None = None
    at: Timestamp


class ApprovalGroupView(_Body):
    """Requests held as one decision: approving or rejecting any member (or the group id) acts on all of them."""

    group_id: str = Field(description="g-...: POST /api/reimage/{groupId}/approve (or /reject) acts on the group")
    size: int = Field(description="How many requests the group was formed for")
    reason: str = Field(description="Why they are held together")
    members: list[str] | None = Field(None, description="The group's operations (on the group itself)")
    decision: GroupDecisionView | None = Field(None, description="The group's one decision, once made")


class CanaryView(_Body):
    """A scale set's canary: the batch that went first while the rest of the storm waited (docs/operations.md)."""

    batch_id: str = Field(description="The canary's batch (b-...)")
    instance_ids: list[str] = Field(description="The instances it reimaged (CANARY_INSTANCES)")
    role: Literal["canary", "after", "waited", "waiting"] | None = Field(
        None, description="A request's part (absent on GET /api/targets): canary: this request was in it (or its "
        "first instances were); after: it went after the canary passed; waited: the canary's failure ended it; "
        "waiting: it waits for the canary now")
    outcome: Literal["running", "passed", "failed"]
    status: str | None = Field(None, description="How the canary batch ended (Succeeded, Failed, TimedOut, Canceled)")
    health: Literal["Healthy", "Unhealthy", "Unknown"] | None = None
    health_detail: dict[str, str] | None = Field(None, description="Per canary instance: its health and what its "
                                                 "view said")
    valid_until: Timestamp | None = Field(None, description="A passed canary: until when the set needs no other "
                                          "(FLEET_WINDOW_MINUTES after it ended)")


class EvidenceItem(_Body):
    status: Literal["captured", "skipped", "failed"]
    url: str | None = Field(None, description="The blob it was stored in (no SAS: read it with your own Entra ID "
                            "access to the container), or the snapshot's ARM id")
    reason: str | None = Field(None, description="Skipped or failed: why")
    bytes: int | None = Field(None, description="The serial log: bytes kept")
    truncated: bool | None = Field(None, description="The serial log was longer than the cap: its end is kept")
    total_bytes: int | None = Field(None, description="A truncated serial log: its whole length")
    retain_until: Timestamp | None = Field(None, description="The snapshot: its retention date (its tag)")


class InstanceEvidence(_Body):
    serial_log: EvidenceItem | None = None
    instance_view: EvidenceItem | None = None
    snapshot: EvidenceItem | None = None


class EvidenceView(_Body):
    """What was captured before the reimage wiped the OS disk (EVIDENCE, captureEvidence)."""

    mode: Literal["bootdiagnostics", "snapshot"]
    status: Literal["captured", "partial", "skipped", "failed"] = Field(
        description="captured: everything asked for; partial: some of it; skipped/failed: none of it")
    container: str | None = Field(None, description="The blob container (reimager-evidence) the files are in")
    started_at: Timestamp
    seconds: float = Field(description="How long the capture took (at most EVIDENCE_TIMEOUT_SECONDS)")
    timed_out: bool = Field(description="EVIDENCE_TIMEOUT_SECONDS ran out: the reimage went on without the rest")
    instances: dict[str, InstanceEvidence] = Field(description='Per instance ("" for a VM)')


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
    requested_by_identity: str | None = Field(
        None, description="The verified identity behind requestedBy: entra:<object id>, slack:<team>/<user>, "
        "teams:<id> or easyauth-<provider>:<id> (absent when unverified)")
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
    cancelled_by_verified: str | None = Field(None, description="How cancelledBy was verified")
    cancelled_by_identity: str | None = Field(None, description="The verified identity behind cancelledBy")
    approved_by: str | None = Field(None, description="Who approved it (a second person; see requestedBy)")
    approved_by_verified: str | None = Field(None, description="How approvedBy was verified")
    approved_by_identity: str | None = Field(None, description="The verified identity behind approvedBy")
    freeze: FreezeHold | None = Field(None, description="The freeze that held it for approval")
    approval_group: ApprovalGroupView | None = Field(None, description="Held with other requests as one "
                                                     "decision (an alert naming more than MAX_TARGETS_PER_ALERT)")
    canary: CanaryView | None = Field(None, description="The scale set's canary this request was in, went after, "
                                      "waits for, or was ended by")
    evidence: EvidenceView | None = Field(None, description="What was captured before the reimage (links to the "
                                          "blobs and the snapshot)")
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
    calls: list[Plan] | None = Field(None, description="A Flexible scale set: the single-VM reimage POST of each "
                                     "member, sent together as one batch (plan is the first)")


class AlertAccepted(_Body):
    target: str
    operation_id: str | None = None
    status: OperationStatus | None = None
    error: ApiError | None = Field(None, description="AwaitingApproval: what it waits for, and why")
    freeze: FreezeHold | None = Field(None, description="The freeze that holds it for approval")
    status_url: str | None = None
    dry_run: bool | None = None
    passed: bool | None = None
    plan: Plan | None = None
    checks: list[Check] | None = None
    calls: list[Plan] | None = None
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
    approval_group: ApprovalGroupView | None = Field(
        None, description="More machines than MAX_TARGETS_PER_ALERT: every accepted target waits AwaitingApproval "
        "in this group; approving or rejecting the group id (or any member) decides for all of them")


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


class ArmCallQuota(_Body):
    remaining: dict[str, int] = Field(description="Each policy's remaining requests, as ARM's last answer to this "
                                      "kind of call on this target named them (x-ms-ratelimit-remaining-resource)")
    lowest: int | None
    seen_at: Timestamp


class ArmQuota(_Body):
    """What this app instance last saw of ARM's throttling for the target (shared/adapters/arm/quota.py)."""

    calls: dict[str, ArmCallQuota] = Field(description='Per kind of call: "model", "instances", "poll", "health", '
                                           '"submit"')
    subscription: dict[str, int] = Field(description="ARM's remaining reads and writes for the subscription and this "
                                         "app's identity (x-ms-ratelimit-remaining-subscription-reads/writes)")
    throttled_until: dict[str, Timestamp] = Field(description="Per kind of call: ARM answered 429 and its Retry-After "
                                                  "has not passed; nothing of that kind is sent before")


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
    suspended: dict[str, Any] | None = Field(description="since, reason, by, code, evidence (and, once lifted, who "
                                             "and why)")
    canary: CanaryView | None = Field(None, description="Scale sets: the canary running now, or the last one and "
                                      "what it proved")
    arm_quota: ArmQuota = Field(description="ARM's remaining requests for this target as this app instance last saw "
                                "them; reimager slows down before they run out (docs/operations.md)")
