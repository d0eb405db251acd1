"""Write the JSON Schemas generated from the models into docs/. Tests fail when they are stale."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.domain.errors import ErrorResponse  # noqa: E402
from shared.domain.events import EventData, EventType, build_event, data_schema  # noqa: E402
from shared.domain.request import ReimageRequest  # noqa: E402
from shared.workflow.completion import REPLY_ATTEMPTS  # noqa: E402


def request_schema() -> dict[str, Any]:
    schema = ReimageRequest.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/reimager/reimager/docs/schemas/reimage-request.schema.json"
    return schema


_TARGET = ("/subscriptions/7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2910/resourceGroups/reimager-demo/providers/"
           "Microsoft.Compute/virtualMachineScaleSets/workers")
_T0 = "2026-01-01T00:00:00Z"


_EVIDENCE_URL = ("https://streimagerx.blob.core.windows.net/reimager-evidence/op-3f1c0a9e5b7d4c2e8f6a1b3c5d7e9f01/2/")
_EVIDENCE = {"mode": "bootdiagnostics", "status": "captured",
             "container": "https://streimagerx.blob.core.windows.net/reimager-evidence",
             "startedAt": "2026-01-01T00:00:00+00:00", "seconds": 0.84, "timedOut": False, "instances": {"2": {
                 "instanceView": {"status": "captured", "url": _EVIDENCE_URL + "instance-view.json"},
                 "serialLog": {"status": "captured", "url": _EVIDENCE_URL + "serial-console.log", "bytes": 48213,
                               "truncated": False}}}}


def _example(event_type: str, **data: Any) -> str:
    from datetime import datetime

    base = {"operationId": "op-3f1c0a9e5b7d4c2e8f6a1b3c5d7e9f01", "requestId": "chatops-4711",
            "correlationId": "incident-982", "target": _TARGET + "/virtualMachines/2", "instanceIds": ["2"],
            "trigger": "http", "requestedBy": "alice@contoso.com", "reason": "kernel panic loop"}
    event = build_event(event_type, EventData.model_validate({**base, **data}),  # type: ignore[arg-type]
                        time=datetime.fromisoformat("2026-01-01T00:03:10+00:00"), unique="docs-example")
    return json.dumps(event.to_dict(), indent=2)


def events_doc() -> str:
    schema = json.dumps(data_schema(), indent=2)
    accepted = _example(EventType.ACCEPTED, status="Accepted", submittedAt=_T0)
    completed = _example(EventType.COMPLETED, status="Succeeded", submittedAt=_T0, completedAt="2026-01-01T00:03:10Z",
                         durationSeconds=190.0, polls=7, batchId="b-4f0c2a9e7d3b4c1a8e6f5d4c3b2a1908",
                         health="Healthy", healthDetail={"2": "Healthy: running, provisioning succeeded, "
                                                         "application health: healthy"},
                         canary={"batchId": "b-9a1e0c2d4f6b8a0c2e4f6a8b0c2d4e6f", "instanceIds": ["7"],
                                 "role": "after", "outcome": "passed", "status": "Succeeded", "health": "Healthy",
                                 "validUntil": "2026-01-01T01:01:40+00:00"},
                         evidence=_EVIDENCE)
    queued = _example(EventType.QUEUED, status="Queued", queuePosition=3)
    awaiting = _example(EventType.AWAITING_APPROVAL, status="AwaitingApproval", instanceIds=["0", "1", "2", "3"],
                        error={"code": "ApprovalRequired", "message": "Waiting for a second person's approval: it "
                               "reimages every instance of the scale set (allInstances)."})
    suspended = _example(EventType.SUSPENDED, operationId=None, requestId=None, instanceIds=None, status="Suspended",
                         trigger="breaker", requestedBy=None, reason=None, correlationId=None,
                         suspension={"since": "2026-01-01T00:03:10+00:00", "reason": "11 of 20 instances were asked "
                                     "to be reimaged within 60 minutes, more than BREAKER_PERCENT 50%: a systemic "
                                     "failure that reimaging will not cure", "by": "breaker",
                                     "code": "BreakerPercent",
                                     "evidence": {"distinctInstancesRequested": 11, "capacity": 20,
                                                  "breakerPercent": 50, "windowMinutes": 60}})
    canary_failed = _example(
        EventType.SUSPENDED, operationId=None, requestId=None, instanceIds=None, status="Suspended", trigger="breaker",
        requestedBy=None, reason=None, correlationId=None,
        suspension={"since": "2026-01-01T00:03:10+00:00", "reason": "the canary b-9a1e0c2d4f6b8a0c2e4f6a8b0c2d4e6f "
                    "(instance 7) ended Succeeded but Unhealthy: reimaging the rest of the set would likely break it "
                    "the same way", "by": "canary", "code": "CanaryFailed",
                    "evidence": {"canary": "b-9a1e0c2d4f6b8a0c2e4f6a8b0c2d4e6f", "instanceIds": ["7"],
                                 "members": ["op-5d1b0e7c9a3f4b2d8e6c1a0f9b7d5e3c"], "status": "Succeeded",
                                 "health": "Unhealthy", "healthDetail": {"7": "Unhealthy: running, provisioning "
                                                                         "succeeded, application health: unhealthy"}}})
    failed = _example(EventType.COMPLETED, status="Failed", submittedAt=_T0, completedAt="2026-01-01T00:03:10Z",
                      durationSeconds=190.0, polls=7,
                      error={"code": "OperationPreempted", "message": "Operation execution has been preempted "
                             "by a more recent operation."})
    reply_failed = _example(EventType.REPLY_FAILED, status="Succeeded", submittedAt=_T0,
                            completedAt="2026-01-01T00:03:10Z", durationSeconds=190.0, polls=7, trigger="queue",
                            health="Healthy", reply={"queue": "patcher-replies", "status": "failed", "attempts": 5,
                                                     "error": "MessagingEntityNotFoundError: The messaging entity "
                                                     "'patcher-replies' could not be found.",
                                                     "at": "2026-01-01T00:08:10+00:00"})
    rejected = _example(EventType.REJECTED, operationId=None, status="Rejected", trigger="queue", instanceIds=None,
                        error={"code": "ScopeNotAllowed", "message": "The target is not under any scope in "
                               "ALLOWED_SCOPES; reimager acts only inside scopes it was explicitly given."})
    return f"""# reimager events

