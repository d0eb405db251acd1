"""ComputeClient.evidence (shared/adapters/arm/evidence.py) against the ARM simulator, over real loopback HTTP: the
calls evidence capture makes, how few, what they answer, and that the custom role grants exactly them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from devhost.compute import Fault
from shared.adapters.arm.client import ComputeClient
from shared.adapters.arm.evidence import EvidenceCallFailed
from shared.adapters.evidence import EvidenceUnavailable, download_log
from shared.domain.targets import parse_target
from shared.rules.evidence import EPHEMERAL, Machine
from tests.conftest import StandIns
from tests.helpers import SUB
from tests.integration.adapters.test_instance_health import rbac_action

BASE = f"/subscriptions/{SUB}/resourceGroups/fleet/providers/Microsoft.Compute"
VM = f"{BASE}/virtualMachines/diag1"
PLAIN = f"{BASE}/virtualMachines/plain1"
SS = f"{BASE}/virtualMachineScaleSets/ss1"
EPH = f"{BASE}/virtualMachineScaleSets/eph1"


class Sleeps:
    def __init__(self, clock: Any) -> None:
        self.clock, self.calls = clock, []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(seconds)


@pytest.fixture
async def client(standins: StandIns) -> AsyncIterator[ComputeClient]:
    sim = standins.sim
    storage = {"osDisk": {"osType": "Linux", "createOption": "FromImage", "managedDisk": {}}}
    sim.upsert(VM, {"location": "westus", "properties": {"storageProfile": storage,
                                                         "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}}}})
    sim.upsert(PLAIN, {"location": "westus", "properties": {"storageProfile": storage}})
    sim.seed_scale_set(SS, 6, ephemeral=False, boot_diagnostics=True)
    sim.seed_scale_set(EPH, 2, ephemeral=True, boot_diagnostics=True)
    served = await sim.serve_boot_diagnostics()
    c = ComputeClient(standins.settings(), sleep=Sleeps(standins.clock), clock=standins.clock.now)
    yield c
    await c.close()
    await served.close()


async def test_one_read_per_vm_one_list_read_for_several_instances(client: ComputeClient,
                                                                   standins: StandIns) -> None:
    vm = await client.evidence.machines(parse_target(VM), [""])
    one = await client.evidence.machines(parse_target(SS), ["3"])
    several = await client.evidence.machines(parse_target(SS), ["1", "4", "5"])
    paths = [(r["path"].split("/providers/Microsoft.Compute/")[1], r["query"].get("$expand"))
             for r in standins.sim.requests]
    assert paths == [("virtualMachines/diag1", "instanceView"), ("virtualMachineScaleSets/ss1/virtualMachines/3",
                     "instanceView"), ("virtualMachineScaleSets/ss1/virtualMachines", "instanceView")]
    assert set(several) == {"1", "4", "5"}
    machine = Machine.of("", vm[""])
    assert machine.boot_diagnostics and machine.os_disk_id and not machine.ephemeral and machine.instance_view
    assert Machine.of("3", one["3"]).os_disk_id != machine.os_disk_id and Machine.of("3", one["3"]).boot_diagnostics
    eph = Machine.of("0", (await client.evidence.machines(parse_target(EPH), ["0"]))["0"])
    assert eph.ephemeral and eph.snapshot_skipped() == EPHEMERAL


async def test_a_flexible_sets_members_are_read_as_vms_one_get_or_one_filtered_list(client: ComputeClient,
                                                                                    standins: StandIns) -> None:
    """A Flexible member is a VM of its own: one member, its VM's GET; several, the group's VM list filtered on the
    set (one read); its boot diagnostics on its VM path. Never the set's instance paths (it has none)."""
    flex = f"{BASE}/virtualMachineScaleSets/flex1"
    standins.sim.seed_scale_set(flex, 3, flexible=True, ephemeral=False, boot_diagnostics=True)
    names = [m["name"] for m in standins.sim.members(flex)]
    before = len(standins.sim.requests)
    one = await client.evidence.members(parse_target(flex), [names[0]])
    several = await client.evidence.members(parse_target(flex), [names[1].upper(), names[2]])
    uri = await client.evidence.serial_log_uri(parse_target(f"{BASE}/virtualMachines/{names[1]}"), "")
    calls = standins.sim.requests[before:]
    assert [(r["method"], r["path"].split("/providers/Microsoft.Compute/")[1], r["query"].get("$expand"))
            for r in calls] == [("GET", f"virtualMachines/{names[0]}", "instanceView"),
                                ("GET", "virtualMachines", "instanceView"),
                                ("POST", f"virtualMachines/{names[1]}/retrieveBootDiagnosticsData", None)]
    assert "flex1" in calls[1]["query"]["$filter"] and "sig=" in uri
    assert list(one) == [names[0]] and set(several) == {names[1].upper(), names[2]}  # keyed as asked
    machine = Machine.of(names[2], several[names[2]])
    assert machine.boot_diagnostics and machine.instance_view and not machine.ephemeral
    assert machine.os_disk_id and machine.os_disk_id != Machine.of(names[0], one[names[0]]).os_disk_id


