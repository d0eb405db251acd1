"""Flexible scale sets, governed like Uniform ones (shared/rules/fleet.py decides; this does the I/O).

- `govern`: a request on a Flexible member (by its VM id) reads the member's set (the same shared, cached read as
  any set's preflight) and becomes the set's request naming that member; a request naming a Flexible set's members
  is checked against the members ARM lists. From there intake, admission and batches treat it as any scale-set
  request: the set's lease, queue, batch cap, budgets, breaker, approvals and cooldowns.
- `preflight`: the model's policy and the fleet's (protect tags, instance protection, locks, automatic repairs),
  and the ARM call, for every path that admits a request (intake, an approval, a request ARM throttled).
- A Flexible batch: `submit` captures its members' evidence (shared/workflow/evidence.py, bounded), then sends the
  sealed members' single-VM reimage POSTs together, at most the batch cap in flight; `poll` (the monitor's status
  read) reads every running member's own operation, records each outcome in the batch record (`arm.members`),
  and sends the next members as others end (or after ARM's Retry-After when it throttled one); `read_health`
  reads the instance view of each member ARM reimaged. Every send is guarded by a compare-and-swap on the batch
  record under a token, so an activity run twice never POSTs a member twice; a member whose sender stopped
  mid-send ends `SubmissionLost` (it may have been sent), never sent again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.domain.arm_call import ArmCall, OperationState, PollResult, Submission, TargetModel
from shared.domain.errors import (
    ComputeError,
    ComputeUnavailable,
    ErrorCode,
    ReimagerError,
    SubmissionUncertain,
    UntrustedOperationUrl,
)
from shared.domain.fleet import member_target
from shared.domain.health import Health, InstanceHealth
from shared.domain.records import OperationRecord
from shared.domain.request import ReimageRequest
from shared.domain.status import OperationStatus
from shared.domain.targets import Target, TargetKind, parse_target
from shared.rules import admission, policy
from shared.rules import fleet as rules
from shared.rules.health import summarize
from shared.runtime import Runtime
from shared.workflow import evidence, submission, throttling

log = logging.getLogger("reimager.fleet")


@dataclass(frozen=True)
class Governed:
    """A request as the VM or scale set that governs it sees it."""

    request: ReimageRequest  # a Flexible member by VM id: its set's request naming it
    target: Target  # the VM or scale set whose lease, queue and budgets it is under
    model: TargetModel  # what its checks read (a Flexible set: the named members' OS disk and type)
    scale_set: str | None = None  # a Flexible member named by its VM id: its set (OperationRecord.scale_set)

    @property
    def flexible(self) -> bool:
        return self.model.fleet.flexible

    @property
    def capacity(self) -> int:
        return len(self.model.instance_ids) if self.model.instance_ids is not None else 1


async def govern(runtime: Runtime, request: ReimageRequest, model: TargetModel) -> Governed:
    """Who governs this request: a Flexible member's set (read now, or shared from a read within
    PREFLIGHT_CACHE_SECONDS), else its own target."""
    target = request.resolved_target
    set_id = rules.flexible_member(model) if target.kind is TargetKind.VM else None
    if set_id is not None:
        try:
            scale_set = parse_target(set_id)
        except ValueError:
            scale_set = None
        if scale_set is not None and scale_set.kind is TargetKind.VMSS:
            policy.check_scope(scale_set, runtime.settings)  # its set is read, so it too must be in scope
            set_model = await runtime.compute.get_model(scale_set)
            if set_model.fleet.flexible:
                asked = rules.as_set_request(request, scale_set, set_model.fleet)
                return Governed(asked, scale_set, rules.member_view(set_model, asked.instance_ids), scale_set.id)
    if target.kind is not TargetKind.VM and model.fleet.flexible:
        scale_set = parse_target(target.vm_id)
        asked = rules.as_set_request(request, scale_set, model.fleet)
        return Governed(asked, scale_set, rules.member_view(model, asked.instance_ids))
    return Governed(request, parse_target(target.vm_id), model)


@dataclass(frozen=True)
class Checked:
    """A request that passed every check that needs ARM's read: what it reimages and how."""

    governed: Governed
    instances: list[str] | None
    call: ArmCall  # the POST (a Flexible set's: its first member's; every member's has the same options)
    calls: list[ArmCall]  # a Flexible set: every member's POST
    cooldown_keys: list[str]


