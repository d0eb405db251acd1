"""POST /api/alerts with the shared common-alert-schema samples, re-pointed into the allowed scope."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from devhost.host import DEMO_SUBSCRIPTION
from tests.helpers import load_json
from tests.integration.conftest import LINUX_VM, VMSS, Host

SAMPLE_SUB = "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"
TEST_VM = (f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/test-RG/providers/Microsoft.Compute/"
           "virtualMachines/test-VM")


def repoint(doc: dict[str, Any], old: str = SAMPLE_SUB) -> dict[str, Any]:
    """The samples use placeholder subscriptions; move them into devhost's allowed subscription."""
    import json

    text = json.dumps(doc).replace(old, DEMO_SUBSCRIPTION).replace("<subscription ID>", DEMO_SUBSCRIPTION)
    out: dict[str, Any] = json.loads(text)
    return out


def seed_test_vm(host: Host) -> None:
    host.dh.sim.upsert(TEST_VM, {"location": "westus", "properties": {
        "storageProfile": {"osDisk": {"osType": "Linux"}, "imageReference": {"version": "1.0.0"}}}})


async def test_metric_alert_on_a_storage_account_is_ignored(host: Host) -> None:
    doc = repoint(load_json("alerts/test-action-metric-static-threshold.json"))
    s, body, _ = await host.post("/api/alerts", doc)
    assert s == 200 and body["accepted"] == []
    assert "microsoft.storage/storageaccounts" in body["ignored"][0]["reason"]
    assert host.dh.sim.requests == []


async def test_resolved_metric_alert_on_a_vm_is_ignored(host: Host) -> None:
    doc = repoint(load_json("alerts/payload-samples-metric-resolved.json"))
    s, body, _ = await host.post("/api/alerts", doc)
    assert s == 200 and body["accepted"] == [] and "Resolved" in body["ignored"][0]["reason"]
    assert host.dh.sim.requests == []


async def test_activity_log_alert_on_a_vm_reimages_it(host: Host) -> None:
    seed_test_vm(host)
    doc = repoint(load_json("alerts/test-action-activity-log-administrative.json"))
    s, body, _ = await host.post("/api/alerts", doc)
    assert s == 202, body
    assert [a["target"] for a in body["accepted"]] == [TEST_VM]
    events = await host.until_completed()
    data = events[0]["data"]
    assert data["status"] == "Succeeded" and data["trigger"] == "alert"
    assert data["requestedBy"] == "azure-monitor:test-activityLogAlertRule"
    assert data["correlationId"] == doc["data"]["essentials"]["alertId"]
    assert host.reimage_posts()[0]["path"].endswith("/virtualMachines/test-VM/reimage")


async def test_alert_resent_five_times_reimages_once(host: Host) -> None:
    seed_test_vm(host)
    doc = repoint(load_json("alerts/test-action-activity-log-administrative.json"))
    results = await asyncio.gather(*(host.post("/api/alerts", doc) for _ in range(5)))
    assert {r[0] for r in results} == {202}
    assert len({r[1]["accepted"][0]["operationId"] for r in results}) == 1
    assert len(host.reimage_posts()) == 1
    await host.until_completed()
    assert len(host.completed()) == 1


async def test_resource_health_user_initiated_is_ignored(host: Host) -> None:
    seed_test_vm(host)
    doc = repoint(load_json("alerts/test-action-activity-log-administrative.json"))
    doc["data"]["essentials"]["monitoringService"] = "Resource Health"
    doc["data"]["essentials"]["signalType"] = "ActivityLog"
    doc["data"]["alertContext"]["properties"] = {"title": "Rebooted", "cause": "UserInitiated",
                                                 "currentHealthStatus": "Unavailable"}
    s, body, _ = await host.post("/api/alerts", doc)
    assert s == 200 and "user-initiated" in body["ignored"][0]["reason"]
    assert host.reimage_posts() == []
    doc["data"]["alertContext"]["properties"]["cause"] = "PlatformInitiated"
    s, body, _ = await host.post("/api/alerts", doc)
    assert s == 202


async def test_not_the_common_schema_is_400(host: Host) -> None:
    for doc in ({"schemaId": "Microsoft.Insights/activityLogs", "data": {}}, {"hello": "world"}, [1, 2]):
        s, body, _ = await host.post("/api/alerts", doc)
        assert s == 400 and body["error"]["code"] == "InvalidRequest"
    s, body, _ = await host.post("/api/alerts", None, raw=b"\xff\xfe")
    assert s == 400


async def test_type_drift_and_options_from_custom_properties(host: Host) -> None:
    doc = repoint(load_json("alerts/test-action-activity-log-administrative.json"))
    ess = doc["data"]["essentials"]
    ess["signalType"] = "ActivityLog"
    ess["configurationItems"] = None
    ess["severity"] = None
    ess["alertTargetIDs"] = [VMSS.lower() + "/virtualmachines/3", VMSS, LINUX_VM]
    doc["data"]["customProperties"] = {"reimage.tempDisk": "True", "reimage.exactVersion": "1.2.3",
                                       "unrelated": 5}
    s, body, _ = await host.post("/api/alerts", doc)
    assert s == 202, body
    accepted = {a["target"] for a in body["accepted"]}
    assert accepted == {VMSS + "/virtualMachines/3"}  # the VM has no ephemeral disk: tempDisk refused
    assert "allInstances" in body["ignored"][0]["reason"]  # a whole scale set needs an explicit opt-in
    assert body["refused"][0]["error"]["details"][0]["target"] == "tempDisk"
    await host.settle(lambda: len(host.reimage_posts()) >= 1)  # a scale-set request rides a batch
    post = host.reimage_posts()[0]
    assert post["body"] == {"instanceIds": ["3"], "tempDisk": True, "exactVersion": "1.2.3"}


async def test_bad_options_are_400(host: Host) -> None:
    doc = repoint(load_json("alerts/test-action-activity-log-administrative.json"))
    doc["data"]["customProperties"] = {"reimage.tempDisk": "maybe", "reimage.everything": "true"}
    s, body, _ = await host.post("/api/alerts", doc)
    assert s == 400 and len(body["error"]["details"]) == 2


async def test_arm_unavailable_asks_the_action_group_to_retry(host: Host) -> None:
    from devhost.compute import Fault

    seed_test_vm(host)
    host.dh.sim.faults.append(Fault(match="get", status=503, times=10))
    doc = repoint(load_json("alerts/test-action-activity-log-administrative.json"))
    s, body, _ = await host.post("/api/alerts", doc)
    assert s == 503  # action groups retry 503; the key makes the retry safe
    host.dh.sim.faults.clear()
    s, body, _ = await host.post("/api/alerts", copy.deepcopy(doc))
    assert s == 202 and len(host.reimage_posts()) == 1
