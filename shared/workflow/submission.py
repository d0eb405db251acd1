"""The one place a reimage POST is sent, and what its answer means.

An operation (a lead request, or a batch) reaches here marked `Submitting` in the ledger; then:
- ARM accepted it (202, or 200 when it finished synchronously): the record says Accepted, with the
  operation URLs the monitor polls;
- it **may have been applied** (no answer after sending, a timeout, ARM 5xx or 408): the operation ends
  Failed / SubmissionUncertain here, with its one event, and the cooldown starts. It is never sent again;
- it **certainly was not applied** (ARM refused it with a 4xx; throttled past our retries; never
  connected): the caller gives back what it holds. A lead frees its key so the request may be asked
  again (shared/workflow/intake.py); a batch puts its requests back in the queue, or ends them with ARM's
  refusal (shared/workflow/batches.py).
A crash or a bug after the POST left leaves the record Submitting; the sweeper ends it SubmissionLost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from shared.domain.arm_call import ArmCall, Submission
from shared.domain.errors import ComputeError, ComputeUnavailable, ErrorCode, SubmissionUncertain
from shared.domain.records import OperationRecord
from shared.domain.status import OperationStatus
from shared.runtime import Runtime
from shared.workflow import evidence
from shared.workflow.completion import finish

log = logging.getLogger("reimager.submission")


@dataclass(frozen=True)
class Posted:
    """ARM accepted the POST. `record` is the operation as recorded then (Accepted); `finished`: ARM answered 200,
    the reimage is already done and the operation was ended Succeeded."""

    record: OperationRecord
    submission: Submission
    finished: bool


@dataclass(frozen=True)
class Uncertain:
    """The POST may have been applied: the operation has ended Failed / SubmissionUncertain, with its event."""

    error: ComputeError


@dataclass(frozen=True)
class NotApplied:
    """ARM certainly did not apply the POST. `unavailable`: throttled or unreachable, so the same POST may be
    sent again later; otherwise ARM refused it (4xx)."""

    error: ComputeError

    @property
    def unavailable(self) -> bool:
        return isinstance(self.error, ComputeUnavailable)


Outcome = Posted | Uncertain | NotApplied


def with_uncertain(error: dict[str, Any]) -> dict[str, Any]:
    """An ARM error for a POST that may have been applied: say so in its details."""
    error.setdefault("details", [{"code": ErrorCode.SUBMISSION_UNCERTAIN, "message": "the reimage may have been "
                                  "applied; check the target before asking again"}])
    return error


def lost_error(message: str) -> dict[str, Any]:
    """The error of an operation whose submission was never confirmed: its submitter stopped after claiming it."""
    return {"code": ErrorCode.SUBMISSION_LOST, "message": message}


async def submit(runtime: Runtime, client: Any, record: OperationRecord, call: ArmCall) -> Outcome:
    """POST `call` for `record` (Submitting) and record what ARM said. First, bounded, the evidence the POST is about
    to destroy (shared/workflow/evidence.py)."""
    await evidence.before_post(runtime, record)
    try:
        submission = await runtime.compute.submit(call)
    except ComputeError as exc:
        if isinstance(exc, SubmissionUncertain) or exc.maybe_applied:
            # It may have been applied: the operation ends here, and the cooldown still starts.
            await finish(runtime, record.operation_id, OperationStatus.FAILED, with_uncertain(exc.error_dict()),
                         applied=True, client=client)
            return Uncertain(exc)
        return NotApplied(exc)
    now = runtime.now()

    def accepted(r: OperationRecord) -> OperationRecord:
        r.status, r.applied, r.submitted_at, r.last_updated_time = OperationStatus.ACCEPTED, True, now, now
        r.arm = submission.to_dict()
        return r

    stored = await runtime.ledger.update(record.operation_id, accepted)
    assert stored is not None
    log.info("submitted %s %s for %s (%s)", call.operation.value, record.target, record.operation_id,
             record.trigger)
    finished = submission.status_code == 200  # ARM finished synchronously
    if finished:
        await finish(runtime, record.operation_id, OperationStatus.SUCCEEDED, None, applied=True, client=client)
    return Posted(stored, submission, finished)