def checked(runtime: Runtime, gov: Governed) -> Checked:
    """Policy on the model, then the fleet's checks, then the call (pure, on what was read)."""
    settings = runtime.settings
    instances = policy.check_model(gov.request, gov.model, settings)
    rules.check_fleet(gov.target, gov.model, instances, settings)
    if gov.flexible:
        calls = rules.arm_calls(gov.request, gov.target, list(instances or []), settings.compute_api_version)
        return Checked(gov, instances, calls[0], calls, policy.cooldown_keys(gov.target, instances))
    call = gov.request.arm_call(settings.compute_api_version, instance_ids=instances)
    return Checked(gov, instances, call, [call], policy.cooldown_keys(gov.request.resolved_target, instances))


def is_flexible_batch(record: OperationRecord) -> bool:
    return rules.is_flexible_batch(record)


def member_plans(gov: Governed, api_version: str) -> list[dict[str, Any]] | None:
    """A Flexible set's dry run: the single-VM POST each named member (or, for allInstances, each member) would get."""
    if not gov.flexible:
        return None
    names = list(gov.request.instance_ids or gov.model.instance_ids or ())
    return [c.plan() for c in rules.arm_calls(gov.request, gov.target, names, api_version)] if names else None


async def preflight(runtime: Runtime, request: ReimageRequest, model: TargetModel) -> Checked:
    return checked(runtime, await govern(runtime, request, model))


async def recheck(runtime: Runtime, record: OperationRecord) -> tuple[Governed, ArmCall]:
    """A request about to be admitted after it waited (approved): the VM or set that governs it read again, and the
    fleet's checks run again (repairs may have started, a lock appeared, an instance been protected meanwhile).
    The call its batch would send (a request that waited never leads with secrets: it is never sent as is)."""
    governing = parse_target(parse_target(record.governed_by).vm_id)
    if record.scale_set is not None:
        policy.check_scope(governing, runtime.settings)
    model = await runtime.compute.get_model(governing)
    keys = None if record.cooldown_keys == [""] else record.cooldown_keys
    rules.check_fleet(governing, model, keys, runtime.settings)
    api = runtime.settings.compute_api_version
    if model.fleet.flexible:
        call = rules.batch_call(governing, record.options, record.cooldown_keys[0], api)
    else:
        call = ArmCall.for_batch(parse_target(record.target), record.options, record.cooldown_keys, api)
    return Governed(_stand_in(record), governing, model, record.scale_set), call


def _stand_in(record: OperationRecord) -> ReimageRequest:
    """A request for the record's target (only its target is read by what follows)."""
    request = ReimageRequest.model_construct(target=record.target)
    request._target = parse_target(record.target)
    return request


# ---- a Flexible batch: POSTs ----------------------------------------------------------------------------------------
@dataclass
class _Sent:
    """One member's POST and what its answer means."""

    name: str
    doc: dict[str, Any]
    error: ComputeError | None = None

    @property
    def applied(self) -> bool:
        return bool(self.doc.get("applied"))


async def _post(runtime: Runtime, scale_set: Target, options: dict[str, Any], name: str) -> _Sent:
    call = rules.batch_call(scale_set, options, name, runtime.settings.compute_api_version)
    now = runtime.now()
    vm = call.target.id
    try:
        answer = await runtime.compute.submit(call)
    except ComputeError as exc:
        if isinstance(exc, SubmissionUncertain) or exc.maybe_applied:  # it may have been applied: never re-sent
            return _Sent(name, {"state": OperationState.FAILED.value, "vm": vm, "applied": True,
                                "error": submission.with_uncertain(exc.error_dict())}, exc)
        if isinstance(exc, ComputeUnavailable):  # throttled, or never connected: nothing applied; sent later
            after = now + timedelta(seconds=throttling.wait_of(exc))
            return _Sent(name, {"state": rules.PENDING, "vm": vm, "notBefore": after.isoformat(),
                                "throttled": exc.error_dict()}, exc)
        return _Sent(name, {"state": OperationState.FAILED.value, "vm": vm, "applied": False,
                            "error": exc.error_dict()}, exc)
    return _Sent(name, _accepted(answer, vm, now))


