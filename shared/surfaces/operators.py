"""HTTP for operators: cancel / approve / reject a waiting request, a target's state, resume it."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shared import runtime
from shared.domain.errors import ReimagerError
from shared.domain.principal import Principal
from shared.domain.records import TargetRecord
from shared.domain.targets import TargetError, parse_target
from shared.rules import admission
from shared.surfaces import responses
from shared.surfaces.http import Outcome, guarded
from shared.workflow.operators import Who


def read_action(raw: bytes, headers: Any) -> tuple[dict[str, Any], Who | None]:
    """The body of cancel/approve/reject (`{"reason", "by"}`) and who acts: the verified caller when App
    Service authentication vouches for one, else the typed `by`, recorded as unverified."""
    from shared.surfaces.identity import principal_of
    from shared.surfaces.json_body import parse_json

    body = parse_json(raw) or {}
    if not isinstance(body, dict):
        raise ReimagerError(400, "InvalidRequest", 'The body must be a JSON object: {"reason": "...", "by": "..."}.')
    extra = sorted(set(body) - {"reason", "by"})
    if extra:
        raise ReimagerError(400, "InvalidRequest", f"Unknown field {extra[0]!r}; the fields are reason and by.",
                            target=extra[0])
    try:
        responses.ActionRequest.model_validate(body)
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        raise ReimagerError(400, "InvalidRequest", f"{field} must be text of 1 to 256 characters.",
                            target=field) from None
    principal = principal_of(headers)
    if principal is not None and principal.is_verified:
        return body, principal
    return body, (Principal(body["by"], "unverified") if body.get("by") else None)


def _target_key(target_id: str | None) -> tuple[str, str]:
    if not target_id:
        raise ReimagerError(400, "InvalidRequest", "Give the target's ARM id: ?id=/subscriptions/.../"
                            "virtualMachines/{vm} or .../virtualMachineScaleSets/{set}.", target="id")
    try:
        target = parse_target(target_id)
    except TargetError as exc:
        raise ReimagerError(400, "InvalidRequest", f"The target id is not valid: {exc}", target="id") from None
    from shared.rules.policy import check_scope

    check_scope(target, runtime.get().settings)
    return target.vm_id, target.lock_key


def target_view(record: TargetRecord, target_id: str) -> dict[str, Any]:
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
        "queue": [{"operationId": e.operation_id, "instanceIds": [k for k in e.keys if k] or None,
                   "options": e.options, "queuedAt": e.queued_at.isoformat(), "position": i}
                  for i, e in enumerate(record.queue, 1)],
        "cooldowns": {(k or "vm"): {"until": c.until.isoformat(), "operationId": c.operation_id}
                      for k, c in record.cooldowns.items()},
        "budget": {"used": admission.budget_used(record), "limit": admission.fleet_budget(record.capacity, s),
                   "batchCap": admission.batch_cap(record.capacity, s), "windowMinutes": s.fleet_window_minutes,
                   "freesAt": frees.isoformat() if frees else None} if scale_set else None,
        "breaker": {"distinctInstancesRequested": len(record.requested), "breakerPercent": s.breaker_percent,
                    "consecutiveFailures": record.consecutive_failures, "breakerFailures": s.breaker_failures},
        "suspended": ({k: v for k, v in record.suspended.items() if k != "announced"}
                      if record.suspended else None),
    }).body()


async def get_target(target_id: str | None) -> Outcome:
    async def work() -> Outcome:
        vm_id, key = _target_key(target_id)
        record = await runtime.get().ledger.get_target(key)
        return Outcome(200, target_view(record, vm_id))

    return await guarded(work())
