"""reimager's own Compute client against the simulator, over real loopback HTTP."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web

from devhost.clock import VirtualClock
from devhost.compute import Fault
from devhost.serving import free_port, serve
from shared.adapters.arm.client import ComputeClient
from shared.domain.arm_call import OperationState
from shared.domain.errors import (
    ComputeError,
    ComputeUnavailable,
    SubmissionUncertain,
    TargetNotFound,
    UntrustedOperationUrl,
)
from shared.domain.request import parse_request
from shared.domain.targets import parse_target
from shared.surfaces.http import http_status
from tests.conftest import StandIns
from tests.helpers import SUB

RG = "fleet"
VM = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/vm1"
WIN = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/win1"
VMSS = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/ss1"


def seed(standins: StandIns) -> None:
    sim = standins.sim
    sim.upsert(VM, {"location": "westus", "tags": {"env": "prod"}, "properties": {"storageProfile": {
        "imageReference": {"publisher": "Canonical", "version": "1.2.3"},
        "osDisk": {"osType": "Linux", "createOption": "FromImage"}}}})
    sim.upsert(WIN, {"location": "westus", "properties": {"storageProfile": {
        "imageReference": {"publisher": "MicrosoftWindowsServer"}, "osDisk": {"createOption": "FromImage"}}}})
    sim.upsert(VMSS, {"location": "westus", "sku": {"name": "Standard_D2s_v3", "capacity": 4},
                      "properties": {"virtualMachineProfile": {"storageProfile": {
                          "imageReference": {"publisher": "Canonical", "version": "latest"},
                          "osDisk": {"osType": "Linux", "diffDiskSettings": {"option": "Local"}}}}}})


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
async def client(standins: StandIns) -> Any:
    seed(standins)
    sleeps = Sleeps()
    c = ComputeClient(standins.settings(), sleep=sleeps, clock=standins.clock.now)
    c.sleeps = sleeps  # type: ignore[attr-defined]
    yield c
    await c.close()


def call_for(target: str, **extra: Any) -> Any:
    request = parse_request({"target": target, **extra})
    return request.arm_call("2024-07-01", instance_ids=["0", "1"] if request.all_instances else None)


async def test_preflight_reads_the_model(client: ComputeClient) -> None:
    vm = await client.get_model(parse_target(VM))
    assert (vm.os_type, vm.ephemeral_os_disk, vm.tags) == ("Linux", False, {"env": "prod"})
    win = await client.get_model(parse_target(WIN))
    assert win.os_type == "Windows"
    ss = await client.get_model(parse_target(VMSS + "/virtualMachines/2"))
    assert (ss.ephemeral_os_disk, ss.capacity) == (True, 4)
    with pytest.raises(TargetNotFound) as info:
        await client.get_model(parse_target(VM.replace("vm1", "ghost")))
    assert http_status(info.value) == 404 and info.value.arm_code == "ResourceNotFound"


@pytest.mark.parametrize("target,extra,suffix", [
    (VM, {}, "/virtualMachines/vm1/reimage"),
    (VMSS, {"instanceIds": ["1", "3"]}, "/virtualMachineScaleSets/ss1/reimage"),
    (VMSS + "/virtualMachines/2", {"tempDisk": True}, "/virtualMachineScaleSets/ss1/reimage"),
    (VMSS, {"allInstances": True, "allDisks": True}, "/virtualMachineScaleSets/ss1/reimageall"),
])
async def test_submit_and_poll_to_success(client: ComputeClient, standins: StandIns, target: str,
                                          extra: dict[str, Any], suffix: str) -> None:
    sub = await client.submit(call_for(target, **extra))
    assert sub.status_code == 202 and sub.retry_after == 10
    assert sub.async_operation_url and sub.location_url and "monitor=true" in sub.location_url
    running = await client.poll(sub.async_operation_url, "async")
    assert running.state is OperationState.RUNNING and running.retry_after == 10
    assert (await client.poll(sub.location_url, "location")).state is OperationState.RUNNING
    assert isinstance(standins.clock, VirtualClock)
    standins.clock.advance(61)
    assert (await client.poll(sub.async_operation_url, "async")).state is OperationState.SUCCEEDED
    assert (await client.poll(sub.location_url, "location")).state is OperationState.SUCCEEDED
    post = standins.sim.reimage_posts()[-1]
    assert post["path"].endswith(suffix) and post["query"] == {"api-version": "2024-07-01"}


async def test_reimage_returns_instances_to_model_image(client: ComputeClient, standins: StandIns) -> None:
    await client.submit(call_for(VMSS, instanceIds=["1"], exactVersion="7.0.1"))
    standins.clock.advance(61)  # type: ignore[attr-defined]
    await client.get_model(parse_target(VMSS))  # any read settles finished operations
    insts = standins.sim.instances[VMSS.lower()]
    assert insts["1"]["properties"]["storageProfile"]["imageReference"]["exactVersion"] == "7.0.1"
    assert insts["0"]["properties"]["storageProfile"]["imageReference"]["exactVersion"] == "2026.1.0"


async def test_429_then_success_is_one_logical_submit(client: ComputeClient, standins: StandIns) -> None:
    standins.sim.faults.append(Fault(match="reimage", status=429, retryAfter=2))
    sub = await client.submit(call_for(VM))
    assert sub.status_code == 202
    posts = standins.sim.reimage_posts()
    assert [p["status"] for p in posts] == [429, 202]
    assert len(standins.sim.operations) == 1
    assert client.sleeps.calls == [2.0]  # type: ignore[attr-defined]


async def test_429_with_long_retry_after_is_not_held(client: ComputeClient, standins: StandIns) -> None:
    standins.sim.faults.append(Fault(match="reimage", status=429, retryAfter=600))
    with pytest.raises(ComputeUnavailable) as info:
        await client.submit(call_for(VM))
    assert info.value.transient and info.value.retry_after == 600 and http_status(info.value) == 503
    assert len(standins.sim.reimage_posts()) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_on_post_is_never_retried(client: ComputeClient, standins: StandIns, status: int) -> None:
    standins.sim.faults.append(Fault(match="reimage", status=status, times=5))
    with pytest.raises(ComputeUnavailable) as info:
        await client.submit(call_for(VM))
    assert info.value.arm_status == status and info.value.transient
    assert len(standins.sim.reimage_posts()) == 1


async def test_dropped_connection_after_send_is_never_retried(client: ComputeClient, standins: StandIns) -> None:
    standins.sim.faults.append(Fault(match="reimage", drop=True, times=5))
    with pytest.raises(SubmissionUncertain):
        await client.submit(call_for(VM))
    assert len(standins.sim.reimage_posts()) == 1


async def test_slow_response_past_timeout_is_never_retried(standins: StandIns) -> None:
    seed(standins)
    standins.sim.faults.append(Fault(match="reimage", delaySeconds=1.5, times=5))
    c = ComputeClient(standins.settings(), sleep=Sleeps(), read_timeout=0.3)
    try:
        with pytest.raises(SubmissionUncertain):
            await c.submit(call_for(VM))
    finally:
        await c.close()
    assert len(standins.sim.reimage_posts()) == 1


async def test_connection_never_established_is_retried(standins: StandIns) -> None:
    """The first attempt finds nothing listening; the simulator starts during the back-off."""
    seed(standins)
    port = free_port()
    started: list[Any] = []

    async def start_then_sleep(seconds: float) -> None:
        if not started:
            started.append(await serve(standins.sim.app(), port=port))

    c = ComputeClient(standins.settings(ARM_ENDPOINT=f"http://127.0.0.1:{port}"), sleep=start_then_sleep)
    try:
        sub = await c.submit(call_for(VM))
    finally:
        await c.close()
        for s in started:
            await s.close()
    assert sub.status_code == 202
    assert len(standins.sim.reimage_posts()) == 1


@pytest.mark.parametrize("outcome,code", [("Failed", "OperationPreempted"), ("Canceled", None),
                                          ("Failed", None)])
async def test_failed_and_canceled_outcomes(client: ComputeClient, standins: StandIns, outcome: str,
                                            code: str | None) -> None:
    standins.sim.faults.append(Fault(match="operations", outcome=outcome, code=code))  # type: ignore[arg-type]
    sub = await client.submit(call_for(VM))
    assert sub.async_operation_url
    await client.poll(sub.async_operation_url, "async")
    standins.clock.advance(61)  # type: ignore[attr-defined]
    done = await client.poll(sub.async_operation_url, "async")
    assert done.state.value == outcome
    assert done.error_code == (code or ("InternalExecutionError" if outcome == "Failed" else "OperationCanceled"))


async def test_read_failure_is_not_an_operation_failure(client: ComputeClient, standins: StandIns) -> None:
    sub = await client.submit(call_for(VM))
    assert sub.async_operation_url
    standins.sim.faults.append(Fault(match="operations", status=404, times=1))
    result = await client.poll(sub.async_operation_url, "async")
    assert result.read_failed and result.state is OperationState.RUNNING


async def test_untrusted_poll_url_is_refused_and_never_fetched(client: ComputeClient) -> None:
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.headers.get("Authorization", ""))
        return web.json_response({"status": "Succeeded"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    other = await serve(app)
    try:
        for url in (f"{other.url}/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westus/operations/x",
                    client.origin.replace("http://", "https://") + "/x", "http://evil.example/x"):
            with pytest.raises(UntrustedOperationUrl):
                await client.poll(url, "async")
    finally:
        await other.close()
    assert hits == []


async def test_errors_carry_arm_code(client: ComputeClient) -> None:
    with pytest.raises(ComputeError) as info:
        await client.submit(call_for(VM, tempDisk=True))  # VM's OS disk is not ephemeral
    err = info.value
    assert (http_status(err), err.code, err.arm_code, err.arm_target) == (502, "ComputeError", "InvalidParameter",
                                                                           "tempDisk")
    assert err.error.details[0].code == "InvalidParameter"


async def test_newer_reimage_preempts_the_running_one(client: ComputeClient, standins: StandIns) -> None:
    first = await client.submit(call_for(VMSS, instanceIds=["0"]))
    second = await client.submit(call_for(VMSS + "/virtualMachines/1"))  # instance op on the same set
    assert first.async_operation_url and first.location_url and second.async_operation_url
    old = await client.poll(first.async_operation_url, "async")
    assert (old.state, old.error_code) == (OperationState.CANCELED, "OperationPreempted")
    assert old.error_message == "Operation execution has been preempted by a more recent operation."
    via_location = await client.poll(first.location_url, "location")
    assert (via_location.state, via_location.error_code, via_location.read_failed) == (
        OperationState.FAILED, "OperationPreempted", False)
    assert (await client.poll(second.async_operation_url, "async")).state is OperationState.RUNNING
    standins.clock.advance(61)  # type: ignore[attr-defined]
    assert (await client.poll(second.async_operation_url, "async")).state is OperationState.SUCCEEDED


async def test_deallocated_vm_is_a_state_conflict(client: ComputeClient, standins: StandIns) -> None:
    standins.sim.set_power_state(VM, "deallocated")
    with pytest.raises(ComputeError) as info:
        await client.submit(call_for(VM))
    assert http_status(info.value) == 409 and info.value.arm_code == "OperationNotAllowed"
    assert standins.sim.operations == {}


async def test_location_failure_is_terminal_and_read_once(client: ComputeClient, standins: StandIns) -> None:
    standins.sim.async_operation_header = False
    standins.sim.faults.append(Fault(match="reimage", outcome="Failed", code="OSProvisioningClientError",
                                     message="OS provisioning failed"))
    sub = await client.submit(call_for(VM))
    assert sub.async_operation_url is None and sub.location_url
    assert (await client.poll(sub.location_url, "location")).state is OperationState.RUNNING
    standins.clock.advance(61)  # type: ignore[attr-defined]
    before = len(standins.sim.requests)
    done = await client.poll(sub.location_url, "location")
    assert (done.state, done.error_code, done.error_message, done.status_code, done.read_failed) == (
        OperationState.FAILED, "OSProvisioningClientError", "OS provisioning failed", 500, False)
    assert [r["status"] for r in standins.sim.requests[before:]] == [500]  # not retried: it cannot change


@pytest.mark.parametrize("status", [404, 429, 503])
async def test_location_read_failure_is_not_an_operation_failure(client: ComputeClient, standins: StandIns,
                                                                 status: int) -> None:
    sub = await client.submit(call_for(VM))
    assert sub.location_url
    standins.sim.faults.append(Fault(match="operations", status=status, times=10))
    result = await client.poll(sub.location_url, "location")
    assert result.read_failed and result.state is OperationState.RUNNING and result.status_code == status


async def test_unknown_token_gets_401(standins: StandIns) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.get(f"{standins.arm_url}{VM}?api-version=2024-07-01",
                         headers={"Authorization": "Bearer forged"}) as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "InvalidAuthenticationToken"
        async with s.get(f"{standins.arm_url}{VM}?api-version=2024-07-01") as r:
            assert r.status == 401


async def test_missing_api_version_gets_400(client: ComputeClient, standins: StandIns) -> None:
    import aiohttp

    token = standins.issuer.issue()[0]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{standins.arm_url}{VM}", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "MissingApiVersionParameter"


async def test_real_sleep_honours_retry_after(standins: StandIns) -> None:
    seed(standins)
    standins.sim.faults.append(Fault(match="reimage", status=429, retryAfter=2))
    c = ComputeClient(standins.settings())
    start = time.monotonic()
    try:
        await c.submit(call_for(VM))
    finally:
        await c.close()
    assert time.monotonic() - start >= 2.0


async def test_no_client_at_construction(standins: StandIns) -> None:
    c = ComputeClient(standins.settings())
    assert c._client is None and c._credential is None  # nothing built or connected until first use
    await c.close()
