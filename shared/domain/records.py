"""What the ledger stores: one record per operation (or batch) and one per target. No secrets.

Schema and keys: docs/ledger.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.domain.status import OperationStatus


class _Doc(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class GroupDecision(_Doc):
    """An approval group's one decision, made by one compare-and-swap on its group record (first one wins)."""

    action: Literal["approve", "reject", "expire"]
    by: str | None = None
    by_verified: str | None = None
    by_identity: str | None = None
    reason: str | None = None
    at: datetime


class ApprovalGroup(_Doc):
    """Requests held as one decision (an alert naming more machines than MAX_TARGETS_PER_ALERT). Each member
    carries the group id and size; the group record (`g-...`, never listed) also holds the members and the
    decision."""

    group_id: str
    size: int
    reason: str
    members: list[str] | None = None  # the group record only
    decision: GroupDecision | None = None  # the group record only

    def view(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"groupId": self.group_id, "size": self.size, "reason": self.reason}
        if self.members is not None:
            doc["members"] = self.members
        if self.decision is not None:
            doc["decision"] = self.decision.model_dump(mode="json", by_alias=True, exclude_none=True)
        return doc


class OperationRecord(_Doc):
    """One reimage operation. Holds no secrets: it is stored, listed and answered."""

    operation_id: str
    request_id: str
    target: str
    lease_key: str
    instance_ids: list[str] | None = None
    cooldown_keys: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    dry_run: bool = False
    trigger: str
    requested_by: str | None = None
    requested_by_verified: str = "unverified"
    requested_by_identity: str | None = None  # the verified identity behind requestedBy (entra:..., slack:...)
    reason: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    reply_correlation_id: str | None = None
    status: OperationStatus = OperationStatus.CLAIMED
    # The claim attempt that holds this key (random, per claim): what the target's lease, provisional cooldowns
    # and budget entries are held by, so a request that took a stalled claim over is never freed by the staller.
    attempt: str = ""
    claimed_until: datetime | None = None  # a Claimed record's owner moves it on before this, or may be taken over
    error: dict[str, Any] | None = None
    arm: dict[str, Any] | None = None
    arm_status: str | None = None
    polls: int = 0
    applied: bool = False  # the POST may have reached ARM: cooldown applies even on failure
    created_time: datetime
    last_updated_time: datetime
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    arm_seconds: float | None = None  # ARM's startTime -> endTime, for the learned poll schedule
    health: str | None = None
    batch_id: str | None = None  # the ARM operation this request rides: itself, a joined one, or a b-... batch
    members: list[str] | None = None  # a b-... batch record: the requests it carries
    health_detail: dict[str, str] | None = None  # instance ("" = the VM) -> Healthy/Unhealthy/Unknown: detail
    queue_position: int | None = None
    cancelled_by: str | None = None
    cancelled_by_verified: str | None = None
    cancelled_by_identity: str | None = None
    approved_by: str | None = None
    approved_by_verified: str | None = None
    approved_by_identity: str | None = None
    freeze: dict[str, Any] | None = None  # the freeze window that held it for approval (shared/rules/freeze.py)
    approval_group: ApprovalGroup | None = None  # held with others as one decision (shared/workflow/approvals.py)
    # The scale set's canary this request was, waited for, or went after (CanaryState.doc; shared/rules/canary.py).
    canary: dict[str, Any] | None = None
    evidence_mode: str | None = None  # what to capture before the POST: off, bootdiagnostics or snapshot
    evidence: dict[str, Any] | None = None  # what was captured, skipped or failed (shared/workflow/evidence.py)
    event_id: str | None = None  # set once the terminal event is published (to the topic)
    reply: dict[str, Any] | None = None  # the ReplyTo copy's delivery: {status, attempts, error, at}
    # Not a secret: a salted fingerprint to recognise the request's secrets in ARM's poll text, kept until the
    # operation is settled (shared/domain/redaction.py fingerprint; docs/operations.md "Secrets").
    secret_fingerprint: dict[str, Any] | None = None
    # A request whose preflight read ARM throttled (shared/workflow/throttling.py defer): what it asked (never
    # secrets), when to read the target again, and ARM's answer; the sweeper resumes it (shared/workflow/deferred.py).
    deferred: dict[str, Any] | None = None
    # A request on a Flexible scale set's member VM (by its VM id): the set it is governed by (its lease, queue,
    # budget, breaker and cooldowns are the set's; shared/workflow/fleet.py). None otherwise.
    scale_set: str | None = None
    # A same-key delivery was answered 202 with it while it was still Claimed (its owner slow or dead): a promise
    # of one event, so it is never freed quietly, and a claim that takes it over carries the promise on.
    promised: bool = False
    etag: str | None = Field(None, exclude=True)

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def governed_by(self) -> str:
        """The id whose VM or scale set holds this operation's lease: the Flexible set of a member, else the
        target (a scale set instance's set is its `vm_id`)."""
        return self.scale_set or self.target

    @property
    def answered(self) -> bool:
        """Its caller was answered 202 before it was admitted (approved later, queued while ARM throttled its
        preflight, or a same-key delivery joined its claim): it ends with its one event, never by freeing its key
        quietly."""
        return self.approved_by is not None or self.deferred is not None or self.promised

    @property
    def holder(self) -> str:
        """Who holds the target for this operation: the claim attempt of a request, a batch's own id."""
        return f"{self.operation_id}@{self.attempt}" if self.attempt else self.operation_id

    @property
    def is_batch(self) -> bool:
        """A batch formed from queued requests: an internal record, with no event of its own."""
        return self.members is not None

    def view(self) -> dict[str, Any]:
        """The public status document (GET /api/reimage/{id})."""
        doc: dict[str, Any] = {
            "operationId": self.operation_id, "requestId": self.request_id, "status": self.public_status,
            "target": self.target, "instanceIds": self.instance_ids, "trigger": self.trigger,
            "requestedBy": self.requested_by, "requestedByVerified": self.requested_by_verified,
            "reason": self.reason, "correlationId": self.correlation_id,
            "createdTime": self.created_time.isoformat(), "lastUpdatedTime": self.last_updated_time.isoformat(),
            "submittedAt": self.submitted_at.isoformat() if self.submitted_at else None,
            "completedAt": self.completed_at.isoformat() if self.completed_at else None,
            "polls": self.polls, "armStatus": self.arm_status, "error": self.error,
        }
        # In the order of shared/responses.Operation, so a stored view and an answered one are the same JSON.
        if self.requested_by_identity is not None:
            doc["requestedByIdentity"] = self.requested_by_identity
        if self.terminal:
            doc["health"] = self.health
            doc["healthDetail"] = self.health_detail
        if self.terminal or self.batch_id is not None:
            doc["batchId"] = self.batch_id
        if self.status == OperationStatus.QUEUED:
            doc["queuePosition"] = self.queue_position
        if self.cancelled_by is not None:
            doc["cancelledBy"] = self.cancelled_by
            doc.update(_set(cancelledByVerified=self.cancelled_by_verified,
                            cancelledByIdentity=self.cancelled_by_identity))
        if self.approved_by is not None:
            doc["approvedBy"] = self.approved_by
            doc["approvedByVerified"] = self.approved_by_verified
            doc.update(_set(approvedByIdentity=self.approved_by_identity))
        doc.update(_set(freeze=self.freeze, approvalGroup=self.approval_group.view() if self.approval_group else None,
                        canary=self.canary, evidence=self.evidence))
        if self.is_batch:
            doc["members"] = self.members
        if self.reply:
            doc["reply"] = {k: self.reply.get(k) for k in ("queue", "status", "attempts", "error") if k in self.reply}
        return doc

    @property
    def public_status(self) -> OperationStatus:
        # Claimed/Submitting are internal steps of an accepted request, not states a caller acts on.
        return self.status.public


