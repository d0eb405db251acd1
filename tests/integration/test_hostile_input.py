"""Through devhost's real HTTP paths: hostile input is a 400/403 before any ARM call."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from devhost.host import DEMO_GROUP, DEMO_SUBSCRIPTION
from tests.helpers import KELVIN, SENTINEL_PASSWORD, load_json
from tests.integration.conftest import BASE, LINUX_VM, VMSS, Host

NewHost = Callable[..., Any]


def nested(shape: str, size: int = 120 * 1024) -> bytes:
    if shape == "array":
        return b"[" * (size // 2) + b"]" * (size // 2)
    if shape == "object":
        return b'{"a":' * (size // 6) + b"1" + b"}" * (size // 6)
    return b'{"target": "x", "reason": ' + b'[{"a":' * (size // 8) + b"1" + b"}]" * (size // 8) + b"}"


def linux_vm_alert(**context: Any) -> dict[str, Any]:
    doc: dict[str, Any] = load_json("alerts/test-action-activity-log-administrative.json")
    doc["data"]["essentials"]["alertTargetIDs"] = [LINUX_VM]
    doc["data"]["alertContext"].update(context)
    return doc


# --- nesting -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["array", "object", "mixed"])
async def test_a_deeply_nested_body_is_a_400_on_every_entry_surface(host: Host, shape: str) -> None:
    raw = nested(shape)
    assert len(raw) > 100 * 1024
    for path in ("/api/reimage", "/api/alerts"):
        s, body, _ = await host.post(path, None, raw=raw)
        assert s == 400, (path, s, body)
        assert body["error"]["code"] == "InvalidRequest" and "nested deeper than 64" in body["error"]["message"]
    s, result = await host.queue(raw.decode(), messageId="deep-1")
    assert s == 202 and result["settlement"] == "completed", result  # settled with a Rejected event, not a crash
    assert [e["type"] for e in host.events()] == ["reimager.request.rejected"]
    assert "nested deeper than 64" in host.events()[0]["data"]["error"]["message"]
    assert host.dh.sim.requests == []


# --- instance ids --------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [{"target": VMSS, "instanceIds": ["01"]}, {"target": VMSS, "instanceIds": ["007"]},
                                  {"target": VMSS + "/virtualMachines/007"}, {"target": VMSS + "/virtualMachines/00"},
                                  {"target": VMSS, "instanceIds": ["1", "00"]}])
async def test_leading_zero_instance_ids_never_reach_arm(host: Host, body: dict[str, Any]) -> None:
    s, answer, _ = await host.reimage(body)
    assert s == 400, answer
    assert any('canonical decimal strings like "7"' in d["message"] for d in answer["error"]["details"]), answer
    assert host.dh.sim.requests == []


async def test_instance_ids_as_numbers_are_refused_before_arm(host: Host) -> None:
    s, answer, _ = await host.reimage({"target": VMSS, "instanceIds": [0]})
    assert s == 400, answer
    assert answer["error"]["code"] == "InvalidRequest"
    assert [d["target"] for d in answer["error"]["details"]] == ["instanceIds[0]"]
    assert host.dh.sim.requests == []


# --- scopes compare ARM ids with ASCII-only folding ---------------------------------------------
async def test_a_kelvin_sign_resource_group_is_not_inside_an_ascii_scope(new_host: NewHost) -> None:
    h = await new_host(settings={"ALLOWED_SCOPES": f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/rgk"})
    vm = f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/rgk/providers/Microsoft.Compute/virtualMachines/v1"
    h.dh.sim.upsert(vm, {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}})
    s, answer, _ = await h.reimage({"target": vm, "dryRun": True})
    assert s == 200, answer  # the ASCII group is inside the scope
    before = len(h.dh.sim.requests)
    for look_alike in (vm.replace("/rgk/", f"/rg{KELVIN}/"), vm.replace("/rgk/", "/RG\u212a/")):
        s, answer, _ = await h.reimage({"target": look_alike})
        assert s == 403 and answer["error"]["code"] == "ScopeNotAllowed", answer
    assert len(h.dh.sim.requests) == before and h.reimage_posts() == []


async def test_non_ascii_in_a_vm_name_is_refused_before_arm(host: Host) -> None:
    for name in ("web-linux-0\u0661", f"web-lin{KELVIN}", "web\u200b-linux-01"):
        s, answer, _ = await host.reimage({"resourceGroupName": DEMO_GROUP, "subscriptionId": DEMO_SUBSCRIPTION,
                                           "vmName": name})
        assert s == 400 and answer["error"]["details"][0]["target"] == "vmName", answer
        s, answer, _ = await host.reimage({"target": f"{BASE}/virtualMachines/{name}"})
        assert s == 400 and answer["error"]["details"][0]["target"] == "target", answer
    assert host.dh.sim.requests == []


# --- osProfile on an ephemeral OS disk --------------------------------------------------------------
async def test_os_profile_on_an_ephemeral_os_disk_is_refused(host: Host) -> None:
    s, answer, _ = await host.reimage({"target": VMSS + "/virtualMachines/1",
                                       "osProfile": {"adminPassword": SENTINEL_PASSWORD}})
    assert s == 400, answer
    assert answer["error"]["target"] == "osProfile" and "ephemeral" in answer["error"]["details"][0]["message"]
    assert host.reimage_posts() == []
    s, answer, _ = await host.reimage({"target": LINUX_VM, "osProfile": {"adminPassword": SENTINEL_PASSWORD}})
    assert s == 202  # a managed (non-ephemeral) OS disk takes it


# --- the loop guard ---------------------------------------------------------------------------------
@pytest.mark.parametrize("operation", ["Microsoft.Compute/virtualMachines/reimage/action",
                                       "microsoft.compute/virtualmachinescalesets/REIMAGEALL/action",
                                       "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimage/action"])
async def test_a_reimage_activity_log_alert_never_reimages(host: Host, operation: str) -> None:
    s, answer, _ = await host.post("/api/alerts", linux_vm_alert(operationName=operation,
                                                                 authorization={"action": operation}))
    assert s == 200, answer
    assert answer["accepted"] == [] and "loop" in answer["ignored"][0]["reason"]
    assert host.dh.sim.requests == []
    s, answer, _ = await host.post("/api/alerts", linux_vm_alert())  # the sample's restart event acts
    assert s == 202, answer


# --- fail-safe alert options ---------------------------------------------------------------------------
@pytest.mark.parametrize("custom", [{" reimage.dryRun": "true"}, {"reimage:dryRun": "true"}, {"Reimage_DryRun": "true"},
                                    {"REIMAGE.DRYRUN": "true"}, {"reimage dryRun": "true"}, {"reimage.dryRun": "yes"},
                                    "reimage.dryRun=true", ["reimage.dryRun"], 1])
async def test_a_mistyped_dry_run_refuses_the_alert(host: Host, custom: Any) -> None:
    doc = linux_vm_alert()
    doc["data"]["customProperties"] = custom
    s, answer, _ = await host.post("/api/alerts", doc)
    assert s == 400, answer
    targets = [answer["error"].get("target")] + [d.get("target") for d in answer["error"].get("details", [])]
    assert any(t and t.startswith("data.customProperties") for t in targets), answer
    assert host.dh.sim.requests == []


async def test_an_exact_dry_run_option_plans_and_does_not_reimage(host: Host) -> None:
    doc = linux_vm_alert()
    doc["data"]["customProperties"] = {"reimage.dryRun": "TRUE"}
    s, answer, _ = await host.post("/api/alerts", doc)
    assert s == 202 and answer["accepted"][0]["dryRun"] is True, answer
    assert host.reimage_posts() == []


# --- errors a person can act on --------------------------------------------------------------------------
async def test_an_empty_body_says_what_is_expected(host: Host) -> None:
    for raw in (b"", b"null", b"[]", b'"x"'):
        s, answer, _ = await host.post("/api/reimage", None, raw=raw)
        assert s == 400
        text = json.dumps(answer)
        assert "ReimageRequest" not in text and "JSON object" in text and "target" in text


async def test_unknown_fields_and_cross_field_errors_name_their_fields(host: Host) -> None:
    s, answer, _ = await host.reimage({"target": LINUX_VM, "tempdisk": True})
    detail = answer["error"]["details"][0]
    assert s == 400 and detail["target"] == "tempdisk" and "tempDisk" in detail["message"]
    assert "Extra inputs" not in detail["message"] and "instanceIds" in detail["message"]
    for body, field in (({"target": LINUX_VM, "instanceIds": ["1"]}, "instanceIds"),
                        ({"target": VMSS, "instanceIds": ["1"], "allDisks": True, "tempDisk": True}, "tempDisk"),
                        ({"target": "nope"}, "target")):
        s, answer, _ = await host.reimage(body)
        assert s == 400 and [d["target"] for d in answer["error"]["details"]] == [field], answer
    assert host.dh.sim.requests == []
