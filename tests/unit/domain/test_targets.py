import pytest

from shared.domain.targets import TargetError, TargetKind, build_target, parse_scope, parse_target, within_scope
from tests.helpers import RG, SUB, VM_ID, VMSS_ID


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
