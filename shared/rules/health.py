"""The one health verdict: the instance views of a reimaged VM or batch (classified one by one in
shared/domain/health.py) combined into its health, and a request's share of a batch's health.

Pure: the views are read by the caller (shared/workflow/verify.py read_health)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.domain.health import DETAIL_MAX, UNKNOWN_NO_VIEW, Health, InstanceHealth
from shared.domain.records import OperationRecord

# Worst first; a summary reports the worst state any instance is in.
_RANK = {Health.UNHEALTHY: 0, Health.UNKNOWN: 1, Health.PENDING: 2, Health.HEALTHY: 3}


@dataclass(frozen=True)
class HealthSummary:
    """The verdict for a set of instances.

    `done` is True when nothing is left to wait for: every instance is Healthy, or the grace period
    is over (`final`). Until then `health` is the worst state seen now (Pending counts as not yet
    final); once final it is Healthy, Unhealthy or Unknown, never Pending.
    """

    health: Health
    detail: str
    done: bool
    counts: dict[str, int]
    instances: dict[str, InstanceHealth] = field(default_factory=dict)  # each asked id, as judged

    def per_instance(self) -> dict[str, str]:
        """Instance id ("" for a VM) -> "State: what its view said": the events' and status's healthDetail."""
        return {i: f"{h.health.value}: {h.detail}" for i, h in self.instances.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"health": self.health.value, "detail": self.detail, "done": self.done, "counts": dict(self.counts)}


def summarize(instances: Mapping[str, InstanceHealth], instance_ids: Iterable[str] | None = None, *,
              final: bool = False) -> HealthSummary:
    """Worst-of over `instance_ids` (default: every key of `instances`). An id with no entry is Unknown.

    Not final: done only when every instance is Healthy. Final (the grace period is over): an
    instance still Pending did not come back healthy in time and counts as Unhealthy.
    Order: Unhealthy > Unknown > Healthy.
    """
    ids = list(dict.fromkeys(instance_ids)) if instance_ids is not None else sorted(instances, key=_id_order)
    if not ids:
        return HealthSummary(Health.UNKNOWN, "no instances to verify", True, {})
    judged: dict[str, InstanceHealth] = {}
    for i in ids:
        seen = instances.get(i, UNKNOWN_NO_VIEW)
        if final and seen.health is Health.PENDING:
            seen = InstanceHealth(Health.UNHEALTHY, f"not healthy within the grace period ({seen.detail})")
        judged[i] = seen
    counts: dict[str, int] = {}
    for seen in judged.values():
        counts[seen.health.value] = counts.get(seen.health.value, 0) + 1
    worst = min((seen.health for seen in judged.values()), key=_RANK.__getitem__)
    healthy = counts.get(Health.HEALTHY.value, 0)
    done = final or healthy == len(ids)
    return HealthSummary(worst, _detail(judged, healthy), done, counts, judged)


def _id_order(instance_id: str) -> tuple[int, str]:
    return (int(instance_id), "") if instance_id.isdecimal() else (-1, instance_id)


def _detail(judged: Mapping[str, InstanceHealth], healthy: int) -> str:
    total = len(judged)
    if total == 1:
        (only,) = judged.values()
        return only.detail[:DETAIL_MAX]
    head = f"{healthy} of {total} healthy"
    problems = sorted(((i, h) for i, h in judged.items() if h.health is not Health.HEALTHY),
                      key=lambda p: (_RANK[p[1].health], _id_order(p[0])))
    parts = [f"{i}: {h.health.value.lower()} ({h.detail})" for i, h in problems[:5]]
    if len(problems) > 5:
        parts.append(f"and {len(problems) - 5} more")
    text = head + ("; " + "; ".join(parts) if parts else "")
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"


def member_health(batch: OperationRecord, keys: list[str]) -> tuple[str | None, dict[str, str] | None]:
    """A request's health: the verdict over its own instances in the batch's healthDetail."""
    if batch.health_detail is None:
        return batch.health, None
    mine = {k: batch.health_detail[k] for k in keys if k in batch.health_detail}
    if not mine:
        return batch.health, None
    judged = {k: _parse_detail(v) for k, v in mine.items()}
    return summarize(judged, final=True).health.value, mine


def health_of(detail: Mapping[str, str]) -> str:
    """The verdict over a healthDetail map (instance -> "State: what its view said"): the worst state."""
    return summarize({k: _parse_detail(v) for k, v in detail.items()}, final=True).health.value


def _parse_detail(text: str) -> InstanceHealth:
    state, _, detail = text.partition(":")
    try:
        return InstanceHealth(Health(state), detail.strip())
    except ValueError:
        return InstanceHealth(Health.UNKNOWN, text)