async def test_the_serial_log_comes_through_its_sas_uri_from_another_host_and_needs_no_token(
        client: ComputeClient, standins: StandIns) -> None:
    uri = await client.evidence.serial_log_uri(parse_target(VM), "")
    assert not uri.startswith(standins.arm_url) and "sig=" in uri  # another host; a SAS, not a token
    data, total, truncated = await download_log(uri, 1 << 20, 5)
    assert b"Linux version" in data and total == len(data) and not truncated
    storage = standins.sim.boot_diagnostics
    assert [(r["method"], r["authorization"], r["status"]) for r in storage.requests] == [("GET", False, 200)]
    # the storage refuses what a bearer token would look like there, and a signature that does not match
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(uri, headers={"Authorization": "Bearer devhost.x"}) as r:
            assert r.status == 403 and "AuthenticationFailed" in await r.text()
        async with http.get(uri.replace("sig=", "sig=x")) as r:
            assert r.status == 403
    assert storage.requests[1]["authorization"] is True
    standins.clock.advance(16 * 60)  # past the SAS's 15 minutes
    with pytest.raises(EvidenceUnavailable, match="403"):
        await download_log(uri, 1 << 20, 5)
    with pytest.raises(EvidenceUnavailable, match="not https"):
        await download_log("http://storage.example.com/x.log?sig=y", 1 << 20, 5)


async def test_boot_diagnostics_not_enabled_is_409(client: ComputeClient) -> None:
    with pytest.raises(EvidenceCallFailed, match=r"409.*not enabled"):
        await client.evidence.serial_log_uri(parse_target(PLAIN), "")


async def test_a_snapshot_waits_for_succeeded_and_an_ephemeral_disk_is_no_source(client: ComputeClient,
                                                                               standins: StandIns) -> None:
    vm = Machine.of("", (await client.evidence.machines(parse_target(VM), [""]))[""])
    assert vm.os_disk_id is not None
    deadline = standins.clock.now() + 60
    doc = await client.evidence.snapshot(resource_group_id=parse_target(VM).resource_group_id, name="s1",
                                         disk_id=vm.os_disk_id, location="westus", tags={"a": "b"}, deadline=deadline)
    assert doc["properties"]["provisioningState"] == "Succeeded" and doc["properties"]["incremental"] is True
    eph = Machine.of("0", (await client.evidence.machines(parse_target(EPH), ["0"]))["0"])
    assert eph.os_disk_id is not None  # the model names an id (the dangerous reading)...
    with pytest.raises(EvidenceCallFailed, match="404"):  # ...that no snapshot can be taken from
        await client.evidence.snapshot(resource_group_id=parse_target(EPH).resource_group_id, name="s2",
                                       disk_id=eph.os_disk_id, location="westus", tags={}, deadline=deadline)
    standins.sim.snapshot_seconds = 3600
    with pytest.raises(EvidenceCallFailed, match="EVIDENCE_TIMEOUT_SECONDS"):
        await client.evidence.snapshot(resource_group_id=parse_target(VM).resource_group_id, name="s3",
                                       disk_id=vm.os_disk_id, location="westus", tags={},
                                       deadline=standins.clock.now() + 10)


async def test_a_throttled_evidence_call_is_not_waited_out(client: ComputeClient, standins: StandIns) -> None:
    standins.sim.faults.append(Fault.model_validate({"match": "retrieveBootDiagnosticsData", "status": 429,
                                                     "retryAfter": 20}))
    with pytest.raises(EvidenceCallFailed, match="throttling"):
        await client.evidence.serial_log_uri(parse_target(VM), "")
    assert len([r for r in standins.sim.requests if r["method"] == "POST"]) == 1


async def test_every_evidence_call_is_granted_by_the_role(client: ComputeClient, standins: StandIns) -> None:
    from tests.infra.test_infra import ROLE_ACTIONS

    vm = Machine.of("", (await client.evidence.machines(parse_target(VM), [""]))[""])
    await client.evidence.machines(parse_target(SS), ["1", "2"])
    flex = f"{BASE}/virtualMachineScaleSets/flex2"
    standins.sim.seed_scale_set(flex, 2, flexible=True, boot_diagnostics=True)
    await client.evidence.members(parse_target(flex), [m["name"] for m in standins.sim.members(flex)])
    await client.evidence.serial_log_uri(parse_target(VM), "")
    await client.evidence.serial_log_uri(parse_target(SS), "2")
    assert vm.os_disk_id is not None
    await client.evidence.snapshot(resource_group_id=parse_target(VM).resource_group_id, name="s1",
                                   disk_id=vm.os_disk_id, location="westus", tags={},
                                   deadline=standins.clock.now() + 60)
    used = {rbac_action(r["method"] if r["method"] != "PUT" else "GET", r["path"]).replace("/read", "/write")
            if r["method"] == "PUT" else rbac_action(r["method"], r["path"]) for r in standins.sim.requests}
    granted = {a.lower() for a in ROLE_ACTIONS}
    assert {u.lower() for u in used} <= granted, used - {u for u in used if u.lower() in granted}
    evidence_actions = {a for a in granted if "bootdiagnostics" in a or "snapshots" in a or "diskoperations" in a}
    # every one of them is used, but snapshots/read (only when ARM names no operation to poll)
    assert evidence_actions - {u.lower() for u in used} == {"microsoft.compute/snapshots/read"}
