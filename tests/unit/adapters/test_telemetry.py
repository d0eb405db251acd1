"""Telemetry: ARM calls become dependency spans tied to their operation, logs carry the operation,
custom events use only the listed names, no secret reaches a span, and nothing heavy is imported
before telemetry is switched on."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.settings import settings as azure_settings
from opentelemetry import trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared.adapters import telemetry
from shared.adapters.arm.client import ComputeClient
from shared.domain.events import EventType
from shared.domain.request import parse_request
from shared.domain.targets import parse_target
from tests.conftest import StandIns
from tests.helpers import SENTINEL_PASSWORD, SUB

ROOT = Path(__file__).resolve().parents[3]
VM = f"/subscriptions/{SUB}/resourceGroups/fleet/providers/Microsoft.Compute/virtualMachines/vm1"
CUSTOM_DATA_SECRET = "custom-data-Sentinel-7c1e"

class _Recorder(InMemorySpanExporter):
    """Keeps spans only while a test is recording: the provider outlives the test (set once)."""

    recording = False

    def export(self, spans: Any) -> Any:
        return super().export(spans) if self.recording else SpanExportResult.SUCCESS


_exporter = _Recorder()
_provider: TracerProvider | None = None


def _tracer_provider() -> TracerProvider:
    """The process-wide provider (OpenTelemetry allows setting it once), with our processors."""
    global _provider
    if _provider is None:
        current = trace.get_tracer_provider()
        _provider = current if isinstance(current, TracerProvider) else TracerProvider()
        _provider.add_span_processor(telemetry.span_processor())
        _provider.add_span_processor(SimpleSpanProcessor(_exporter))
        if _provider is not current:
            trace.set_tracer_provider(_provider)
    return _provider


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _tracer_provider()
    _exporter.clear()
    _exporter.recording = True
    telemetry.trace_azure_sdk()
    yield _exporter
    azure_settings.tracing_implementation.unset_value()
    _exporter.recording = False
    _exporter.clear()


@pytest.fixture
def logs() -> Iterator[InMemoryLogRecordExporter]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(telemetry.log_record_processor())
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(logger_provider=provider)
    logger = logging.getLogger(telemetry.LOGGER_NAME)
    logger.addHandler(handler)
    yield exporter
    logger.removeHandler(handler)


@pytest.fixture
async def compute(standins: StandIns) -> AsyncIterator[ComputeClient]:
    standins.sim.upsert(VM, {"location": "westus", "properties": {"storageProfile": {
        "imageReference": {"publisher": "Canonical", "version": "1.2.3"},
        "osDisk": {"osType": "Linux", "createOption": "FromImage"}}}})
    client = ComputeClient(standins.settings())
    yield client
    await client.close()


def _all_text(span: ReadableSpan) -> str:
    parts = [span.name, *map(str, (span.attributes or {}).keys()), *map(str, (span.attributes or {}).values())]
    for event in span.events:
        parts += [event.name, *map(str, (event.attributes or {}).values())]
    return "\n".join(parts)


async def test_arm_calls_in_an_operation_are_dependency_spans_with_its_attributes(
        spans: InMemorySpanExporter, compute: ComputeClient) -> None:
    custom_data = base64.b64encode(CUSTOM_DATA_SECRET.encode()).decode()
    call = parse_request({"target": VM, "osProfile": {"adminPassword": SENTINEL_PASSWORD,
                                                      "customData": custom_data}}).arm_call("2024-07-01")
    with telemetry.operation_span("op-telemetry-1", VM.lower(), "http"):
        await compute.get_model(parse_target(VM))
        submission = await compute.submit(call)
    await compute.get_model(parse_target(VM))  # outside any operation

    finished = spans.get_finished_spans()
    arm = [s for s in finished if s.kind is SpanKind.CLIENT and "/virtualMachines/vm1" in
           str((s.attributes or {}).get("url.full", ""))]
    assert [s.name for s in arm] == ["GET", "POST", "GET"]
    get_in, post, get_out = arm
    operation = next(s for s in finished if s.name == telemetry.SPAN_OPERATION)
    for span in (get_in, post):
        attributes = dict(span.attributes or {})
        assert {k: attributes.get(k) for k in telemetry.OPERATION_ATTRIBUTES} == \
            telemetry.operation_attributes("op-telemetry-1", VM.lower(), "http")
        assert span.parent is not None and span.parent.span_id == operation.context.span_id
    # ARM's request id, as azure-core records it: the simulator answers the POST with one.
    assert submission.request_id and (post.attributes or {})[telemetry.ARM_REQUEST_ID] == submission.request_id
    assert telemetry.OPERATION_ID not in (get_out.attributes or {})
    # The request body held the password and the custom data; no span holds either.
    for span in finished:
        text = _all_text(span)
        assert SENTINEL_PASSWORD not in text and custom_data not in text and CUSTOM_DATA_SECRET not in text


def test_logs_and_events_in_an_operation_carry_its_attributes(logs: InMemoryLogRecordExporter) -> None:
    log = logging.getLogger("reimager.monitor")
    log.setLevel(logging.INFO)
    with telemetry.operation_span("op-telemetry-2", VM.lower(), "alert"):
        log.info("polled")
        telemetry.track_event(EventType.COMPLETED, status="Succeeded", duration_seconds=312.5,
                              health="Healthy", error_code=None)
    log.info("outside")
    records = {r.log_record.body: dict(r.log_record.attributes or {}) for r in logs.get_finished_logs()}
    expected = telemetry.operation_attributes("op-telemetry-2", VM.lower(), "alert")
    assert {k: records["polled"].get(k) for k in expected} == expected
    event = records[EventType.COMPLETED]
    assert event["microsoft.custom_event.name"] == EventType.COMPLETED
    assert event[telemetry.STATUS] == "Succeeded" and event[telemetry.DURATION_SECONDS] == 312.5
    assert {k: event.get(k) for k in expected} == expected and telemetry.ERROR_CODE not in event
    assert telemetry.OPERATION_ID not in records["outside"]


def test_events_outside_an_operation_still_export(logs: InMemoryLogRecordExporter) -> None:
    telemetry.track_event(EventType.SUSPENDED, target=VM.lower(), suspension_reason="breaker")
    [record] = [r for r in logs.get_finished_logs() if r.log_record.body == EventType.SUSPENDED]
    assert (record.log_record.attributes or {})[telemetry.SUSPENSION_REASON] == "breaker"


def test_unknown_event_names_and_attributes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown telemetry event"):
        telemetry.track_event("reimager.operation.finished")
    with pytest.raises(ValueError, match=r"reimager\.admin_password"):
        telemetry.track_event(EventType.COMPLETED, admin_password="x")


def test_every_name_is_namespaced() -> None:
    assert all(a.startswith(("reimager.", "az.")) for a in telemetry.ATTRIBUTES)
    assert all(e.startswith("reimager.") for e in telemetry.EVENTS)


def _run(code: str, **env: str) -> str:
    import os

    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, **env}, timeout=120).stdout


def test_importing_the_app_does_not_import_the_distro() -> None:
    # Even with a connection string set, the distro loads only when configure() runs.
    out = _run("import sys, function_app, shared.adapters.telemetry; "
               "print(sorted(m for m in sys.modules if m.startswith(('azure.monitor', 'opentelemetry.sdk'))))",
               APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=00000000-0000-0000-0000-000000000000")
    assert out.strip() == "[]"


def test_configure_is_a_no_op_without_a_connection_string() -> None:
    out = _run("import sys; from shared.settings import Settings; from shared.adapters import telemetry; "
               "print(telemetry.configure(Settings()), 'azure.monitor.opentelemetry' in sys.modules)",
               APPLICATIONINSIGHTS_CONNECTION_STRING="")
    assert out.split() == ["False", "False"]


_EXPORT = """
import gzip, json, logging, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from opentelemetry import trace
from opentelemetry._logs import get_logger_provider
from shared.settings import Settings
from shared.adapters import telemetry
from shared.domain.events import EventType