def _accepted(answer: Submission, vm: str, now: datetime) -> dict[str, Any]:
    doc: dict[str, Any] = {"vm": vm, "applied": True, "submittedAt": now.isoformat(), "retryAfter": answer.retry_after}
    if answer.status_code == 200:  # ARM finished synchronously
        return {**doc, "state": OperationState.SUCCEEDED.value}
    url = answer.async_operation_url or answer.location_url
    if not url:
        return {**doc, "state": OperationState.FAILED.value, "error": {
            "code": ErrorCode.NO_OPERATION_URL, "message": "ARM accepted the reimage but returned no operation URL"}}
    return {**doc, "state": rules.RUNNING, "url": url, "mode": "async" if answer.async_operation_url else "location"}


async def _post_each(runtime: Runtime, scale_set: Target, options: dict[str, Any], names: list[str]) -> list[_Sent]:
    """The members' POSTs, sent together."""
    return list(await asyncio.gather(*(_post(runtime, scale_set, options, n) for n in names)))


async def _cap(runtime: Runtime, record: OperationRecord) -> int:
    target = await runtime.ledger.get_target(record.lease_key)
    return admission.batch_cap(target.capacity, runtime.settings)


def _retry_after(members: dict[str, dict[str, Any]]) -> float | None:
    waits = [float(m["retryAfter"]) for m in members.values() if m.get("state") == rules.RUNNING
             and m.get("retryAfter")]
    return min(waits) if waits else None


async def submit(runtime: Runtime, record: OperationRecord) -> submission.Outcome:
    """The batch's first POSTs (it is Submitting under this run's token): up to the batch cap of its members at
    once, the rest pending. Posted when any may have been applied or some wait their turn; NotApplied when ARM
    applied none (throttled or unreachable: the batch waits and is sent again; all refused: it ends with that)."""
    record = await evidence.before_post(runtime, record)  # its members' evidence, on their own VM paths, first
    now, batch_id = runtime.now(), record.operation_id
    token = (record.arm or {}).get("submitter")
    scale_set = parse_target(record.target)
    cap = await _cap(runtime, record)
    members: dict[str, dict[str, Any]] = {k: {"state": rules.PENDING, "vm": member_target(scale_set, k).id}
                                          for k in record.cooldown_keys}
    sent = await _post_each(runtime, scale_set, record.options, rules.to_send(members, cap, now))
    members.update({s.name: s.doc for s in sent})
    applied = any(s.applied for s in sent)
    waiting = [k for k, m in members.items() if m["state"] == rules.PENDING]
    unavailable = [s.error for s in sent if isinstance(s.error, ComputeUnavailable)]
    if not applied and unavailable:  # nothing reached ARM: the whole batch waits (its requests stay sealed in it)
        return submission.NotApplied(unavailable[0])

    def accepted(r: OperationRecord) -> OperationRecord | None:
        if r.status != OperationStatus.SUBMITTING or (r.arm or {}).get("submitter") != token:
            return None
        r.arm = {"submitter": token, "cap": cap, "members": members}
        if applied or waiting:
            r.status, r.applied, r.submitted_at, r.last_updated_time = OperationStatus.ACCEPTED, applied, now, now
        return r

    stored = await runtime.ledger.update(batch_id, accepted, known=record)  # the evidence's write's ETag, if any
    if stored is None:  # another run took it further: it answers for the batch
        raise ReimagerError(ErrorCode.CLAIM_LOST, f"batch {batch_id} moved on while its members were sent")
    log.info("sent batch %s: %s", batch_id, rules.member_states(members))
    if not applied and not waiting:  # ARM refused every member: each request ends with its member's refusal
        refused = next(s.error for s in sent if s.error is not None)
        return submission.NotApplied(refused)
    return submission.Posted(stored, Submission(202, None, None, _retry_after(members), None), finished=False)


