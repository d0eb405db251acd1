"""Telemetry: OpenTelemetry to Application Insights, and the one list of names reimager emits.

`configure(settings)` turns on the Azure Monitor OpenTelemetry distro only when
APPLICATIONINSIGHTS_CONNECTION_STRING is set, and imports it only then (it costs hundreds of
milliseconds of cold start, and local runs and tests do without it). `shared.runtime.get()`
calls it once per process, on first use rather than at import.

Where the spans come from:
- `shared.surfaces.requests.submit_request` (every HTTP, alert, queue and chat request) runs inside
  `operation_span(name=SPAN_INTAKE, trigger=..., target=...)`; intake `bind`s the operation id as
  soon as it knows it, so the preflight GET and the reimage POST carry it too.
- `handlers.tracing.activity_span` wraps the durable activities (handlers/monitor.py): the poll's ARM GET carries
  the operation, whose target and trigger are read from the ledger (only when tracing is on).
- Inside any of them every span started (the ARM dependency spans that azure-core's
  DistributedTracingPolicy makes included) and every log record emitted carries
  `reimager.operation_id`, `reimager.target` and `reimager.trigger`. ARM's `x-ms-request-id`
  lands on each ARM dependency span as `az.service_request_id` (azure-core sets it; the distro
  routes azure-core tracing to OpenTelemetry).
- The trace continues across the durable hop: the durable client sends the current
  `traceparent` with `start_new`, the extension (distributed tracing V2, host.json) carries it
  to the activities, and the worker attaches it (PYTHON_ENABLE_OPENTELEMETRY); devhost does the same.

Custom events: every CloudEvent the app publishes is also recorded as a custom event of the
same name (`TrackedPublisher`, installed by the Runtime), and HTTP/alert refusals, which publish
no CloudEvent, as `reimager.request.rejected` (`refused`). Names and attribute keys must come
from the lists below: infra/app/workbook.json queries only those, and
tests/unit/test_telemetry_workbook.py checks that it does and that the app emits them.

Nothing here may carry a secret: the attribute keys are a closed list of non-secret facts,
and azure-core records no request bodies (so never an adminPassword or customData).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.adapters.credentials import in_azure
from shared.domain.events import EventType
from shared.domain.status import EventStatus

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LogRecordProcessor
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import Span

    from shared.domain.events import CloudEvent, Publisher
    from shared.settings import Settings


# Attributes (customDimensions keys in Application Insights).
OPERATION_ID = "reimager.operation_id"
TARGET = "reimager.target"
TRIGGER = "reimager.trigger"
STATUS = "reimager.status"
ERROR_CODE = "reimager.error_code"
HEALTH = "reimager.health"
DURATION_SECONDS = "reimager.duration_seconds"
POLLS = "reimager.polls"
INSTANCE_COUNT = "reimager.instance_count"
BATCH_ID = "reimager.batch_id"
BATCH_SIZE = "reimager.batch_size"
# A queued request's place in its target's queue when it was queued (1 = next): the depth then.
QUEUE_POSITION = "reimager.queue_position"
SUSPENSION_REASON = "reimager.suspension_reason"
# Set by azure-core on every ARM dependency span, from the response's x-ms-request-id.
ARM_REQUEST_ID = "az.service_request_id"

OPERATION_ATTRIBUTES = (OPERATION_ID, TARGET, TRIGGER)
ATTRIBUTES = frozenset({*OPERATION_ATTRIBUTES, STATUS, ERROR_CODE, HEALTH, DURATION_SECONDS, POLLS,
                        INSTANCE_COUNT, BATCH_ID, BATCH_SIZE, QUEUE_POSITION, SUSPENSION_REASON, ARM_REQUEST_ID})

# Custom events (customEvents.name): every CloudEvents type (shared/domain/events.py EventType; a refusal from any
# entry surface is `reimager.request.rejected` with its error code), and one of telemetry's own:
EVENT_BATCH_SUBMITTED = "reimager.batch.submitted"  # one ARM reimage POST for a batch
EVENTS = frozenset({*EventType, EVENT_BATCH_SUBMITTED})

# Span names reimager starts itself (azure-core names the ARM dependency spans after the method).
SPAN_OPERATION = "reimager.operation"  # a step of an operation, when no more specific name fits
SPAN_INTAKE = "reimager.intake"  # one request from a trigger: preflight, policy, claim, admit, POST
SPAN_ACTIVITY = "reimager.activity"  # one durable activity run (its function name is the span's `name` suffix)

# Where the telemetry lands in Application Insights, and the standard columns queries may use.
TABLES: Mapping[str, frozenset[str]] = {
    "customEvents": frozenset({"timestamp", "name", "customDimensions", "operation_Id", "itemCount"}),
    "dependencies": frozenset({"timestamp", "name", "target", "type", "resultCode", "success", "duration",
                               "customDimensions", "operation_Id", "itemCount"}),
    "requests": frozenset({"timestamp", "name", "resultCode", "success", "duration", "customDimensions",
                           "operation_Id", "itemCount"}),
    "traces": frozenset({"timestamp", "message", "severityLevel", "customDimensions", "operation_Id",
                         "itemCount"}),
}

# The distro turns a log record carrying this attribute into a custom event of that name.
CUSTOM_EVENT_NAME = "microsoft.custom_event.name"
# Only reimager's own loggers are exported; the Functions host reports its own telemetry.
LOGGER_NAME = "reimager"

_events_log = logging.getLogger("reimager.events")
_events_log.setLevel(logging.INFO)  # the root logger's WARNING would drop every event
_configured = False


@dataclass
class _Scope:
    """The operation attributes of one `operation_span`, and its span (for `bind`)."""

    attributes: dict[str, str]
    span: Any = None


_current: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("reimager_operation", default=None)


def operation_attributes(operation_id: str | None, target: str | None, trigger: str | None) -> dict[str, str]:
    """The attributes that tie a span or log record to one reimager operation (unknown ones left out)."""
    values = {OPERATION_ID: operation_id, TARGET: target, TRIGGER: trigger}
    return {key: value for key, value in values.items() if value}


@contextlib.contextmanager
def operation_span(operation_id: str | None = None, target: str | None = None, trigger: str | None = None,
                   name: str = SPAN_OPERATION) -> Iterator[Span]:
    """A span for one step of an operation; everything recorded inside carries its attributes.

    Works in sync and async code alike (the attributes live in a ContextVar, which each asyncio
    task copies). Attributes not known yet can be added later with `bind`. Without a configured
    tracer provider the span is OpenTelemetry's no-op span (the API is imported by the durable SDK
    anyway, so this costs no cold start).
    """
    from opentelemetry import trace

    scope = _Scope(operation_attributes(operation_id, target, trigger))
    token = _current.set(scope)
    try:
        tracer = trace.get_tracer("reimager")
        with tracer.start_as_current_span(name, attributes=dict(scope.attributes)) as span:
            scope.span = span
            yield span
    finally:
        _current.reset(token)


def bind(*, operation_id: str | None = None, target: str | None = None, trigger: str | None = None) -> None:
    """Add attributes learnt inside an `operation_span` (intake learns the operation id from the key)."""
    scope = _current.get()
    if scope is None:
        return
    new = operation_attributes(operation_id, target, trigger)
    scope.attributes.update(new)
    if scope.span is not None and new:
        scope.span.set_attributes(new)


def tracing() -> bool:
    """True when spans go somewhere: telemetry is configured, or a tracer provider was set (tests, devhost)."""
    if _configured:
        return True
    from opentelemetry import trace

    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def track_event(name: str, **attributes: str | int | float | bool | None) -> None:
    """Record one custom event. Keys are the names above without the `reimager.` prefix.

    `track_event(EventType.COMPLETED, status="Succeeded", duration_seconds=312.5)`. None values are
    left out. Unknown names raise ValueError: a name the workbook does not know is a bug.
    """
    if name not in EVENTS:
        raise ValueError(f"unknown telemetry event {name!r}; add it to shared/adapters/telemetry.py EVENTS")
    extra: dict[str, object] = {CUSTOM_EVENT_NAME: name}
    for key, value in attributes.items():
        attribute = f"reimager.{key}"
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown telemetry attribute {attribute!r}; add it to shared/adapters/telemetry.py")
        if value is not None:
            extra[attribute] = value
    scope = _current.get()
    operation = scope.attributes if scope is not None else {}
    _events_log.info(name, extra={**operation, **extra})


def event_attributes(event: CloudEvent) -> dict[str, str | int | float | None]:
    """The custom-event attributes of one CloudEvent: its facts, never free text (reason, requestedBy)."""
    data = event.data
    error = data.error.code if data.error is not None else None
    suspended = event.type in (EventType.SUSPENDED, EventType.RESUMED)
    return {
        "operation_id": data.operation_id, "target": data.target, "trigger": data.trigger, "status": data.status,
        "error_code": None if suspended else error, "suspension_reason": error if suspended else None,
        "health": data.health, "duration_seconds": data.duration_seconds,
        "polls": data.polls if event.type == EventType.COMPLETED else None,
        "instance_count": len(data.instance_ids) if data.instance_ids is not None else None,
        "batch_id": data.batch_id,
        "queue_position": data.queue_position,
    }


class TrackedPublisher:
    """A Publisher that also records each event it published as a custom event of the same type."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner

    async def reply(self, event: CloudEvent, queue: str, correlation_id: str | None) -> None:
        await self.inner.reply(event, queue, correlation_id)

    async def publish(self, event: CloudEvent) -> None:
        await self.inner.publish(event)
        if event.type in EVENTS:
            try:
                track_event(event.type, **event_attributes(event))
            except Exception:  # telemetry must never fail a publication that happened
                logging.getLogger("reimager.telemetry").warning("could not record %s", event.type, exc_info=True)

    async def close(self) -> None:
        await self.inner.close()


