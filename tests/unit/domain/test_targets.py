"""shared/domain/targets.py: ARM ids parsed, built and matched against scopes; names follow ARM's rules and
compare with ASCII-only case folding, so a look-alike is never inside a scope it only resembles."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.targets import TargetError, TargetKind, build_target, parse_scope, parse_target, within_scope
from tests.helpers import DOTTED_I, KELVIN, LONG_S, RG, SUB, VM_ID, VMSS_ID
from tests.unit.domain.test_request_input import refused


def test_vm_id_parses_and_normalises_fixed_segments() -> None:
    raw = f"/SUBSCRIPTIONS/{SUB.upper()}/resourcegroups/{RG}/providers/microsoft.compute/virtualmachines/VM1"
    t = parse_target(raw)
    assert t.kind is TargetKind.VM
    assert t.id == f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/VM1"
    assert t.key == parse_target(VM_ID).key.replace("vm1", "vm1")  # names compare case-insensitively
    assert parse_target(raw).key == parse_target(raw.lower()).key


def test_vmss_and_instance() -> None:
    assert parse_target(VMSS_ID).kind is TargetKind.VMSS
    inst = parse_target(VMSS_ID + "/virtualMachines/12")
    assert inst.kind is TargetKind.VMSS_INSTANCE
    assert inst.instance_id == "12"
    assert inst.vm_id == VMSS_ID
    assert inst.lock_key == parse_target(VMSS_ID).lock_key


@pytest.mark.parametrize(
    ("resource_id", "seen"),
    [
        (f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Storage/storageAccounts/sa",
         "Microsoft.Storage/storageAccounts"),
        (f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/disks/d1", "Microsoft.Compute/disks"),
        (VM_ID + "/extensions/x", "Microsoft.Compute/virtualMachines/extensions"),
    ],
)
def test_other_types_are_named_in_the_error(resource_id: str, seen: str) -> None:
    with pytest.raises(TargetError, match=seen):
        parse_target(resource_id)


@pytest.mark.parametrize(
    "bad",
    ["", "vm1", "/subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/v",
     VMSS_ID + "/virtualMachines/abc", VM_ID + "/../x"],
)
def test_malformed_ids(bad: str) -> None:
    with pytest.raises(TargetError):
        parse_target(bad)


def test_build_from_parts() -> None:
    assert build_target(SUB, RG, vm_name="vm1").id == VM_ID
    assert build_target(SUB, RG, vm_scale_set_name="ss1").id == VMSS_ID
    with pytest.raises(TargetError):
        build_target(SUB, RG, vm_name="a", vm_scale_set_name="b")
    with pytest.raises(TargetError):
        build_target(SUB, RG)


def test_scope_matching_is_segment_wise() -> None:
    scope = parse_scope(f"/subscriptions/{SUB}/resourceGroups/{RG}")
    assert within_scope(parse_target(VM_ID), scope)
    other = parse_target(VM_ID.replace(RG, RG + "-other"))
    assert not within_scope(other, scope)  # a plain prefix match would allow this
    with pytest.raises(TargetError):
        parse_scope("/subscriptions/x")


def test_target_instance_ids_with_leading_zeros_are_refused_by_the_parser() -> None:
    for bad in ("007", "01", "00"):
        with pytest.raises(TargetError, match='canonical decimal strings like "7"'):
            parse_target(f"{VMSS_ID}/virtualMachines/{bad}")
        with pytest.raises(TargetError):
            build_target(SUB, RG, vm_scale_set_name="ss1", instance_id=bad)
    assert parse_target(f"{VMSS_ID}/virtualMachines/0").instance_id == "0"
    assert parse_target(f"{VMSS_ID}/virtualMachines/70").instance_id == "70"


# --- ARM ids compare with ASCII-only case folding ---------------------------------------------
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
