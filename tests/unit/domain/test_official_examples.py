"""Our model builds the same path parameters and body as every official ARM example."""

import json
import re
from pathlib import Path
from typing import Any

import pytest

from shared.domain.arm_call import ReimageOperation
from shared.domain.request import parse_request
from tests.helpers import FIXTURES, SUB

EXAMPLES = sorted((FIXTURES / "arm/examples").glob("*/*.json"))
OPERATION_BY_FILE = {
    "VirtualMachine_Reimage": ReimageOperation.VM_REIMAGE,
    "VirtualMachine_Reimage_NonEphemeralVMs": ReimageOperation.VM_REIMAGE,
    "VirtualMachineScaleSet_Reimage_MaximumSet_Gen": ReimageOperation.VMSS_REIMAGE,
    "VirtualMachineScaleSet_Reimage_MinimumSet_Gen": ReimageOperation.VMSS_REIMAGE,
    "VirtualMachineScaleSet_ReimageAll_MaximumSet_Gen": ReimageOperation.VMSS_REIMAGE_ALL,
    "VirtualMachineScaleSet_ReimageAll_MinimumSet_Gen": ReimageOperation.VMSS_REIMAGE_ALL,
    "VirtualMachineScaleSetVM_Reimage_MaximumSet_Gen": ReimageOperation.VMSS_VM_REIMAGE,
    "VirtualMachineScaleSetVM_Reimage_MinimumSet_Gen": ReimageOperation.VMSS_VM_REIMAGE,
    "VirtualMachineScaleSetVM_ReimageAll_MaximumSet_Gen": ReimageOperation.VMSS_VM_REIMAGE_ALL,
    "VirtualMachineScaleSetVM_ReimageAll_MinimumSet_Gen": ReimageOperation.VMSS_VM_REIMAGE_ALL,
}
_PATH = re.compile(r"/subscriptions/(?P<subscriptionId>[^/]+)/resourceGroups/(?P<resourceGroupName>[^/]+)/providers/"
                   r"Microsoft\.Compute/(?:virtualMachines/(?P<vmName>[^/]+)|virtualMachineScaleSets/"
                   r"(?P<vmScaleSetName>[^/]+)(?:/virtualMachines/(?P<instanceId>[^/]+))?)/reimage(?:all)?")
BODY_PARAMS = ("parameters", "vmScaleSetReimageInput", "vmScaleSetVMReimageInput", "vmInstanceIDs")

# The generated examples use placeholders our validation refuses on purpose (ids must be
# decimal, versions numeric, the subscription a GUID, secrets real); each is swapped for a
# valid value and swapped back before comparing.
SWAPS = {"{subscription-id}": SUB, "aaaaaa": "10.0.14393.0", "{your-password}": "Pl@ceholder-1",
         "{your-custom-data}": "eW91ci1jdXN0b20tZGF0YQ=="}


def _swap(value: str, instance_map: dict[str, str]) -> str:
    return instance_map.get(value, SWAPS.get(value, value))


def _request_for(example: dict[str, Any], op: ReimageOperation, instance_map: dict[str, str]) -> dict[str, Any]:
    p = example["parameters"]
    body = next((p[k] for k in BODY_PARAMS if k in p), {})
    sub = _swap(p["subscriptionId"], instance_map)
    request: dict[str, Any] = {"subscriptionId": sub, "resourceGroupName": p["resourceGroupName"]}
    if "vmName" in p:
        request["vmName"] = p["vmName"]
    else:
        request["vmScaleSetName"] = p["vmScaleSetName"]
    if "instanceId" in p:
        request = {"target": (
            f"/subscriptions/{sub}/resourceGroups/{p['resourceGroupName']}/providers/Microsoft.Compute/"
            f"virtualMachineScaleSets/{p['vmScaleSetName']}/virtualMachines/{_swap(p['instanceId'], instance_map)}"
        )}
    for key, value in body.items():
        if key == "instanceIds":
            request[key] = [_swap(v, instance_map) for v in value]
        elif key == "osProfile":
            request[key] = {k: _swap(v, instance_map) for k, v in value.items()}
        else:
            request[key] = _swap(value, instance_map) if isinstance(value, str) else value
    if op in (ReimageOperation.VMSS_REIMAGE, ReimageOperation.VMSS_REIMAGE_ALL) and "instanceIds" not in request:
        request["allInstances"] = True  # the API's "omitted means all", chosen explicitly
    if op in (ReimageOperation.VMSS_REIMAGE_ALL, ReimageOperation.VMSS_VM_REIMAGE_ALL):
        request["allDisks"] = True
    return request


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_example_round_trip(path: Path) -> None:
    example = json.loads(path.read_text())
    op = OPERATION_BY_FILE[path.stem]
    p = example["parameters"]
    placeholders = [p.get("instanceId"), *next((p[k] for k in BODY_PARAMS if k in p), {}).get("instanceIds", [])]
    instance_map = {v: str(i + 7) for i, v in enumerate(x for x in placeholders if x)}
    back = {v: k for k, v in {**SWAPS, **instance_map}.items()}

    request = parse_request(_request_for(example, op, instance_map))
    expected_body = next((p[k] for k in BODY_PARAMS if k in p), None)
    if request.all_instances:
        # The example's omitted instanceIds means "every instance"; reimager never sends that form. It
        # resolves allInstances at preflight and names the instances, so the body gains exactly that list.
        with pytest.raises(AssertionError):
            request.arm_call(p["api-version"], op)
        call = request.arm_call(p["api-version"], op, instance_ids=["0", "1"])
        expected_body = {**(expected_body or {}), "instanceIds": ["0", "1"]}
    else:
        call = request.arm_call(p["api-version"], op)

    # The path parameters of the URL actually sent, read back by the spec's path templates.
    sent = _PATH.fullmatch(call.path)
    assert sent is not None, call.path
    path_params = {k: back.get(v, v) for k, v in sent.groupdict().items() if v is not None}
    expected_params = {k: v for k, v in p.items() if k not in BODY_PARAMS and k != "api-version"}
    assert path_params == expected_params
    assert call.query == {"api-version": p["api-version"]}

    def unswap(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: unswap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [unswap(v) for v in value]
        return back.get(value, value) if isinstance(value, str) else value

    assert unswap(call.wire_body()) == expected_body


def test_every_example_is_covered() -> None:
    assert {p.stem for p in EXAMPLES} == set(OPERATION_BY_FILE)
    assert len(EXAMPLES) == 10
