"""Fidelity: Microsoft's own SDK (azure-mgmt-compute) drives the simulator end to end.

A real ManagedIdentityCredential gets its tokens from devhost/identity; every official
example body goes through begin_reimage(...).result(), and the simulator's request log shows
exactly those bodies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure.identity.aio import ManagedIdentityCredential
from azure.mgmt.compute.aio import ComputeManagementClient

from devhost.clock import Clock
from devhost.compute import Fault
from tests.conftest import StandIns, start_standins
from tests.helpers import FIXTURES, SUB

RG = "rgcompute"
EXAMPLES = FIXTURES / "arm/examples/2025-04-01"


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{name}.json").read_text())["parameters"]


def real_ids(value: Any, ids: dict[str, str]) -> Any:
    """Placeholders like "aaaaaaaaaa" for instance ids become the scale set's real ids."""
    if isinstance(value, dict):
        return {k: real_ids(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [real_ids(v, ids) for v in value]
    return ids.get(value, value) if isinstance(value, str) else value


@pytest.fixture
async def realtime_standins(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StandIns]:
    """Real clock, short operations, and ARM's default of no Retry-After: the SDK's poller uses its own interval."""
    s = await start_standins(monkeypatch, Clock(), operation_seconds=0.3)
    assert s.sim.retry_after is None
    yield s
    for server in s.servers:
        await server.close()


@pytest.fixture
async def sdk(realtime_standins: StandIns) -> AsyncIterator[ComputeManagementClient]:
    credential = ManagedIdentityCredential()
    client = ComputeManagementClient(credential, SUB, base_url=realtime_standins.arm_url)
    vmss = json.loads((FIXTURES / "arm/bodies/vmss-seed003-managed.json").read_text())
    vm = json.loads((FIXTURES / "arm/bodies/vm-ephemeral.json").read_text())
    kw = {"enforce_https": False, "polling_interval": 0.05}
    created = await (await client.virtual_machine_scale_sets.begin_create_or_update(RG, "ss1", vmss, **kw)).result()
    assert created.sku.capacity == 3 and created.provisioning_state == "Succeeded"
    vm_created = await (await client.virtual_machines.begin_create_or_update(RG, "myVMName", vm, **kw)).result()
    assert vm_created.storage_profile.os_disk.diff_disk_settings.option == "Local"
    yield client
    await client.close()
    await credential.close()


async def test_vmss_created_from_seed_model(sdk: ComputeManagementClient, realtime_standins: StandIns) -> None:
    got = await sdk.virtual_machine_scale_sets.get(RG, "ss1", enforce_https=False)
    assert got.virtual_machine_profile.os_profile.admin_password is None  # ARM never returns it
    instances = [i async for i in sdk.virtual_machine_scale_set_vms.list(RG, "ss1", enforce_https=False)]
    assert sorted(i.instance_id for i in instances) == ["0", "1", "2"]
    assert realtime_standins.issuer.issued >= 1  # tokens came from the identity endpoint


async def test_every_official_reimage_example(sdk: ComputeManagementClient, realtime_standins: StandIns) -> None:
    sim = realtime_standins.sim
    # Poll about once per operation (they last 0.3 s): a 20-per-second poll meets ARM's poll-rate limit, as it
    # would in Azure, and the SDK then sleeps its Retry-After (tests/devhost/test_simulator_throttle.py).
    kw = {"enforce_https": False, "polling_interval": 0.35}
    ids = {"aaaaaaaaaa": "0", "aaaaaaaaaaaaaaaaa": "1", "aaaaaaaaaaaaaaaaaaaaaaaaaaaa": "2",
           "aaaaaaaaaaaaaaaaaaa": "0", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaa": "1", "aaaaaaaaaaaaa": "2"}
    expected: list[tuple[str, Any]] = []

    for name in ("VirtualMachine_Reimage", "VirtualMachine_Reimage_NonEphemeralVMs"):
        body = example(name)["parameters"]
        await (await sdk.virtual_machines.begin_reimage(RG, "myVMName", body, **kw)).result()
        expected.append(("/virtualMachines/myVMName/reimage", body))

    for name in ("VirtualMachineScaleSet_Reimage_MaximumSet_Gen", "VirtualMachineScaleSet_Reimage_MinimumSet_Gen"):
        body = real_ids(example(name).get("vmScaleSetReimageInput"), ids)
        await (await sdk.virtual_machine_scale_sets.begin_reimage(RG, "ss1", body, **kw)).result()
        expected.append(("/virtualMachineScaleSets/ss1/reimage", body))

    for name in ("VirtualMachineScaleSetVM_Reimage_MaximumSet_Gen", "VirtualMachineScaleSetVM_Reimage_MinimumSet_Gen"):
        p = example(name)
        body = p.get("vmScaleSetVMReimageInput")
        inst = ids[p["instanceId"]]
        await (await sdk.virtual_machine_scale_set_vms.begin_reimage(RG, "ss1", inst, body, **kw)).result()
        expected.append((f"/virtualMachineScaleSets/ss1/virtualMachines/{inst}/reimage", body))

    body = real_ids(example("VirtualMachineScaleSet_ReimageAll_MaximumSet_Gen")["vmInstanceIDs"], ids)
    await (await sdk.virtual_machine_scale_sets.begin_reimage_all(RG, "ss1", body, **kw)).result()
    expected.append(("/virtualMachineScaleSets/ss1/reimageall", body))
    for name in ("VirtualMachineScaleSetVM_ReimageAll_MaximumSet_Gen",
                 "VirtualMachineScaleSetVM_ReimageAll_MinimumSet_Gen"):
        inst = ids[example(name)["instanceId"]]
        await (await sdk.virtual_machine_scale_set_vms.begin_reimage_all(RG, "ss1", inst, **kw)).result()
        expected.append((f"/virtualMachineScaleSets/ss1/virtualMachines/{inst}/reimageall", None))

    posts = [(r["path"], r["body"]) for r in sim.requests if r["method"] == "POST"]
    assert len(posts) == len(expected)
    for (path, body), (suffix, want) in zip(posts, expected, strict=True):
        assert path.endswith(suffix), (path, suffix)
        assert body == want
    assert all(r["status"] == 202 for r in sim.requests if r["method"] == "POST")
    # Every operation was polled to the end through the async-operation endpoint.
    assert all(op.settled and op.status(sim.clock.now()) == "Succeeded" for op in sim.operations.values())
    # Instances returned to the requested image version (the max-set VM example asked for "aaaaaa").
    vm = await sdk.virtual_machines.get(RG, "myVMName", enforce_https=False)
    assert vm.storage_profile.image_reference.exact_version == "aaaaaa"


async def test_sdk_sees_simulator_errors(sdk: ComputeManagementClient) -> None:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    with pytest.raises(ResourceNotFoundError):
        await sdk.virtual_machines.get(RG, "nope", enforce_https=False)
    with pytest.raises(HttpResponseError) as info:
        await sdk.virtual_machine_scale_sets.begin_reimage(RG, "ss1", {"instanceIds": ["99"]}, enforce_https=False)
    assert info.value.status_code == 400 and info.value.error.code == "InvalidParameter"


async def test_sdk_poller_sees_preemption_and_location_failures(sdk: ComputeManagementClient,
                                                               realtime_standins: StandIns) -> None:
    """The SDK's own LRO poller, with no Retry-After: a preempted reimage fails the first poller."""
    from azure.core.exceptions import HttpResponseError

    sim = realtime_standins.sim
    kw = {"enforce_https": False, "polling_interval": 0.05}
    sim.durations["ss1"] = 1.0
    first = await sdk.virtual_machine_scale_sets.begin_reimage(RG, "ss1", {"instanceIds": ["0"]}, **kw)
    second = await sdk.virtual_machine_scale_set_vms.begin_reimage(RG, "ss1", "1", **kw)
    with pytest.raises(HttpResponseError):
        await first.result()
    await second.result()  # the newer one runs to the end
    first_op, second_op = list(sim.operations.values())[-2:]
    assert (first_op.outcome, first_op.code) == ("Canceled", "OperationPreempted")
    assert second_op.status(sim.clock.now()) == "Succeeded"
    sim.async_operation_header = False  # the Location protocol alone, as some RPs answer
    sim.faults.append(Fault(match="reimage", outcome="Failed", code="InternalExecutionError"))
    with pytest.raises(HttpResponseError) as info:
        await (await sdk.virtual_machines.begin_reimage(RG, "myVMName", None, **kw)).result()
    assert info.value.status_code == 500
