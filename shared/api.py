"""The HTTP surface: JSON bytes in, an Outcome (status, body, headers) out. Handlers only translate.

This is the one place that turns the core's typed results and errors into HTTP answers, and
the one place that builds status URLs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared import responses, runtime, telemetry
from shared.errors import ReimagerError
from shared.events import Trigger
from shared.identity import Principal, from_headers
from shared.intake import Accepted, Intake, Planned, Result
from shared.models import parse_request

log = logging.getLogger("reimager.api")
MAX_BODY_BYTES = 256 * 1024


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


MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are unique: with a repeated key, which value counts would be a guess."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number")


def _json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects, found without recursion (brackets in strings do not count)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(_DEPTH_STEP[c] for c in brackets), default=0)


def parse_json(body: bytes) -> Any:
    """The body as JSON, refusing what json.loads would accept but should not reach the app.

    Nesting is bounded before parsing, so neither json.loads nor pydantic ever recurses deeply (a
    RecursionError is a 500); NaN/Infinity, repeated keys and lone surrogates are refused.
    """
    if len(body) > MAX_BODY_BYTES:
        raise ReimagerError(413, "PayloadTooLarge", f"The body is larger than {MAX_BODY_BYTES} bytes.")
    if not body:
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ReimagerError(400, "InvalidRequest", "The body is not valid UTF-8 JSON.") from None
    if _json_depth(text) > MAX_JSON_DEPTH:
        raise ReimagerError(400, "InvalidRequest", f"The body is nested deeper than {MAX_JSON_DEPTH} levels.")
    try:
        doc = json.loads(text, object_pairs_hook=_object, parse_constant=_refuse_constant)
        json.dumps(doc, ensure_ascii=False).encode("utf-8")  # a lone surrogate ("\ud800") cannot be UTF-8
    except _DuplicateKey as exc:
        shown = exc.key if len(exc.key) <= 64 else exc.key[:61] + "..."
        raise ReimagerError(400, "InvalidRequest", f"The body has the key {shown!r} more than once in one "
                            "object.") from None
    except json.JSONDecodeError as exc:
        raise ReimagerError(400, "InvalidRequest", f"The body is not valid JSON: {exc.msg} at line {exc.lineno} "
                            f"column {exc.colno}.") from None
    except _NotJson as exc:
        raise ReimagerError(400, "InvalidRequest", f"The body is not valid JSON: {exc}.") from None
    except UnicodeEncodeError:
        raise ReimagerError(400, "InvalidRequest", "The body is not valid JSON text: a \\u escape names a lone "
                            "surrogate, which is not a character.") from None
    except ValueError:  # for example an integer with thousands of digits
        raise ReimagerError(400, "InvalidRequest", "The body is not valid JSON: a value in it is out of range.") \
            from None
    return doc


async def guarded(work: Any, trigger: Trigger | None = None) -> Outcome:
    """Any refusal becomes its ARM-shaped answer; anything unexpected a 500 that reveals nothing."""
    try:
        result: Outcome = await work
        return result
    except ReimagerError as exc:
        if trigger is not None:
            telemetry.refused(exc, trigger)
        return Outcome.from_error(exc)
    except Exception:
        log.exception("unexpected error")
        return Outcome(500, {"error": {"code": "InternalError", "message": "An unexpected error occurred."}})


async def submit_request(data: Any, client: Any, *, trigger: Trigger = "http", default_key: str | None = None,
                         reply_to: str | None = None, reply_correlation_id: str | None = None,
                         principal: Principal | None = None) -> Result:
    rt = runtime.get()
    # One span per request; intake binds the operation id to it once the key is known.
    with telemetry.operation_span(trigger=trigger, name=telemetry.SPAN_INTAKE):
        try:
            request = parse_request(data, default_subscription_id=rt.settings.default_subscription_id,
                                    max_instances=rt.settings.max_instances_per_request)
            telemetry.bind(target=request.resolved_target.id)
            return await Intake(rt, client).submit(request, trigger=trigger, default_key=default_key,
                                                   reply_to=reply_to, reply_correlation_id=reply_correlation_id,
                                                   principal=principal)
        except ReimagerError as exc:
            if trigger != "queue":  # a refused queue message publishes a Rejected event, recorded with it
                telemetry.refused(exc, trigger)
            raise


async def post_reimage(body: bytes, client: Any, base_url: str, headers: Mapping[str, str] | None = None) -> Outcome:
    """`headers`: the request's, for the caller's verified identity (X-MS-CLIENT-PRINCIPAL, see shared.identity)."""
    async def work() -> Outcome:
        principal = principal_of(headers or {})
        return answer(await submit_request(parse_json(body), client, principal=principal), base_url)

    return await guarded(work(), "http")


def principal_of(headers: Mapping[str, str]) -> Principal | None:
    """The verified caller, when App Service authentication vouches for one (see shared/identity.py)."""
    return from_headers(headers, easy_auth_enabled=runtime.get().settings.easy_auth_enabled)


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


async def post_alert(body: bytes, client: Any, base_url: str) -> Outcome:
    """Azure Monitor action group webhook: 202 when anything acted, 200 when all was ignored.

    A transient failure on any target answers 503, so the action group retries; targets that were
    already accepted are found again by their key and not submitted twice.
    """
    from shared.alerts import parse_alert

    async def one(target: Any) -> tuple[Any, Result | ReimagerError]:
        try:
            return target, await submit_request(target.request, client, trigger="alert",
                                                default_key=target.idempotency_key)
        except ReimagerError as exc:
            return target, exc

    async def work() -> Outcome:
        parsed = parse_alert(parse_json(body))
        results = await asyncio.gather(*(one(t) for t in parsed.accepted))
        accepted: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        transient: ReimagerError | None = None
        for target, result in results:
            if isinstance(result, ReimagerError):
                if result.transient and "operationId" not in result.extra:
                    transient = result
                entry: dict[str, Any] = {"target": target.target.id, "error": result.body()["error"]}
                if "operationId" in result.extra:
                    entry["operationId"] = result.extra["operationId"]
                refused.append(entry)
            else:
                out = answer(result, base_url).body
                shown = ("operationId", "status", "statusUrl", "dryRun", "passed", "plan", "checks", "duplicate")
                accepted.append({"target": target.target.id, **{k: out[k] for k in shown if k in out}})
        if transient is not None:
            raise transient
        body_out = responses.AlertResult.model_validate(
            {"alertId": parsed.alert_id, "accepted": accepted, "refused": refused, "ignored": parsed.ignored}).body()
        return Outcome(202 if accepted else 200, body_out)

    return await guarded(work(), "alert")
