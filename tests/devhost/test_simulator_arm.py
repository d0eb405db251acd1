"""The ARM simulator over real loopback HTTP: headers, preemption, instance ids, instance views, health faults.

Each test names the Azure behaviour it pins; research/arm-fidelity.md gives the sources.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml

from devhost.clock import VirtualClock
from devhost.compute import Fault
from tests.conftest import StandIns, start_standins
from tests.helpers import FIXTURES, SUB

API = {"api-version": "2024-07-01"}
BASE = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute"
VM = f"{BASE}/virtualMachines/vm1"
SS = f"{BASE}/virtualMachineScaleSets/ss1"
PREEMPTED = "Operation execution has been preempted by a more recent operation."


class Arm:
    """Bearer-authorised calls to the simulator, answering (status, headers, json-or-None)."""

    def __init__(self, standins: StandIns, http: aiohttp.ClientSession) -> None:
        self.s, self.http = standins, http
        self.auth = {"Authorization": f"Bearer {standins.issuer.issue()[0]}"}

    async def call(self, method: str, path_or_url: str, body: Any = None,
                   params: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        url = path_or_url if path_or_url.startswith("http") else self.s.arm_url + path_or_url
        query = None if "api-version=" in url else {**API, **(params or {})}
        async with self.http.request(method, url, params=query, json=body, headers=self.auth) as r:
            text = await r.text()
            return r.status, dict(r.headers), (await r.json() if text else None)

    async def reimage(self, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
        return await self.call("POST", path, body)

    def advance(self, seconds: float) -> None:
        assert isinstance(self.s.clock, VirtualClock)
        self.s.clock.advance(seconds)


@pytest.fixture
async def arm(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Arm]:
    s = await start_standins(monkeypatch, VirtualClock(), operation_seconds=60.0)  # constructor defaults otherwise
    s.sim.upsert(VM, {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}})
    s.sim.seed_scale_set(SS, 4)
    async with aiohttp.ClientSession() as http:
        yield Arm(s, http)
    for server in s.servers:
        await server.close()


def recorded_202() -> dict[str, str]:
    doc = yaml.safe_load((FIXTURES / "arm/recordings/test_mgmt_compute_vmss.test_compute_vmss_base_2"
                                     ".reimage-excerpt.yaml").read_text())
    first = next(i for i in doc["interactions"] if i["request"]["method"] == "POST")
    return {k.lower(): v[0] for k, v in first["response"]["headers"].items()}


# ---- 1. the 202 and the polls: no Retry-After unless asked -------------------------------------
async def test_reimage_202_has_both_urls_and_no_retry_after_like_the_recording(arm: Arm) -> None:
    recorded = recorded_202()
    assert "retry-after" not in recorded and "monitor=true" in recorded["location"]  # what Azure sent
    status, headers, body = await arm.reimage(f"{SS}/reimage", {"instanceIds": ["0"]})
    lower = {k.lower(): v for k, v in headers.items()}
    assert status == 202 and body is None
    assert "retry-after" not in lower
    assert "monitor=true" in lower["location"] and "monitor=true" not in lower["azure-asyncoperation"]
    assert lower["location"].split("?")[0] == lower["azure-asyncoperation"].split("?")[0]
    for url in (lower["azure-asyncoperation"], lower["location"]):
        s, h, _ = await arm.call("GET", url)
        assert s in (200, 202) and "retry-after" not in {k.lower() for k in h}


async def test_retry_after_only_when_asked(arm: Arm) -> None:
    arm.s.sim.faults.append(Fault(match="reimage", retryAfter=7))
    _, headers, _ = await arm.reimage(f"{VM}/reimage")
    assert headers["Retry-After"] == "7"
    arm.s.sim.faults.append(Fault(match="operations", retryAfter=3))
    _, h, _ = await arm.call("GET", headers["Azure-AsyncOperation"])
    assert h["Retry-After"] == "3"
    _, h, _ = await arm.call("GET", headers["Azure-AsyncOperation"])
    assert "Retry-After" not in h  # the fault was used up
    arm.s.sim.retry_after = 12  # the constructor's / --retry-after switch
    _, headers, _ = await arm.reimage(f"{VM}/reimage")
    assert headers["Retry-After"] == "12"


# ---- 2. preemption --------------------------------------------------------------------------------
@pytest.mark.parametrize(("first", "second"), [
    (f"{VM}/reimage", f"{VM}/reimage"),
    (f"{SS}/reimage", f"{SS}/reimage"),
    (f"{SS}/reimage", f"{SS}/virtualMachines/2/reimage"),       # scale set, then one of its instances
    (f"{SS}/virtualMachines/1/reimage", f"{SS}/reimageall"),    # and the other way round
])
async def test_newer_operation_preempts_the_running_one(arm: Arm, first: str, second: str) -> None:
    _, h1, _ = await arm.reimage(first)
    arm.advance(10)
    s2, h2, _ = await arm.reimage(second)
    assert s2 == 202
    _, _, old = await arm.call("GET", h1["Azure-AsyncOperation"])
    assert old["status"] == "Canceled" and old["error"] == {"code": "OperationPreempted", "message": PREEMPTED}
    assert old["endTime"] > old["startTime"]
    s, _, err = await arm.call("GET", h1["Location"])
    assert s == 409 and err["error"]["code"] == "OperationPreempted"
    _, _, new = await arm.call("GET", h2["Azure-AsyncOperation"])
    assert new["status"] == "InProgress"
    arm.advance(60)
    _, _, new = await arm.call("GET", h2["Azure-AsyncOperation"])
    assert new["status"] == "Succeeded"


async def test_operations_on_different_resources_do_not_preempt(arm: Arm) -> None:
    _, h1, _ = await arm.reimage(f"{VM}/reimage")
    await arm.reimage(f"{SS}/reimage", {"instanceIds": ["0"]})
    _, _, doc = await arm.call("GET", h1["Azure-AsyncOperation"])
    assert doc["status"] == "InProgress"


async def test_deallocated_instance_is_a_409_state_conflict(arm: Arm) -> None:
    arm.s.sim.set_power_state(f"{SS}/virtualMachines/3", "deallocated")
    s, _, err = await arm.reimage(f"{SS}/reimage", {"instanceIds": ["3"]})
    assert s == 409 and err["error"]["code"] == "OperationNotAllowed"
    s, _, _ = await arm.reimage(f"{SS}/reimage", {"instanceIds": ["2"]})
    assert s == 202


# ---- 3. Location after a failure ------------------------------------------------------------------
@pytest.mark.parametrize(("fault", "status", "code"), [
    ({"outcome": "Failed"}, 500, "InternalExecutionError"),
    ({"outcome": "Failed", "code": "OSProvisioningClientError", "failureStatus": 400}, 400,
     "OSProvisioningClientError"),
    ({"outcome": "Canceled"}, 409, "OperationCanceled"),
])
async def test_location_poll_after_failure_answers_its_status_and_cloud_error(
        arm: Arm, fault: dict[str, Any], status: int, code: str) -> None:
    arm.s.sim.faults.append(Fault(match="reimage", **fault))
    _, h, _ = await arm.reimage(f"{VM}/reimage")
    s, _, _ = await arm.call("GET", h["Location"])
    assert s == 202
    arm.advance(61)
    s, _, body = await arm.call("GET", h["Location"])
    assert s == status and body["error"]["code"] == code and body["error"]["message"]
    s, _, doc = await arm.call("GET", h["Azure-AsyncOperation"])
    assert s == 200 and doc["error"]["code"] == code  # the async-operation view still answers 200


# ---- 4. instance ids -------------------------------------------------------------------------------
async def test_unknown_instance_id_is_400_with_arms_message(arm: Arm) -> None:
    s, _, err = await arm.reimage(f"{SS}/reimage", {"instanceIds": ["1", "999"]})
    assert s == 400
    assert err["error"] == {"code": "InvalidParameter", "target": "instanceIds",
                            "message": "The provided instanceId 999 is not an active Virtual Machine Scale Set "
                                       "VM instanceId."}
    assert arm.s.sim.operations == {}


@pytest.mark.parametrize("body", [None, {}, {"instanceIds": []}, {"instanceIds": None}, {"tempDisk": True}])
async def test_empty_or_missing_instance_ids_reimage_every_instance(arm: Arm, body: Any) -> None:
    s, _, _ = await arm.reimage(f"{SS}/reimage", body)
    assert s == 202
    (op,) = arm.s.sim.operations.values()
    assert sorted(k.rsplit("#", 1)[1] for k in op.instance_keys) == ["0", "1", "2", "3"]
    # and the request log shows exactly what the client sent, so a regression is visible there
    assert arm.s.sim.reimage_posts()[-1]["body"] == body


# ---- 5. instance views and health -------------------------------------------------------------------
def statuses(view: dict[str, Any]) -> list[str]:
    return [s["code"] for s in view["statuses"]]


async def test_instance_views_report_provisioning_power_and_health(arm: Arm) -> None:
    s, _, view = await arm.call("GET", f"{SS}/virtualMachines/1/instanceView")
    assert s == 200 and statuses(view) == ["ProvisioningState/succeeded", "PowerState/running"]
    assert view["vmHealth"]["status"]["code"] == "HealthState/healthy"
    s, _, vm_view = await arm.call("GET", f"{VM}/instanceView")
    assert s == 200 and statuses(vm_view) == ["ProvisioningState/succeeded", "PowerState/running"]
    assert "vmHealth" not in vm_view  # no application health extension on that VM
    _, _, listing = await arm.call("GET", f"{SS}/virtualMachines", params={"$expand": "instanceView"})
    assert [i["instanceId"] for i in listing["value"]] == ["0", "1", "2", "3"]
    assert all(i["properties"]["instanceView"]["vmHealth"]["status"]["code"] == "HealthState/healthy"
               for i in listing["value"])
    _, _, plain = await arm.call("GET", f"{SS}/virtualMachines")
    assert all("instanceView" not in i["properties"] for i in plain["value"])


async def test_instances_being_reimaged_show_updating(arm: Arm) -> None:
    await arm.reimage(f"{SS}/reimage", {"instanceIds": ["2"]})
    _, _, listing = await arm.call("GET", f"{SS}/virtualMachines", params={"$expand": "instanceView"})
    by_id = {i["instanceId"]: i["properties"]["instanceView"] for i in listing["value"]}
    assert statuses(by_id["2"])[0] == "ProvisioningState/updating"
    assert by_id["2"]["vmHealth"]["status"]["code"] == "HealthState/unknown"
    assert statuses(by_id["1"])[0] == "ProvisioningState/succeeded"
    arm.advance(61)
    _, _, view = await arm.call("GET", f"{SS}/virtualMachines/2/instanceView")
    assert statuses(view)[0] == "ProvisioningState/succeeded"


@pytest.mark.parametrize("health", ["unhealthy", "unknown", "healthy"])
async def test_health_fault_bends_the_next_reads(arm: Arm, health: str) -> None:
    arm.s.sim.set_health(f"{SS}/virtualMachines/0", "healthy" if health != "healthy" else "unhealthy")
    arm.s.sim.faults.append(Fault.model_validate({"match": "instanceView", "health": health, "times": 2}))
    await arm.call("GET", f"{SS}/virtualMachines/0")  # not an instance-view read: the fault is not used
    for _ in range(2):
        _, _, view = await arm.call("GET", f"{SS}/virtualMachines/0/instanceView")
        assert view["vmHealth"]["status"]["code"] == f"HealthState/{health}"
    _, _, view = await arm.call("GET", f"{SS}/virtualMachines/0/instanceView")
    assert view["vmHealth"]["status"]["code"] != f"HealthState/{health}"  # used up: back to the set value


async def test_health_fault_can_name_instances_and_covers_list_reads(arm: Arm) -> None:
    arm.s.sim.faults.append(Fault.model_validate({"match": "instanceView", "health": "unhealthy",
                                                  "instanceIds": ["3"]}))
    _, _, listing = await arm.call("GET", f"{SS}/virtualMachines", params={"$expand": "instanceView"})
    codes = {i["instanceId"]: i["properties"]["instanceView"]["vmHealth"]["status"]["code"]
             for i in listing["value"]}
    assert codes == {"0": "HealthState/healthy", "1": "HealthState/healthy", "2": "HealthState/healthy",
                     "3": "HealthState/unhealthy"}
    assert arm.s.sim.faults == []  # one list read is one read


async def test_health_fault_for_named_instances_counts_their_reads_only(arm: Arm) -> None:
    """`times` counts the reads of each named instance; reading other instances leaves it untouched."""
    arm.s.sim.faults.append(Fault.model_validate({"match": "instanceView", "health": "unhealthy", "times": 2,
                                                  "instanceIds": ["1", "3"]}))
    for _ in range(3):
        _, _, view = await arm.call("GET", f"{SS}/virtualMachines/0/instanceView")
        assert view["vmHealth"]["status"]["code"] == "HealthState/healthy"
    _, _, view = await arm.call("GET", f"{SS}/virtualMachines/1/instanceView")  # 1: first read
    assert view["vmHealth"]["status"]["code"] == "HealthState/unhealthy"
    codes = []
    for _ in range(2):  # 1: second and third read; 3: first and second
        _, _, listing = await arm.call("GET", f"{SS}/virtualMachines", params={"$expand": "instanceView"})
        codes.append({i["instanceId"]: i["properties"]["instanceView"]["vmHealth"]["status"]["code"][12:]
                      for i in listing["value"]})
    assert codes == [{"0": "healthy", "1": "unhealthy", "2": "healthy", "3": "unhealthy"},
                     {"0": "healthy", "1": "healthy", "2": "healthy", "3": "unhealthy"}]
    assert arm.s.sim.faults == []


async def test_views_and_list_items_show_the_health_extension(arm: Arm) -> None:
    """As in ARM's examples: the view lists the machine's extensions; a list item carries them as `resources`."""
    _, _, view = await arm.call("GET", f"{SS}/virtualMachines/0/instanceView")
    assert [e["type"] for e in view["extensions"]] == ["Microsoft.ManagedServices.ApplicationHealthLinux"]
    _, _, listing = await arm.call("GET", f"{SS}/virtualMachines")
    (ext,) = listing["value"][0]["resources"]
    assert ext["type"] == "Microsoft.Compute/virtualMachines/extensions"
    assert ext["properties"]["type"] == "ApplicationHealthLinux"
    assert ext["id"] == f"{SS}/virtualMachines/0/extensions/HealthExtension"
    _, _, vm_view = await arm.call("GET", f"{VM}/instanceView")
    assert "extensions" not in vm_view


@pytest.mark.parametrize("settle,code", [("initializing", "HealthState/initializing"),
                                         ("unhealthy", "HealthState/unhealthy"), ("absent", None)])
async def test_what_health_reports_while_it_settles_is_a_switch(arm: Arm, settle: str, code: str | None) -> None:
    """Rich Health States say initializing; Binary ones say unhealthy until the app answers; before the
    extension's first report there is no vmHealth at all (health-extension.md)."""
    arm.s.sim.health_settle_seconds, arm.s.sim.settle_health = 30, settle  # type: ignore[assignment]
    await arm.reimage(f"{SS}/virtualMachines/0/reimage")
    arm.advance(61)
    _, _, view = await arm.call("GET", f"{SS}/virtualMachines/0/instanceView")
    assert (view.get("vmHealth") or {}).get("status", {}).get("code") == code
    arm.advance(30)
    _, _, view = await arm.call("GET", f"{SS}/virtualMachines/0/instanceView")
    assert view["vmHealth"]["status"]["code"] == "HealthState/healthy"


