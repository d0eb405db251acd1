"""Health verification after ARM said Succeeded: one read of the instance views per call, judged by
shared/rules/health.py.

A scale set's views come from its VM list, one page per read (each page is one of the set's High Cost Get
reads, 10 a minute: research notes `arm.md` A1): the orchestrator carries where the next read starts and which
instances were already seen Healthy, so a batch spread over many pages is covered in as many reads, never in
one burst. A read that would draw on a low bucket is held, and one ARM throttles waits its Retry-After; both move
the grace period by the time waited (shared/workflow/orchestrator.py).
"""

from __future__ import annotations

from typing import Any

from shared.domain.errors import ComputeError
from shared.domain.fleet import member_target
from shared.domain.health import Health, InstanceHealth
from shared.domain.records import OperationRecord
from shared.domain.status import OperationStatus
from shared.domain.targets import Target, TargetKind, parse_target
from shared.rules import fleet as fleet_rules
from shared.rules.health import summarize
from shared.runtime import Runtime
from shared.workflow import fleet, throttling


def health_target(record: OperationRecord) -> Target:
    """Whose instance view a request's health is: a Flexible member's own VM when the request led its own POST (also
    when it was sent to the set naming the member: the set has no instance path for it), else its VM or set."""
    scale_set = fleet_rules.flexible_set(record)
    if scale_set is not None and not record.is_batch and record.cooldown_keys:
        return member_target(scale_set, record.cooldown_keys[0])
    return parse_target(parse_target(record.target).vm_id)


async def read_health(runtime: Runtime, operation_id: str, *, final: bool, page: str | None = None,
                      seen: dict[str, str] | None = None) -> dict[str, Any]:
    """One read of the instance views (one list page for a scale set). done=True when every machine is healthy,
    or on the final read (then what is not healthy is Unhealthy, and an unread or unreadable view Unknown).
    Not done: the next page to read and the instances seen Healthy so far (`page`, `seen`)."""
    now = runtime.now()

    def verifying(r: OperationRecord) -> OperationRecord | None:
        if r.terminal or r.status == OperationStatus.VERIFYING:
            return None
        r.status, r.last_updated_time = OperationStatus.VERIFYING, now
        return r

    record = await runtime.ledger.update(operation_id, verifying)
    if record is None:
        return {"done": True, "health": Health.UNKNOWN.value, "detail": None}
    if fleet.is_flexible_batch(record):  # each reimaged member's own view
        return await fleet.read_health(runtime, record, final=final, seen=seen)
    target = health_target(record)
    held = throttling.hold("health", runtime, target.vm_id)
    if held is not None:
        return held
    keys = record.cooldown_keys or [""]
    healthy = {k: InstanceHealth(Health.HEALTHY, detail) for k, detail in (seen or {}).items() if k in keys}
    wanted = [k for k in keys if k not in healthy]
    try:
        views, next_page = await runtime.compute.instance_health_page(
            target, None if target.kind is TargetKind.VM else wanted, page)
    except ComputeError as exc:
        if exc.arm_status == 429:
            return throttling.throttled("health", target.vm_id, exc.retry_after)
        if not final:
            raise
        views, next_page = {k: InstanceHealth(Health.UNKNOWN, exc.error.message) for k in wanted}, None
    if target.kind is TargetKind.VM and keys != [""]:  # a Flexible member, keyed by its name in its set
        views = {(keys[0] if k == "" else k): v for k, v in views.items()}
    if page is None and next_page is None:  # the whole list was one page: an id not on it is not in the set
        views = {**{k: InstanceHealth(Health.UNKNOWN, "not in the scale set") for k in wanted}, **views}
    judged = {**healthy, **views}
    verdict = summarize(judged, keys, final=final)
    if not verdict.done:
        healthy.update({k: h for k, h in views.items() if h.health is Health.HEALTHY})
        return {"done": False, "page": next_page, "seen": {k: h.detail for k, h in healthy.items()}}
    return {"done": True, "health": verdict.health.value, "detail": verdict.per_instance()}
