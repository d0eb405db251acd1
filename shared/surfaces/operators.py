"""HTTP for operators: approve / reject / cancel a waiting request, a target's state, resume a suspended one.

The actions themselves are use cases (shared/workflow/operators.py); this module reads what the caller sent,
and says what happened as an HTTP answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError

from shared import runtime
from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.principal import Principal
from shared.domain.records import TargetRecord
from shared.domain.targets import Target, TargetError, parse_target
from shared.rules import admission
from shared.surfaces import responses
from shared.surfaces.http import Outcome, guarded
from shared.surfaces.identity import principal_of
from shared.surfaces.json_body import parse_json
from shared.workflow import operators

Action = Literal["approve", "reject", "cancel"]


def read_action(raw: bytes, headers: Mapping[str, str]) -> tuple[dict[str, Any], Principal | None]:
    """The body of cancel/approve/reject (`{"reason", "by"}`) and who acts: the verified caller when App
    Service authentication vouches for one, else the typed `by`, recorded as unverified."""
    body = parse_json(raw) or {}
    if not isinstance(body, dict):
        raise ReimagerError(ErrorCode.INVALID_REQUEST, 'The body must be a JSON object: {"reason": "...", '
                            '"by": "..."}.')
    extra = sorted(set(body) - {"reason", "by"})
    if extra:
        raise ReimagerError(ErrorCode.INVALID_REQUEST, f"Unknown field {extra[0]!r}; the fields are reason and by.",
                            target=extra[0])
    try:
        responses.ActionRequest.model_validate(body)
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        raise ReimagerError(ErrorCode.INVALID_REQUEST, f"{field} must be text of 1 to 256 characters.",
                            target=field) from None
    principal = principal_of(headers)
    if principal is not None and principal.is_verified:
        return body, principal
    return body, (Principal(body["by"], "unverified") if body.get("by") else None)


async def act(action: Action, operation_id: str, raw: bytes, headers: Mapping[str, str], client: Any) -> Outcome:
    """POST /api/reimage/{id}/approve|reject|cancel: 202 when an approval admitted the request, else 200."""
    async def work() -> Outcome:
        body, who = read_action(raw, headers)
        rt, reason = runtime.get(), body.get("reason")
        if action == "approve":
            done = await operators.approve(rt, client, operation_id, who, reason)
        elif action == "reject":
            done = await operators.reject(rt, operation_id, who, reason)
        else:
            done = await operators.cancel(rt, operation_id, who, reason)
        return Outcome(200 if done.ended else 202, done.record.view())

    return await guarded(work())


def _target(target_id: Any, field: str) -> Target:
    if not target_id or not isinstance(target_id, str):
        raise ReimagerError(ErrorCode.INVALID_REQUEST, "Give the target's ARM id: /subscriptions/.../"
                            "virtualMachines/{vm} or .../virtualMachineScaleSets/{set}.", target=field)
    try:
        return parse_target(target_id)
    except TargetError as exc:
        raise ReimagerError(ErrorCode.INVALID_REQUEST, f"The target id is not valid: {exc}", target=field) from None


def target_view(record: TargetRecord, target_id: str) -> dict[str, Any]:
    """GET /api/targets: the lease and running batch, the queue, cooldowns, budget, breaker and suspension."""
    rt = runtime.get()
    now, s = rt.now(), rt.settings
    admission.prune(record, now, s)
    scale_set = admission.is_scale_set(record)
    lease = None
    if record.lease_held(now):
        assert record.lease_until is not None
        lease = {"owner": record.lease_owner, "until": record.lease_until.isoformat()}
    batch = None
    if record.batch is not None and lease is not None:
        batch = {"batchId": record.batch.batch_id, "members": record.batch.members, "instanceIds": record.batch.keys,
                 "options": record.batch.options, "started": record.batch.started.isoformat(),
                 "sealed": bool(record.batch.members)}
    frees = admission.budget_frees_at(record, s)
    return responses.TargetState.model_validate({
        "target": record.target_id or target_id, "capacity": record.capacity if scale_set else None,
        "lease": lease, "batch": batch,
        "queue": [{"operationId": member, "instanceIds": [k for k in e.keys if k] or None,
                   "options": e.options, "queuedAt": e.queued_at.isoformat(), "position": i}
                  for i, e in enumerate(record.queue, 1) for member in e.members],
        "cooldowns": {(k or "vm"): {"until": c.until.isoformat(), "operationId": c.operation_id}
                      for k, c in record.cooldowns.items()},
        "budget": {"used": admission.budget_used(record), "limit": admission.fleet_budget(record.capacity, s),
                   "batchCap": admission.batch_cap(record.capacity, s), "windowMinutes": s.fleet_window_minutes,
                   "freesAt": frees.isoformat() if frees else None} if scale_set else None,
        "breaker": {"distinctInstancesRequested": len(record.requested), "breakerPercent": s.breaker_percent,
                    "consecutiveFailures": record.consecutive_failures, "breakerFailures": s.breaker_failures},
        "suspended": ({k: v for k, v in record.suspended.items() if k != "announced"}
                      if record.suspended else None),
        "canary": ({k: v for k, v in record.canary.doc("").items() if k != "role"}
                   if record.canary is not None and scale_set else None),
        "armQuota": rt.compute.quota.view(record.target_id or target_id),
    }).body()


async def get_target(target_id: str | None) -> Outcome:
    """GET /api/targets?id=<ARM id>."""
    async def work() -> Outcome:
        target = _target(target_id, "id")
        record = await operators.target_state(runtime.get(), target)
        return Outcome(200, target_view(record, target.vm_id))

    return await guarded(work())


async def resume(raw: bytes, headers: Mapping[str, str], client: Any) -> Outcome:
    """POST /api/targets/resume `{"target", "reason"}`: lift a suspension."""
    async def work() -> Outcome:
        body = parse_json(raw)
        if not isinstance(body, dict) or not isinstance(body.get("target"), str):
            raise ReimagerError(ErrorCode.INVALID_REQUEST, 'The body must be {"target": "<ARM id>", "reason": '
                                '"..."}.', target="target")
        extra = sorted(set(body) - {"target", "reason"})
        if extra:
            raise ReimagerError(ErrorCode.INVALID_REQUEST, f"Unknown field {extra[0]!r}; the fields are target "
                                "and reason.", target=extra[0])
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 256):
            raise ReimagerError(ErrorCode.INVALID_REQUEST, "reason must be text of at most 256 characters.",
                                target="reason")
        target = _target(body["target"], "target")
        record = await operators.resume(runtime.get(), client, target, principal_of(headers), reason)
        return Outcome(200, target_view(record, target.vm_id))

    return await guarded(work())