async def _send_more(runtime: Runtime, record: OperationRecord) -> OperationRecord:
    """Send the next pending members while fewer than the cap are in flight (each marked `sending` under this run's
    token first: a second run finds them taken)."""
    now, token = runtime.now(), uuid.uuid4().hex
    cap = int((record.arm or {}).get("cap") or 1)

    def sending(r: OperationRecord) -> OperationRecord | None:
        members = (r.arm or {}).get("members") or {}
        names = rules.to_send(members, cap, now) if not r.terminal else []
        if not names:
            return None
        for name in names:
            members[name] = {**members[name], "state": rules.SENDING, "token": token, "since": now.isoformat()}
        return r

    marked = await runtime.ledger.update(record.operation_id, sending)
    if marked is None:
        return record
    mine = [k for k, m in (marked.arm or {})["members"].items() if m.get("token") == token]
    sent = await _post_each(runtime, parse_target(marked.target), marked.options, mine)

    def recorded(r: OperationRecord) -> OperationRecord | None:
        members = (r.arm or {}).get("members") or {}
        for s in sent:
            if (members.get(s.name) or {}).get("token") == token:
                members[s.name] = s.doc
                r.applied = r.applied or s.applied
        r.arm_seconds = _took(members, r.arm_seconds)  # its last member may end here (refused)
        r.last_updated_time = runtime.now()
        return r

    log.info("batch %s sends %s", record.operation_id, mine)
    return await runtime.ledger.update(record.operation_id, recorded) or marked


# ---- a Flexible batch: the monitor's reads --------------------------------------------------------------------------
@dataclass
class _Read:
    name: str
    url: str
    result: PollResult | None = None
    wait: float = 0.0  # held or throttled: read again after this


async def _read(runtime: Runtime, name: str, member: dict[str, Any]) -> _Read:
    vm, url = str(member.get("vm")), str(member.get("url"))
    read = _Read(name, url)
    held = runtime.compute.read_delay("poll", vm)
    if held > 0:
        read.wait = held
        return read
    try:
        result = await runtime.compute.poll(url, member.get("mode") or "async", vm)
    except UntrustedOperationUrl as exc:
        read.result = PollResult(OperationState.FAILED, error_code=exc.code, error_message=exc.error.message)
        return read
    if result.read_failed:  # a 429 waits ARM's Retry-After; another failed read is tried on the next poll
        read.wait = float(result.retry_after or throttling.COMPUTE_WINDOW_SECONDS) if result.status_code == 429 \
            else 0.0
        return read
    read.result = result
    return read


def _took(members: dict[str, dict[str, Any]], known: float | None) -> float | None:
    """ARM's time for the batch once its last member ended: the longest member operation (ARM's own startTime ->
    endTime, as a Uniform batch's one operation), for the learned poll schedule; not the batch's wall time, which
    holds its health check."""
    if any(m.get("state") not in rules.ENDED for m in members.values()):
        return known
    took = [float(m["armSeconds"]) for m in members.values() if m.get("armSeconds") is not None]
    return max(took) if took else known


def _progress(reads: list[_Read], now: datetime, stale: timedelta) -> Callable[[OperationRecord],
                                                                              OperationRecord | None]:
    def apply(r: OperationRecord) -> OperationRecord | None:
        if r.terminal:
            return None
        members = (r.arm or {}).get("members") or {}
        for read in reads:
            member = members.get(read.name) or {}
            if read.result is None or member.get("state") != rules.RUNNING or member.get("url") != read.url:
                continue
            if read.result.state.terminal:
                member["state"] = read.result.state.value
                member["armSeconds"] = read.result.arm_seconds
                if read.result.state is not OperationState.SUCCEEDED:
                    member["error"] = {"code": read.result.error_code or f"Operation{read.result.state.value}",
                                       "message": read.result.error_message or ""}
            else:
                member["retryAfter"] = read.result.retry_after
        for name, member in members.items():  # a sender that stopped mid-send: it may have been sent
            since = member.get("since")
            if member.get("state") == rules.SENDING and since and now - datetime.fromisoformat(since) > stale:
                members[name] = {"state": OperationState.FAILED.value, "vm": member.get("vm"), "applied": True,
                                 "error": submission.with_uncertain(submission.lost_error(
                                     "this member's POST was being sent when its sender stopped"))}
        r.arm_seconds = _took(members, r.arm_seconds)
        r.polls += 1
        r.last_updated_time = now
        if r.status == OperationStatus.ACCEPTED:
            r.status = OperationStatus.RUNNING
        return r

    return apply