def refused(exc: BaseException, trigger: str) -> None:
    """Record a refusal that publishes no CloudEvent (HTTP and alert answers), once per error."""
    code = getattr(exc, "code", None)
    if not isinstance(code, str) or getattr(exc, "_reimager_tracked", False):
        return
    if (getattr(exc, "extra", None) or {}).get("completed"):
        return  # accepted, then the submission failed: its completion event records it
    exc._reimager_tracked = True  # type: ignore[attr-defined]
    track_event(EventType.REJECTED, status=EventStatus.REJECTED, error_code=code, trigger=trigger)


def span_processor() -> SpanProcessor:
    """Copies the enclosing operation's attributes onto every span as it starts."""
    from opentelemetry.sdk.trace import SpanProcessor

    class OperationSpanProcessor(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            scope = _current.get()
            if scope is not None and scope.attributes:
                span.set_attributes(dict(scope.attributes))

    return OperationSpanProcessor()


def log_record_processor() -> LogRecordProcessor:
    """Copies the enclosing operation's attributes onto every log record as it is emitted."""
    from opentelemetry.sdk._logs import LogRecordProcessor

    class OperationLogRecordProcessor(LogRecordProcessor):
        def on_emit(self, log_record: Any) -> None:
            scope = _current.get()
            if scope is not None and log_record.log_record.attributes is not None:
                for key, value in scope.attributes.items():
                    log_record.log_record.attributes.setdefault(key, value)

        def shutdown(self) -> None:
            return None

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return OperationLogRecordProcessor()


def trace_azure_sdk() -> None:
    """Route azure-core's tracing (DistributedTracingPolicy) to OpenTelemetry, as the distro does."""
    from azure.core.settings import settings
    from azure.core.tracing.ext.opentelemetry_span import OpenTelemetrySpan

    settings.tracing_implementation = OpenTelemetrySpan


def exporter_credential() -> dict[str, Any]:
    """Entra ID for the exporter outside Azure: the developer's sign-in, when they ask for Entra ID auth.

    In Azure the exporter reads APPLICATIONINSIGHTS_AUTHENTICATION_STRING itself (the app's identity).
    It only knows managed identities, so a developer running against the real Application Insights
    (local auth off) sets `APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD` and signs in.
    """

    wants_entra = "authorization=aad" in os.environ.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "").lower()
    if in_azure() or not wants_entra:
        return {}
    from azure.identity import DefaultAzureCredential  # the exporter is synchronous

    return {"credential": DefaultAzureCredential(exclude_managed_identity_credential=True)}