<!-- Generated by scripts/generate_schemas.py (`make schemas`); a test fails when it is stale. -->

Every event is a [CloudEvents 1.0](https://github.com/cloudevents/spec) structured-mode JSON
document, sent on the Service Bus topic `EVENTS_TOPIC` (default `reimage-events`) with content
type `application/cloudevents+json; charset=utf-8`. With no Service Bus namespace configured
(`ServiceBusConnection__fullyQualifiedNamespace` unset), events are appended as JSON lines to
`EVENTS_FILE` instead; devhost serves them at `GET /devhost/events`.

| attribute | value |
|---|---|
| `type` | `reimager.operation.accepted`, `.completed`, `.queued`, `.awaiting-approval`, `.reply-failed`; \
`reimager.request.rejected`; `reimager.target.suspended`, `.resumed` |
| `source` | `/reimager` |
| `subject` | the normalised ARM id of the target |
| `id` | a UUID derived from the operation id and the type: a re-sent event keeps its id |
| `time` | when the event happened |
| `data` | see the schema below |

Service Bus message properties:
- `MessageId` = the event `id` (duplicate detection drops a re-send);
- `CorrelationId` = the request's `correlationId`, else its `requestId`;
- `Subject` = the event `type`;
- application properties `status` and `target`.

A request that came from a queue message with `ReplyTo` also gets its completion (or rejection)
event on that queue, with `CorrelationId` set to the request message's `MessageId`. `ReplyTo` must
name a queue of reimager's own namespace (a name, or `sb://<namespace>/<name>`), never the requests
queue; otherwise the message is rejected (`InvalidRequest` on `replyTo`). The ReplyTo copy is sent
apart from the topic's: the topic's copy is sent once, whatever happens to the ReplyTo queue; the
ReplyTo copy is tried once at once and once per sweep, {REPLY_ATTEMPTS} times in all, then recorded
failed (the status document's `reply`, a log line, and a `reimager.operation.reply-failed` event).

## Guarantees

- Every accepted request ends in **exactly one** terminal event: a `reimager.operation.completed`
  with status `Succeeded`, `Failed`, `Canceled` or `TimedOut`.
- A queued request refused before it was accepted (invalid, forbidden, not found) gets a
  `reimager.request.rejected` event with status `Rejected` and the error, so nothing is lost.
- `reimager.operation.accepted` is informational: sent once the reimage was submitted to ARM (or, for a
  request that rides a reimage already under way for its instances, when it joins it).
  So are `reimager.operation.queued` (waiting for its scale set's batch or a budget) and
  `reimager.operation.awaiting-approval` (waiting for a second person). A request held by a freeze
  carries `freeze` (source, window, start, until) on every event; one held with others as one
  decision (an alert naming more than `MAX_TARGETS_PER_ALERT` machines) carries `approvalGroup`.
- Who asked, approved or canceled is recorded with how it was verified and, when verified, the
  identity behind the name (`requestedByIdentity`, `approvedByIdentity`, `cancelledByIdentity`).
- A request that rode a batch (one ARM POST for many requests) still gets its own completion
  event, naming the `batchId` and its own instances' `health` / `healthDetail`.
- `reimager.target.suspended` is sent once per suspension, with the evidence; waiting requests
  then end `Canceled` / `TargetSuspended`. `reimager.target.resumed` when an operator lifts it.
- **Canary first**: a storm's first batch on a scale set goes alone (`CANARY_INSTANCES`). Every request
  in, after, or ended by that canary carries `canary` (its batch, instances, `role`: `canary`, `after`
  or `waited`, its `outcome` and health). A canary that ends Failed, TimedOut, Canceled or Unhealthy
  suspends the set: one `reimager.target.suspended` with `suspension.code: CanaryFailed` and the canary's
  health detail, then one `Canceled` / `TargetSuspended` completion per request that waited.
- **Evidence before the wipe**: a completion event carries `evidence` when any was asked for: per
  instance the serial console log, the instance view (links to their blobs in `reimager-evidence`)
  and, with `snapshot`, the OS disk snapshot, each `captured`, `skipped` or `failed` with why. The
  links carry no SAS.
- No event ever carries `adminPassword` or `customData`.

## reimager.operation.accepted

```json
{accepted}
```

## reimager.operation.completed

Succeeded:

```json
{completed}
```

Failed, with ARM's error:

```json
{failed}
```

`error.code` values reimager itself sets: `SubmissionLost` (claimed, never submitted),
`TimedOut` (`OPERATION_TIMEOUT_MINUTES` passed), `UntrustedOperationUrl` (ARM pointed the poll
at another host), `NoOperationUrl`, `ComputeUnavailable` / `ComputeError` /
`SubmissionUncertain` (the submission failed). Otherwise the code is ARM's own.

`error.code` values of `Canceled`: `CanceledByOperator`, `ApprovalRejected`, `ApprovalTimedOut`,
`QueueExpired`, `TargetSuspended` (with `canary.role: waited` when a failed canary suspended the set),
`CooldownActive` (an instance was reimaged while it waited).

## reimager.request.rejected

```json
{rejected}
```

## reimager.operation.reply-failed

The completion event reached the topic, and its ReplyTo copy could not be delivered after
{REPLY_ATTEMPTS} attempts; `reply` says where, how often, and the last error.

```json
{reply_failed}
```

## reimager.operation.queued

```json
{queued}
```

## reimager.operation.awaiting-approval

```json
{awaiting}
```

## reimager.target.suspended

`reimager.target.resumed` has the same shape, with `status: Resumed`, `trigger: operator` and
`resumedAt` / `resumedBy` / `resumeReason` added to `suspension`.

```json
{suspended}
```

A canary that did not come back healthy (`by: canary`, `code: CanaryFailed`; the breaker's own are
`BreakerPercent` and `BreakerFailures`):

```json
{canary_failed}
```

## JSON Schema of `data`

```json
{schema}
```
"""


# ---- docs/openapi.yaml: the HTTP API, from the models and one route table -----------------------
# To document a new route, add one Route to ROUTES: its request model (or a raw schema's name in
# RAW_SCHEMAS), its responses (a model, a tuple of models for oneOf, or None for no body) and the
# error codes it can answer. Path parameters come from the path itself; query parameters are listed.
# Then `make schemas`. The models live in shared/surfaces/responses.py (responses) and shared/models.py
# (requests); shared/surfaces/http.py must build the body through the same model, so the two cannot drift.

Body = type[BaseModel] | tuple[type[BaseModel], ...] | None


@dataclass(frozen=True)
class Response:
    description: str
    body: Body = None
    headers: tuple[str, ...] = ()  # names in HEADERS


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    operation_id: str
    summary: str
    responses: dict[int, Response]
    errors: tuple[int, ...] = ()
    request: type[BaseModel] | str | None = None
    query: tuple[Query, ...] = ()
    description: str | None = None


ERRORS = {
    400: "InvalidRequest: the body is not valid (also: not a JSON object, nested deeper than 64, a key repeated in "
         "one object, NaN); details name each field",
    401: "No valid function key (`code` query parameter or `x-functions-key` header)",
    403: "ScopeNotAllowed (outside ALLOWED_SCOPES), TargetProtected (protection tag), InstanceProtected (a scale "
         "set instance protected from scale set actions) or TargetLocked (a ReadOnly ARM lock); approvals: "
         "SelfApprovalNotAllowed, ApproverNotVerified",
    404: "TargetNotFound / OperationNotFound",
    409: "OperationInProgress (a request carrying secrets for a busy target), TargetSuspended, RequestIdConflict, "
         "AutomaticRepairsActive (the scale set's automatic instance repairs are running); "
         "operators: NotCancellable (already sent to ARM, which cannot stop a reimage), NotAwaitingApproval, "
         "NotSuspended",
    413: "PayloadTooLarge (over 256 KB)",
    429: "CooldownActive, FleetBudgetExhausted or GlobalBudgetExhausted (a request carrying secrets cannot wait); "
         "see Retry-After",
    500: "InternalError (never for bad input)",
    502: "ComputeError (ARM refused: its code and message are in details), UntrustedOperationUrl, "
         "SubmissionUncertain",
    503: "ComputeUnavailable (ARM throttled or down) or DurableUnavailable; retry after Retry-After",
}
HEADERS = {
    "Location": {"schema": {"type": "string"}, "description": "The status URL"},
    "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"},
}
# Request formats reimager does not own (Azure's), described as they are accepted.
RAW_SCHEMAS: dict[str, dict[str, Any]] = {
    "CommonAlert": {
        "type": "object", "required": ["schemaId", "data"], "description": "Azure Monitor common alert schema",
        "properties": {"schemaId": {"type": "string", "enum": ["azureMonitorCommonAlertSchema"]},
                       "data": {"type": "object", "required": ["essentials"], "properties": {
                           "essentials": {"type": "object", "required": ["alertId", "monitorCondition"],
                                          "properties": {"alertId": {"type": "string"},
                                                         "monitorCondition": {"type": "string"},
                                                         "alertTargetIDs": {"type": "array",
                                                                            "items": {"type": "string"}}}},
                           "customProperties": {"type": ["object", "null"]}}}}},
}


def routes() -> list[Route]:
    from shared.domain.request import ReimageRequest
    from shared.surfaces.responses import ActionRequest, AlertResult, DryRun, Operation, ResumeRequest, TargetState

    return [
        Route("post", "/api/reimage", "submitReimage", "Request a reimage (or a dry run)", request=ReimageRequest,
              responses={
                  202: Response("Accepted: submitted to ARM (status Accepted), waiting for its scale set's batch "
                                "(Queued), or for a second person (AwaitingApproval); or a duplicate of an "
                                "operation still running", Operation, headers=("Location", "Retry-After")),
                  200: Response("A dry run's plan, or a duplicate of a finished operation", (Operation, DryRun))},
              errors=(400, 401, 403, 404, 409, 413, 429, 500, 502, 503)),
        Route("get", "/api/reimage/{operationId}", "getReimage", "An operation's status",
              responses={200: Response("The operation", Operation)}, errors=(401, 404, 500)),
        Route("post", "/api/alerts", "postAlert", "Azure Monitor action group webhook (common alert schema)",
              request="CommonAlert",
              responses={202: Response("At least one target was accepted", AlertResult),
                         200: Response("Nothing acted: every target ignored or refused", AlertResult)},
              errors=(400, 401, 413, 500, 503)),
        Route("post", "/api/reimage/{operationId}/cancel", "cancelReimage",
              "End a Queued or AwaitingApproval operation Canceled (one event)", request=ActionRequest,
              responses={200: Response("Canceled", Operation)}, errors=(400, 401, 404, 409, 500)),
        Route("post", "/api/reimage/{operationId}/approve", "approveReimage",
              "A second person's yes: the operation goes on to admission. For a member of an approval group "
              "(approvalGroup), or the group's own id (g-...), every member of the group", request=ActionRequest,
              responses={202: Response("Approved: submitted, riding a batch or queued", Operation),
                         200: Response("Approved, but it could not be sent: it ended (see error)", Operation)},
              errors=(400, 401, 403, 404, 409, 500)),
        Route("post", "/api/reimage/{operationId}/reject", "rejectReimage",
              "A second person's no: the operation ends Canceled (one event). For a member of an approval group, "
              "or the group's own id (g-...), every member still waiting (one event each)", request=ActionRequest,
              responses={200: Response("Rejected", Operation)}, errors=(400, 401, 404, 409, 500)),
        Route("get", "/api/targets", "getTarget", "A target's lease, batch, queue, cooldowns, budget and suspension",
              query=(Query("id", "ARM id of the VM or scale set", {"type": "string"}),),
              responses={200: Response("The target", TargetState)}, errors=(400, 401, 403, 500)),
        Route("post", "/api/targets/resume", "resumeTarget", "Lift a suspension (one reimager.target.resumed event)",
              request=ResumeRequest, responses={200: Response("Resumed", TargetState)},
              errors=(400, 401, 403, 409, 500)),
    ]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(body: Body) -> dict[str, Any]:
    if body is None:
        return {}
    schema = _ref(body.__name__) if not isinstance(body, tuple) else {"oneOf": [_ref(m.__name__) for m in body]}
    return {"content": {"application/json": {"schema": schema}}}


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary}
    if route.description:
        op["description"] = route.description
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in re.findall(r"{(\w+)}", route.path)]
    params += [{"name": q.name, "in": "query", "required": False, "description": q.description, "schema": q.schema}
               for q in route.query]
    if params:
        op["parameters"] = params
    if route.request is not None:
        name = route.request if isinstance(route.request, str) else route.request.__name__
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(name)}}}
    responses: dict[str, Any] = {}
    for code, response in route.responses.items():
        responses[str(code)] = {"description": response.description, **_content(response.body)}
        if response.headers:
            responses[str(code)]["headers"] = {h: HEADERS[h] for h in response.headers}
    for code in route.errors:
        responses[str(code)] = {"description": ERRORS[code], **_content(ErrorResponse)}
    op["responses"] = responses
    return op


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(_ref("ErrorResponse"), ERRORS[c]) for c in codes}


def operators_openapi() -> tuple[dict[str, Any], dict[str, Any]]:
    """History (GET /api/reimage) and the chat routes: their paths, and the schemas only they use."""
    from shared.workflow.history import MAX_TOP, STATUSES

    def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}

    bad_params = _json(_ref("ErrorResponse"), "InvalidRequest: a parameter is not valid; error.target names it")
    unsigned = _json(_ref("ErrorResponse"), "SignatureInvalid: the signature is missing, wrong or more than five "
                     "minutes old, or the platform's secret is not configured; nothing ran")
    listing = {"type": "object", "required": ["value"], "description": "ARM's list convention: follow nextLink "
               "until it is absent; a page may hold fewer than top items",
               "properties": {"value": {"type": "array", "items": _ref("Operation")},
                              "nextLink": {"type": "string", "description": "The next page: this query with a "
                                           "continuationToken (without the function key: send it again)"}}}
    slack_command = {"type": "object", "description": "Slack slash command payload (form-encoded)",
                     "properties": {k: {"type": "string"} for k in (
                         "token", "team_id", "team_domain", "channel_id", "channel_name", "user_id", "user_name",
                         "command", "text", "response_url", "trigger_id", "api_app_id")}}
    slack_message = {"type": "object", "required": ["response_type", "text"],
                     "properties": {"response_type": {"type": "string", "enum": ["ephemeral", "in_channel"]},
                                    "text": {"type": "string"},
                                    "blocks": {"type": "array", "items": {"type": "object"}}}}
    teams_activity = {"type": "object", "description": "Teams outgoing webhook: a Bot Framework message activity",
                      "properties": {"type": {"type": "string"}, "id": {"type": "string"},
                                     "timestamp": {"type": "string", "description": "Signed with the body; "
                                                   "refused when more than five minutes from now"},
                                     "text": {"type": "string"},
                                     "from": {"type": "object", "properties": {
                                         "id": {"type": "string"}, "name": {"type": "string"},
                                         "aadObjectId": {"type": "string"}}}}}
    teams_message = {"type": "object", "required": ["type", "text"],
                     "properties": {"type": {"const": "message"}, "text": {"type": "string"}}}
    chat_errors = {"400": _json(_ref("ErrorResponse"), "InvalidRequest: a signed body that is not the platform's "
                                "format"), "401": unsigned, **_errors(413, 500)}
    paths = {
        "/api/reimage": {"get": {
            "operationId": "listReimages", "summary": "Operation history, newest first",
            "parameters": [
                query("target", {"type": "string"}, "ARM id of a VM, scale set or scale set instance (normalised "
                      "like a request's target); an instance lists its scale set's operations that name it"),
                query("status", {"type": "string", "enum": list(STATUSES)}, "Only operations in this status "
                      "(case-insensitive)"),
                query("since", {"type": "string", "format": "date-time"}, "Only operations created at or after "
                      "this ISO 8601 time (no offset: UTC)"),
                query("top", {"type": "integer", "minimum": 1, "maximum": MAX_TOP, "default": 50},
                      "Page size"),
                query("continuationToken", {"type": "string"}, "From a nextLink; bound to the same query")],
            "responses": {"200": _json(_ref("OperationList"), "One page of operations"), "400": bad_params,
                          **_errors(401, 500)}}},
        "/api/chatops/slack": {"post": {
            "operationId": "slackCommand", "summary": "Slack slash command (signed: X-Slack-Signature v0)",
            "parameters": [
                {"name": "X-Slack-Signature", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "v0=hex(HMAC-SHA256(SLACK_SIGNING_SECRET, 'v0:' + timestamp + ':' + body))"},
                {"name": "X-Slack-Request-Timestamp", "in": "header", "required": False,
                 "schema": {"type": "string"}, "description": "Unix time; refused when more than 5 minutes off"}],
            "requestBody": {"required": True, "content": {
                "application/x-www-form-urlencoded": {"schema": _ref("SlackCommand")}}},
            "responses": {"200": _json(_ref("SlackMessage"), "The reply (errors included, as text)"),
                          **chat_errors}}},
        "/api/chatops/teams": {"post": {
            "operationId": "teamsCommand", "summary": "Teams outgoing webhook (signed: Authorization: HMAC "
                                                      "base64(HMAC-SHA256(base64-decoded TEAMS_WEBHOOK_SECRET, "
                                                      "body)))",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TeamsActivity")}}},
            "responses": {"200": _json(_ref("TeamsMessage"), "The reply: a message activity"), **chat_errors}}},
    }
    schemas = {"OperationList": listing, "SlackCommand": slack_command, "SlackMessage": slack_message,
               "TeamsActivity": teams_activity, "TeamsMessage": teams_message}
    return paths, schemas


def openapi() -> dict[str, Any]:
    from pydantic.json_schema import models_json_schema

    table = routes()
    requests = {r.request for r in table if isinstance(r.request, type)}
    bodies: set[type[BaseModel]] = {ErrorResponse}
    for route in table:
        for response in route.responses.values():
            bodies |= set(response.body) if isinstance(response.body, tuple) else (
                {response.body} if response.body is not None else set())
    models = [(m, "validation") for m in sorted(requests, key=lambda m: m.__name__)]
    models += [(m, "serialization") for m in sorted(bodies, key=lambda m: m.__name__)]
    _, schemas = models_json_schema(models, by_alias=True,  # type: ignore[arg-type]
                                    ref_template="#/components/schemas/{model}")
    components = dict(schemas["$defs"])
    # ReimagerError.body() adds the operation a refusal belongs to, next to `error`.
    components["ErrorResponse"]["properties"]["operationId"] = {
        "type": "string", "description": "The operation the error belongs to"}
    components.update(RAW_SCHEMAS)
    paths: dict[str, Any] = {}
    for route in table:
        paths.setdefault(route.path, {})[route.method] = _operation(route)
    extra_paths, extra_schemas = operators_openapi()
    for path, methods in extra_paths.items():
        paths.setdefault(path, {}).update(methods)
    components.update(extra_schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "reimager", "version": "0.1.0",
                 "description": "Reimage Azure VMs and scale set instances safely. Generated by "
                                "scripts/generate_schemas.py from the models; a test fails when it is stale."},
        "security": [{"functionKey": []}, {"functionKeyQuery": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
                                "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"}},
            "schemas": dict(sorted(components.items())),
        },
    }


def _yaml(doc: dict[str, Any]) -> str:
    import yaml

    text = json.dumps(doc).replace("#/$defs/", "#/components/schemas/")
    return "# Generated by scripts/generate_schemas.py (`make schemas`); a test fails when it is stale.\n" + \
        yaml.safe_dump(json.loads(text), sort_keys=False, width=110, allow_unicode=True)


def rendered() -> dict[Path, str]:
    """Every generated file and its exact content."""
    return {
        ROOT / "docs/schemas/reimage-request.schema.json": json.dumps(request_schema(), indent=2) + "\n",
        ROOT / "docs/schemas/event-data.schema.json": json.dumps(data_schema(), indent=2) + "\n",
        ROOT / "docs/events.md": events_doc(),
        ROOT / "docs/openapi.yaml": _yaml(openapi()),
    }


def main() -> None:
    for path, text in rendered().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
