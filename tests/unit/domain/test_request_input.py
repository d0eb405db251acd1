"""The request's input rules: instance ids in their canonical form, osProfile only for a non-ephemeral OS
disk, and refusals a person can act on (each detail names its field)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.errors import ReimagerError
from shared.domain.request import ReimageRequest, parse_request
from shared.surfaces.http import http_status
from tests.helpers import RG, SUB, VM_ID, VMSS_ID


def refused(data: Any, **kw: Any) -> ReimagerError:
    with pytest.raises(ReimagerError) as info:
        parse_request(data, **kw)
    assert http_status(info.value) == 400 and info.value.code == "InvalidRequest"
    return info.value


def text_of(err: ReimagerError) -> str:
    return " ".join([err.error.message, *(d.message for d in err.error.details)])


# --- canonical instance ids ----------------------------------------------------------------
@pytest.mark.parametrize("bad", ["01", "007", "00", "0007", "+1", "1\n", "\u0661", "\uff17", "1_0", " 7", "7 "])
def test_non_canonical_instance_ids_are_refused(bad: str) -> None:
    err = refused({"target": VMSS_ID, "instanceIds": [bad]})
    assert 'canonical decimal strings like "7"' in text_of(err)
    assert err.error.details[0].target == "instanceIds[0]"
    if bad.strip() == bad:  # a target id is stripped as a whole; inside it nothing is
        err = refused({"target": f"{VMSS_ID}/virtualMachines/{bad}"})
        assert err.error.details[0].target == "target"
        assert 'canonical decimal strings like "7"' in text_of(err)


@pytest.mark.parametrize("bad", [[0], [0, 1, 70], ["1", 2], [-1], [True], [1.0], [10**11], [None], [[1]]])
def test_instance_ids_must_be_json_strings(bad: list[Any]) -> None:
    err = refused({"target": VMSS_ID, "instanceIds": bad})
    assert err.error.code == "InvalidRequest"
    assert all(d.target and d.target.startswith("instanceIds[") for d in err.error.details)
    if bad == [0]:
        assert err.error.details[0].target == "instanceIds[0]"
        assert 'send the number as a JSON string ("0")' in text_of(err)


def test_flexible_member_names_are_instance_ids() -> None:
    """A Flexible set's instances are its member VMs, named by VM name (known as such only at preflight); a name
    must start with a letter, so a Uniform id written wrongly ("07", "1_0") is still refused."""
    r = parse_request({"target": VMSS_ID, "instanceIds": ["workers_3f2a9c1e", "web.01-b"]})
    assert r.effective_instance_ids == ["workers_3f2a9c1e", "web.01-b"]
    for bad in (["_a"], ["1_0"], ["a" * 81], ["a/b"], ["é"]):
        err = refused({"target": VMSS_ID, "instanceIds": bad})
        assert "Flexible scale set's members are named by their VM names" in text_of(err)


def test_canonical_instance_ids_still_pass() -> None:
    assert parse_request({"target": VMSS_ID, "instanceIds": ["0", "7", "12", "9999999999"]}).instance_count == 4


# --- osProfile is for a non-ephemeral OS disk ------------------------------------------------
def test_os_profile_on_an_ephemeral_os_disk_is_refused() -> None:
    r = parse_request({"target": VM_ID, "osProfile": {"adminPassword": "Str0ng-Passw0rd"}})
    r.check_against("Linux", ephemeral_os_disk=False)
    with pytest.raises(ReimagerError) as info:
        r.check_against("Linux", ephemeral_os_disk=True)
    assert http_status(info.value) == 400 and info.value.error.target == "osProfile"
    assert "ephemeral" in info.value.error.details[0].message
    r = parse_request({"target": VMSS_ID + "/virtualMachines/1", "osProfile": {"customData": "YWJj"}})
    with pytest.raises(ReimagerError):
        r.check_against(None, ephemeral_os_disk=True)


# --- errors a person can act on ----------------------------------------------------------------
@pytest.mark.parametrize("body", [None, [], "reimage", 7, True])
def test_a_body_that_is_not_an_object_says_what_is_expected(body: Any) -> None:
    err = refused(body)
    text = text_of(err)
    assert "ReimageRequest" not in text and "dictionary" not in text
    assert "JSON object" in text and "target" in text


def test_unknown_fields_name_the_field_and_list_the_allowed_ones() -> None:
    err = refused({"target": VM_ID, "tempdisk": True})
    d = err.error.details[0]
    assert d.code == "UnknownField" and d.target == "tempdisk"
    assert "Extra inputs" not in d.message and "'tempdisk'" in d.message
    assert "did you mean 'tempDisk'" in d.message
    for allowed in ("target", "instanceIds", "allInstances", "tempDisk", "osProfile", "requestId", "dryRun"):
        assert allowed in d.message
    d = refused({"target": VM_ID, "osProfile": {"adminPassword": "Aa1-xyzw", "adminUsername": "x"}}).error.details[0]
    assert d.target == "osProfile.adminUsername" and "adminPassword" in d.message and "customData" in d.message
    assert "instanceIds" not in d.message  # the fields of osProfile, not of the request


@pytest.mark.parametrize(("body", "fields"), [
    ({"target": VM_ID, "instanceIds": ["1"]}, {"instanceIds"}),
    ({"target": VM_ID, "allInstances": True}, {"allInstances"}),
    ({"target": VMSS_ID, "instanceIds": ["1"], "allDisks": True, "tempDisk": True}, {"tempDisk"}),
    ({"target": VMSS_ID, "instanceIds": ["1"], "allDisks": True, "tempDisk": True, "exactVersion": "1"},
     {"tempDisk", "exactVersion"}),
    ({"target": "not an id"}, {"target"}),
    ({"target": VM_ID.replace("virtualMachines", "disks")}, {"target"}),
    ({"target": VM_ID, "vmName": "v"}, {"target", "vmName"}),
    ({"target": VMSS_ID}, {"instanceIds"}),
    ({"target": VMSS_ID, "instanceIds": ["1"], "allInstances": True}, {"instanceIds", "allInstances"}),
    ({"target": VMSS_ID + "/virtualMachines/1", "instanceIds": ["1"]}, {"instanceIds"}),
    ({}, {"target"}),
    ({"resourceGroupName": RG, "vmName": "v"}, {"subscriptionId"}),
    ({"subscriptionId": "nope", "resourceGroupName": RG, "vmName": "v"}, {"subscriptionId"}),
    ({"subscriptionId": SUB, "resourceGroupName": "bad/rg", "vmName": "v"}, {"resourceGroupName"}),
    ({"subscriptionId": SUB, "resourceGroupName": RG}, {"vmName", "vmScaleSetName"}),
    ({"subscriptionId": SUB, "resourceGroupName": RG, "vmName": "a", "vmScaleSetName": "b"},
     {"vmName", "vmScaleSetName"}),
])
def test_every_detail_names_its_field(body: dict[str, Any], fields: set[str]) -> None:
    err = refused(body)
    targets = {d.target for d in err.error.details}
    assert None not in targets, err.body()
    assert targets == fields, err.body()


field_names = st.sampled_from(["target", "instanceIds", "allInstances", "tempDisk", "forceUpdateOSDiskForEphemeral",
                               "exactVersion", "osProfile", "requestId", "dryRun", "allDisks", "vmName",
                               "vmScaleSetName", "resourceGroupName", "subscriptionId", "reason"])


values = st.sampled_from([None, True, False, 1, "1", "01", [], ["1"], ["01"], [1], {}, "x", VM_ID, VMSS_ID, RG, SUB,
                          VMSS_ID + "/virtualMachines/1", {"adminPassword": "Aa1-xyzw"}, "v"])


@settings(max_examples=400)
@given(st.dictionaries(field_names, values, max_size=6))
def test_any_refusal_of_an_object_names_a_field_in_every_detail(data: dict[str, Any]) -> None:
    try:
        parse_request(data)
    except ReimagerError as exc:
        assert http_status(exc) == 400
        assert exc.error.details and all(d.target for d in exc.error.details), exc.body()
        assert "ReimageRequest" not in text_of(exc)


def test_the_schema_says_instance_ids_are_strings() -> None:
    items = ReimageRequest.model_json_schema(by_alias=True)["properties"]["instanceIds"]["anyOf"][0]["items"]
    assert items["type"] == "string" and "anyOf" not in items


# Issue 26: no field converts a wrong JSON type (pydantic's lax mode would turn "true" into True, 1 into "1").
@pytest.mark.parametrize(("field", "value"), [
    ("requestId", 12), ("target", 5), ("reason", 5), ("correlationId", 7), ("requestedBy", 1), ("exactVersion", 10),
    ("subscriptionId", 1), ("resourceGroupName", 2), ("vmName", 1.5), ("vmScaleSetName", 3), ("dryRun", "true"),
    ("dryRun", 1), ("allInstances", "true"), ("allDisks", 0), ("tempDisk", "false"),
    ("forceUpdateOSDiskForEphemeral", 1), ("osProfile", {"adminPassword": 12345678}),
    ("osProfile", {"customData": 1234}), ("osProfile", "x"), ("instanceIds", "0"),
])
def test_no_field_converts_a_wrong_json_type(field: str, value: Any) -> None:
    body = {"target": VMSS_ID, field: value} if field != "target" else {field: value}
    err = refused(body)
    assert any(d.target and d.target.startswith(field) for d in err.error.details), err.body()
