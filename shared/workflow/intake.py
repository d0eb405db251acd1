"""The one path every entry surface shares: preflight -> policy -> claim -> admit -> submit -> monitor.

Every coordination decision is one atomic ledger write: the claim is an insert-if-absent keyed
by the idempotency key; admission is a compare-and-swap on the target's record (lease,
cooldowns, suspension). Durable Functions only runs the timer loop that polls ARM. The core
returns typed results and raises typed errors; entry surfaces shape them for their callers.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.adapters.ledger import LedgerUnavailable, RecordChanged
from shared.adapters.telemetry import bind
from shared.domain.arm_call import ArmCall
from shared.domain.errors import ApiError, ComputeThrottled, ErrorCode, ReimagerError, TargetNotFound
from shared.domain.events import EventType, Trigger
from shared.domain.ids import operation_id
from shared.domain.principal import Principal
from shared.domain.records import ApprovalGroup, OperationRecord, QueueEntry
from shared.domain.redaction import fingerprint, secrets_of_body
from shared.domain.request import ReimageRequest
from shared.domain.status import IN_PROGRESS, OperationStatus
from shared.rules import admission, dryrun, freeze, policy
from shared.rules.policy import needs_approval
from shared.rules.poll_schedule import next_poll_delay
from shared.runtime import Runtime
from shared.workflow import fleet, submission, throttling
from shared.workflow.completion import abandon, admit, finish, publish_info, release_lease
from shared.workflow.orchestration import start_batch, start_monitor

log = logging.getLogger("reimager.intake")
_JOIN_WAIT_SECONDS = 5.0  # how long a same-key request waits for the first one's submission


@dataclass(frozen=True)
class Accepted:
    """The request is (or already was) an operation."""

    record: OperationRecord
    retry_after: int
    duplicate: bool = False


@dataclass(frozen=True)
class Planned:
    """A dry run: what would be sent, and every check with its result."""

    target: str
    plan: dict[str, Any] | None  # None when the instances cannot be known (the set was not read)
    checks: list[dict[str, Any]]
    calls: list[dict[str, Any]] | None = None  # a Flexible set: every member's single-VM POST (plan is the first)


Result = Accepted | Planned


@dataclass
class Intake:
    runtime: Runtime
    client: Any  # DurableOrchestrationClient

    @property
    def settings(self) -> Any:
        return self.runtime.settings

    async def submit(self, request: ReimageRequest, *, trigger: Trigger, default_key: str | None = None,
                     reply_to: str | None = None, reply_correlation_id: str | None = None,
                     principal: Principal | None = None, group: ApprovalGroup | None = None,
                     promised: bool = False) -> Result:
        """`promised`: a same-key delivery was answered 202 with this key's operation (a claim taken over carries
        that on: it ends with its one event, even if refused)."""
        given = request.request_id or default_key
        key = given or f"auto:{uuid.uuid4()}"
        op_id = operation_id(key)
        bind(operation_id=op_id)  # spans and logs from here on carry it (shared/adapters/telemetry.py)
        target = request.resolved_target
        ledger = self.runtime.ledger
        if given is not None and not request.dry_run:
            # A fresh key cannot have a record; a given one usually is a retry: answer it without ARM.
            existing = await ledger.get(op_id)
            if existing is not None:
                return await self._joined(existing, request, trigger=trigger, default_key=default_key,
                                          reply_to=reply_to, reply_correlation_id=reply_correlation_id,
                                          principal=principal, group=group)

        if request.dry_run:  # every check reported, none raised; never a claim, so never an existing operation
            return await self._plan(request)
        policy.check_scope(target, self.settings)
        try:
            model = await self.runtime.compute.get_model(target)
            # A Flexible member is its set's (shared/workflow/fleet.py): the set's lease, queue, budgets and breaker.
            # Its set is read here too: a throttled read of the set waits Queued as the member's own read would.
            checked = await fleet.preflight(self.runtime, request, model)
        except ComputeThrottled as exc:  # ARM throttled the read: wait Queued rather than fail (or 503 + Retry-After)
            if not throttling.deferrable(request, self.settings):
                raise
            won, deferred = await throttling.defer(self.runtime, request, exc, key=key, trigger=trigger,
                                                   reply_to=reply_to, reply_correlation_id=reply_correlation_id,
                                                   principal=principal)
            if not won:
                return await self._joined(deferred, request, trigger=trigger, default_key=default_key,
                                          reply_to=reply_to, reply_correlation_id=reply_correlation_id,
                                          principal=principal)
            return Accepted(deferred, throttling.wait_of(exc))
        gov, instances, call, cooldown_keys = checked.governed, checked.instances, checked.call, checked.cooldown_keys
        model = gov.model

        now = self.runtime.now()
        # Held for a second person: too wide, a freeze (FREEZE_WINDOWS, the target's tag), or part of a group.
        frozen = freeze.active(self.settings.freeze_schedule, model.tags, self.settings.freeze_tag, now)
        approval = freeze.held(needs_approval(gov.request, instances, self.settings), frozen, group)
        if approval and request.os_profile is not None:
            raise ReimagerError(ErrorCode.INVALID_REQUEST, "This request needs a second person's approval "
                                f"({approval}), and a request that waits may not carry osProfile secrets: they are "
                                "never stored. "
                                "Reimage without osProfile, or name fewer instances.", target="osProfile")
        # A verified caller (Easy Auth, a signed chat request) wins over the name the body gives.
        verified = principal if principal is not None and principal.is_verified else None
        record = OperationRecord(
            operation_id=op_id, request_id=key, target=target.id, lease_key=gov.target.lock_key, instance_ids=instances,
            cooldown_keys=cooldown_keys, options=call.options(), trigger=trigger,
            requested_by=verified.name if verified else request.requested_by,
            requested_by_verified=verified.verified if verified else "unverified",
            requested_by_identity=verified.identity if verified else None,
            reason=request.reason, correlation_id=request.correlation_id, reply_to=reply_to,
            reply_correlation_id=reply_correlation_id, created_time=now, last_updated_time=now,
            attempt=uuid.uuid4().hex[:16], claimed_until=now + timedelta(seconds=self.settings.claim_seconds),
            secret_fingerprint=fingerprint(secrets_of_body(call.body)),
            freeze=frozen.doc() if frozen else None, approval_group=group, scale_set=gov.scale_set,
            evidence_mode=request.capture_evidence or self.settings.evidence, promised=promised)
        won, existing = await ledger.claim(record)
        if not won:
            return await self._joined(existing, request, trigger=trigger, default_key=default_key,
                                      reply_to=reply_to, reply_correlation_id=reply_correlation_id,
                                      principal=principal, group=group)
        if approval:
            await self._precheck(record)
            await ledger.index(record)
            return await self._await_approval(record, approval)
        await ledger.index(record)
        return await self.admit_and_submit(record, call, capacity=gov.capacity, target_id=gov.target.vm_id,
                                           secret=request.os_profile is not None, symptom=not request.all_instances)

    async def admit_and_submit(self, record: OperationRecord, call: ArmCall, *, capacity: int, target_id: str,
                               secret: bool, symptom: bool) -> Accepted:
        """A claimed request: lead (POST now, from here), ride the running batch, or wait in the queue."""
        try:
            decided = await admit(self.runtime, record, secret=secret, capacity=capacity, target_id=target_id,
                                  symptom=symptom)
        except LedgerUnavailable:
            raise  # the decision may have landed and hold the target: keep the claim (its holder is known)
        except BaseException:
            await self._free(record, None)
            raise
        if decided.kind == "refused":
            assert decided.error is not None
            await self._free(record, decided.error)
            raise decided.error
        if decided.kind != "lead":
            return await self._waiting(record, decided)
        try:
            record = await self._to_submitting(record)  # CAS: fails only if a same-key request took the claim over
        except RecordChanged:
            lost = _claim_lost()
            await abandon(self.runtime, self.client, record, lost.error_dict())
            raise lost from None
        slot, frees = await self.runtime.ledger.take_global_slot(record.operation_id, self.runtime.now(),
                                                                 self.settings.global_max_reimages_per_hour)
        if slot is None:
            assert frees is not None
            return await self._over_global_budget(record, frees, secret)
        return await self._submit(record, call, slot, decided.durations)

    async def _to_submitting(self, record: OperationRecord) -> OperationRecord:
        """The lead's CAS from Claimed to Submitting. A same-key delivery may have promised the claim meanwhile
        (`_promise`: the one change another writer makes to a claim it does not take over): keep the promise and
        write again on the new ETag. Anything else raises RecordChanged."""
        for _ in range(2):
            record.status, record.batch_id = OperationStatus.SUBMITTING, record.operation_id
            record.last_updated_time = self.runtime.now()
            try:
                return await self.runtime.ledger.replace(record)
            except RecordChanged:
                current = await self.runtime.ledger.get(record.operation_id)
                if current is None or current.holder != record.holder or current.status != OperationStatus.CLAIMED \
                        or not current.promised:
                    raise
                record.etag, record.promised = current.etag, True
        raise RecordChanged(record.operation_id)

    async def _precheck(self, record: OperationRecord) -> None:
        """Before paging a human: refuse now what admission would refuse anyway (suspended, cooling down).
        Advisory only: after the approval, admission decides again, atomically."""
        target = await self.runtime.ledger.get_target(record.lease_key)
        now = self.runtime.now()
        error = admission.suspended_error(target) if target.suspended else None
        hit = policy.cooling(target, record.cooldown_keys, now)
        if error is None and hit is not None:
            error = policy.cooldown_error(*hit, now)
        if error is not None:
            await self._free(record, None)
            raise error

    async def _await_approval(self, record: OperationRecord, why: str) -> Accepted:
        """Too wide to act on one person's word: wait for a second person (POST .../approve)."""
        now = self.runtime.now()

        def waiting(r: OperationRecord) -> OperationRecord | None:
            if r.status != OperationStatus.CLAIMED:
                return None
            r.status, r.last_updated_time = OperationStatus.AWAITING_APPROVAL, now
            r.error = {"code": ErrorCode.APPROVAL_REQUIRED,
                       "message": f"Waiting for a second person's approval: {why}. POST "
                       f"/api/reimage/{r.operation_id}/approve (or /reject) within "
                       f"{self.settings.approval_timeout_minutes} minutes."}
            return r

        stored = await self.runtime.ledger.update(record.operation_id, waiting)
        assert stored is not None
        await publish_info(self.runtime, EventType.AWAITING_APPROVAL, stored)
        log.info("awaiting approval %s for %s: %s", record.operation_id, record.target, why)
        return Accepted(stored, self.settings.poll_default_seconds)

    async def _waiting(self, record: OperationRecord, decided: admission.Admission) -> Accepted:
        """Joined the running batch, or queued for a later one: no POST from here."""
        now = self.runtime.now()

        def mark(r: OperationRecord) -> OperationRecord | None:
            if r.status not in (OperationStatus.CLAIMED, OperationStatus.QUEUED, OperationStatus.SUBMITTING):
                return None  # a batch already took it further
            if decided.kind == "joined":
                r.status, r.batch_id = OperationStatus.ACCEPTED, decided.batch_id
            else:
                r.status, r.queue_position = OperationStatus.QUEUED, decided.position
            r.last_updated_time = now
            return r

        stored = await self.runtime.ledger.update(record.operation_id, mark)
        if stored is None:  # a same-key request decided this one had died and took its key over: undo
            await self.runtime.ledger.change_target(record.lease_key, lambda t: admission.forget(
                t, record.operation_id))
            raise _claim_lost()
        if decided.kind == "queued" and stored.status == OperationStatus.QUEUED:
            await publish_info(self.runtime, EventType.QUEUED, stored)
        elif decided.kind == "joined" and stored.status == OperationStatus.ACCEPTED:
            # it rides the reimage already under way for its instances (a storm's canary, often): say so now, as a
            # request sent on its own is told (its batch's POST marked only the requests sealed into it)
            await publish_info(self.runtime, EventType.ACCEPTED, stored)
        if decided.formed is not None:
            await start_batch(self.runtime, self.client, record.lease_key, decided.formed, record.governed_by)
            stored = await self.runtime.ledger.get(record.operation_id) or stored
        log.info("%s %s for %s (%s)", decided.kind, record.operation_id, record.target, record.trigger)
        gather = self.settings.batch_gather_seconds if decided.kind == "queued" else 0
        return Accepted(stored, gather + self.first_poll(None))

    async def _over_global_budget(self, record: OperationRecord, frees: datetime, secret: bool) -> Accepted:
        """GLOBAL_MAX_REIMAGES_PER_HOUR is spent: nothing was sent. Wait in the queue, or refuse a request
        whose secrets cannot wait."""
        wait = max(1, int((frees - self.runtime.now()).total_seconds() + 0.999))
        if secret:
            spent = ReimagerError(ErrorCode.GLOBAL_BUDGET_EXHAUSTED, "GLOBAL_MAX_REIMAGES_PER_HOUR reimages were "
                                  "sent in the last hour; a request carrying secrets cannot wait. Ask again after "
                                  f"{frees.isoformat()}.", target="target", retry_after=wait)
            await abandon(self.runtime, self.client, record, spent.error_dict())
            await self._free(record, spent)
            raise spent
        entry = QueueEntry(operation_id=record.operation_id, keys=record.cooldown_keys, options=record.options,
                           queued_at=self.runtime.now())
        await self.runtime.ledger.change_target(record.lease_key, lambda t: admission.requeue(
            t, record.holder, self.runtime.now(), [entry]))
        return await self._waiting(record, admission.Admission("queued", position=1))

    async def _submit(self, record: OperationRecord, call: ArmCall, slot: str,
                      history: list[float] | None = None) -> Accepted:
        """POST from here, with the request's secrets still in memory (shared/workflow/submission.py). `history`:
        the target's recent durations as admission read them, for the monitor's schedule."""
        outcome = await submission.submit(self.runtime, self.client, record, call)
        if isinstance(outcome, submission.Uncertain):  # ended Failed with its event; the answer says so
            outcome.error.extra.update(operationId=record.operation_id, completed=True)
            raise outcome.error
        if isinstance(outcome, submission.NotApplied) and throttling.can_wait(outcome.error, record.options):
            # ARM throttled the POST: wait in the queue for a batch to send it after Retry-After (same key)
            queued = await throttling.wait_for_arm(self.runtime, self.client, record, outcome.error, slot)
            if queued is not None:
                return Accepted(queued, throttling.wait_of(outcome.error))
        if isinstance(outcome, submission.NotApplied):  # nothing was applied: no budget spent, the key shared
            await self.runtime.ledger.give_back_global_slot(slot, record.operation_id)
            await abandon(self.runtime, self.client, record, outcome.error.error_dict())
            await self._refused(record, outcome.error)
            raise outcome.error
        if not outcome.finished:
            await start_monitor(self.client, self.runtime, outcome.record, history=history)
        await publish_info(self.runtime, EventType.ACCEPTED, outcome.record)
        return Accepted(outcome.record, self.first_poll(outcome.submission.retry_after))

    def first_poll(self, retry_after: float | None) -> int:
        s = self.settings
        return next_poll_delay(retry_after, s.poll_min_seconds, s.poll_max_seconds, s.poll_default_seconds)

    async def _free(self, record: OperationRecord, error: ReimagerError | None) -> None:
        """Nothing was sent: free the key so the request may be asked again. A request already answered 202
        (awaiting approval, queued after a throttled preflight, or joined while Claimed) ends instead, with its one
        event carrying why."""
        if not record.answered:
            if await self.runtime.ledger.release_claim(record):
                await self.runtime.ledger.settled(record.operation_id)
                return
            current = await self._promised_meanwhile(record)
            if current is None:
                return
            record = current
        why = error.error_dict() if error is not None else {"code": ErrorCode.INTERNAL_ERROR,
                                                            "message": "not submitted"}
        await finish(self.runtime, record.operation_id, OperationStatus.FAILED, why, applied=False,
                     client=self.client)
        if error is not None:
            error.extra.update(operationId=record.operation_id, completed=True)

    async def _promised_meanwhile(self, record: OperationRecord) -> OperationRecord | None:
        """This attempt's write found the record changed: a same-key delivery promised it (it must end with its
        event: returned), or another attempt holds the key now (its sweeper entry is its own), or else it is
        settled as before."""
        current = await self.runtime.ledger.get(record.operation_id)
        if current is not None and current.holder == record.holder and current.answered and not current.terminal:
            return current
        if current is None or current.holder == record.holder:
            await self.runtime.ledger.settled(record.operation_id)
        return None

    async def _refused(self, record: OperationRecord, error: ReimagerError) -> None:
        """ARM certainly refused the POST. The key keeps the refusal, so the deliveries of the same request that
        were waiting on this attempt share it (one POST per key); a request that comes after it may try again
        (it takes the key over). A request already answered 202 ends instead, with its one event carrying why."""
        if record.answered:
            await self._free(record, error)
            return
        now = self.runtime.now()

        def refused(r: OperationRecord) -> OperationRecord | None:
            if r.holder != record.holder or r.terminal or r.answered:  # answered: promised meanwhile
                return None
            r.status, r.error, r.last_updated_time = OperationStatus.REFUSED, error.error_dict(), now
            return r

        if await self.runtime.ledger.update(record.operation_id, refused) is not None:
            await self.runtime.ledger.settled(record.operation_id)
            return
        current = await self._promised_meanwhile(record)
        if current is not None:
            await self._free(current, error)

    def _claim_expired(self, record: OperationRecord) -> bool:
        """The ledger's proof that a Claimed record's owner is gone: its claim ran out without it moving on."""
        return record.claimed_until is None or self.runtime.now() >= record.claimed_until

    async def _joined(self, existing: OperationRecord, request: ReimageRequest, **kw: Any) -> Result:
        """Another request holds this key. Wait briefly while it is being submitted, then answer with it: its
        operation, its refusal, or (when the ledger proves its owner gone, or a refusal is old) take it over."""
        target = request.resolved_target
        # the same target, whose lease is its own (or, for a Flexible member, its set's)
        governed = existing.lease_key == target.lock_key or existing.scale_set is not None
        if not governed or existing.target.lower() != target.id.lower():
            raise ReimagerError(ErrorCode.REQUEST_ID_CONFLICT, "This requestId was already used for another "
                                "target; use a new requestId for a new request.", target="requestId",
                                extra={"operationId": existing.operation_id})
        if existing.status is OperationStatus.REFUSED:  # it came after the refusal: it may try again
            return await self._take_over(existing, request, kw)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _JOIN_WAIT_SECONDS
        record: OperationRecord | None = existing
        while record is not None and record.status in IN_PROGRESS and loop.time() < deadline:
            if record.status == OperationStatus.CLAIMED and self._claim_expired(record):
                break  # its owner's claim ran out: waiting longer only helps a stalled owner
            # Real time, not the runtime's clock: this is a short wait for a concurrent request.
            await asyncio.sleep(0.05)
            record = await self.runtime.ledger.get(existing.operation_id)
        if record is None:  # the first attempt reached nothing and freed the key: this one may try
            return await self.submit(request, **kw)
        if record.status is OperationStatus.REFUSED:  # it waited on the refused attempt: share its answer
            raise refusal(record)
        if record.status == OperationStatus.CLAIMED and self._claim_expired(record):
            return await self._take_over(record, request, kw)
        # Submitting: the POST is under way (or its owner died; the sweeper then ends it SubmissionLost).
        # Either way the operation ends with its one event: this request is answered with it.
        if record.status == OperationStatus.CLAIMED:
            promised = await self._promise(record)
            if promised is None:  # taken over or moved on meanwhile: ask again
                return await self.submit(request, **kw)
            record = promised
        # Retry-After: the monitor's pace, from ARM's Retry-After on the 202 (as the first answer said).
        return Accepted(record, self.first_poll((record.arm or {}).get("retryAfter")), duplicate=True)

    async def _promise(self, record: OperationRecord) -> OperationRecord | None:
        """A claim still Claimed is about to be answered 202: its owner is slow, or died between its claim and its
        index rows (the sweeper's work list among them). The answer promises an event: the record says so (it is
        never freed quietly), and the sweeper sees it (idempotent; it ends it NotSubmitted if nobody sends it).
        None when it moved on meanwhile."""
        def promise(r: OperationRecord) -> OperationRecord | None:
            if r.status != OperationStatus.CLAIMED or r.attempt != record.attempt:
                return None
            r.promised = True
            return r

        stored = record if record.promised else await self.runtime.ledger.update(record.operation_id, promise)
        if stored is None:
            current = await self.runtime.ledger.get(record.operation_id)
            if current is None or current.attempt != record.attempt or not current.promised:
                return None
            stored = current  # its own write, answered ambiguously, or another joiner's: promised all the same
        await self.runtime.ledger.index(stored)
        return stored

    async def _take_over(self, record: OperationRecord, request: ReimageRequest, kw: dict[str, Any]) -> Result:
        """Free a key whose claim ran out (its owner stalled or died before the POST) or whose refusal is old, by
        a compare-and-swap delete, and ask again. A stalled owner's own compare-and-swap then fails, and it frees
        only what its own claim attempt holds; this frees what that attempt held, never anything newer."""
        if await self.runtime.ledger.release_claim(record):
            if record.status == OperationStatus.CLAIMED:
                await release_lease(self.runtime, record, applied=False)
                log.warning("took over %s: its claim ran out before it was submitted", record.operation_id)
        return await self.submit(request, **{**kw, "promised": record.promised or kw.get("promised", False)})

    async def _plan(self, request: ReimageRequest) -> Planned:
        # The reads are the shell; shared/rules/dryrun.py decides. Outside the scopes nothing is read from ARM.
        target, model, not_found, refused = request.resolved_target, None, None, None
        asked, governing, calls = request, target, None
        if dryrun.in_scope(request, self.settings):
            try:
                model = await self.runtime.compute.get_model(target)
                gov = await fleet.govern(self.runtime, request, model)  # a Flexible member: its set's request
                asked, governing, model = gov.request, gov.target, gov.model
                calls = fleet.member_plans(gov, self.settings.compute_api_version)
            except TargetNotFound as exc:
                not_found = exc
            except ReimagerError as exc:  # what governs the target could not be read, or refused the request
                if exc.code not in (ErrorCode.INVALID_REQUEST, ErrorCode.SCOPE_NOT_ALLOWED, ErrorCode.TARGET_NOT_FOUND):
                    raise
                refused = exc
        record = await self.runtime.ledger.get_target(governing.lock_key)
        result = dryrun.evaluate(asked, self.settings, model=model, not_found=not_found, record=record,
                                 now=self.runtime.now(), governing=governing, refused=refused, calls=calls)
        return Planned(target.id, result.plan, result.checks, result.calls)



def refusal(record: OperationRecord) -> ReimagerError:
    """The refusal a refused attempt answered, for a concurrent delivery of the same request."""
    error = ApiError.model_validate(record.error or {"code": ErrorCode.COMPUTE_ERROR, "message": "ARM refused it"})
    return ReimagerError(ErrorCode(error.code), error.message, target=error.target, details=error.details,
                         extra={"operationId": record.operation_id})


def _claim_lost() -> ReimagerError:
    return ReimagerError(ErrorCode.CLAIM_LOST, "This request stalled and another with the same requestId took it "
                         "over; nothing was sent by this one. Ask again to see that operation.", target="requestId",
                         retry_after=2)
