"""Dry runs (the cmdlet's -WhatIf): every check with its result, never stopping at the first.

A pure function over what the shell read (the preflight model or its TargetNotFound, the target's
ledger record, the clock's now). Each check reuses the policy function the real path runs, and a
refusal is caught and reported instead of raised; the next check then runs as if that one had
passed, so one dry run lists every reason a request would be refused. A dry run never claims a
key, so it never answers with an existing operation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from shared.domain.arm_call import TargetModel
from shared.domain.errors import DetailCode, ErrorCode, ReimagerError
from shared.domain.records import TargetRecord
from shared.domain.request import ReimageRequest
from shared.domain.targets import Target, TargetKind
from shared.rules import fleet, freeze, policy
from shared.rules.admission import suspended_error
from shared.settings import Settings

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
# The order the real path checks in; every dry run lists each of them once.
CHECKS = ("scope", "targetExists", "protectTag", "instanceCount", "targetModel", "instanceProtection", "lock",
          "automaticRepairs", "suspension", "cooldown", "freeze")
# The fleet's checks (shared/rules/fleet.py), after the model's, each with the code its refusal carries.
_FLEET = {"instanceProtection": ErrorCode.INSTANCE_PROTECTED, "lock": ErrorCode.TARGET_LOCKED,
          "automaticRepairs": ErrorCode.AUTOMATIC_REPAIRS_ACTIVE}
_MODEL_OPTIONS = {"temp_disk": None, "force_update_os_disk_for_ephemeral": None, "os_profile": None}
_NOT_READ = "not evaluated: the target's model was not read"


@dataclass(frozen=True)
class DryRun:
    plan: dict[str, Any] | None  # None when the instances to name cannot be known (the set was not read)
    checks: list[dict[str, Any]]
    calls: list[dict[str, Any]] | None = None  # a Flexible set: every member's single-VM POST

    @property
    def passed(self) -> bool:
        return all(c["result"] == PASSED for c in self.checks)


def in_scope(request: ReimageRequest, settings: Settings) -> bool:
    """Whether the shell may read the target at all: outside ALLOWED_SCOPES reimager makes no ARM call."""
    try:
        policy.check_scope(request.resolved_target, settings)
    except ReimagerError:
        return False
    return True


def _failed(name: str, exc: ReimagerError, **extra: Any) -> dict[str, Any]:
    check: dict[str, Any] = {"name": name, "result": FAILED, "code": exc.code, "message": exc.error.message}
    if exc.error.details:
        check["details"] = [d.model_dump(exclude_none=True) for d in exc.error.details]
    return {**check, **extra}


def _classify(exc: ReimagerError) -> str:
    """Which check a refusal from policy.check_model (or from reading who governs the target) belongs to."""
    if exc.code is ErrorCode.SCOPE_NOT_ALLOWED:
        return "scope"
    if exc.code is ErrorCode.TARGET_PROTECTED:
        return "protectTag"
    if exc.code is ErrorCode.TARGET_NOT_FOUND:
        return "targetExists"
    if exc.code is ErrorCode.NO_INSTANCES or any(d.code == DetailCode.TOO_MANY_INSTANCES for d in exc.error.details):
        return "instanceCount"
    if exc.code is ErrorCode.INVALID_REQUEST:
        return "targetModel"
    raise exc  # not a policy refusal this module knows: let the caller see it


def _model_checks(request: ReimageRequest, model: TargetModel, settings: Settings
                  ) -> tuple[list[str] | None, bool, dict[str, dict[str, Any]]]:
    """Run policy.check_model until it passes, setting aside each refusal it makes.

    Returns the instances the POST would name (None for a VM), whether they are known, and the
    failed checks by name.
    """
    failed: dict[str, dict[str, Any]] = {}
    info = {"osType": model.os_type, "ephemeralOSDisk": model.ephemeral_os_disk}
    for _ in range(len(CHECKS)):
        try:
            return policy.check_model(request, model, settings), True, failed
        except ReimagerError as exc:
            name = _classify(exc)
            if name in failed:  # setting it aside did not help: report what we have
                return None, False, failed
            failed[name] = _failed(name, exc, **info) if name == "targetModel" else _failed(name, exc)
            if name == "protectTag":
                model = replace(model, tags={})
            elif name == "targetExists":  # named instances the set lacks: go on as if they were there
                wanted = request.effective_instance_ids or []
                model = replace(model, instance_ids=(*(model.instance_ids or ()), *wanted))
            elif name == "instanceCount":
                if exc.code == "NoInstances":  # nothing to name: the model rules still apply
                    try:
                        request.check_against(model.os_type, model.ephemeral_os_disk)
                    except ReimagerError as rule:
                        failed["targetModel"] = _failed("targetModel", rule, **info)
                    return None, False, failed
                settings = settings.model_copy(update={"max_instances_per_request": 10**9})
            else:  # targetModel: the rules on the request's options; check the rest without them
                request = request.model_copy(update=_MODEL_OPTIONS)
    return None, False, failed


def _freeze_check(request: ReimageRequest, settings: Settings, model: TargetModel | None, now: datetime
                  ) -> dict[str, Any]:
    """A freeze holds the real request for a second person's approval (and refuses one carrying osProfile)."""
    frozen = freeze.active(settings.freeze_schedule, model.tags if model else None, settings.freeze_tag, now)
    if frozen is not None:
        code = ErrorCode.INVALID_REQUEST if request.os_profile is not None else ErrorCode.APPROVAL_REQUIRED
        then = ("refused: a request that waits may not carry osProfile secrets" if request.os_profile is not None
                else "it would wait for a second person's approval (break-glass)")
        return {"name": "freeze", "result": FAILED, "code": code, "message": f"{frozen.reason[0].upper()}"
                f"{frozen.reason[1:]}: {then}.", **{k: v for k, v in frozen.doc().items() if v is not None}}
    if model is None:
        return {"name": "freeze", "result": SKIPPED, "message": "no FREEZE_WINDOWS window holds now; the target's "
                f"{settings.freeze_tag} tag was not read"}
    return {"name": "freeze", "result": PASSED}