async def poll(runtime: Runtime, batch_id: str, polls: int) -> dict[str, Any]:
    """One status read of a Flexible batch: every running member's operation read (at once), each outcome recorded,
    the next members sent; the batch as one operation (shared/rules/fleet.py aggregate). `held`/`throttled` with
    `retryAfter` when no member could be read for ARM's quota: the monitor waits, as for any operation. The same
    read asked twice at once (its activity run twice side by side) is one read of each member."""
    answer: dict[str, Any] = await runtime.once.get(f"fleet-poll|{batch_id}|{polls}", lambda: _poll(runtime, batch_id))
    return answer


async def _poll(runtime: Runtime, batch_id: str) -> dict[str, Any]:
    record = await runtime.ledger.get(batch_id)
    if record is None or not (record.arm or {}).get("members"):
        return {"state": OperationState.FAILED.value, "errorCode": ErrorCode.BATCH_LOST,
                "errorMessage": "the batch's record is gone", "statusCode": 200, "readFailed": False}
    members = (record.arm or {})["members"]
    running = [(k, m) for k, m in members.items() if m.get("state") == rules.RUNNING and m.get("url")]
    reads = list(await asyncio.gather(*(_read(runtime, k, m) for k, m in running)))
    now = runtime.now()
    stale = timedelta(seconds=runtime.settings.submit_timeout_seconds)
    stored = await runtime.ledger.update(batch_id, _progress(reads, now, stale)) or record
    if not stored.terminal:
        stored = await _send_more(runtime, stored)
    members = (stored.arm or {}).get("members") or {}
    waits = [r.wait for r in reads if r.result is None and r.wait > 0]
    if reads and len(waits) == len(reads) and not any(m.get("state") in rules.ENDED for _, m in running):
        return {"state": OperationState.RUNNING.value, "done": False, "throttled": True, "retryAfter": min(waits)}
    answer = rules.aggregate(members, runtime.now())
    if waits and answer["state"] == OperationState.RUNNING.value:
        answer["retryAfter"] = min([w for w in [answer.get("retryAfter"), *waits] if w is not None])
    return answer


async def read_health(runtime: Runtime, record: OperationRecord, *, final: bool, seen: dict[str, str] | None
                      ) -> dict[str, Any]:
    """One read of every reimaged member not yet seen healthy: its own instance view (Low Cost Get VM, per VM: the
    one machine, as Compute advises, rather than the set's list), read at once."""
    members = (record.arm or {}).get("members") or {}
    keys = [k for k, m in members.items() if m.get("state") == OperationState.SUCCEEDED.value]
    if not keys:
        return {"done": True, "health": Health.UNKNOWN.value, "detail": None}
    healthy = {k: InstanceHealth(Health.HEALTHY, d) for k, d in (seen or {}).items() if k in keys}
    wanted = [k for k in keys if k not in healthy]
    scale_set = parse_target(record.target)

    async def view(name: str) -> tuple[str, InstanceHealth | None, float]:
        vm = member_target(scale_set, name)
        held = runtime.compute.read_delay("health", vm.id)
        if held > 0:
            return name, None, held
        try:
            views, _ = await runtime.compute.instance_health_page(vm, None, None)
        except ComputeError as exc:
            if exc.arm_status == 429:
                return name, None, float(exc.retry_after or throttling.COMPUTE_WINDOW_SECONDS)
            return name, InstanceHealth(Health.UNKNOWN, exc.error.message) if final else None, 0.0
        return name, next(iter(views.values()), InstanceHealth(Health.UNKNOWN, "no instance view")), 0.0

    read = list(await asyncio.gather(*(view(n) for n in wanted)))
    waits = [w for _, h, w in read if h is None and w > 0]
    if read and len(waits) == len(read):
        return {"state": OperationState.RUNNING.value, "done": False, "held": True, "retryAfter": min(waits)}
    views = {name: h for name, h, _ in read if h is not None}
    verdict = summarize({**healthy, **views}, keys, final=final)
    if not verdict.done:
        healthy.update({k: h for k, h in views.items() if h.health is Health.HEALTHY})
        return {"done": False, "page": None, "seen": {k: h.detail for k, h in healthy.items()}}
    return {"done": True, "health": verdict.health.value, "detail": verdict.per_instance()}

