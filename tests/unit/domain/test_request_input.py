"""Hardening of request input: nesting depth, instance ids, ARM id case folding, osProfile on an
ephemeral disk, and error messages a person can act on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.errors import ReimagerError
from shared.domain.request import ReimageRequest, parse_request
from shared.domain.targets import TargetError, build_target, parse_scope, parse_target, within_scope
from shared.surfaces.http import http_status
from shared.surfaces.json_body import parse_json
from tests.helpers import RG, SUB, VM_ID, VMSS_ID

KELVIN = "\u212a"  # KELVIN SIGN: str.lower() turns it into an ASCII "k"
LONG_S = "\u017f"  # LATIN SMALL LETTER LONG S: str.upper() turns it into an ASCII "S"
DOTTED_I = "\u0130"  # LATIN CAPITAL LETTER I WITH DOT ABOVE: lower() gives "i" + a combining dot


def refused(data: Any, **kw: Any) -> ReimagerError:
    with pytest.raises(ReimagerError) as info:
        parse_request(data, **kw)
    assert http_status(info.value) == 400 and info.value.code == "InvalidRequest"
    return info.value


def text_of(err: ReimagerError) -> str:
    return " ".join([err.error.message, *(d.message for d in err.error.details)])


# --- 2. nesting depth ------------------------------------------------------------------------
def _nested(shape: str, depth: int) -> bytes:
    if shape == "array":
        return b"[" * depth + b"]" * depth
    if shape == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"a":[' * (depth // 2) + b"1" + b"]}" * (depth // 2)  # mixed


@pytest.mark.parametrize("shape", ["array", "object", "mixed"])
def test_a_120_kb_nested_body_is_a_400_not_a_recursion_error(shape: str) -> None:
    body = _nested(shape, 120 * 1024 // {"array": 2, "object": 6, "mixed": 4}[shape])
    assert 100 * 1024 < len(body) < 256 * 1024
    with pytest.raises(ReimagerError) as info:
        parse_json(body)
    assert http_status(info.value) == 400 and info.value.code == "InvalidRequest"
    assert "nested deeper than 64" in info.value.error.message


@pytest.mark.parametrize("shape", ["array", "object"])
def test_depth_64_parses_and_65_is_refused(shape: str) -> None:
    assert parse_json(_nested(shape, 64)) is not None
    with pytest.raises(ReimagerError, match="nested deeper than 64"):
        parse_json(_nested(shape, 65))


def test_brackets_inside_strings_do_not_count() -> None:
    deep_text = "[" * 5000 + '\\"{' * 100 + "}" * 5000
    doc = parse_json(json.dumps({"reason": deep_text, "x": ["\\", "\"[[["]}).encode())
    assert doc["reason"] == deep_text
    with pytest.raises(ReimagerError, match="nested deeper than 64"):  # an escaped quote does not end a string
        parse_json(b'{"a": "\\"", "b": ' + b"[" * 70 + b"]" * 70 + b"}")


@pytest.mark.parametrize("raw", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b"[NaN]"])
def test_non_json_constants_are_refused(raw: bytes) -> None:
    with pytest.raises(ReimagerError) as info:
        parse_json(raw)
    assert http_status(info.value) == 400


def test_lone_surrogates_and_huge_numbers_are_refused_with_a_reason() -> None:
    assert parse_json(b'{"reason": "\\ud83d\\ude00"}') == {"reason": "\U0001f600"}  # a pair is one character
    for raw, words in ((b'{"reason": "\\ud800"}', "lone surrogate"), (b'{"reason": "x\\udfff"}', "lone surrogate"),
                       (b'{"instanceIds": [' + b"9" * 5000 + b"]}", "out of range"),
                       (b'{"target": "x",}', "line 1 column"), (b"\xff", "UTF-8")):
        with pytest.raises(ReimagerError) as info:
            parse_json(raw)
        assert http_status(info.value) == 400 and words in info.value.error.message, info.value.error.message


def test_duplicate_keys_are_refused_not_last_one_wins() -> None:
    with pytest.raises(ReimagerError) as info:
        parse_json(b'{"target": "x", "dryRun": true, "dryRun": false}')
    assert http_status(info.value) == 400 and "dryRun" in info.value.error.message
    with pytest.raises(ReimagerError):
        parse_json(b'{"data": {"customProperties": {"reimage.dryRun": "true", "reimage.dryRun": "false"}}}')


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(['[', ']', '{', '}', '"', '\\', ',', ':', '1', '"a":', ' ', 'x', 'é']),
                max_size=400), st.integers(0, 3000))
def test_any_bracket_soup_is_parsed_or_a_400(tokens: list[str], depth: int) -> None:
    body = ("[" * depth + "".join(tokens) + "]" * depth).encode()
    try:
        parse_json(body)
    except ReimagerError as exc:
        assert http_status(exc) == 400


# --- 4. canonical instance ids ----------------------------------------------------------------
@pytest.mark.parametrize("bad", ["01", "007", "00", "0007", "+1", "1\n", "\u0661", "\uff17", "1_0", " 7", "7 "])
def test_non_canonical_instance_ids_are_refused(bad: str) -> None:
    err = refused({"target": VMSS_ID, "instanceIds": [bad]})
    assert 'canonical decimal strings like "7"' in text_of(err)
    assert err.error.details[0].target == "instanceIds[0]"
    if bad.strip() == bad:  # a target id is stripped as a whole; inside it nothing is
        err = refused({"target": f"{VMSS_ID}/virtualMachines/{bad}"})
        assert err.error.details[0].target == "target"
        assert 'canonical decimal strings like "7"' in text_of(err)


def test_target_instance_ids_with_leading_zeros_are_refused_by_the_parser() -> None:
    for bad in ("007", "01", "00"):
        with pytest.raises(TargetError, match='canonical decimal strings like "7"'):
            parse_target(f"{VMSS_ID}/virtualMachines/{bad}")
        with pytest.raises(TargetError):
            build_target(SUB, RG, vm_scale_set_name="ss1", instance_id=bad)
    assert parse_target(f"{VMSS_ID}/virtualMachines/0").instance_id == "0"
    assert parse_target(f"{VMSS_ID}/virtualMachines/70").instance_id == "70"


def test_instance_ids_as_json_numbers_become_canonical_strings() -> None:
    r = parse_request({"target": VMSS_ID, "instanceIds": [0, 1, 70]})
    assert r.effective_instance_ids == ["0", "1", "70"]
    assert r.arm_call("2024-07-01").wire_body() == {"instanceIds": ["0", "1", "70"]}
    assert r.model_dump(mode="json", by_alias=True)["instanceIds"] == ["0", "1", "70"]


@pytest.mark.parametrize("bad", [[-1], [True], [1.0], [10**11], [1, "1"], [None], [[1]]])
def test_instance_id_numbers_must_be_small_non_negative_integers(bad: list[Any]) -> None:
    err = refused({"target": VMSS_ID, "instanceIds": bad})
    assert all(d.target and d.target.startswith("instanceIds") for d in err.error.details)


def test_canonical_instance_ids_still_pass() -> None:
    assert parse_request({"target": VMSS_ID, "instanceIds": ["0", "7", "12", "9999999999"]}).instance_count == 4


# --- 5. ARM ids compare with ASCII-only case folding ---------------------------------------------
def _vm(rg: str, name: str = "v") -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"


def test_lock_keys_fold_at_least_as_much_as_arm() -> None:
    """Locks and cooldowns must not split one VM into two keys: a case variant of a non-ASCII group is the
    same group to ARM, so it shares the lock (a look-alike sharing it too only blocks more)."""
    for a, b in (("gr\u00fcppe", "GR\u00dcPPE"), ("rg\u0131", "RGI"), ("rg" + LONG_S, "rgs"), ("rgk", "RG" + KELVIN),
                 ("Fleet", "fLEET")):
        assert parse_target(_vm(a)).lock_key == parse_target(_vm(b)).lock_key, (a, b)
    assert parse_target(_vm("rgk")).lock_key != parse_target(_vm("rgx")).lock_key


def test_kelvin_sign_is_not_inside_an_ascii_k_scope() -> None:
    scope = parse_scope(f"/subscriptions/{SUB}/resourceGroups/rgk")
    assert within_scope(parse_target(_vm("rgK")), scope)  # ASCII case still folds
    assert not within_scope(parse_target(_vm("rg" + KELVIN)), scope)
    assert parse_target(_vm("rg" + KELVIN)).key != parse_target(_vm("rgk")).key
    scope_k = parse_scope(f"/subscriptions/{SUB}/resourceGroups/rg{KELVIN}")
    assert not within_scope(parse_target(_vm("rgk")), scope_k)
    assert within_scope(parse_target(_vm("rg" + KELVIN)), scope_k)


@pytest.mark.parametrize("rid", [
    _vm(RG).replace("/subscriptions/", f"/{LONG_S}ubscriptions/"),
    _vm(RG).replace("/resourceGroups/", f"/re{LONG_S}ourceGroups/"),
    _vm(RG).replace("/providers/", f"/provider{LONG_S}/"),
    _vm(RG).replace("/subscriptions/", f"/SUB{LONG_S}CRIPTIONS/"),
    _vm(RG).replace("Microsoft.Compute", f"Micro{LONG_S}oft.Compute"),
    _vm(RG).replace("virtualMachines", f"virtualMachine{LONG_S}"),
    f"{VMSS_ID}/virtualMachine{LONG_S}/1".replace("resourceGroups", "resourcegroups"),
])
def test_fixed_segments_match_ascii_case_only(rid: str) -> None:
    with pytest.raises(TargetError):
        parse_target(rid)
    if "/providers/" in rid:
        scope = rid.split("/providers/")[0]
        if LONG_S in scope:
            with pytest.raises(TargetError):
                parse_scope(scope)


@pytest.mark.parametrize("name", ["v" + KELVIN, "vm\u00e9", "vm\u0661", "\uff56m", "vm1\n", "vm\u200b1", "vm\u0131"])
def test_vm_names_are_ascii(name: str) -> None:
    if name == name.strip():  # a whole id is stripped of surrounding white space; a name is not
        with pytest.raises(TargetError):
            parse_target(_vm(RG, name))
    with pytest.raises(TargetError):
        build_target(SUB, RG, vm_name=name)
    err = refused({"resourceGroupName": RG, "vmName": name}, default_subscription_id=SUB)
    assert err.error.details[0].target == "vmName"


@pytest.mark.parametrize("rg", ["rg\n", "rg.", "rg\u0301", "rg\u200b", "rg\u00b2", "r/g", ""])
def test_resource_group_names_follow_arm_rules(rg: str) -> None:
    with pytest.raises(TargetError):
        build_target(SUB, rg, vm_name="v")
    with pytest.raises(TargetError):
        parse_target(_vm(rg))


def test_unicode_letters_in_a_resource_group_are_allowed_and_kept_exactly() -> None:
    t = parse_target(_vm("gr\u00fcppe-\u65e5\u672c"))
    assert t.resource_group == "gr\u00fcppe-\u65e5\u672c"
    assert not within_scope(t, parse_scope(f"/subscriptions/{SUB}/resourceGroups/grueppe-ri"))


_FOLD_ALPHABET = ["k", "K", KELVIN, "s", "S", LONG_S, "i", "I", DOTTED_I, "\u0131", "a", "A", "\u00e5", "\u212b",
                  "\u00c5", "-", "_"]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(_FOLD_ALPHABET), min_size=1, max_size=8).map("".join),
       st.lists(st.sampled_from(_FOLD_ALPHABET), min_size=1, max_size=8).map("".join))
def test_scope_matching_is_ordinal_after_ascii_folding(target_rg: str, scope_rg: str) -> None:
    def ascii_fold(s: str) -> str:
        return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)

    try:
        target = parse_target(_vm(target_rg))
        scope = parse_scope(f"/subscriptions/{SUB}/resourceGroups/{scope_rg}")
    except TargetError:
        return  # not a valid resource group name: nothing to compare
    assert within_scope(target, scope) == (ascii_fold(target_rg) == ascii_fold(scope_rg))
    other = parse_target(_vm(scope_rg))
    assert (target.key == other.key) == (ascii_fold(target_rg) == ascii_fold(scope_rg))

    def simple_upper(s: str) -> str:  # .NET's OrdinalIgnoreCase: one character's simple upper-case mapping
        return "".join(c.upper() if len(c.upper()) == 1 else c for c in s)

    if simple_upper(target_rg) == simple_upper(scope_rg):
        assert target.lock_key == other.lock_key  # what ARM may call one group is one lock


# --- 6. osProfile is for a non-ephemeral OS disk ------------------------------------------------
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


# --- 7. errors a person can act on ----------------------------------------------------------------
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


def test_the_schema_says_instance_ids_may_be_numbers() -> None:
    items = ReimageRequest.model_json_schema(by_alias=True)["properties"]["instanceIds"]["anyOf"][0]["items"]
    kinds = {s.get("type") for s in items.get("anyOf", [items])}
    assert kinds == {"string", "integer"}
