"""The HTTP surface: JSON bytes in, an Outcome (status, body, headers) out. Handlers only translate.

This is the one place that turns the core's typed results and errors into HTTP answers, and
the one place that builds status URLs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared import runtime
from shared.adapters.telemetry import refused
from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.events import Trigger
from shared.domain.status import OperationStatus
from shared.surfaces import responses
from shared.surfaces.identity import principal_of
from shared.surfaces.json_body import parse_json
from shared.surfaces.requests import submit_request
from shared.workflow.intake import Accepted, Planned, Result

log = logging.getLogger("reimager.api")


# The one place a code becomes an HTTP status. Codes that only appear on operations (a terminal `error`) are
# mapped too, so the table is total: tests/unit/surfaces checks it covers every ErrorCode.
HTTP_STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400, ErrorCode.MISSING_IDEMPOTENCY_KEY: 400, ErrorCode.SIGNATURE_INVALID: 401,
    ErrorCode.SCOPE_NOT_ALLOWED: 403, ErrorCode.TARGET_PROTECTED: 403, ErrorCode.INSTANCE_PROTECTED: 403,
    ErrorCode.TARGET_LOCKED: 403, ErrorCode.AUTOMATIC_REPAIRS_ACTIVE: 409, ErrorCode.SELF_APPROVAL_NOT_ALLOWED: 403,
    ErrorCode.APPROVER_NOT_VERIFIED: 403, ErrorCode.IDENTITIES_NOT_COMPARABLE: 403,
    ErrorCode.TARGET_NOT_FOUND: 404, ErrorCode.OPERATION_NOT_FOUND: 404,
    ErrorCode.OPERATION_IN_PROGRESS: 409, ErrorCode.TARGET_SUSPENDED: 409, ErrorCode.REQUEST_ID_CONFLICT: 409,
    ErrorCode.NO_INSTANCES: 409, ErrorCode.NOT_AWAITING_APPROVAL: 409, ErrorCode.NOT_CANCELLABLE: 409,
    ErrorCode.NOT_SUSPENDED: 409, ErrorCode.PAYLOAD_TOO_LARGE: 413, ErrorCode.COOLDOWN_ACTIVE: 429,
    ErrorCode.FLEET_BUDGET_EXHAUSTED: 429, ErrorCode.GLOBAL_BUDGET_EXHAUSTED: 429, ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.COMPUTE_ERROR: 502, ErrorCode.SUBMISSION_UNCERTAIN: 502, ErrorCode.UNTRUSTED_OPERATION_URL: 502,
    ErrorCode.COMPUTE_UNAVAILABLE: 503, ErrorCode.CLAIM_LOST: 503, ErrorCode.STORAGE_UNAVAILABLE: 503,
    # on operations only
    ErrorCode.APPROVAL_REQUIRED: 202, ErrorCode.APPROVAL_REJECTED: 409, ErrorCode.APPROVAL_TIMED_OUT: 409,
    ErrorCode.CANCELED_BY_OPERATOR: 409, ErrorCode.QUEUE_EXPIRED: 409, ErrorCode.QUEUE_LOST: 500,
    ErrorCode.BATCH_LOST: 500,
    ErrorCode.NOTHING_TO_SEND: 409, ErrorCode.NOT_SUBMITTED: 500, ErrorCode.SUBMISSION_LOST: 502,
    ErrorCode.NO_OPERATION_URL: 502, ErrorCode.OPERATION_FAILED: 502, ErrorCode.OPERATION_CANCELED: 409,
    ErrorCode.TIMED_OUT: 504,
}


def http_status(exc: ReimagerError) -> int:
    return HTTP_STATUS[exc.code]


@dataclass
class Outcome:
    """What an HTTP entry surface answers: a status, a JSON body and headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_error(cls, exc: ReimagerError) -> Outcome:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        return cls(http_status(exc), exc.body(), headers)


def status_url(base_url: str, operation_id: str) -> str:
    return f"{base_url}/api/reimage/{operation_id}"


def answer(result: Result, base_url: str) -> Outcome:
    if isinstance(result, Planned):
        passed = all(c["result"] == "passed" for c in result.checks)  # would the real request pass policy?
        doc = {"dryRun": True, "target": result.target, "passed": passed, "plan": result.plan, "checks": result.checks}
        if result.calls:
            doc["calls"] = result.calls
        return Outcome(200, responses.DryRun.model_validate(doc).body())
    return accepted_outcome(result, base_url)


def accepted_outcome(result: Accepted, base_url: str) -> Outcome:
    record = result.record
    url = status_url(base_url, record.operation_id)
    doc = {**record.view(), "statusUrl": url}
    if result.duplicate:
        doc["duplicate"] = True
    body = responses.Operation.model_validate(doc).body()  # the documented shape (docs/openapi.yaml), no more
    if record.terminal:
        return Outcome(200, body)
    return Outcome(202, body, {"Location": url, "Retry-After": str(result.retry_after)})


async def guarded(work: Any, trigger: Trigger | None = None) -> Outcome:
    """Any refusal becomes its ARM-shaped answer; anything unexpected a 500 that reveals nothing."""
    try:
        result: Outcome = await work
        return result
    except ReimagerError as exc:
        if trigger is not None:
            refused(exc, trigger)
        return Outcome.from_error(exc)
    except Exception:
        log.exception("unexpected error")
        return Outcome(500, {"error": {"code": "InternalError", "message": "An unexpected error occurred."}})


async def post_reimage(body: bytes, client: Any, base_url: str, headers: Mapping[str, str] | None = None) -> Outcome:
    """POST /api/reimage. `headers`: the request's, for the caller's verified identity (X-MS-CLIENT-PRINCIPAL,
    see shared/surfaces/identity.py)."""
    async def work() -> Outcome:
        principal = principal_of(headers or {})
        return answer(await submit_request(parse_json(body), client, principal=principal), base_url)

    return await guarded(work(), "http")


async def get_reimage(operation_id: str) -> Outcome:
    async def work() -> Outcome:
        ledger = runtime.get().ledger
        record = None
        if (operation_id.startswith("op-") or operation_id.startswith("b-")) and len(operation_id) <= 64:
            record = await ledger.get(operation_id)
        if record is None or record.status is OperationStatus.REFUSED:  # a refused POST made no operation
            raise ReimagerError(ErrorCode.OPERATION_NOT_FOUND, "No such operation.", target="operationId")
        view = record.view()
        if not record.terminal and record.batch_id not in (None, record.operation_id):
            # A request riding a batch: its progress is the batch's (one ARM operation, polled once).
            batch = await ledger.get(str(record.batch_id))
            if batch is not None and batch.status in (OperationStatus.RUNNING, OperationStatus.VERIFYING):
                view.update(status=batch.status, polls=batch.polls, armStatus=batch.arm_status)
        elif record.status == OperationStatus.QUEUED and record.canary is None:
            # Waiting in a scale set's queue: say so when the set's canary runs now (the rest waits for its verdict).
            target = await ledger.get_target(record.lease_key)
            if target.canary is not None and target.canary.outcome == "running" and target.lease_held(
                    runtime.get().now()) and target.lease_owner == target.canary.batch_id:
                view["canary"] = target.canary.doc("waiting")
        return Outcome(200, responses.Operation.model_validate(view).body())

    return await guarded(work())