def _fleet_checks(target: Target, model: TargetModel, instances: list[str] | None, settings: Settings
                  ) -> dict[str, dict[str, Any]]:
    """The fleet's checks on what was read: a member's protect tag (reported as protectTag), protected instances,
    ReadOnly locks and automatic repairs, each with the refusal the real request would get."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        fleet.check_member_tags(model, instances, settings)
    except ReimagerError as exc:
        checks["protectTag"] = _failed("protectTag", exc)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("instanceProtection", lambda: fleet.check_protection(model, instances)),
        ("lock", lambda: fleet.check_locks(model, fleet.posted_resources(target, model, instances))),
        ("automaticRepairs", lambda: fleet.check_repairs(target, model, settings))]
    for name, step in steps:
        try:
            step()
            checks[name] = {"name": name, "result": PASSED}
        except ReimagerError as exc:
            checks[name] = _failed(name, exc, **exc.extra)
    if not model.fleet.locks_read:
        checks["lock"] = {"name": "lock", "result": SKIPPED, "message": "the locks could not be read (the role "
                          "lacks Microsoft.Authorization/locks/read?); a ReadOnly lock refuses the POST instead"}
    if model.fleet.automatic_repairs is not None and checks["automaticRepairs"]["result"] == PASSED:
        checks["automaticRepairs"]["serviceState"] = model.fleet.automatic_repairs
    return checks


def _read_checks(request: ReimageRequest, settings: Settings, model: TargetModel | None,
                 not_found: ReimagerError | None, refused: ReimagerError | None, governing: Target
                 ) -> tuple[list[str] | None, bool, dict[str, dict[str, Any]]]:
    """The checks on what ARM said (skipped when it was not read): the instances the POST would name, whether they
    are known, and the checks by name."""
    target = request.resolved_target
    checks: dict[str, dict[str, Any]] = {}
    instances: list[str] | None = request.effective_instance_ids
    known = target.kind is TargetKind.VM or instances is not None  # allInstances needs the set's model
    if model is not None:
        instances, known, failed = _model_checks(request, model, settings)
        checks.update(failed)
        for name in ("targetExists", "protectTag", "instanceCount"):
            checks.setdefault(name, {"name": name, "result": PASSED})
        checks.setdefault("targetModel", {"name": "targetModel", "result": PASSED, "osType": model.os_type,
                                          "ephemeralOSDisk": model.ephemeral_os_disk})
        fleet_checks = _fleet_checks(governing, model, instances if known else None, settings)
        if "protectTag" in fleet_checks and checks["protectTag"]["result"] == PASSED:
            checks["protectTag"] = fleet_checks["protectTag"]
        checks.update({k: v for k, v in fleet_checks.items() if k in _FLEET})
        return instances, known, checks
    why = ("not evaluated: the target is outside ALLOWED_SCOPES, so it was not read" if not_found is None
           else "not evaluated: the target does not exist")
    if refused is not None:
        why = "not evaluated: what governs the target could not be read"
        checks[_classify(refused)] = _failed(_classify(refused), refused)
    if "targetExists" not in checks:
        checks["targetExists"] = (_failed("targetExists", not_found) if not_found is not None
                                  else {"name": "targetExists", "result": SKIPPED, "message": why})
    for name in ("protectTag", "instanceCount", "targetModel", *_FLEET):
        checks.setdefault(name, {"name": name, "result": SKIPPED, "message": why})
    return instances, known, checks


def _ledger_checks(record: TargetRecord, keys: list[str], known: bool, now: datetime) -> dict[str, dict[str, Any]]:
    """Suspension and cooldown, on the ledger's record of the target (a Flexible member's: its set's)."""
    checks: dict[str, dict[str, Any]] = {}
    if record.suspended:
        checks["suspension"] = _failed("suspension", suspended_error(record))
    else:
        checks["suspension"] = {"name": "suspension", "result": PASSED}
    hit = policy.cooling(record, keys, now) if known else None
    if hit is not None:  # the same refusal as the real path, with the operation that caused it and when it ends
        refusal = policy.cooldown_error(*hit, now)
        checks["cooldown"] = _failed("cooldown", refusal, retryAfter=refusal.retry_after,
                                     **refusal.extra.get("cooldown", {}))
    elif known:
        checks["cooldown"] = {"name": "cooldown", "result": PASSED}
    else:
        checks["cooldown"] = {"name": "cooldown", "result": SKIPPED, "message": _NOT_READ}
    return checks


