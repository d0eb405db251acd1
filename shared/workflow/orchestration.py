"""Handing an ARM operation (or a batch) to the durable timer loop: the orchestration's input, its
function names, starting it, and the learned duration its poll schedule uses.

No other workflow module is imported here: everything that starts an orchestration imports this.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from shared.domain.records import OperationRecord
from shared.domain.status import OperationStatus
from shared.domain.targets import parse_target
from shared.rules.poll_schedule import earliest_end, expected_duration

if TYPE_CHECKING:  # types only: the orchestrator imports this module, and replay should stay cheap to load
    from shared.runtime import Runtime
    from shared.settings import Settings


log = logging.getLogger("reimager.monitor")

MONITOR = "reimage_monitor"
POLL_ACTIVITY = "poll_reimage_operation"
FINISH_ACTIVITY = "finish_reimage_operation"
SUBMIT_ACTIVITY = "submit_reimage_batch"
HEALTH_ACTIVITY = "read_reimage_health"


class MonitorInput(BaseModel):
    """Orchestration input, carried across continue_as_new. Holds no secrets (it is stored)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    operation_id: str
    url: str | None
    mode: str
    submitted_at: datetime | None
    submit: bool = False  # a batch formed from the queue: gather, then seal and POST from an activity
    gather_seconds: int = 0
    last_retry_after: float | None = None
    polls: int = 0
    generation: int = 0
    # Copied from settings when the operation was accepted: replay must not depend on them.
    poll_min_seconds: int
    poll_max_seconds: int
    poll_default_seconds: int
    operation_timeout_minutes: int
    polls_per_generation: int
    health_grace_minutes: int = 0
    health_since: datetime | None = None  # ARM said Succeeded: reading instance views until healthy or grace
    # Learned at acceptance from the target's past durations (shared.rules.poll_schedule): their median, and the
    # earliest the operation is likely to end (no poll before it).
    expected_seconds: float | None = None
    earliest_seconds: float | None = None
    # ARM's quota (docs/operations.md "When ARM throttles"): the VM or scale set the operation runs on (its polls
    # and health reads are charged to it); the time spent waiting on ARM's Retry-After or on a low bucket, which
    # moves the deadline (or the health grace) by as much, so throttling never ends an operation TimedOut; and a
    # poll owed at once after such a wait.
    target: str | None = None
    throttled_seconds: float = 0.0
    health_held_seconds: float = 0.0
    poll_now: bool = False
    # Health of a batch on a paged list: one page per read; the next page, and the instances already seen healthy.
    health_page: str | None = None
    health_seen: dict[str, str] = {}

    @classmethod
    def for_record(cls, record: OperationRecord, settings: Settings,
                   history: list[float] | None = None) -> MonitorInput:
        """`history`: the target's recent durations, newest first (TargetRecord.durations)."""
        arm = record.arm or {}
        url = arm.get("asyncOperationUrl") or arm.get("locationUrl")
        assert record.submitted_at is not None
        # a Flexible set's batch is read member by member (shared/workflow/fleet.py poll)
        mode = "members" if "members" in arm else "async" if arm.get("asyncOperationUrl") else "location"
        return cls(operation_id=record.operation_id, url=url, mode=mode,
                   submitted_at=record.submitted_at, last_retry_after=arm.get("retryAfter"),
                   polls=record.polls, poll_min_seconds=settings.poll_min_seconds,
                   poll_max_seconds=settings.poll_max_seconds, poll_default_seconds=settings.poll_default_seconds,
                   operation_timeout_minutes=settings.operation_timeout_minutes,
                   polls_per_generation=settings.polls_per_generation,
                   health_grace_minutes=settings.health_grace_minutes,
                   expected_seconds=expected_duration(history or []), earliest_seconds=earliest_end(history or []),
                   target=parse_target(record.target).vm_id)

    @classmethod
    def for_batch(cls, record: OperationRecord, settings: Settings) -> MonitorInput:
        return cls(operation_id=record.operation_id, url=None, mode="async", submitted_at=None, submit=True,
                   gather_seconds=settings.batch_gather_seconds, poll_min_seconds=settings.poll_min_seconds,
                   poll_max_seconds=settings.poll_max_seconds, poll_default_seconds=settings.poll_default_seconds,
                   operation_timeout_minutes=settings.operation_timeout_minutes,
                   polls_per_generation=settings.polls_per_generation,
                   health_grace_minutes=settings.health_grace_minutes, target=parse_target(record.target).vm_id)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


async def start_monitor(client: Any, runtime: Runtime, record: OperationRecord,
                        state: MonitorInput | None = None, history: list[float] | None = None) -> bool:
    """Hand the ARM operation to the durable timer loop. A failure here is repaired by the sweeper.
    `history`: the target's recent durations as admission read them (else they are read)."""
    if state is None:
        if history is None:
            history = await learned_durations(runtime, record)
        state = MonitorInput.for_record(record, runtime.settings, history)
    try:
        await client.start_new(MONITOR, record.operation_id, state.dump())
        return True
    except Exception:
        log.warning("could not start the monitor for %s; the sweeper will", record.operation_id, exc_info=True)
        return False


async def learned_durations(runtime: Runtime, record: OperationRecord) -> list[float]:
    """The target's recent durations (its ledger record), for the poll schedule. Empty when they cannot be read:
    learning is an optimisation, the default schedule still works."""
    try:
        return list((await runtime.ledger.get_target(record.lease_key)).durations)
    except Exception:
        log.warning("could not read the history of %s", record.lease_key, exc_info=True)
        return []


async def start_batch(runtime: Runtime, client: Any, lease_key: str, batch_id: str, target_id: str
                      ) -> OperationRecord:
    """Create the record of a batch whose lease was just reserved and start its orchestration (which gathers,
    seals and submits it). Idempotent: the record is an insert-if-absent, a second start is harmless (the
    seal and the Submitting compare-and-swap decide), and the sweeper repeats this after a crash.
    `target_id`: the VM or scale set (an instance id is taken to its set)."""
    now = runtime.now()
    record = OperationRecord(operation_id=batch_id, request_id=batch_id, target=parse_target(target_id).vm_id,
                             lease_key=lease_key, trigger="batch", members=[], created_time=now,
                             last_updated_time=now, batch_id=batch_id)
    won, existing = await runtime.ledger.claim(record)
    if not won:
        record = existing
    if not record.terminal:  # also on a retry: a crash between the claim and this hid it from the sweeper
        await runtime.ledger.watch(record)
    if client is not None and not record.terminal and record.status == OperationStatus.CLAIMED:
        await start_monitor(client, runtime, record, MonitorInput.for_batch(record, runtime.settings))
    return record
