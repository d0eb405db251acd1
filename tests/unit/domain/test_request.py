"""Every ReimageRequest rule, just inside and just outside each bound."""

import base64
from typing import Any

import pytest

from shared.domain.arm_call import ReimageOperation
from shared.domain.errors import ReimagerError
from shared.domain.request import DISALLOWED_PASSWORDS, parse_request
from shared.surfaces.http import http_status
from tests.helpers import RG, SUB, VM_ID, VMSS_ID


def req(**fields: Any) -> dict[str, Any]:
    return {"target": VM_ID, **fields}


def refused(data: dict[str, Any], field: str | None = None, **kw: Any) -> ReimagerError:
    with pytest.raises(ReimagerError) as info:
        parse_request(data, **kw)
    err = info.value
    assert http_status(err) == 400 and err.code == "InvalidRequest"
    if field is not None:
        targets = [d.target for d in err.error.details]
        messages = " ".join(d.message for d in err.error.details)
        assert any((t or "").startswith(field) for t in targets) or field in messages, (targets, messages)
    return err


# --- customData -------------------------------------------------------------------------
def test_custom_data_at_the_limit_passes_and_one_more_byte_fails() -> None:
    ok = base64.b64encode(b"x" * 65535).decode()
    parse_request(req(osProfile={"customData": ok}))
    refused(req(osProfile={"customData": base64.b64encode(b"x" * 65536).decode()}), "osProfile.customData")


@pytest.mark.parametrize("bad", ["not base64!", "YWJj=", "YW Jj", ""])
def test_custom_data_must_be_base64(bad: str) -> None:
    refused(req(osProfile={"customData": bad}), "osProfile.customData")


# --- adminPassword ----------------------------------------------------------------------
def test_password_lengths_per_os() -> None:
    r = parse_request(req(osProfile={"adminPassword": "Aa1-xy"}))  # 6: Linux minimum
    r.check_against("Linux", ephemeral_os_disk=False)
    with pytest.raises(ReimagerError) as info:
        r.check_against("Windows", ephemeral_os_disk=False)
    assert info.value.error.target == "osProfile.adminPassword"
    refused(req(osProfile={"adminPassword": "Aa1-x"}), "osProfile.adminPassword")  # 5

    linux_max = "Aa1-" + "x" * 68  # 72
    parse_request(req(osProfile={"adminPassword": linux_max})).check_against("Linux", False)
    with pytest.raises(ReimagerError):
        parse_request(req(osProfile={"adminPassword": linux_max + "y"})).check_against("Linux", False)

    win_max = "Aa1-" + "x" * 119  # 123
    parse_request(req(osProfile={"adminPassword": win_max})).check_against("Windows", False)
    refused(req(osProfile={"adminPassword": win_max + "y"}), "osProfile.adminPassword")

    win_min = "Aa1-xyzw"  # 8
    parse_request(req(osProfile={"adminPassword": win_min})).check_against("Windows", False)
    with pytest.raises(ReimagerError):
        parse_request(req(osProfile={"adminPassword": win_min[:-1]})).check_against("Windows", False)


@pytest.mark.parametrize("pw", ["abcdefgh", "abcdEFGH", "abcd1234", "ABCD!!!!", "1234!!!!"])
def test_two_classes_fail(pw: str) -> None:
    refused(req(osProfile={"adminPassword": pw}), "osProfile.adminPassword")


@pytest.mark.parametrize("pw", ["abcdEF12", "abcd12!!", "ABCD12__", "abcdEF!!"])
def test_three_classes_pass(pw: str) -> None:
    parse_request(req(osProfile={"adminPassword": pw}))


@pytest.mark.parametrize("pw", sorted(DISALLOWED_PASSWORDS))
def test_each_disallowed_value_fails(pw: str) -> None:
    assert len(DISALLOWED_PASSWORDS) == 10
    err = refused(req(osProfile={"adminPassword": pw}), "osProfile.adminPassword")
    assert pw not in str(err.body())


def test_os_profile_must_not_be_empty() -> None:
    refused(req(osProfile={}), "osProfile")


# --- exactVersion -----------------------------------------------------------------------
@pytest.mark.parametrize("v", ["1", "10.0", "10.0.14393", "10.0.14393.0", "0.0.0.0"])
def test_exact_version_ok(v: str) -> None:
    parse_request(req(exactVersion=v))


@pytest.mark.parametrize("v", ["", "1.2.3.4.5", "latest", "1..2", "-1", "1.2.", "v1.0", "1.a"])
def test_exact_version_bad(v: str) -> None:
    refused(req(exactVersion=v), "exactVersion")


