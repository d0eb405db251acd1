"""Telemetry: OpenTelemetry to Application Insights, and the one list of names reimager emits.

`configure(settings)` turns on the Azure Monitor OpenTelemetry distro only when
APPLICATIONINSIGHTS_CONNECTION_STRING is set, and imports it only then (it costs hundreds of
milliseconds of cold start, and local runs and tests do without it). Call it once per process,
on first use rather than at import.

Inside `operation_span(operation_id, target, trigger)` every span started (the ARM calls'
dependency spans that azure-core's DistributedTracingPolicy makes included) and every log record
emitted carries `reimager.operation_id`, `reimager.target` and `reimager.trigger`. ARM's
`x-ms-request-id` lands on each ARM dependency span as `az.service_request_id` (azure-core sets
it; the distro routes azure-core tracing to OpenTelemetry).

`track_event(name, **attributes)` records one Application Insights custom event. Names and
attribute keys must come from the lists below: infra/app/workbook.json queries only those, and
tests/unit/test_telemetry_workbook.py checks that it does.

Nothing here may carry a secret: the attribute keys are a closed list of non-secret facts,
and azure-core records no request bodies (so never an adminPassword or customData).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LogRecordProcessor
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import Span

    from shared.settings import Settings

# ---- the names reimager emits ---------------------------------------------------------------
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
QUEUE_DEPTH = "reimager.queue_depth"
SUSPENSION_REASON = "reimager.suspension_reason"
# Set by azure-core on every ARM dependency span, from the response's x-ms-request-id.
ARM_REQUEST_ID = "az.service_request_id"

OPERATION_ATTRIBUTES = (OPERATION_ID, TARGET, TRIGGER)
ATTRIBUTES = frozenset({*OPERATION_ATTRIBUTES, STATUS, ERROR_CODE, HEALTH, DURATION_SECONDS, POLLS,
                        INSTANCE_COUNT, BATCH_ID, BATCH_SIZE, QUEUE_DEPTH, SUSPENSION_REASON, ARM_REQUEST_ID})

# Custom events (customEvents.name). The lifecycle ones mirror the CloudEvents types.
EVENT_ACCEPTED = "reimager.operation.accepted"
EVENT_QUEUED = "reimager.operation.queued"
EVENT_AWAITING_APPROVAL = "reimager.operation.awaiting-approval"
EVENT_COMPLETED = "reimager.operation.completed"
EVENT_REJECTED = "reimager.request.rejected"  # every refusal, from any entry surface, with its error code
EVENT_BATCH_SUBMITTED = "reimager.batch.submitted"  # one ARM reimage POST for a batch
EVENT_SUSPENDED = "reimager.target.suspended"
EVENT_RESUMED = "reimager.target.resumed"
EVENTS = frozenset({EVENT_ACCEPTED, EVENT_QUEUED, EVENT_AWAITING_APPROVAL, EVENT_COMPLETED, EVENT_REJECTED,
                    EVENT_BATCH_SUBMITTED, EVENT_SUSPENDED, EVENT_RESUMED})

# Span names reimager starts itself (azure-core names the ARM dependency spans after the method).
SPAN_OPERATION = "reimager.operation"

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
_CUSTOM_EVENT_NAME = "microsoft.custom_event.name"
# Only reimager's own loggers are exported; the Functions host reports its own telemetry.
LOGGER_NAME = "reimager"

_events_log = logging.getLogger("reimager.events")
_events_log.setLevel(logging.INFO)  # the root logger's WARNING would drop every event
_current: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "reimager_operation_attributes", default=None)
_configured = False


def operation_attributes(operation_id: str, target: str, trigger: str) -> dict[str, str]:
    """The attributes that tie a span or log record to one reimager operation."""
    return {OPERATION_ID: operation_id, TARGET: target, TRIGGER: trigger}


def current_operation() -> Mapping[str, str] | None:
    """The operation attributes of the enclosing `operation_span`, if any."""
    return _current.get()


@contextlib.contextmanager
def operation_span(operation_id: str, target: str, trigger: str, name: str = SPAN_OPERATION) -> Iterator[Span]:
    """A span for one step of an operation; everything recorded inside carries its attributes.

    Works in sync and async code alike (the attributes live in a ContextVar, which each asyncio
    task copies). Without a configured tracer provider the span is OpenTelemetry's no-op span.
    """
    from opentelemetry import trace

    attributes = operation_attributes(operation_id, target, trigger)
    token = _current.set(attributes)
    try:
        tracer = trace.get_tracer("reimager")
        with tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span
    finally:
        _current.reset(token)


def track_event(name: str, **attributes: str | int | float | bool | None) -> None:
    """Record one custom event. Keys are the names above without the `reimager.` prefix.

    `track_event(EVENT_COMPLETED, status="Succeeded", duration_seconds=312.5)`. None values are
    left out. Unknown names raise ValueError: a name the workbook does not know is a bug.
    """
    if name not in EVENTS:
        raise ValueError(f"unknown telemetry event {name!r}; add it to shared/telemetry.py EVENTS")
    extra: dict[str, object] = {_CUSTOM_EVENT_NAME: name}
    for key, value in attributes.items():
        attribute = f"reimager.{key}"
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown telemetry attribute {attribute!r}; add it to shared/telemetry.py")
        if value is not None:
            extra[attribute] = value
    operation = _current.get() or {}
    _events_log.info(name, extra={**operation, **extra})


# ---- OpenTelemetry SDK plumbing (imported only when telemetry is on, or by tests) -------------
def span_processor() -> SpanProcessor:
    """Copies the enclosing operation's attributes onto every span as it starts."""
    from opentelemetry.sdk.trace import SpanProcessor

    class OperationSpanProcessor(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            attributes = _current.get()
            if attributes:
                span.set_attributes(dict(attributes))

    return OperationSpanProcessor()


def log_record_processor() -> LogRecordProcessor:
    """Copies the enclosing operation's attributes onto every log record as it is emitted."""
    from opentelemetry.sdk._logs import LogRecordProcessor

    class OperationLogRecordProcessor(LogRecordProcessor):
        def on_emit(self, log_record: Any) -> None:
            attributes = _current.get()
            if attributes and log_record.log_record.attributes is not None:
                for key, value in attributes.items():
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
