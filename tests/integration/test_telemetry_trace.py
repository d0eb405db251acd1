"""Telemetry through devhost's real HTTP path: one reimage is one trace, from the trigger span over the
ARM POST to every poll, each span tagged with the operation; the app emits the custom events the
workbook reads; no secret reaches any span."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from devhost.compute import Fault
from shared.adapters import telemetry
from shared.domain.events import EventType
from tests.helpers import SENTINEL_PASSWORD
from tests.integration.conftest import LINUX_VM, PROTECTED_VM, VMSS, WINDOWS_VM, Host
from tests.unit.adapters.test_telemetry import logs, spans  # noqa: F401 (fixtures)
from tests.unit.test_telemetry_workbook import workbook_names

CUSTOM_DATA = base64.b64encode(b"#cloud-config custom-data-Sentinel-51d2").decode()
ROOT = Path(__file__).resolve().parents[2]


def _text(span: ReadableSpan) -> str:
    attributes = dict(span.attributes or {})
    parts = [span.name, *map(str, attributes), *map(str, attributes.values())]
    for event in span.events:
        parts += [event.name, *map(str, (event.attributes or {}).values())]
    return "\n".join(parts)


def _url(span: ReadableSpan) -> str:
    return str((span.attributes or {}).get("url.full", ""))


async def test_one_http_reimage_is_one_trace_tagged_with_its_operation(
        host: Host, spans: InMemorySpanExporter) -> None:  # noqa: F811
    s, accepted, _ = await host.reimage({"target": WINDOWS_VM, "requestedBy": "chatops:alice", "osProfile": {
        "adminPassword": SENTINEL_PASSWORD, "customData": CUSTOM_DATA}})
    assert s == 202, accepted
    [done] = await host.until_completed()
    assert done["data"]["status"] == "Succeeded" and done["data"]["polls"] >= 2
    expected = telemetry.operation_attributes(accepted["operationId"], accepted["target"], "http")

    finished = spans.get_finished_spans()
    [intake] = [sp for sp in finished if sp.name == telemetry.SPAN_INTAKE]
    trace_id = intake.context.trace_id
    mine = [sp for sp in finished if sp.context.trace_id == trace_id]
    arm = [sp for sp in mine if sp.kind is SpanKind.CLIENT and host.dh.arm_url in _url(sp)]
    posts = [sp for sp in arm if sp.name == "POST" and _url(sp).split("?")[0].endswith("/reimage")]
    evidence = [sp for sp in arm if sp.name == "POST" and "/retrieveBootDiagnosticsData" in _url(sp)]
    polls = [sp for sp in arm if sp.name == "GET" and "/operations/" in _url(sp)]
    activities = [sp for sp in mine if sp.name.startswith(telemetry.SPAN_ACTIVITY)]
    assert len(posts) == 1 and _url(posts[0]).split("?")[0].endswith("/app-win-01/reimage")
    # the evidence taken before it is in the same trace, before the POST
    assert len(evidence) == 1 and evidence[0].start_time <= posts[0].start_time
    # Every poll the orchestration made is in the trace (devhost runs each activity twice: at-least-once).
    assert len(polls) >= done["data"]["polls"]
    assert {sp.name for sp in activities} == {f"{telemetry.SPAN_ACTIVITY} poll_reimage_operation",
                                              f"{telemetry.SPAN_ACTIVITY} read_reimage_health",
                                              f"{telemetry.SPAN_ACTIVITY} finish_reimage_operation"}
    for span in [intake, *arm, *activities]:
        attributes = dict(span.attributes or {})
        assert {k: attributes.get(k) for k in expected} == expected, span.name
    # ARM dependency spans carry ARM's request id: the POST's is the one the simulator answered with.
    simulated = next(r for r in host.dh.sim.requests if r["method"] == "POST" and "/retrieve" not in r["path"])
    assert all((sp.attributes or {}).get(telemetry.ARM_REQUEST_ID) for sp in [*posts, *polls])
    assert simulated["path"].endswith("/reimage")
    # The body held the password and the custom data; no span anywhere holds either.
    for span in finished:
        text = _text(span)
        assert SENTINEL_PASSWORD not in text and CUSTOM_DATA not in text and "Sentinel-51d2" not in text


def _custom_events(exporter: InMemoryLogRecordExporter) -> list[dict[str, Any]]:
    out = []
    for record in exporter.get_finished_logs():
        attributes = dict(record.log_record.attributes or {})
        if telemetry.CUSTOM_EVENT_NAME in attributes:
            out.append(attributes)
    return out


async def test_the_app_emits_the_custom_events_the_workbook_reads(
        host: Host, logs: InMemoryLogRecordExporter) -> None:  # noqa: F811
    s, ok, _ = await host.reimage({"target": LINUX_VM})
    assert s == 202
    host.dh.sim.faults.append(Fault(match="reimage", outcome="Failed", code="OperationPreempted"))
    s, failing, _ = await host.reimage({"target": VMSS, "instanceIds": ["1"]})
    assert s == 202
    s, refused, _ = await host.reimage({"target": PROTECTED_VM})
    assert s == 403
    s, _ = await host.queue({"target": PROTECTED_VM}, messageId="m-telemetry-1")
    assert s == 202
    s, _, _ = await host.post("/api/alerts", None, raw=b"{")
    assert s == 400
    await host.until_completed(2)

    events = _custom_events(logs)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_name.setdefault(event[telemetry.CUSTOM_EVENT_NAME], []).append(event)
    completed = {e[telemetry.OPERATION_ID]: e for e in by_name[EventType.COMPLETED]}
    assert completed[ok["operationId"]][telemetry.STATUS] == "Succeeded"
    assert completed[ok["operationId"]][telemetry.DURATION_SECONDS] > 0
    assert completed[ok["operationId"]][telemetry.TRIGGER] == "http"
    assert completed[failing["operationId"]][telemetry.ERROR_CODE] == "OperationPreempted"
    assert {e[telemetry.OPERATION_ID] for e in by_name[EventType.ACCEPTED]} == set(completed)
    # One refusal per refused request, whichever surface: HTTP 403, the queue's Rejected event, a bad alert.
    rejected = sorted((e[telemetry.TRIGGER], e[telemetry.ERROR_CODE]) for e in by_name[EventType.REJECTED])
    assert rejected == [("alert", "InvalidRequest"), ("http", "TargetProtected"), ("queue", "TargetProtected")]

    # Every name the workbook reads is one the app emitted here (the scale-set request above went through a
    # batch: queued, batch.submitted with its size), or one of approvals and the breaker, which this test does
    # not exercise (their events: tests of approvals and storms) -- listed, so nothing is forgotten.
    emitted = set(by_name) | {key for e in events for key in e}
    emitted |= {telemetry.ARM_REQUEST_ID, telemetry.OPERATION_ID}  # dependency spans (test above)
    awaiting = {EventType.AWAITING_APPROVAL, EventType.SUSPENDED, EventType.RESUMED, telemetry.SUSPENSION_REASON}
    assert telemetry.EVENT_BATCH_SUBMITTED in by_name
    assert workbook_names() - emitted - awaiting == set()
    # Free text never becomes a dimension.
    assert not any(key in ("reason", "requestedBy", "reimager.reason") for e in events for key in e)
    assert json.dumps(events, default=str).count("chatops") == 0
