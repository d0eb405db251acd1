"""Hypothesis over nested and Unicode bodies on POST /api/reimage and POST /api/alerts through devhost.

Every generated body is invalid (or, for alerts, one that must not act), so the bar is: never a 500,
and not one ARM request of any kind. The scope is the demo resource group, so a look-alike group is
outside it and a scope check that folds Unicode would let it through to ARM.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devhost.host import DEMO_GROUP, DEMO_SUBSCRIPTION
from tests.conftest import ledger_settings
from tests.helpers import load_json
from tests.integration.conftest import LINUX_VM, VMSS
from tests.integration.live import LiveHost, live_host

SCOPE = f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/{DEMO_GROUP}"
LOOK_ALIKES = ["\u212a", "\u017f", "\u0131", "\u0130", "\u00a0", "\u200b", "\u200e", "\u202e", "\u0301", "\ufeff",
               "\uff10", "\uff17", "\u0661", "\u2028", "\u00e9", "\u0435", "\u0430", "\U0001d41a", "\ud7ff", "\u3000"]
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, azurite_storage: str) -> Iterator[LiveHost]:
    settings = {"ALLOWED_SCOPES": SCOPE, "COOLDOWN_MINUTES": "0"}
    state = tmp_path_factory.mktemp("fuzz-nested-unicode")
    with live_host(state, {**ledger_settings(azurite_storage), **settings}) as host:
        yield host


# --- strategies -------------------------------------------------------------------------------------
@st.composite
def nesting(draw: st.DrawFn, min_depth: int = 1) -> str:
    """A JSON value nested up to 4000 deep: arrays, objects or both, as text (json.dumps would recurse)."""
    depth = draw(st.integers(min_depth, 4000))
    kind = draw(st.sampled_from(["[", '{"a":', '{"\u212a":[', "[{\"x\":"]))
    close = {"[": "]", '{"a":': "}", '{"\u212a":[': "]}", "[{\"x\":": "}]"}[kind]
    leaf = draw(st.sampled_from(["1", '"x"', "null", "[]", "{}", '"\u212a"']))
    return kind * depth + leaf + close * depth


def perturb(draw: st.DrawFn, text: str, start: int) -> str:
    """Insert or substitute a non-ASCII look-alike somewhere inside text[start:]."""
    pos = draw(st.integers(start, len(text) - 1))
    char = draw(st.sampled_from(LOOK_ALIKES) | st.characters(min_codepoint=0x80, exclude_categories=["Cs"]))
    if draw(st.booleans()):
        return text[:pos] + char + text[pos:]
    return text[:pos] + char + text[pos + 1:]


@st.composite
def reimage_bodies(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 4))
    if choice == 0:  # nesting at the top or in a field
        inner = draw(nesting())
        field = draw(st.sampled_from(["target", "reason", "instanceIds", "osProfile", "tempDisk", "\u212a"]))
        return (inner if draw(st.booleans()) else
                f'{{"target": {json.dumps(VMSS)}, "instanceIds": ["1"], "{field}": {inner}}}').encode()
    if choice == 1:  # a look-alike character inside the target id
        target = draw(st.sampled_from([LINUX_VM, VMSS + "/virtualMachines/1"]))
        return json.dumps({"target": perturb(draw, target, 1)}, ensure_ascii=draw(st.booleans())).encode()
    if choice == 2:  # ... or inside a cmdlet-style part
        field = draw(st.sampled_from(["vmName", "resourceGroupName", "subscriptionId"]))
        body = {"subscriptionId": DEMO_SUBSCRIPTION, "resourceGroupName": DEMO_GROUP, "vmName": "web-linux-01"}
        body[field] = perturb(draw, body[field], 0)
        return json.dumps(body, ensure_ascii=draw(st.booleans())).encode()
    if choice == 3:  # a look-alike field name
        name = perturb(draw, draw(st.sampled_from(["dryRun", "tempDisk", "instanceIds", "requestId"])), 0)
        return json.dumps({"target": VMSS, "instanceIds": ["1"], name: True}).encode()
    ids = draw(st.lists(st.sampled_from(["01", "007", "00", "\uff11", "\u0661", "1\n", " 1", "+1", -1, 1.5, True,
                                         10**12, "1e3", "0x1", "\U0001d7cf"]), min_size=1, max_size=3))
    return json.dumps({"target": VMSS, "instanceIds": ids + draw(st.lists(st.sampled_from(["2", 3]), max_size=2))}
                      ).encode()


ALERT = load_json("alerts/test-action-activity-log-administrative.json")
REIMAGE_OPS = ["Microsoft.Compute/virtualMachines/reimage/action", "Microsoft.Compute/virtualMachineScaleSets/reimage/"
               "action", "Microsoft.Compute/virtualMachineScaleSets/reimageall/action",
               "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimage/action",
               "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimageall/action"]


@st.composite
def alert_bodies(draw: st.DrawFn) -> bytes:
    """The Activity Log sample pointed at an in-scope VM, then made into something that must not act."""
    doc: dict[str, Any] = copy.deepcopy(ALERT)
    doc["data"]["essentials"]["alertTargetIDs"] = [LINUX_VM]
    choice = draw(st.integers(0, 4))
    if choice == 0:  # reimager's own write, in any casing
        op = draw(st.sampled_from(REIMAGE_OPS))
        op = "".join(c.upper() if draw(st.booleans()) else c for c in op)
        doc["data"]["alertContext"]["operationName"] = op
        doc["data"]["alertContext"]["authorization"]["action"] = op
    elif choice == 1:  # a mistyped or look-alike option key
        key = draw(st.sampled_from(["reimage.dryRun", "reimage.tempDisk", "dryRun"]))
        key = perturb(draw, key, 0) if draw(st.booleans()) else draw(st.sampled_from(
            [" " + key, key.upper(), key.lower(), key.replace(".", ":"), key.replace(".", "_"), key.replace(".", " ")]))
        if key in ("reimage.dryRun", "reimage.tempDisk"):
            key = key + "\u200b"
        doc["data"]["customProperties"] = {key: "true"}
    elif choice == 2:  # customProperties that is not an object, or an option value that is not a boolean
        doc["data"]["customProperties"] = draw(st.sampled_from([
            "reimage.dryRun=true", ["reimage.dryRun"], 1, True, {"reimage.dryRun": "yes"}, {"reimage.dryRun": 1},
            {"reimage.dryRun": "tru\u0435"}]))
    elif choice == 3:  # a look-alike character inside the target id
        doc["data"]["essentials"]["alertTargetIDs"] = [perturb(draw, LINUX_VM, 1)]
    else:  # nesting deeper than 64 in all (the value sits 3 levels down)
        text = json.dumps(doc)
        marker = '"Activity Log Event Description": ""'
        return text.replace(marker, f'"Activity Log Event Description": {draw(nesting(62))}').encode()
    return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()


# --- the properties -----------------------------------------------------------------------------------
def test_nested_and_unicode_reimage_bodies_never_500_and_never_reach_arm(live: LiveHost) -> None:
    @FUZZ
    @given(raw=reimage_bodies())
    def run(raw: bytes) -> None:
        before = live.arm_requests()
        r = live.post("/api/reimage", raw)
        assert r.status_code in (400, 403), (raw[:300], r.status_code, r.text[:500])
        assert r.json()["error"]["code"] in ("InvalidRequest", "ScopeNotAllowed")
        assert live.arm_requests() == before, raw[:300]

    run()


def test_nested_and_unicode_alerts_never_500_and_never_reach_arm(live: LiveHost) -> None:
    @FUZZ
    @given(raw=alert_bodies())
    def run(raw: bytes) -> None:
        before = live.arm_requests()
        r = live.post("/api/alerts", raw)
        assert r.status_code in (200, 400), (raw[:300], r.status_code, r.text[:500])
        if r.status_code == 200:
            assert r.json()["accepted"] == [], r.text[:500]
        assert live.arm_requests() == before, raw[:300]

    run()


def test_the_unperturbed_alert_does_act(live: LiveHost) -> None:
    """The control: without the hostile part the same alert reaches ARM, so the properties above can fail."""
    doc = copy.deepcopy(ALERT)
    doc["data"]["essentials"]["alertTargetIDs"] = [LINUX_VM]
    doc["data"]["customProperties"] = {"reimage.dryRun": "true"}
    before = live.arm_requests()
    r = live.post("/api/alerts", json.dumps(doc).encode())
    assert r.status_code == 202 and r.json()["accepted"][0]["dryRun"] is True, r.text
    assert live.arm_requests() > before


def test_an_unperturbed_request_does_reach_arm(live: LiveHost) -> None:
    """The control for the reimage bodies: the same host and scope let a valid request through to ARM."""
    before = live.arm_requests()
    r = live.post("/api/reimage", json.dumps({"target": LINUX_VM, "dryRun": True}).encode())
    assert r.status_code == 200 and r.json()["dryRun"] is True, r.text
    assert live.arm_requests() > before


# --- the queue surface: every hostile message is settled with a Rejected event -------------------------
SURROGATES = ["\ud800", "\udfff", "\udc00x", "a\ud83d"]


@st.composite
def queue_bodies(draw: st.DrawFn) -> tuple[str, bool]:
    """A message body as the trigger gets it, and whether it must be refused: the reimage bodies above, or
    lone surrogates in the text fields a Rejected event echoes, as JSON escapes (refused: not text) or as raw
    characters (bytes that are not UTF-8, which the worker's string conversion may turn into U+FFFD)."""
    if draw(st.booleans()):
        return draw(reimage_bodies()).decode("utf-8", errors="surrogatepass"), True
    field = draw(st.sampled_from(["requestedBy", "requestId", "reason", "correlationId", "target"]))
    body: dict[str, Any] = {"target": VMSS, "instanceIds": ["1"]}
    body[field] = draw(st.text(max_size=5)) + draw(st.sampled_from(SURROGATES))
    escaped = draw(st.booleans())
    return json.dumps(body, ensure_ascii=escaped), escaped or field == "target"


def intake_arm_requests(live: LiveHost) -> int:
    """ARM reads an intake makes (the preflight, which every POST follows): not the polls, health reads and batch
    POSTs of operations an earlier example started, which go on in the background."""
    return sum(1 for r in list(live.dh.sim.requests) if r["method"] == "GET" and "/operations/" not in r["path"]
               and "instanceview" not in (r["path"] + json.dumps(r["query"])).lower())


def test_nested_and_unicode_queue_messages_are_rejected_with_an_event_never_dead_lettered(live: LiveHost) -> None:
    seen = iter(range(10**6))
    earlier_ops: set[str] = set()

    @FUZZ
    @given(case=queue_bodies())
    def run(case: tuple[str, bool]) -> None:
        body, must_refuse = case
        before_arm, before_events = intake_arm_requests(live), len(live.dh.events())
        r = requests.post(f"{live.dh.functions_url}/admin/functions/reimage_queue",
                          headers={"x-functions-key": live.dh.function_key}, timeout=60,
                          json={"input": body, "messageId": f"fuzz-{next(seen)}"})
        assert r.status_code == 202 and r.json()["settlement"] == "completed", (body[:300], r.text[:500])
        # (an earlier example's operation may complete meanwhile: completions are not this message's answer)
        # (a queued example's batch is sent later: its accepted event may land in a later example's window)
        fresh = [e for e in live.dh.events()[before_events:] if e["type"] != "reimager.operation.completed"
                 and e["data"].get("operationId") not in earlier_ops]
        earlier_ops.update(e["data"]["operationId"] for e in fresh if e["data"].get("operationId"))
        new = [e["type"] for e in fresh]
        if must_refuse:
            assert new == ["reimager.request.rejected"], (body[:300], new)
            assert intake_arm_requests(live) == before_arm, body[:300]
        else:  # settled either way, and never silently: one event says what happened
            assert new in (["reimager.request.rejected"], ["reimager.operation.accepted"],
                           ["reimager.operation.queued"]), (body[:300], new)

    run()
    # leave the shared host quiet for the other properties: every accepted example has completed
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        types = [e["type"] for e in live.dh.events()]
        if types.count("reimager.operation.accepted") <= types.count("reimager.operation.completed"):
            break
        time.sleep(0.2)
    deadletter = requests.get(f"{live.dh.functions_url}/devhost/servicebus/deadletter", timeout=10).json()
    assert deadletter == []
