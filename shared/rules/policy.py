"""Safety policy, default deny. Pure functions: they decide from values passed in (the model,
the ledger's target record, the clock's now); the caller does the I/O and the atomic write."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain.arm_call import TargetModel
from shared.domain.errors import DetailCode, ErrorCode, ErrorDetail, ReimagerError
from shared.domain.records import Cooldown, TargetRecord
from shared.domain.request import ReimageRequest
from shared.domain.targets import Target, TargetKind, within_scope
from shared.settings import Settings


def check_scope(target: Target, settings: Settings) -> None:
    if not any(within_scope(target, scope) for scope in settings.allowed_scopes):
        raise ReimagerError(ErrorCode.SCOPE_NOT_ALLOWED,
                            "The target is not under any scope in ALLOWED_SCOPES; reimager acts only inside "
                            "scopes it was explicitly given.", target="target")


def check_model(request: ReimageRequest, model: TargetModel, settings: Settings) -> list[str] | None:
    """Rules that need the preflight GET. Returns the explicit instance ids the POST will name
    (`allInstances` resolved to the instances the set has now), or None for a VM."""
    tags = {k.lower(): v for k, v in model.tags.items()}
    value = tags.get(settings.protect_tag_name.lower())
    if value is not None and value.strip().lower() == settings.protect_tag_value.lower():
        raise ReimagerError(ErrorCode.TARGET_PROTECTED,
                            f"The target is tagged {settings.protect_tag_name}={value}; reimager will not touch it.",
                            target="target")
    instances = request.effective_instance_ids
    if request.resolved_target.kind is not TargetKind.VM:
        present = set(model.instance_ids or ())
        if instances is None:  # allInstances: exactly the instances the set has now, never an empty body
            instances = sorted(present, key=lambda i: (len(i), i))
            if not instances:
                raise ReimagerError(ErrorCode.NO_INSTANCES, "The scale set has no instances to reimage.",
                                    target="allInstances")
        else:
            missing = [i for i in instances if i not in present]
            if missing:
                raise ReimagerError(ErrorCode.TARGET_NOT_FOUND,
                                    f"The scale set has no instance {', '.join(missing[:10])}.",
                                    target="instanceIds", details=[
                                        ErrorDetail(code=DetailCode.INSTANCE_NOT_FOUND, target="instanceIds", message=i)
                                        for i in missing[:10]])
    count = len(instances) if instances is not None else 1
    if count > settings.max_instances_per_request:
        field = "instanceIds" if request.instance_ids is not None else "allInstances"
        raise ReimagerError(ErrorCode.INVALID_REQUEST,
                            f"The request would reimage {count} instances; MAX_INSTANCES_PER_REQUEST is "
                            f"{settings.max_instances_per_request}.", target=field,
                            details=[ErrorDetail(code=DetailCode.TOO_MANY_INSTANCES, target=field,
                                                 message=f"{count} > {settings.max_instances_per_request}")])
    request.check_against(model.os_type, model.ephemeral_os_disk)
    return instances


def cooldown_keys(target: Target, instances: list[str] | None) -> list[str]:
    """The keys in the target record that a reimage puts into cooldown: "" for a VM, else each instance."""
    if target.kind is TargetKind.VM:
        return [""]
    return list(instances or [])


def _describe(key: str) -> str:
    return "the VM" if key == "" else f"instance {key}"


def cooling(record: TargetRecord, keys: list[str], now: datetime, owner: str | None = None
            ) -> tuple[str, Cooldown] | None:
    for key in keys:
        c = record.cooldowns.get(key)
        if c is not None and c.until > now and c.holder != owner:
            return key, c
    return None


def cooldown_error(key: str, c: Cooldown, now: datetime) -> ReimagerError:
    remaining = max(1, int((c.until - now).total_seconds() + 0.999))
    return ReimagerError(ErrorCode.COOLDOWN_ACTIVE,
        f"{_describe(key).capitalize()} was reimaged recently by {c.operation_id}; COOLDOWN_MINUTES refuses it "
        f"until {c.until.isoformat()} ({remaining} s). This stops alert -> reimage -> alert loops.",
        target="target", retry_after=remaining,
        extra={"cooldown": {"instance": key or None, "operationId": c.operation_id, "until": c.until.isoformat()}})


def needs_approval(request: ReimageRequest, instances: list[str] | None, settings: Any) -> str | None:
    """Why this request needs a second person's yes, or None: a whole scale set, or more instances than
    APPROVAL_ABOVE_INSTANCES."""
    if request.all_instances:
        return "it reimages every instance of the scale set (allInstances)"
    count, limit = (len(instances) if instances is not None else 1), settings.approval_above_instances
    if count > limit:
        return f"it reimages {count} instances, more than APPROVAL_ABOVE_INSTANCES ({limit})"
    return None