def _set(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class Cooldown(_Doc):
    until: datetime
    operation_id: str
    owner: str | None = None  # the holder whose reimage started it (None: written before holders existed)

    @property
    def holder(self) -> str:
        return self.owner or self.operation_id


class QueueEntry(_Doc):
    """Requests waiting for their target, admitted into a later batch in arrival order. Requests for the same
    instances with the same options share one entry (`riders` after the first): one row in the ledger."""

    operation_id: str
    keys: list[str]  # "" for a VM, else instance ids
    options: dict[str, Any]
    queued_at: datetime
    riders: list[str] = Field(default_factory=list)
    approved: bool = False  # a second person approved it (a canary goes first, however small the batch)
    row: str | None = Field(None, exclude=True)  # its row in the target's partition (None: not stored yet)
    etag: str | None = Field(None, exclude=True)

    @property
    def members(self) -> list[str]:
        return [self.operation_id, *self.riders]


class BatchEntry(_Doc):
    """The batch holding a target's lease: one ARM POST for the union of its members' instances."""

    batch_id: str  # the lead request's operation id, or b-... for a batch formed from the queue
    owner: str | None = None  # the lease holder it runs under (None: written before holders existed: batch_id)
    members: list[str]
    keys: list[str]
    options: dict[str, Any]
    started: datetime
    formed: bool = False  # formed from the queue: a batch record and its orchestration carry it
    handed_from: str | None = None

    @property
    def holder(self) -> str:
        return self.owner or self.batch_id


class BudgetEntry(_Doc):
    owner: str
    count: int
    at: datetime


class CanaryState(_Doc):
    """A scale set's canary (shared/rules/canary.py): the batch that went first while the rest waited, and what it
    proved. A passed canary stays valid until `valid_until` (FLEET_WINDOW_MINUTES after it ended)."""

    batch_id: str
    instances: list[str]
    members: list[str]
    partial: list[str] = Field(default_factory=list)  # members with more instances than the canary took...
    held: list[QueueEntry] = Field(default_factory=list)  # ...whose other instances wait here, out of the queue
    options: dict[str, Any] = Field(default_factory=dict)  # what it was reimaged with (another exactVersion: no proof)
    started: datetime
    outcome: Literal["running", "passed", "failed"] = "running"
    status: str | None = None  # the canary batch's end: Succeeded, Failed, TimedOut, Canceled
    health: str | None = None
    health_detail: dict[str, str] | None = None
    ended: datetime | None = None
    valid_until: datetime | None = None

    def doc(self, role: str) -> dict[str, Any]:
        """What a request's status and events carry: `role` canary (it was in it), waited (the canary's failure
        ended it), after (it went after the canary passed) or waiting (a status read while the canary runs)."""
        out: dict[str, Any] = {"batchId": self.batch_id, "instanceIds": self.instances, "role": role,
                               "outcome": self.outcome}
        out.update(_set(status=self.status, health=self.health, healthDetail=self.health_detail,
                        validUntil=self.valid_until.isoformat() if self.valid_until else None))
        return out


class TargetRecord(_Doc):
    """One VM or scale set: lease and running batch, queue, cooldowns, budget window, failures, suspension."""

    key: str
    target_id: str | None = None  # the VM or scale set id, as the caller cased it (for batch POSTs)
    capacity: int = 1
    lease_owner: str | None = None  # a holder: an operation's claim attempt, or a batch id
    lease_until: datetime | None = None
    batch: BatchEntry | None = None
    # Rows of their own in the target's partition (the ledger loads and stores them), so a record stays under
    # Azure's entity limit at any queue length.
    queue: list[QueueEntry] = Field(default_factory=list, exclude=True)
    queue_seq: int = 0  # the last queue row number given (rows sort in arrival order)
    gone: list[str] = Field(default_factory=list)  # queue rows removed by a decision, not deleted yet
    cooldowns: dict[str, Cooldown] = Field(default_factory=dict)  # "" = the VM itself; else instance id
    window: list[BudgetEntry] = Field(default_factory=list)  # instances reimaged in FLEET_WINDOW_MINUTES
    requested: dict[str, datetime] = Field(default_factory=dict)  # instance -> first request in the window
    consecutive_failures: int = 0
    suspended: dict[str, Any] | None = None
    canary: CanaryState | None = None  # the set's canary: running, or what it proved (shared/rules/canary.py)
    # ARM's own durations (seconds) of the last successful reimages, newest first: the learned poll schedule
    # (shared/rules/poll_schedule.py). Written by the release that ends each one; read by the admission that leads.
    durations: list[float] = Field(default_factory=list)
    etag: str | None = Field(None, exclude=True)

    def lease_held(self, now: datetime) -> bool:
        return self.lease_owner is not None and self.lease_until is not None and self.lease_until > now

    def prune(self, now: datetime) -> None:
        self.cooldowns = {k: c for k, c in self.cooldowns.items() if c.until > now}

    def queued(self, operation_id: str) -> tuple[int, QueueEntry] | None:
        """The queue position (1 = next) and entry that holds this request, if it waits here."""
        for position, entry in enumerate(self.queue, 1):
            if operation_id in entry.members:
                return position, entry
        return None
