"""Property tests: arbitrary JSON never raises anything but a 400; valid requests build spec bodies."""

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.domain.errors import ReimagerError
from shared.domain.request import ReimageRequest, parse_request
from shared.surfaces.http import http_status
from tests.helpers import FIXTURES, SUB

SPEC = json.loads((FIXTURES / "arm/spec/compute-reimage-2025-04-01.excerpt.json").read_text())
DEFS = SPEC["definitions"]


def _props(name: str) -> set[str]:
    d = DEFS[name]
    props = set(d.get("properties", {}))
    for ref in d.get("allOf", []):
        props |= _props(ref["$ref"].rsplit("/", 1)[-1])
    return props


ALLOWED_BODY_KEYS = {
    "VirtualMachines_Reimage": _props("VirtualMachineReimageParameters"),
    "VirtualMachineScaleSets_Reimage": _props("VirtualMachineScaleSetReimageParameters"),
    "VirtualMachineScaleSets_ReimageAll": _props("VirtualMachineScaleSetVMInstanceIDs"),
    "VirtualMachineScaleSetVMs_Reimage": _props("VirtualMachineScaleSetVMReimageParameters"),
    "VirtualMachineScaleSetVMs_ReimageAll": set(),
}
OS_PROFILE_KEYS = set(DEFS["OSProfileProvisioningData"]["properties"])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["target", "instanceIds", "allInstances", "tempDisk", "forceUpdateOSDiskForEphemeral", "exactVersion",
     "osProfile", "requestId", "dryRun", "allDisks", "vmName", "resourceGroupName", "subscriptionId"]
) | st.text(max_size=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(field_names, json_values, max_size=6) | json_values)
def test_arbitrary_json_only_raises_validation_errors(data: Any) -> None:
    try:
        ReimageRequest.model_validate(data)
    except ValidationError:
        pass
    try:
        parse_request(data, default_subscription_id=SUB)
    except ReimagerError as exc:
        assert http_status(exc) == 400


names = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
ids = st.lists(st.integers(0, 999).map(str), min_size=1, max_size=5, unique=True)
password = st.from_regex(r"[a-z]{3}[A-Z]{2}[0-9]{2}[!_]{1}[a-zA-Z]{0,8}", fullmatch=True)
custom = st.binary(min_size=1, max_size=64).map(lambda b: __import__("base64").b64encode(b).decode())


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    rg, name = draw(names), draw(names)
    kind = draw(st.sampled_from(["vm", "vmss", "inst"]))
    base = f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/"
    req: dict[str, Any] = {}
    if kind == "vm":
        req["target"] = base + f"virtualMachines/{name}"
    elif kind == "vmss":
        req["target"] = base + f"virtualMachineScaleSets/{name}"
        if draw(st.booleans()):
            req["instanceIds"] = draw(ids)
        else:
            req["allInstances"] = True
    else:
        req["target"] = base + f"virtualMachineScaleSets/{name}/virtualMachines/{draw(st.integers(0, 99))}"
    if kind != "vm" and draw(st.booleans()) and draw(st.booleans()):
        req["allDisks"] = True
        return req
    if draw(st.booleans()):
        req["tempDisk"] = draw(st.booleans())
    if kind != "vm" and draw(st.booleans()):
        req["forceUpdateOSDiskForEphemeral"] = draw(st.booleans())
    if draw(st.booleans()):
        req["exactVersion"] = ".".join(str(draw(st.integers(0, 99999))) for _ in range(draw(st.integers(1, 4))))
    if draw(st.booleans()):
        req["osProfile"] = {"adminPassword": draw(password)}
        if draw(st.booleans()):
            req["osProfile"]["customData"] = draw(custom)
    return req


@settings(max_examples=200)
@given(valid_requests())
def test_valid_requests_build_spec_bodies(data: dict[str, Any]) -> None:
    request = parse_request(data)
    call = request.arm_call("2025-04-01", instance_ids=["0", "1"] if request.all_instances else None)
    body = call.wire_body() or {}
    assert set(body) <= ALLOWED_BODY_KEYS[call.operation.value], (call.operation, body)
    assert set(body.get("osProfile", {})) <= OS_PROFILE_KEYS
    if call.operation.value in ("VirtualMachineScaleSets_Reimage", "VirtualMachineScaleSets_ReimageAll"):
        assert body.get("instanceIds"), body  # never the empty "every instance" form
