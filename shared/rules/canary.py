"""Canary first: the first batch of a storm on a scale set goes alone, and the rest wait for its verdict.

A bad image, a broken model or a dependency that is down makes every reimaged machine come back broken; batch
after batch would spread it until the breaker counts enough failures. So, on a scale set with no canary that passed
within FLEET_WINDOW_MINUTES, the batch sealed while other work waits (or one carrying an approved request) is cut to
CANARY_INSTANCES instances, in arrival order, and the rest of the queue waits (Queued) for its verdict:
- it ends Succeeded and not Unhealthy: it **passed**. The set needs no canary for FLEET_WINDOW_MINUTES (for batches
  with the same reimage options: another `exactVersion` is another image), and batches go on under the cap and the
  budgets (the first of them admitted as the first batch of an empty budget window would be);
- it ends Failed, TimedOut, Canceled or Unhealthy: it **failed**. The set is suspended (code CanaryFailed, with the
  canary's health detail as evidence) and every request that waited leaves the queue, to end
  Canceled/TargetSuspended;
- it was never applied (ARM refused its POST, or the global budget sent it back to the queue): it proved nothing,
  and the next batch is a canary again.
A request with more instances than the canary takes is split: the canary reimages its first instances, and its
other instances wait in the canary's record (`held`), outside the queue, so that no other batch takes them before
the verdict. Health Unknown (no application health extension, or views that could not be read) passes on ARM's
word: the verdict is only as good as the signal the set gives (docs/operations.md).

Pure decisions on the target record, made inside the compare-and-swap writes of shared/rules/admission.py (the
seal and the release by the canary's lease holder), so each is made once and is right when retried.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.domain.health import Health
from shared.domain.records import CanaryState, OperationRecord, QueueEntry, TargetRecord
from shared.domain.status import OperationStatus
from shared.rules.health import health_of
from shared.settings import Settings

CANARY_FAILED = "CanaryFailed"


def _order(key: str) -> tuple[int, str]:
    return (len(key), key)


def needed(record: TargetRecord, batch_id: str, options: dict[str, Any], now: datetime, settings: Settings) -> bool:
    """Whether the batch `batch_id` about to be sealed on this scale set, with these reimage options, must be a
    canary: no canary with the same options (another `exactVersion` is another image) passed within the window."""
    if settings.canary_instances <= 0:
        return False
    c = record.canary
    if c is None or c.outcome == "failed":
        return True
    if c.outcome == "running":
        return c.batch_id != batch_id
    return c.valid_until is None or c.valid_until <= now or c.options != options


def recover(record: TargetRecord) -> None:
    """A canary still marked running whose batch no longer holds the lease (its lease ran out): its held
    instances go back to the head of the queue, and it decides nothing."""
    c = record.canary
    if c is not None and c.outcome == "running" and record.lease_owner != c.batch_id:
        record.queue = [*c.held, *record.queue]
        record.canary = None


def _split(entry: QueueEntry, take: int) -> tuple[QueueEntry, QueueEntry]:
    ordered = sorted(entry.keys, key=_order)
    return (entry.model_copy(update={"row": None, "etag": None, "keys": ordered[:take], "riders": list(entry.riders)}),
            entry.model_copy(update={"row": None, "etag": None, "keys": ordered[take:], "riders": list(entry.riders)}))


def cut(record: TargetRecord, chosen: list[QueueEntry], batch_id: str, now: datetime, settings: Settings
        ) -> tuple[list[QueueEntry], list[QueueEntry], CanaryState | None]:
    """At seal: the entries this batch sends, the queue entries it takes out, and the canary it is (None: not one).

    A canary when the set needs one and work would wait behind it: the queue holds more instances than
    CANARY_INSTANCES, or the batch carries an approved request (however small)."""
    n = settings.canary_instances
    if not chosen or not needed(record, batch_id, chosen[0].options, now, settings):
        return chosen, chosen, None
    waiting = {k for e in record.queue for k in e.keys}
    if len(waiting) <= n and not any(e.approved for e in chosen):
        return chosen, chosen, None  # nothing waits behind it: an ordinary batch
    sent: list[QueueEntry] = []
    taken: list[QueueEntry] = []
    held: list[QueueEntry] = []
    count = 0
    for entry in chosen:
        if count + len(entry.keys) <= n:
            sent.append(entry)
            taken.append(entry)
            count += len(entry.keys)
            continue
        if not sent:  # the first request alone is wider than the canary: it goes in part
            head, rest = _split(entry, n)
            sent, taken, held = [head], [entry], [rest]
        break
    instances = sorted({k for e in sent for k in e.keys}, key=_order)
    members = [m for e in sent for m in e.members]
    state = CanaryState(batch_id=batch_id, instances=instances, members=members,
                        partial=[m for e in held for m in e.members], held=held, options=dict(chosen[0].options),
                        started=now)
    return sent, taken, state


def passed(status: str, health: str | None) -> bool:
    """ARM finished the canary, and its machines did not come back Unhealthy (Healthy, or Unknown: no signal)."""
    return status == OperationStatus.SUCCEEDED and health != Health.UNHEALTHY


def conclude(record: TargetRecord, batch_id: str, *, status: str, health: str | None,
             health_detail: dict[str, str] | None, applied: bool, now: datetime, settings: Settings
             ) -> dict[str, Any] | None:
    """The canary `batch_id` ended (called by its lease holder's release, once). Returns the suspension's evidence
    when it failed (the caller suspends the set, held instances back in the queue so the suspension ends them);
    None when it passed, was not applied, or `batch_id` is not the running canary."""
    c = record.canary
    if c is None or c.batch_id != batch_id or c.outcome != "running":
        return None
    if not applied:  # nothing was reimaged: it proved nothing (its requests ended with ARM's refusal, or requeued)
        record.canary = None
        return None
    record.queue = [*c.held, *record.queue]
    c.held, c.status, c.health, c.health_detail, c.ended = [], status, health, health_detail, now
    if passed(status, health):
        c.outcome, c.valid_until = "passed", now + timedelta(minutes=settings.fleet_window_minutes)
        return None
    c.outcome = "failed"
    return {"canary": batch_id, "instanceIds": c.instances, "members": c.members, "status": status,
            "health": health, "healthDetail": health_detail}


def failure_reason(evidence: dict[str, Any]) -> str:
    ids = ", ".join(evidence.get("instanceIds") or [])
    how = evidence.get("status")
    if how == OperationStatus.SUCCEEDED:
        how = f"Succeeded but {evidence.get('health')}"
    return (f"the canary {evidence.get('canary')} (instance {ids}) ended {how}: reimaging the rest of the set "
            "would likely break it the same way")


# ---- what a request's record carries (its status document and its events) ----------------------------------
def is_part(batch: OperationRecord, operation_id: str) -> bool:
    """`operation_id` was only partly in `batch`, the set's canary, which was applied: its other instances waited
    for the verdict (held), so the canary's end is not its end."""
    return batch.applied and operation_id in (batch.canary or {}).get("partial", [])


def ended_doc(batch: OperationRecord, member: OperationRecord) -> dict[str, Any] | None:
    """The canary document a member of `batch` carries once `batch` ended: the batch's (it went after the canary),
    or, when `batch` was the canary, with its verdict and the health of the member's own instances in it."""
    doc = batch.canary
    if doc is None:
        return member.canary
    doc = {k: v for k, v in doc.items() if k != "partial"}
    if doc.get("role") != "canary":
        return member.canary if (member.canary or {}).get("role") == "canary" else doc
    mine = {k: v for k, v in (batch.health_detail or {}).items() if k in member.cooldown_keys}
    doc.update(outcome="passed" if passed(batch.status, batch.health) else "failed", status=batch.status,
               health=health_of(mine) if mine else batch.health)
    if mine:
        doc["healthDetail"] = mine
    return doc


def with_part(member: OperationRecord, health: str | None, detail: dict[str, str] | None
              ) -> tuple[str | None, dict[str, str] | None]:
    """A request whose first instances were the canary: its health over all of its instances, the canary's verdict
    for those and the last batch's for the rest (worst first)."""
    done = (member.canary or {}).get("healthDetail") if (member.canary or {}).get("role") == "canary" else None
    if not done:
        return health, detail
    merged = {**done, **(detail or {})}
    return health_of(merged), merged


def failed_doc(target: TargetRecord) -> dict[str, Any] | None:
    """The canary whose failure suspended `target` (None: something else did), for the requests it ended."""
    c = target.canary
    if (target.suspended or {}).get("code") != CANARY_FAILED or c is None:
        return None
    return {**c.doc("waited"), "members": list(c.members)}


def waited(record: OperationRecord, doc: dict[str, Any]) -> None:
    """A request the failed canary `doc` ended: it waited for it, or (its first instances) was in it."""
    mine = doc.get("members") or []
    record.canary = {k: v for k, v in doc.items() if k != "members"}
    if record.operation_id in mine:
        detail = {k: v for k, v in (doc.get("healthDetail") or {}).items() if k in record.cooldown_keys}
        record.canary.update(role="canary", healthDetail=detail or None)
        record.batch_id = doc.get("batchId")
        record.health, record.health_detail = (health_of(detail), detail) if detail else (doc.get("health"), None)
