"""The workbook reads only what the app emits: every table, column, event name and custom dimension
in infra/app/workbook.json is in shared/adapters/telemetry.py's lists, and it covers the panels the design
asks for."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from shared.adapters import telemetry
from shared.domain.events import EventType

ROOT = Path(__file__).resolve().parents[2]
WORKBOOK = ROOT / "infra/app/workbook.json"
# Columns of Application Insights tables (any table). A query may use one only if shared/adapters/telemetry.py
# lists it for the table the query reads; aliases a query defines itself are not columns.
KNOWN_COLUMNS = frozenset({
    "timestamp", "name", "itemCount", "customDimensions", "customMeasurements", "operation_Id", "operation_Name",
    "operation_ParentId", "cloud_RoleName", "cloud_RoleInstance", "resultCode", "success", "duration", "target",
    "type", "data", "message", "severityLevel", "performanceBucket", "id", "url", "source", "appName", "iKey",
    "sdkVersion", "client_Type", "session_Id", "user_Id", "problemId", "outerMessage", "details",
})
STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
DIMENSION = re.compile(r'customDimensions\s*\[\s*"([^"]+)"\s*\]')


def _queries(doc: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["content"]["query"] for item in doc["items"] if item["type"] == 3}


def workbook_names() -> set[str]:
    """Every reimager name (event, dimension) the workbook's queries read."""
    names: set[str] = set()
    for query in _queries(json.loads(WORKBOOK.read_text())).values():
        names |= set(DIMENSION.findall(query))
        names |= {s for s in STRING.findall(query) if s.startswith(("reimager.", "az."))}
    return names


def check_query(query: str) -> list[str]:
    """Problems with one query: names the app does not emit, or forms this check cannot follow."""
    problems = []
    table = re.match(r"\s*(\w+)", query)
    if not table or table.group(1) not in telemetry.TABLES:
        return [f"reads table {table.group(1) if table else '?'}, not one of {sorted(telemetry.TABLES)}"]
    if re.search(r"\b(union|join|lookup|materialize|let)\b", query):
        problems.append("uses union/join/lookup/let: keep each query on one table so the names can be checked")
    if re.search(r"customDimensions\s*\.", query) or re.search(r"customDimensions\s*\[\s*'", query):
        problems.append('reads customDimensions other than as customDimensions["name"]')
    for key in DIMENSION.findall(query):
        if key not in telemetry.ATTRIBUTES:
            problems.append(f"custom dimension {key!r} is not emitted")
    for literal in STRING.findall(query):
        if literal.startswith(("reimager.", "az.")) and literal not in (
                telemetry.EVENTS | telemetry.ATTRIBUTES | {telemetry.SPAN_OPERATION}):
            problems.append(f"name {literal!r} is not emitted")
    for event in re.findall(r'\bname\s*(?:==|=~)\s*"([^"]+)"', query):
        if event not in telemetry.EVENTS | {telemetry.SPAN_OPERATION}:
            problems.append(f"event {event!r} is not emitted")
    for group in re.findall(r"\bname\s+in\s*\(([^)]*)\)", query):
        problems += [f"event {e!r} is not emitted" for e in STRING.findall(group) if e not in telemetry.EVENTS]
    code = STRING.sub('""', query)  # column names never sit inside string literals
    for word in set(re.findall(r"\b[A-Za-z_]\w*\b", code)):
        if word in KNOWN_COLUMNS and word not in telemetry.TABLES[table.group(1)]:
            problems.append(f"column {word!r} is not one {table.group(1)} is listed with")
    return problems


def test_every_query_reads_only_emitted_names() -> None:
    doc = json.loads(WORKBOOK.read_text())
    queries = _queries(doc)
    assert len(queries) >= 8
    problems = {name: check_query(query) for name, query in queries.items()}
    assert {name: p for name, p in problems.items() if p} == {}


@pytest.mark.parametrize(("query", "problem"), [
    ('customEvents | where name == "reimager.operation.finished"', "not emitted"),
    ('customEvents | extend s = tostring(customDimensions["reimager.state"])', "reimager.state"),
    ("customEvents | extend s = customDimensions.status", "customDimensions"),
    ("exceptions | count", "reads table exceptions"),
    ('customEvents | summarize count() by resultCode', "resultCode"),
    ('customEvents | join (requests) on operation_Id', "join"),
    ('customEvents | where name in ("reimager.target.suspended", "reimager.target.paused")', "paused"),
])
def test_the_check_catches_names_the_app_does_not_emit(query: str, problem: str) -> None:
    assert any(problem in p for p in check_query(query)), check_query(query)


def test_the_workbook_covers_the_panels_the_design_asks_for() -> None:
    doc = json.loads(WORKBOOK.read_text())
    assert doc["version"] == "Notebook/1.0"
    queries = _queries(doc)
    wanted = {
        "operations-by-outcome": (EventType.COMPLETED, telemetry.STATUS),
        "duration-percentiles": (EventType.COMPLETED, telemetry.DURATION_SECONDS),
        "health-after-reimage": (EventType.COMPLETED, telemetry.HEALTH),
        "queue-depth": (EventType.QUEUED, telemetry.QUEUE_POSITION),
        "batches": (telemetry.EVENT_BATCH_SUBMITTED, telemetry.BATCH_SIZE),
        "suspensions": (EventType.SUSPENDED, telemetry.SUSPENSION_REASON),
        "refusals-by-code": (EventType.REJECTED, telemetry.ERROR_CODE),
    }
    for name, names in wanted.items():
        assert all(n in queries[name] for n in names), name
    assert "percentiles(" in queries["duration-percentiles"]
    for item in doc["items"]:
        if item["type"] == 3:
            content = item["content"]
            assert content["timeContextFromParameter"] == "TimeRange" and content["title"]
            assert content["resourceType"] == "microsoft.insights/components" and content["queryType"] == 0


def test_bicep_deploys_this_file_against_application_insights() -> None:
    workbook = BicepParser().parse(file_path=ROOT / "infra/app/workbook.bicep")["resources"]["workbook"]
    props = workbook["config"]["properties"]
    assert workbook["type"] == "Microsoft.Insights/workbooks" and props["sourceId"] == "appInsightsId"
    loaded = props["serializedData"]["function"]["parameters"]["original_string"]["function"]
    assert loaded["type"] == "load_text_content" and loaded["parameters"]["file_path"] == "workbook.json"
    assert "__APP_INSIGHTS_ID__" in WORKBOOK.read_text()  # the placeholder the Bicep replaces
    main = BicepParser().parse(file_path=ROOT / "infra/main.bicep")["modules"]["workbook"]
    assert main["detail"]["path"] == "app/workbook.bicep"
    assert main["config"]["params"]["appInsightsId"]["operator"]["operands"]["operand_1"] == "monitoring"