@pytest.mark.parametrize("status", [404, 500])
async def test_instance_view_can_be_made_unavailable(arm: Arm, status: int) -> None:
    arm.s.sim.faults.append(Fault.model_validate({"match": "instanceView", "status": status, "times": 2}))
    for path, params in ((f"{SS}/virtualMachines/0/instanceView", None),
                         (f"{SS}/virtualMachines", {"$expand": "instanceView"})):
        s, _, err = await arm.call("GET", path, params=params)
        assert s == status and err["error"]["code"]
    s, _, _ = await arm.call("GET", f"{SS}/virtualMachines/0/instanceView")
    assert s == 200


async def test_health_initializing_after_reimage_when_switched_on(arm: Arm) -> None:
    arm.s.sim.health_settle_seconds = 30
    await arm.reimage(f"{SS}/virtualMachines/0/reimage")
    arm.advance(61)
    _, _, view = await arm.call("GET", f"{SS}/virtualMachines/0/instanceView")
    assert view["vmHealth"]["status"]["code"] == "HealthState/initializing"
    arm.advance(30)
    _, _, view = await arm.call("GET", f"{SS}/virtualMachines/0/instanceView")
    assert view["vmHealth"]["status"]["code"] == "HealthState/healthy"


async def test_list_pages_with_next_link_when_switched_on(arm: Arm) -> None:
    arm.s.sim.list_page_size = 3
    _, _, page = await arm.call("GET", f"{SS}/virtualMachines", params={"$expand": "instanceView"})
    assert [i["instanceId"] for i in page["value"]] == ["0", "1", "2"] and "$expand=instanceView" in page["nextLink"]
    _, _, rest = await arm.call("GET", page["nextLink"])
    assert [i["instanceId"] for i in rest["value"]] == ["3"] and "nextLink" not in rest
    assert "instanceView" in rest["value"][0]["properties"]
    arm.s.sim.next_link_origin = "https://elsewhere.example"
    _, _, page = await arm.call("GET", f"{SS}/virtualMachines", params={"$expand": "instanceView"})
    assert page["nextLink"].startswith(f"https://elsewhere.example{SS}/virtualMachines?")


async def test_sdk_reads_instance_views(arm: Arm) -> None:
    """azure-mgmt-compute's own models parse the views, vmHealth included."""
    from azure.identity.aio import ManagedIdentityCredential
    from azure.mgmt.compute.aio import ComputeManagementClient

    async with ManagedIdentityCredential() as cred, ComputeManagementClient(cred, SUB, base_url=arm.s.arm_url) as c:
        view = await c.virtual_machine_scale_set_vms.get_instance_view("rg", "ss1", "1", enforce_https=False)
        assert view.vm_health.status.code == "HealthState/healthy"
        assert [s.code for s in view.statuses] == ["ProvisioningState/succeeded", "PowerState/running"]
        listed = [vm async for vm in c.virtual_machine_scale_set_vms.list("rg", "ss1", expand="instanceView",
                                                                          enforce_https=False)]
        assert len(listed) == 4 and listed[0].instance_view.vm_health.status.code == "HealthState/healthy"
        vm_view = await c.virtual_machines.instance_view("rg", "vm1", enforce_https=False)
        assert vm_view.statuses[1].code == "PowerState/running"
