"""The ARM simulator's Flexible scale sets, automatic repairs, instance protection and locks, over real loopback
HTTP (devhost/compute/fleet.py, devhost/compute/locks.py; docs/fidelity.md rows A38-A46).

Each test names the Azure behaviour it pins; research notes `arm.md` B5-B9 give the sources.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from devhost.clock import VirtualClock
from tests.conftest import start_standins
from tests.devhost.test_simulator_arm import Arm
from tests.helpers import SUB

GROUP = f"/subscriptions/{SUB}/resourceGroups/rg"
BASE = f"{GROUP}/providers/Microsoft.Compute"
FLEX = f"{BASE}/virtualMachineScaleSets/flex"
SS = f"{BASE}/virtualMachineScaleSets/ss1"
VMS = f"{BASE}/virtualMachines"
LOCKS = "/providers/Microsoft.Authorization/locks"
FILTER = f"'virtualMachineScaleSet/id' eq '{FLEX}'"


@pytest.fixture
async def arm(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Arm]:
    s = await start_standins(monkeypatch, VirtualClock(), operation_seconds=60.0)
    s.sim.seed_scale_set(FLEX, 3, flexible=True)
    s.sim.seed_scale_set(SS, 4)
    async with aiohttp.ClientSession() as http:
        yield Arm(s, http)
    for server in s.servers:
        await server.close()


# ---- Flexible sets: members are VMs of their own -----------------------------------------------------------------
async def test_a_flexible_put_creates_member_vms_named_by_arm_and_naming_their_set(arm: Arm) -> None:
    status, _, listed = await arm.call("GET", VMS, params={"$filter": FILTER})
    assert status == 200 and len(listed["value"]) == 3
    for vm in listed["value"]:
        assert re.fullmatch(r"flex_[0-9a-f]{8}", vm["name"]) and vm["type"] == "Microsoft.Compute/virtualMachines"
        assert vm["properties"]["virtualMachineScaleSet"]["id"] == FLEX and vm["id"] == f"{VMS}/{vm['name']}"
    _, _, model = await arm.call("GET", FLEX)
    assert model["properties"]["orchestrationMode"] == "Flexible" and "upgradePolicy" not in model["properties"]
    # scale-out and scale-in by capacity, as a PUT of the set does
    await arm.call("PATCH", FLEX, {"sku": {"capacity": 5}})
    assert len(arm.s.sim.members(FLEX)) == 5
    await arm.call("PATCH", FLEX, {"sku": {"capacity": 2}})
    assert len(arm.s.sim.members(FLEX)) == 2
    status, _, body = await arm.call("PATCH", FLEX, {"properties": {"orchestrationMode": "Uniform"}})
    assert status == 400 and "cannot be changed" in body["error"]["message"]


async def test_a_vm_joins_a_flexible_set_only_when_it_is_created(arm: Arm) -> None:
    join = {"location": "westus", "properties": {"virtualMachineScaleSet": {"id": FLEX.upper()},
                                                 "storageProfile": {"osDisk": {"osType": "Linux"}}}}
    assert (await arm.call("PUT", f"{VMS}/joiner", join))[0] == 201
    assert "joiner" in [m["name"] for m in arm.s.sim.members(FLEX)]  # ids compared ignoring case
    status, _, body = await arm.call("PUT", f"{VMS}/uniform-joiner", {**join, "properties": {
        **join["properties"], "virtualMachineScaleSet": {"id": SS}}})
    assert status == 400 and "Flexible" in body["error"]["message"]
    assert (await arm.call("PUT", f"{VMS}/later", {"location": "westus"}))[0] == 201
    status, _, body = await arm.call("PATCH", f"{VMS}/later", {"properties": {"virtualMachineScaleSet": {"id": FLEX}}})
    assert status == 400 and "creation time" not in body["error"]["message"] and "created" in body["error"]["message"]


async def test_the_filtered_vm_list_pages_and_takes_expand_only_with_a_filter(arm: Arm) -> None:
    arm.s.sim.upsert(f"{VMS}/outsider", {"location": "westus"})
    _, _, everything = await arm.call("GET", VMS)
    assert "outsider" in [v["name"] for v in everything["value"]]
    for form in (FILTER, f"virtualMachineScaleSet/id eq '{FLEX.lower()}'"):  # as written in practice, or the doc
        _, _, some = await arm.call("GET", VMS, params={"$filter": form})
        assert len(some["value"]) == 3 and "outsider" not in [v["name"] for v in some["value"]]
    status, _, body = await arm.call("GET", VMS, params={"$expand": "instanceView"})
    assert status == 400 and body["error"]["code"] == "InvalidParameter"
    status, _, body = await arm.call("GET", VMS, params={"$filter": "name eq 'x'"})
    assert status == 400
    arm.s.sim.list_page_size = 2
    status, _, page = await arm.call("GET", VMS, params={"$filter": FILTER, "$expand": "instanceView"})
    assert len(page["value"]) == 2 and all("instanceView" in v["properties"] for v in page["value"])
    _, _, rest = await arm.call("GET", page["nextLink"])
    assert len(rest["value"]) == 1 and "nextLink" not in rest


async def test_scale_set_apis_on_a_flexible_set(arm: Arm) -> None:
    """Reimage and Reimage All of the set or of one of its instances: refused (the single-VM API instead); its
    instance view: refused unless switched on; its VM list: names only."""
    name = arm.s.sim.members(FLEX)[0]["name"]
    for path, body in ((f"{FLEX}/reimage", {"instanceIds": [name]}), (f"{FLEX}/reimage", None),
                       (f"{FLEX}/reimageall", None), (f"{FLEX}/virtualMachines/{name}/reimage", None)):
        status, _, answer = await arm.reimage(path, body)
        assert status == 409 and answer["error"]["code"] == "OperationNotAllowed", path
        assert "is not allowed on Virtual Machine Scale Set 'flex'" in answer["error"]["message"]
    assert arm.s.sim.operations == {}
    status, _, answer = await arm.call("GET", f"{FLEX}/instanceView")
    assert status == 409 and "VirtualMachineScaleSets.instanceView.GET" in answer["error"]["message"]
    arm.s.sim.flex_set_instance_view = True
    assert (await arm.call("GET", f"{FLEX}/instanceView"))[0] == 200
    _, _, listed = await arm.call("GET", f"{FLEX}/virtualMachines", params={"$expand": "instanceView"})
    assert [v["instanceId"] for v in listed["value"]] == [m["name"] for m in arm.s.sim.members(FLEX)]
    assert all("properties" not in v for v in listed["value"])


async def test_a_members_single_vm_reimage_needs_an_ephemeral_os_disk(arm: Arm) -> None:
    member = arm.s.sim.members(FLEX)[0]
    status, headers, _ = await arm.reimage(f"{member['id']}/reimage")
    assert status == 202 and "azure-asyncoperation" in {k.lower() for k in headers}
    arm.s.sim.upsert(f"{BASE}/virtualMachineScaleSets/managed", {"location": "westus", "sku": {"capacity": 1},
                     "properties": {"orchestrationMode": "Flexible", "virtualMachineProfile": {
                         "storageProfile": {"osDisk": {"osType": "Linux"}}}}})
    managed = arm.s.sim.members(f"{BASE}/virtualMachineScaleSets/managed")[0]
    status, _, body = await arm.reimage(f"{managed['id']}/reimage")
    assert status == 409 and body["error"]["code"] == "OperationNotAllowed" and "ephemeral" in body["error"]["message"]
    arm.s.sim.flex_reimage_any_os_disk = True
    assert (await arm.reimage(f"{managed['id']}/reimage"))[0] == 202


# ---- automatic repairs -------------------------------------------------------------------------------------------
async def test_automatic_repairs_in_the_set_instance_view_and_their_suspension(arm: Arm) -> None:
    _, _, view = await arm.call("GET", f"{SS}/instanceView")
    assert "orchestrationServices" not in view  # no policy: no service
    status, _, body = await arm.call("POST", f"{SS}/setOrchestrationServiceState",
                                     {"serviceName": "AutomaticRepairs", "action": "Suspend"})
    assert status == 409 and body["error"]["code"] == "OperationNotAllowed"
    await arm.call("PATCH", SS, {"properties": {"automaticRepairsPolicy": {"enabled": False}}})
    _, _, view = await arm.call("GET", f"{SS}/instanceView")
    assert view["orchestrationServices"] == [{"serviceName": "AutomaticRepairs", "serviceState": "NotRunning"}]
    await arm.call("PATCH", SS, {"properties": {"automaticRepairsPolicy": {"enabled": True, "gracePeriod": "PT10M"}}})
    _, _, view = await arm.call("GET", f"{SS}/instanceView")
    assert view["orchestrationServices"][0]["serviceState"] == "Running"
    for action, state in (("Suspend", "Suspended"), ("Resume", "Running")):
        status, _, _ = await arm.call("POST", f"{SS}/setOrchestrationServiceState",
                                      {"serviceName": "AutomaticRepairs", "action": action})
        _, _, view = await arm.call("GET", f"{SS}/instanceView")
        assert status == 200 and view["orchestrationServices"][0]["serviceState"] == state


# ---- instance protection -----------------------------------------------------------------------------------------
async def test_protected_instances_are_skipped_silently_by_a_set_reimage(arm: Arm) -> None:
    status, _, body = await arm.call("PUT", f"{SS}/virtualMachines/1", {"properties": {"protectionPolicy": {
        "protectFromScaleIn": False, "protectFromScaleSetActions": True}}})
    assert status == 400 and "protectFromScaleIn cannot be false" in body["error"]["message"]
    status, _, body = await arm.call("PUT", f"{SS}/virtualMachines/1", {"properties": {"protectionPolicy": {
        "protectFromScaleSetActions": True}}})
    assert status == 200 and body["properties"]["protectionPolicy"] == {"protectFromScaleSetActions": True,
                                                                       "protectFromScaleIn": True}
    _, _, listed = await arm.call("GET", f"{SS}/virtualMachines")
    assert [v["instanceId"] for v in listed["value"]
            if v["properties"].get("protectionPolicy", {}).get("protectFromScaleSetActions")] == ["1"]
    status, _, _ = await arm.reimage(f"{SS}/reimage", {"instanceIds": ["0", "1"]})
    [op] = arm.s.sim.operations.values()
    assert status == 202 and op.instance_keys == [f"{SS.lower()}#0"]  # "1" left out, and nothing says so
    arm.s.sim.protected_named_refused = True
    status, _, body = await arm.reimage(f"{SS}/reimage", {"instanceIds": ["1"]})
    assert status == 409 and "protected from scale set actions" in body["error"]["message"]
    assert (await arm.reimage(f"{SS}/virtualMachines/1/reimage"))[0] == 202  # user-initiated: not blocked


# ---- locks -------------------------------------------------------------------------------------------------------
async def test_a_read_only_lock_refuses_writes_and_posts_under_it_but_not_reads(arm: Arm) -> None:
    member = arm.s.sim.members(FLEX)[0]
    status, _, lock = await arm.call("PUT", f"{member['id']}{LOCKS}/keep", {"properties": {"level": "ReadOnly"}},
                                     params={"api-version": "2016-09-01"})
    assert status == 200 and lock["id"] == f"{member['id']}{LOCKS}/keep"
    status, _, body = await arm.reimage(f"{member['id']}/reimage")
    assert status == 409 and body["error"]["code"] == "ScopeLocked"
    assert re.fullmatch(r"The scope '.+' cannot perform write operation because following scope\(s\) are locked: "
                        r"'.+'\. Please remove the lock and try again\.", body["error"]["message"])
    assert (await arm.call("GET", member["id"]))[0] == 200
    other = arm.s.sim.members(FLEX)[1]
    assert (await arm.reimage(f"{other['id']}/reimage"))[0] == 202  # a member's lock is its own
    arm.s.sim.lock(SS, "set-lock")
    status, _, body = await arm.reimage(f"{SS}/virtualMachines/2/reimage")  # an instance inherits its set's lock
    assert status == 409 and "resourcegroups" in body["error"]["message"]  # echoed in ARM's own casing
    status, _, _ = await arm.call("POST", f"{SS}/setOrchestrationServiceState",
                                  {"serviceName": "AutomaticRepairs", "action": "Suspend"})
    assert status == 409
    arm.s.sim.lock(GROUP, "soft", "CanNotDelete")
    assert (await arm.reimage(f"{other['id']}/reimage"))[0] == 202  # CanNotDelete refuses deletes only
    assert (await arm.call("DELETE", f"{SS}{LOCKS}/set-lock", params={"api-version": "2016-09-01"}))[0] == 200
    assert (await arm.reimage(f"{SS}/virtualMachines/2/reimage"))[0] == 202


async def test_lock_lists_by_scope(arm: Arm) -> None:
    member = arm.s.sim.members(FLEX)[0]
    arm.s.sim.lock(f"/subscriptions/{SUB}", "whole-subscription")
    arm.s.sim.lock(GROUP, "group")
    arm.s.sim.lock(member["id"], "member")
    old = {"api-version": "2016-09-01"}

    async def names(scope: str) -> set[str]:
        status, _, body = await arm.call("GET", f"{scope}{LOCKS}", params=old)
        assert status == 200
        return {lock["name"] for lock in body["value"]}

    assert await names(f"/subscriptions/{SUB}") == {"whole-subscription", "group", "member"}
    assert await names(GROUP) == {"group", "member"}  # the dangerous reading: not the subscription's
    assert await names(member["id"]) == {"group", "member"}
    arm.s.sim.locks_list_subscription = True
    assert await names(GROUP) == {"whole-subscription", "group", "member"}
    status, _, body = await arm.call("GET", f"{GROUP}{LOCKS}", params={"api-version": "2014-01-01"})
    assert status == 400 and body["error"]["code"] == "InvalidApiVersionParameter"


async def test_the_member_list_is_a_high_cost_get_vm_of_the_subscription(arm: Arm) -> None:
    _, headers, _ = await arm.call("GET", VMS, params={"$filter": FILTER})
    assert "Microsoft.Compute/HighCostGetVMSubscription;899" in headers["x-ms-ratelimit-remaining-resource"]