# --- instanceIds / allInstances ---------------------------------------------------------
def test_scale_set_needs_instance_ids_or_all_instances() -> None:
    refused({"target": VMSS_ID}, "instanceIds")
    refused({"target": VMSS_ID, "instanceIds": []}, "instanceIds")
    refused({"target": VMSS_ID, "allInstances": False}, "instanceIds")
    r = parse_request({"target": VMSS_ID, "allInstances": True})
    assert r.instance_count is None
    with pytest.raises(AssertionError):  # an omitted list means "every instance" to ARM: never sent
        r.arm_call("2024-07-01")
    # allInstances is resolved at preflight to the instances the set has now, and the POST names them.
    assert r.arm_call("2024-07-01", instance_ids=["0", "3"]).wire_body() == {"instanceIds": ["0", "3"]}
    refused({"target": VMSS_ID, "allInstances": True, "instanceIds": ["1"]}, "allInstances")


# ("a" would be a Flexible set's member name: test_request_input.py::test_flexible_member_names_are_instance_ids)
@pytest.mark.parametrize("ids", [["a b"], ["1", "01"], ["1", "1"], ["-1"], [" 1"], ["1.0"], [True], [1, "1"]])
def test_instance_ids_decimal_unique(ids: list[Any]) -> None:
    refused({"target": VMSS_ID, "instanceIds": ids}, "instanceIds")


def test_instance_ids_capped() -> None:
    parse_request({"target": VMSS_ID, "instanceIds": [str(i) for i in range(5)]}, max_instances=5)
    refused({"target": VMSS_ID, "instanceIds": [str(i) for i in range(6)]}, "instanceIds", max_instances=5)


def test_scale_set_only_fields_refused_for_vm() -> None:
    for extra in ({"instanceIds": ["1"]}, {"allInstances": True}, {"forceUpdateOSDiskForEphemeral": True},
                  {"allDisks": True}):
        key = next(iter(extra))
        refused(req(**extra), key)


def test_instance_target_takes_no_instance_list() -> None:
    refused({"target": VMSS_ID + "/virtualMachines/3", "instanceIds": ["3"]}, "instanceIds")
    r = parse_request({"target": VMSS_ID + "/virtualMachines/3"})
    call = r.arm_call("2024-07-01")
    assert call.operation is ReimageOperation.VMSS_REIMAGE
    assert call.wire_body() == {"instanceIds": ["3"]}


# --- ephemeral-only flags ---------------------------------------------------------------
def test_temp_disk_needs_ephemeral_os_disk() -> None:
    r = parse_request(req(tempDisk=True))
    r.check_against("Linux", ephemeral_os_disk=True)
    with pytest.raises(ReimagerError) as info:
        r.check_against("Linux", ephemeral_os_disk=False)
    assert info.value.error.target == "tempDisk"


def test_force_update_needs_ephemeral_and_scale_set() -> None:
    r = parse_request({"target": VMSS_ID, "instanceIds": ["0"], "forceUpdateOSDiskForEphemeral": True})
    r.check_against("Linux", True)
    with pytest.raises(ReimagerError):
        r.check_against("Linux", False)


# --- shape ------------------------------------------------------------------------------
def test_unknown_fields_are_rejected() -> None:
    err = refused(req(tempdisk=True), "tempdisk")
    assert err.error.details[0].code == "UnknownField"
    refused(req(osProfile={"adminPassword": "Aa1-xyzw", "adminUsername": "x"}), "osProfile.adminUsername")


def test_booleans_are_strict() -> None:
    refused(req(tempDisk="yes"), "tempDisk")
    refused(req(dryRun=1), "dryRun")


def test_target_or_parts() -> None:
    r = parse_request({"resourceGroupName": RG, "vmName": "vm1"}, default_subscription_id=SUB)
    assert r.resolved_target.id == VM_ID
    refused({"resourceGroupName": RG, "vmName": "vm1"})  # no subscription anywhere
    refused({"target": VM_ID, "vmName": "vm1"})
    refused({})
    refused({"target": VM_ID.replace("virtualMachines", "disks")}, None)


@pytest.mark.parametrize(("field", "ok", "bad"), [
    ("requestId", "a" * 128, "a" * 129),
    ("requestId", "alert:1.2_3-x", "has space"),
    ("requestedBy", "x" * 256, "x" * 257),
    ("reason", "x" * 256, "x" * 257),
])
def test_free_text_bounds(field: str, ok: str, bad: str) -> None:
    parse_request(req(**{field: ok}))
    refused(req(**{field: bad}), field)


def test_all_disks_uses_reimageall_and_takes_no_os_options() -> None:
    r = parse_request({"target": VMSS_ID, "instanceIds": ["1"], "allDisks": True})
    call = r.arm_call("2024-07-01")
    assert call.path.endswith("/reimageall") and call.wire_body() == {"instanceIds": ["1"]}
    refused({"target": VMSS_ID, "instanceIds": ["1"], "allDisks": True, "tempDisk": True}, "tempDisk")


def test_default_api_version_in_query() -> None:
    assert parse_request(req()).arm_call("2024-07-01").query == {"api-version": "2024-07-01"}
