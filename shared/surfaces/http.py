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
from shared.adapters.telemetry import SPAN_INTAKE, bind, operation_span, refused
from shared.domain.errors import ReimagerError
from shared.domain.events import Trigger
from shared.domain.principal import Principal
from shared.domain.request import parse_request
from shared.surfaces import responses
from shared.surfaces.identity import principal_of
from shared.surfaces.json_body import parse_json
from shared.workflow.intake import Accepted, Intake, Planned, Result

log = logging.getLogger("reimager.api")


@dataclass
class Outcome:
    """What an HTTP entry surface answers: a status, a JSON body and headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_error(cls, exc: ReimagerError) -> Outcome:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        return cls(exc.status, exc.body(), headers)


def status_url(base_url: str, operation_id: str) -> str:
    return f"{base_url}/api/reimage/{operation_id}"


def answer(result: Result, base_url: str) -> Outcome:
    if isinstance(result, Planned):
        passed = all(c["result"] == "passed" for c in result.checks)  # would the real request pass policy?
        return Outcome(200, responses.DryRun.model_validate(
            {"dryRun": True, "target": result.target, "passed": passed, "plan": result.plan,
             "checks": result.checks}).body())
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


async def submit_request(data: Any, client: Any, *, trigger: Trigger = "http", default_key: str | None = None,
                         reply_to: str | None = None, reply_correlation_id: str | None = None,
                         principal: Principal | None = None) -> Result:
    rt = runtime.get()
    # One span per request; intake binds the operation id to it once the key is known.
    with operation_span(trigger=trigger, name=SPAN_INTAKE):
        try:
            request = parse_request(data, default_subscription_id=rt.settings.default_subscription_id,
                                    max_instances=rt.settings.max_instances_per_request)
            bind(target=request.resolved_target.id)
            return await Intake(rt, client).submit(request, trigger=trigger, default_key=default_key,
                                                   reply_to=reply_to, reply_correlation_id=reply_correlation_id,
                                                   principal=principal)
        except ReimagerError as exc:
            if trigger != "queue":  # a refused queue message publishes a Rejected event, recorded with it
                refused(exc, trigger)
            raise


async def post_reimage(body: bytes, client: Any, base_url: str, headers: Mapping[str, str] | None = None) -> Outcome:
    """`headers`: the request's, for the caller's verified identity (X-MS-CLIENT-PRINCIPAL, see shared.identity)."""
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
        if record is None:
            raise ReimagerError(404, "OperationNotFound", "No such operation.", target="operationId")
        view = record.view()
        if not record.terminal and record.batch_id not in (None, record.operation_id):
            # A request riding a batch: its progress is the batch's (one ARM operation, polled once).
            batch = await ledger.get(str(record.batch_id))
            if batch is not None and not batch.terminal and batch.status in ("Running", "Verifying"):
                view.update(status=batch.status, polls=batch.polls, armStatus=batch.arm_status)
        return Outcome(200, responses.Operation.model_validate(view).body())

    return await guarded(work())
