"""shared/surfaces/alerts.py, parsing alerts: reimage Activity Log events never loop, and reimage options fail safe."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.errors import ReimagerError
from shared.surfaces.alerts import parse_alert
from shared.surfaces.http import http_status
from tests.helpers import load_json

SAMPLE = load_json("alerts/test-action-activity-log-administrative.json")
VALID_KEYS = ["reimage.dryRun", "reimage.tempDisk", "reimage.forceUpdateOSDiskForEphemeral", "reimage.exactVersion",
              "reimage.allInstances", "reimage.captureEvidence"]

REIMAGE_OPERATIONS = [
    "Microsoft.Compute/virtualMachines/reimage/action",
    "Microsoft.Compute/virtualMachineScaleSets/reimage/action",
    "Microsoft.Compute/virtualMachineScaleSets/reimageall/action",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimage/action",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimageall/action",
]


def alert(operation: str | None = None, custom: Any = "absent", **essentials: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SAMPLE)
    if operation is not None:
        doc["data"]["alertContext"]["operationName"] = operation
        doc["data"]["alertContext"]["authorization"]["action"] = operation
        doc["data"]["alertContext"]["properties"]["message"] = operation
    if custom != "absent":
        doc["data"]["customProperties"] = custom
    doc["data"]["essentials"].update(essentials)
    return doc


def test_the_sample_restart_event_still_acts() -> None:
    parsed = parse_alert(alert())
    assert len(parsed.accepted) == 1 and parsed.ignored == []


# --- loop guard: Activity Log reimage events --------------------------------------------------
@pytest.mark.parametrize("operation", REIMAGE_OPERATIONS + [op.lower() for op in REIMAGE_OPERATIONS] +
                         [op.upper() for op in REIMAGE_OPERATIONS] +
                         ["MICROSOFT.COMPUTE/virtualmachines/Reimage/Action", " Microsoft.Compute/virtualMachines/"
                          "reimage/action ", "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/ReimageAll/"
                          "action"])
def test_reimage_activity_log_events_are_ignored_with_the_reason(operation: str) -> None:
    parsed = parse_alert(alert(operation))
    assert parsed.accepted == []
    assert len(parsed.ignored) == 1
    reason = parsed.ignored[0]["reason"]
    assert "reimage" in reason.lower() and "loop" in reason


@pytest.mark.parametrize("where", ["operationName", "operationNameObject", "authorization", "properties"])
def test_the_operation_is_found_wherever_the_event_names_it(where: str) -> None:
    op = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimage/action"
    doc = alert()
    ctx = doc["data"]["alertContext"]
    if where == "operationName":
        ctx["operationName"] = op
    elif where == "operationNameObject":  # the Activity Log's own schema: {value, localizedValue}
        ctx["operationName"] = {"value": op, "localizedValue": "Reimage Virtual Machine Scale Set VM"}
    elif where == "authorization":
        del ctx["operationName"]
        ctx["authorization"]["action"] = op
    else:
        del ctx["operationName"]
        del ctx["authorization"]
        ctx["properties"]["operationName"] = op
    assert parse_alert(doc).accepted == []


@pytest.mark.parametrize("service", ["Activity Log - Administrative", "ActivityLog", "Activity Log", None, "Platform"])
def test_whatever_the_monitoring_service_says(service: str | None) -> None:
    parsed = parse_alert(alert(REIMAGE_OPERATIONS[0], monitoringService=service, signalType=service))
    assert parsed.accepted == []


@pytest.mark.parametrize("where", ["dimension", "query"])
def test_a_log_search_alert_over_azure_activity_reimages_is_ignored(where: str) -> None:
    """A log search alert on the AzureActivity table names the operation in a dimension (upper case) or its query."""
    doc = alert(monitoringService="Log Alerts V2", signalType="Log")
    condition: dict[str, Any] = {"windowSize": "PT5M", "allOf": [{"metricValue": 1, "operator": "GreaterThan"}]}
    if where == "dimension":
        condition["allOf"][0]["dimensions"] = [
            {"name": "OperationNameValue", "value": "MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/VIRTUALMACHINES/"
             "REIMAGE/ACTION"}, {"name": "ActivityStatusValue", "value": "Success"}]
    else:
        condition["allOf"][0]["searchQuery"] = ("AzureActivity | where OperationNameValue =~ "
                                                "'Microsoft.Compute/virtualMachines/reimage/action'")
    doc["data"]["alertContext"] = {"condition": condition, "conditionType": "LogQueryCriteria"}
    parsed = parse_alert(doc)
    assert parsed.accepted == [] and "loop" in parsed.ignored[0]["reason"]


@pytest.mark.parametrize("operation", ["Microsoft.Compute/virtualMachines/restart/action",
                                       "Microsoft.Compute/virtualMachines/deallocate/action",
                                       "Microsoft.Compute/virtualMachines/write"])
def test_other_operations_still_act(operation: str) -> None:
    assert len(parse_alert(alert(operation)).accepted) == 1


@settings(max_examples=200)
@given(st.sampled_from(REIMAGE_OPERATIONS), st.randoms(use_true_random=False))
def test_any_casing_of_a_reimage_operation_is_ignored(operation: str, rnd: Any) -> None:
    mixed = "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in operation)
    assert parse_alert(alert(mixed)).accepted == []


# --- fail-safe options -------------------------------------------------------------------------
@pytest.mark.parametrize("custom", ["reimage.dryRun=true", ["reimage.dryRun", "true"], 1, 0.5, True, "",
                                    '{"reimage.dryRun": "true"}'])
def test_custom_properties_that_are_not_an_object_refuse_the_alert(custom: Any) -> None:
    with pytest.raises(ReimagerError) as info:
        parse_alert(alert(custom=custom))
    err = info.value
    assert http_status(err) == 400 and err.error.target == "data.customProperties"
    assert "object" in err.error.message


def test_null_or_empty_custom_properties_are_fine() -> None:
    assert len(parse_alert(alert(custom=None)).accepted) == 1
    assert len(parse_alert(alert(custom={})).accepted) == 1
    assert len(parse_alert(alert(custom={"team": "web", "runbook": "https://x"})).accepted) == 1


LOOK_ALIKES = [" reimage.dryRun", "reimage.dryRun ", "reimage:dryRun", "Reimage_DryRun", "reimage.dryrun",
               "REIMAGE.DRYRUN", "reimage dryRun", "reimage-dryRun", "reimage.dry_run", "reimage..dryRun",
               "reimage/dryRun", "reimageDryRun", "dryRun", "DryRun", "dry-run", "reimage.dryRun\u200b",
               "\uff52eimage.dryRun", "re-image.dryRun", "reimage.tempdisk", "TempDisk", "reimage.allinstances",
               "reimage.exact_version", "reimage.ForceUpdateOSDiskForEphemeral", "reimage.whatIf", "reimage.dryRn",
               "reimage", "reimage.", "x-reimage.dryRun", "reimage.everything"]


@pytest.mark.parametrize("key", LOOK_ALIKES)
def test_a_look_alike_option_key_refuses_the_alert_naming_it(key: str) -> None:
    with pytest.raises(ReimagerError) as info:
        parse_alert(alert(custom={key: "true"}))
    err = info.value
    assert http_status(err) == 400 and err.code == "InvalidRequest"
    assert [d.target for d in err.error.details] == [f"data.customProperties.{key}"]
    message = err.error.details[0].message
    assert repr(key) in message or json.dumps(key) in message
    for valid in VALID_KEYS:
        assert valid in message


@pytest.mark.parametrize("key", ["dryRn", "drRun", "dyrRun", "reimgae.dryRun", "reimage.dryRn", "tmpDisk", "tempDisc",
                                 "allInstance", "exactVersoin", "WhatIf", "what_if"])
def test_a_typo_of_an_option_refuses_the_alert(key: str) -> None:
    with pytest.raises(ReimagerError):
        parse_alert(alert(custom={key: "true"}))


@pytest.mark.parametrize("key", ["Key1", "team", "owner", "runbook", "severity", "environment", "region", "reason",
                                 "version", "image", "imageVersion", "instances", "instanceCount", "diskType", "temp",
                                 "what", "drift", "ephemeral", "osType"])
def test_ordinary_custom_properties_do_not_refuse_the_alert(key: str) -> None:
    assert len(parse_alert(alert(custom={key: "true"})).accepted) == 1


@pytest.mark.parametrize("value", ["yes", "no", "1", "0", "on", "", "truee", 1, 0, None, [True], {"a": 1}, 1.0])
def test_a_boolean_option_takes_only_true_or_false(value: Any) -> None:
    with pytest.raises(ReimagerError) as info:
        parse_alert(alert(custom={"reimage.dryRun": value}))
    d = info.value.error.details[0]
    assert d.target == "data.customProperties.reimage.dryRun" and "true or false" in d.message


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("TRUE", True), ("True", True), ("false", False),
                                                 ("FALSE", False), (True, True), (False, False)])
def test_boolean_options_accept_booleans_and_their_strings(value: Any, expected: bool) -> None:
    parsed = parse_alert(alert(custom={"reimage.dryRun": value, "reimage.tempDisk": value}))
    assert parsed.accepted[0].request["dryRun"] is expected and parsed.accepted[0].request["tempDisk"] is expected


@pytest.mark.parametrize("value", ["latest", "", 1.2, None, ["1.0"], "1.2.3.4.5"])
def test_exact_version_must_be_a_version_string(value: Any) -> None:
    with pytest.raises(ReimagerError) as info:
        parse_alert(alert(custom={"reimage.exactVersion": value}))
    assert info.value.error.details[0].target == "data.customProperties.reimage.exactVersion"
    assert parse_alert(alert(custom={"reimage.exactVersion": "10.0.14393.0"})).accepted[0].request[
        "exactVersion"] == "10.0.14393.0"


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ReimagerError) as info:
        parse_alert(alert(custom={"reimage.dryrun": "true", "reimage.tempDisk": "maybe", "team": "web"}))
    assert {d.target for d in info.value.error.details} == {"data.customProperties.reimage.dryrun",
                                                            "data.customProperties.reimage.tempDisk"}


_OPTIONS = ["dryRun", "tempDisk", "forceUpdateOSDiskForEphemeral", "exactVersion", "allInstances", "captureEvidence"]
_SEPARATORS = ["", ".", ":", "_", "-", " ", "/", "..", "\t", "\u00a0", "\u200b", "\u3002", "\uff0e", "|"]


@st.composite
def variant_keys(draw: st.DrawFn) -> str:
    option = draw(st.sampled_from(_OPTIONS))
    prefix = draw(st.sampled_from(["reimage", "re-image", "re_image", "Reimage", "REIMAGE", ""]))
    sep = draw(st.sampled_from(_SEPARATORS)) if prefix else ""
    cased = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in option) if draw(st.booleans()) \
        else option
    pad = draw(st.sampled_from(["", " ", "\t", "\n", "\u00a0", "\ufeff"]))
    return pad + prefix + sep + cased + draw(st.sampled_from(["", " ", "\u200b", "s"]))


@settings(max_examples=400)
@given(variant_keys(), st.sampled_from(["true", "false", "True", True, "yes"]))
def test_any_variant_of_an_option_key_is_exact_or_refused(key: str, value: Any) -> None:
    valid = key in VALID_KEYS and key not in ("reimage.exactVersion", "reimage.captureEvidence") and (  # no sampled
        # value is a version or an evidence mode
        value is True or str(value).lower() in ("true", "false"))
    try:
        parsed = parse_alert(alert(custom={key: value}))
    except ReimagerError as exc:
        assert not valid and http_status(exc) == 400
        assert all(d.target == f"data.customProperties.{key}" for d in exc.error.details)
        return
    assert valid, (key, value)
    option = key.removeprefix("reimage.")
    request = parsed.accepted[0].request if parsed.accepted else {}
    assert not parsed.accepted or option in request or option == "allInstances"


def test_capture_evidence_is_a_mode_and_goes_into_the_request() -> None:
    from shared.domain.request import parse_request

    for value, mode in (("snapshot", "snapshot"), ("Off", "off"), (" bootdiagnostics ", "bootdiagnostics")):
        [target] = parse_alert(alert(custom={"reimage.captureEvidence": value})).accepted
        assert target.request["captureEvidence"] == mode
        assert parse_request(target.request).capture_evidence == mode
    for bad in ("yes", True, "snapshots", ""):
        with pytest.raises(ReimagerError) as info:
            parse_alert(alert(custom={"reimage.captureEvidence": bad}))
        assert info.value.error.details[0].target == "data.customProperties.reimage.captureEvidence"


def test_valid_keys_are_listed_in_the_refusal_in_a_stable_order() -> None:
    with pytest.raises(ReimagerError) as info:
        parse_alert(alert(custom={"reimage:dryRun": "true"}))
    listed = re.findall(r"reimage\.[A-Za-z]+", info.value.error.details[0].message)
    assert sorted(set(listed)) == sorted(VALID_KEYS)