def configure(settings: Settings) -> bool:
    """Turn on export to Application Insights when a connection string is set. Idempotent.

    Authentication follows APPLICATIONINSIGHTS_AUTHENTICATION_STRING (infra sets it to the app's
    identity; Application Insights has local auth off). Returns whether telemetry is on.
    """
    global _configured
    if _configured or not settings.applicationinsights_connection_string:
        return _configured
    from azure.monitor.opentelemetry import configure_azure_monitor

    # Keep every trace unless an operator picks a sampler (OTEL_TRACES_SAMPLER): reimager's volume
    # is small, and the distro's default rate limiter drops spans at random even then.
    sampling = {} if os.environ.get("OTEL_TRACES_SAMPLER") else {"sampling_ratio": 1.0}
    configure_azure_monitor(
        **sampling,
        **exporter_credential(),
        connection_string=settings.applicationinsights_connection_string,
        logger_name=LOGGER_NAME,
        span_processors=[span_processor()],
        log_record_processors=[log_record_processor()],
        # Only azure-core (ARM, Service Bus, Tables) matters here; the web-framework
        # instrumentations would find nothing to instrument.
        instrumentation_options={name: {"enabled": False} for name in
                                 ("django", "fastapi", "flask", "psycopg2")},
    )
    _configured = True
    return True
