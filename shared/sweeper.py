"""The sweeper (a timer trigger): nothing waits forever, and nothing is lost when a step crashes.

It walks the ledger's list of unsettled operations (an index partition, not a scan) and, for
each one whose owner has gone quiet for longer than it may:
- Claimed (no POST yet): frees the key and withdraws the lease; it reached nothing;
- Submitting (the POST may have gone out): ends it Failed/SubmissionLost, cooldown included;
- Accepted/Running without a monitor: starts the monitor again;
- terminal without its event: sends the event (same id; Service Bus drops a duplicate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from shared import completion
from shared.durable_data import decode
from shared.ledger import OperationRecord
from shared.runtime import Runtime

log = logging.getLogger("reimager.sweeper")
MONITOR_GRACE = timedelta(minutes=2)  # a monitor is started right after the POST; give it time to appear


@dataclass
class SweepReport:
    freed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.__dict__.items() if v}


async def sweep(runtime: Runtime, client: Any) -> SweepReport:
    report = SweepReport()
    ledger, now = runtime.ledger, runtime.now()
    quiet = timedelta(seconds=runtime.settings.submit_timeout_seconds)
    for operation_id in await ledger.unsettled():
        record = await ledger.get(operation_id)
        if record is None:
            await ledger.settled(operation_id)
            report.settled.append(operation_id)
            continue
        age = now - record.last_updated_time
        try:
            await _sweep_one(runtime, client, record, age, quiet, report)
        except Exception:  # one bad record must not stop the sweep of the others
            log.exception("sweeping %s failed", operation_id)
    if any(report.to_dict().values()):
        log.info("sweep: %s", report.to_dict())
    return report


async def _sweep_one(runtime: Runtime, client: Any, record: OperationRecord, age: timedelta, quiet: timedelta,
                     report: SweepReport) -> None:
    ledger = runtime.ledger
    if record.status == "Claimed" and age > quiet:
        await completion.release_lease(runtime, record, applied=False)
        if await ledger.release_claim(record):
            await ledger.settled(record.operation_id)
            report.freed.append(record.operation_id)
    elif record.status == "Submitting" and age > quiet:
        error = {"code": "SubmissionLost", "message": "the reimage was claimed but its submission was not confirmed "
                 f"within {int(quiet.total_seconds())} s; if the caller crashed after sending it, ARM may still be "
                 "reimaging the target: check it before asking again"}
        await completion.finish(runtime, record.operation_id, "Failed", error, applied=True)
        report.lost.append(record.operation_id)
    elif record.status in ("Accepted", "Running") and age > MONITOR_GRACE:
        status = await client.get_status(record.operation_id)
        runtime_status = getattr(getattr(status, "runtime_status", None), "value", None)
        if runtime_status in (None, "Failed", "Terminated", "Canceled"):
            from shared.intake import start_monitor

            if runtime_status is not None:
                log.warning("monitor of %s ended %s (%s); starting it again", record.operation_id,
                            runtime_status, decode(getattr(status, "output", None)))
            if await start_monitor(client, runtime, record):
                report.restarted.append(record.operation_id)
    elif record.terminal:
        if record.event_id is None or completion.is_stale(record.event_id, runtime.now()):
            if age > MONITOR_GRACE:
                await completion.send_completion(runtime, record, stale=True)
                report.resent.append(record.operation_id)
        elif not record.event_id.startswith(completion.SENDING):
            await ledger.settled(record.operation_id)
            report.settled.append(record.operation_id)
