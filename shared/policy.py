"""Safety policy, default deny: scopes, protection tag, blast radius, cooldown."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared import runtime
from shared.compute import TargetModel
from shared.durable_data import decode
from shared.errors import ErrorDetail, ReimagerError
from shared.ids import cooldown_id
from shared.models import ReimageRequest
from shared.settings import Settings
from shared.targets import Target, TargetKind, within_scope


def check_scope(target: Target, settings: Settings) -> None:
    if not any(within_scope(target, scope) for scope in settings.allowed_scopes):
        raise ReimagerError(403, "ScopeNotAllowed",
                            "The target is not under any scope in ALLOWED_SCOPES; reimager acts only inside "
                            "scopes it was explicitly given.", target="target")


def check_model(request: ReimageRequest, model: TargetModel, settings: Settings) -> None:
    """Rules that need the preflight GET: protection tag, instance count, OS and disk rules."""
    tags = {k.lower(): v for k, v in model.tags.items()}
    value = tags.get(settings.protect_tag_name.lower())
    if value is not None and value.strip().lower() == settings.protect_tag_value.lower():
        raise ReimagerError(403, "TargetProtected",
                            f"The target is tagged {settings.protect_tag_name}={value}; reimager will not touch it.",
                            target="target")
    count = request.instance_count
    if count is None:  # allInstances: every instance the scale set has now
        count = model.capacity or 0
    if count > settings.max_instances_per_request:
        field = "allInstances" if request.instance_count is None else "instanceIds"
        raise ReimagerError(400, "InvalidRequest",
                            f"The request would reimage {count} instances; MAX_INSTANCES_PER_REQUEST is "
                            f"{settings.max_instances_per_request}.", target=field,
                            details=[ErrorDetail(code="TooManyInstances", target=field,
                                                 message=f"{count} > {settings.max_instances_per_request}")])
    request.check_against(model.os_type, model.ephemeral_os_disk)


def cooldown_keys(request: ReimageRequest) -> list[str]:
    """The per-target keys a completed operation puts into cooldown (instances of a scale set each)."""
    t = request.resolved_target
    if t.kind is TargetKind.VM or (t.kind is TargetKind.VMSS and request.instance_ids is None):
        return [t.lock_key]
    return [f"{t.lock_key}/virtualmachines/{i}" for i in request.effective_instance_ids or []]


def keys_to_check(request: ReimageRequest) -> list[str]:
    """A request is in cooldown if its scale set as a whole, or any instance it names, is."""
    keys = cooldown_keys(request)
    lock = request.resolved_target.lock_key
    return keys if lock in keys else [lock, *keys]


async def check_cooldown(request: ReimageRequest, client: Any, now: datetime | None = None) -> None:
    now = now or runtime.now()
    for key in keys_to_check(request):
        status = await client.get_status(cooldown_id(key), show_input=True)
        runtime_status = getattr(status.runtime_status, "value", None)
        if runtime_status not in ("Running", "Pending"):
            continue
        until = datetime.fromisoformat((decode(status.input_) or {}).get("until", now.isoformat()))
        remaining = max(1, int((until - now).total_seconds() + 0.999))
        raise ReimagerError(429, "CooldownActive",
                            f"The target was reimaged recently; COOLDOWN_MINUTES refuses it for {remaining} more "
                            "seconds (this stops alert -> reimage -> alert loops).", target="target",
                            retry_after=remaining)