received = []
class Ingestion(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        if self.headers.get('Content-Encoding') == 'gzip':
            body = gzip.decompress(body)
        if self.path.endswith('/v2.1/track'):
            received.extend(json.loads(body))
        out = json.dumps({"itemsReceived": 1, "itemsAccepted": 1, "errors": []}).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(out))); self.end_headers()
        self.wfile.write(out)
    def log_message(self, *args): pass

server = HTTPServer(('127.0.0.1', 0), Ingestion)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_port}/"
settings = Settings(APPLICATIONINSIGHTS_CONNECTION_STRING=(
    f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint={url};LiveEndpoint={url}"))
assert telemetry.configure(settings) and telemetry.configure(settings)
with telemetry.operation_span("op-export-1", "/subscriptions/x/vm", "queue"):
    logging.getLogger("reimager.intake").warning("claimed")
    telemetry.track_event(EventType.COMPLETED, status="Failed", error_code="OperationPreempted")
trace.get_tracer_provider().force_flush()
get_logger_provider().force_flush()
print(json.dumps(received))
"""


def test_configure_exports_to_application_insights_with_the_operation_attributes() -> None:
    out = _run(_EXPORT, APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true", OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="")
    envelopes = __import__("json").loads(out.strip().splitlines()[-1])
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for envelope in envelopes:
        by_kind.setdefault(envelope["data"]["baseType"], []).append(envelope["data"]["baseData"])
    [event] = by_kind["EventData"]
    assert event["name"] == EventType.COMPLETED
    assert event["properties"][telemetry.ERROR_CODE] == "OperationPreempted"
    assert event["properties"][telemetry.OPERATION_ID] == "op-export-1"
    [message] = [m for m in by_kind["MessageData"] if m["message"] == "claimed"]
    assert message["properties"][telemetry.TRIGGER] == "queue"
    [span] = [d for d in by_kind["RemoteDependencyData"] if d["name"] == telemetry.SPAN_OPERATION]
    assert span["properties"][telemetry.TARGET] == "/subscriptions/x/vm"


def test_every_cloudevent_type_is_a_custom_event_name() -> None:
    # TrackedPublisher records a published event under its type only if the type is listed: a new
    # CloudEvent type (shared/domain/events.py) must be added to telemetry.EVENTS to reach the workbook.
    from typing import get_args

    from shared.domain.events import EventType

    assert set(get_args(EventType)) <= telemetry.EVENTS