def evaluate(request: ReimageRequest, settings: Settings, *, model: TargetModel | None,
             not_found: ReimagerError | None, record: TargetRecord, now: datetime,
             governing: Target | None = None, refused: ReimagerError | None = None,
             calls: list[dict[str, Any]] | None = None) -> DryRun:
    """Every check for this request. `model` is the preflight GET's result; `not_found` its TargetNotFound
    (both None when the target is outside ALLOWED_SCOPES and so was not read). A Flexible member's request comes as
    its set's (`governing`: the set, `model` the set's, `calls` its members' POSTs), and `refused` says why what
    governs the target could not be read."""
    target = request.resolved_target
    checks: dict[str, dict[str, Any]] = {}
    try:
        policy.check_scope(target, settings)
        checks["scope"] = {"name": "scope", "result": PASSED}
    except ReimagerError as exc:
        checks["scope"] = _failed("scope", exc)
    if refused is not None:
        model = None
    instances, known, read = _read_checks(request, settings, model, not_found, refused, governing or target)
    checks.update(read)
    checks.update(_ledger_checks(record, policy.cooldown_keys(target, instances), known, now))
    checks["freeze"] = _freeze_check(request, settings, model, now)

    plan = None
    if calls:  # a Flexible set: its members' single-VM POSTs (the plan is the first)
        plan = calls[0]
    elif known and (target.kind is TargetKind.VM or instances) and not (model and model.fleet.flexible):
        plan = request.arm_call(settings.compute_api_version, instance_ids=instances).plan()
    return DryRun(plan, [checks[name] for name in CHECKS], calls)
