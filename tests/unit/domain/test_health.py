"""Health classification of real ARM instance-view shapes (tests/fixtures/arm/instance-views, see SOURCES.md)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.health import Health, InstanceHealth, classify, classify_listed
from tests.helpers import FIXTURES

VIEWS = FIXTURES / "arm/instance-views"


def body(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((VIEWS / name).read_text())
    return doc["responses"]["200"]["body"] if "responses" in doc else doc


def vm_view() -> dict[str, Any]:
    return body("VirtualMachine_Get_InstanceView.json")


def vmss_vm_view() -> dict[str, Any]:
    return body("VirtualMachineScaleSetVM_Get_InstanceViewAutoPlacedOnDedicatedHostGroup.json")


def with_health(view: dict[str, Any], code: str, **status: Any) -> dict[str, Any]:
    """The view with the health extension's vmHealth (shape of the health-extension doc's sample)."""
    doc = copy.deepcopy(view)
    sample = body("health-extension-vmhealth-unknown.json")["vmHealth"]
    doc["vmHealth"] = {"status": {**sample["status"], "code": code, **status}}
    return doc


def with_status(view: dict[str, Any], prefix: str, code: str | None, **extra: Any) -> dict[str, Any]:
    """The view with its top-level `prefix/...` status replaced by `code` (None: removed)."""
    doc = copy.deepcopy(view)
    kept = [s for s in doc["statuses"] if not s["code"].startswith(prefix + "/")]
    if code is not None:
        kept.append({"code": code, "level": "Info", **extra})
    doc["statuses"] = kept
    return doc


# ---- classify: real examples -------------------------------------------------------------------
def test_official_vm_instance_view_is_healthy_without_a_health_extension() -> None:
    got = classify(vm_view())
    assert got.health is Health.HEALTHY
    assert "no application health report" in got.detail


def test_official_scale_set_vm_view_is_healthy_and_its_agent_status_is_ignored() -> None:
    view = vmss_vm_view()
    # the VM agent says "ProvisioningState/Unavailable": that is the agent, not the machine
    assert view["vmAgent"]["statuses"][0]["code"] == "ProvisioningState/Unavailable"
    assert classify(view).health is Health.HEALTHY


def test_documented_unknown_health_is_pending_not_healthy() -> None:
    view = vmss_vm_view()
    view["vmHealth"] = body("health-extension-vmhealth-unknown.json")["vmHealth"]
    got = classify(view)
    assert got == InstanceHealth(Health.PENDING, "application health unknown: The VM health is unknown")


@pytest.mark.parametrize("code,expected", [
    ("HealthState/healthy", Health.HEALTHY),
    ("HealthState/unhealthy", Health.UNHEALTHY),
    ("HealthState/initializing", Health.PENDING),
    ("HealthState/unknown", Health.PENDING),
    ("HealthState/Healthy", Health.HEALTHY),  # codes compare case-insensitively
    ("HealthState/somethingNew", Health.PENDING),
    ("", Health.PENDING),
])
@pytest.mark.parametrize("view", [vm_view, vmss_vm_view], ids=["vm", "vmss-vm"])
def test_application_health_decides_once_the_machine_runs(view: Any, code: str, expected: Health) -> None:
    assert classify(with_health(view(), code)).health is expected


def test_unhealthy_detail_quotes_the_extension() -> None:
    got = classify(with_health(vmss_vm_view(), "HealthState/unhealthy", displayStatus="The VM is unhealthy"))
    assert got == InstanceHealth(Health.UNHEALTHY, "application health unhealthy: The VM is unhealthy")


@pytest.mark.parametrize("code,expected,detail", [
    ("ProvisioningState/failed/InternalOperationError", Health.UNHEALTHY,
     "provisioning failed/internaloperationerror: Provisioning failed. An internal error occurred."),
    ("ProvisioningState/failed", Health.UNHEALTHY, "provisioning failed: Provisioning failed. An internal error "
                                                    "occurred."),
    ("ProvisioningState/deleting", Health.UNHEALTHY, "provisioning deleting: Provisioning failed. An internal "
                                                      "error occurred."),
    ("ProvisioningState/updating", Health.PENDING, "provisioning updating"),
    ("ProvisioningState/creating", Health.PENDING, "provisioning creating"),
    (None, Health.PENDING, "no provisioning state yet"),
])
def test_provisioning_state(code: str | None, expected: Health, detail: str) -> None:
    view = with_status(vmss_vm_view(), "ProvisioningState", code,
                       message="Provisioning failed. An internal error occurred.")
    # an unhealthy report while provisioning runs says nothing about the new image; a failure wins over it
    view = with_health(view, "HealthState/unhealthy")
    assert classify(view) == InstanceHealth(expected, detail)


@pytest.mark.parametrize("code,expected", [
    ("PowerState/deallocated", Health.UNHEALTHY),
    ("PowerState/stopped", Health.UNHEALTHY),
    ("PowerState/deallocating", Health.UNHEALTHY),
    ("PowerState/starting", Health.PENDING),
    ("PowerState/unknown", Health.PENDING),
    (None, Health.PENDING),
])
def test_power_state(code: str | None, expected: Health) -> None:
    got = classify(with_health(with_status(vm_view(), "PowerState", code), "HealthState/healthy"))
    assert got.health is expected


def test_stopped_machine_is_unhealthy_even_while_health_says_healthy() -> None:
    got = classify(with_health(with_status(vm_view(), "PowerState", "PowerState/stopped"), "HealthState/healthy"))
    assert got == InstanceHealth(Health.UNHEALTHY, "power state stopped")


@pytest.mark.parametrize("view", [None, "", [], 3, {"statuses": None}, {"statuses": "x"}, {}])
def test_no_view_or_a_broken_one_never_passes(view: Any) -> None:
    got = classify(view)
    assert got.health in (Health.UNKNOWN, Health.PENDING)
    assert classify(None) == InstanceHealth(Health.UNKNOWN, "no instance view")


def test_installed_health_extension_without_a_report_is_pending() -> None:
    view = vm_view()
    view["extensions"].append({"name": "HealthExtension", "type": "Microsoft.ManagedServices.ApplicationHealthLinux",
                               "typeHandlerVersion": "2.0.8", "statuses": []})
    assert classify(view).health is Health.PENDING
    assert classify(vmss_vm_view(), expects_health=True).health is Health.PENDING
    assert classify(with_health(view, "HealthState/healthy")).health is Health.HEALTHY


# ---- classify_listed: items of the VM list with $expand=instanceView ----------------------------
def listed_item() -> dict[str, Any]:
    item: dict[str, Any] = body("VirtualMachineScaleSetVM_List_MaximumSet_Gen.excerpt.json")["value"][0]
    return item


def test_official_list_item_shape_is_read_by_instance_id() -> None:
    got = classify_listed([listed_item()])
    # the generated example's status codes are placeholders ("aaaa..."): no state to trust, never Healthy
    assert list(got) == ["aaaaaaaaaaaa"] and got["aaaaaaaaaaaa"].health is Health.PENDING


def test_listed_items_classified_from_their_own_views() -> None:
    items = []
    for inst, code in (("0", "HealthState/healthy"), ("1", "HealthState/unhealthy"), ("2", None)):
        item = listed_item()
        item["instanceId"] = inst
        view = vmss_vm_view()
        item["properties"]["instanceView"] = with_health(view, code) if code else view
        items.append(item)
    items[2]["resources"][0]["properties"]["type"] = "ApplicationHealthLinux"  # installed, no report yet
    no_view = listed_item()
    no_view["instanceId"] = "3"
    del no_view["properties"]["instanceView"]
    got = classify_listed([*items, no_view, {"properties": {}}, "junk"])
    assert {i: h.health for i, h in got.items()} == {"0": Health.HEALTHY, "1": Health.UNHEALTHY,
                                                     "2": Health.PENDING, "3": Health.UNKNOWN}


# ---- properties ----------------------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                  max_size=4), max_leaves=20)


STATUS_CODES = st.sampled_from(["ProvisioningState/succeeded", "ProvisioningState/updating",
                                "ProvisioningState/failed/X", "PowerState/running", "PowerState/stopped",
                                "PowerState/deallocated", "Other/thing"])


@given(JSON)
def test_classify_never_raises_and_never_calls_garbage_healthy(view: Any) -> None:
    got = classify(view)
    assert isinstance(got.detail, str)
    if got.health is Health.HEALTHY:  # only with both running statuses present
        codes = [s.get("code", "").lower() for s in view["statuses"] if isinstance(s, dict)]
        assert "provisioningstate/succeeded" in codes and "powerstate/running" in codes


@given(st.lists(STATUS_CODES, max_size=4), st.sampled_from([None, "healthy", "unhealthy", "initializing"]))
def test_healthy_exactly_when_succeeded_running_and_health_healthy_or_absent(codes: list[str],
                                                                           health: str | None) -> None:
    view: dict[str, Any] = {"statuses": [{"code": c} for c in codes]}
    if health:
        view["vmHealth"] = {"status": {"code": f"HealthState/{health}"}}
    prov = next((c for c in codes if c.startswith("ProvisioningState/")), None)
    power = next((c for c in codes if c.startswith("PowerState/")), None)
    want = prov == "ProvisioningState/succeeded" and power == "PowerState/running" and health in (None, "healthy")
    assert (classify(view).health is Health.HEALTHY) == want
