"""The simulator throttles as Compute and ARM do (devhost/compute/throttle.py; docs/fidelity.md A26-A31).

Real loopback HTTP on a virtual clock: buckets refill as virtual time passes.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from devhost.clock import VirtualClock
from devhost.compute import ArmLimits
from tests.conftest import start_standins
from tests.devhost import test_simulator_arm
from tests.devhost.test_simulator_arm import API, BASE, SS, VM, Arm
from tests.helpers import SUB

arm = test_simulator_arm.arm  # the same fixture: Azure's limits are the simulator's default


def remaining(headers: dict[str, str]) -> dict[str, int]:
    out = {}
    for part in headers["x-ms-ratelimit-remaining-resource"].split(","):
        name, _, count = part.rpartition(";")
        out[name] = int(count)
    return out


async def test_the_scale_set_list_is_a_high_cost_get_of_30_then_429_with_computes_body(arm: Arm) -> None:
    counts = []
    for _ in range(30):
        s, h, _ = await arm.call("GET", f"{SS}/virtualMachines")
        assert s == 200
        counts.append(remaining(h)["Microsoft.Compute/VMScaleSetHighCostGet"])
    assert counts == list(range(29, -1, -1))  # counts down to 0
    assert int(h["x-ms-ratelimit-remaining-subscription-reads"]) == 250 - 30
    s, h, body = await arm.call("GET", f"{SS}/virtualMachines")
    assert s == 429 and int(h["Retry-After"]) >= 60
    err = body["error"]
    assert err["code"] == "OperationNotAllowed" and "too many requests" in err["message"]
    assert err["innererror"] == {"internalErrorCode": "TooManyRequestsReceived"}
    [detail] = err["details"]
    assert detail["code"] == "TooManyRequests" and detail["target"] == "VMScaleSetHighCostGet"
    assert json.loads(detail["message"])["allowedRequestCount"] == 30
    assert remaining(h)["Microsoft.Compute/VMScaleSetHighCostGet"] == 0
    # Another resource's bucket is its own; the set's model is a Low Cost Get
    s, _, _ = await arm.call("GET", SS)
    assert s == 200
    # Before Retry-After has passed, a new retry value, however many tokens refilled meanwhile
    arm.advance(30)
    s, h2, _ = await arm.call("GET", f"{SS}/virtualMachines")
    assert s == 429 and 0 < int(h2["Retry-After"]) <= int(h["Retry-After"]) - 30
    arm.advance(int(h2["Retry-After"]))
    s, h3, _ = await arm.call("GET", f"{SS}/virtualMachines")
    assert s == 200 and remaining(h3)["Microsoft.Compute/VMScaleSetHighCostGet"] >= 9  # 10 a minute


async def test_a_scale_set_reimage_is_charged_per_instance_to_the_subscription(arm: Arm) -> None:
    s, h, _ = await arm.reimage(f"{SS}/reimage", {"instanceIds": ["0", "1", "2"]})
    assert s == 202 and h["x-ms-request-charge"] == "3"
    assert remaining(h) == {"Microsoft.Compute/VMScaleSetUpdateSubscription": 1497}
    assert int(h["x-ms-ratelimit-remaining-subscription-writes"]) == 199
    # An instance's reimage: the instance's own Update scale set VMs bucket, 12 deep
    for i in range(12):
        s, h, _ = await arm.reimage(f"{SS}/virtualMachines/3/reimage")
        assert s == 202, i
    s, h, body = await arm.reimage(f"{SS}/virtualMachines/3/reimage")
    assert s == 429 and body["error"]["details"][0]["target"] == "VMScaleSetVMUpdate"


async def test_every_poll_of_a_resources_operations_shares_its_get_operation_bucket(arm: Arm) -> None:
    urls = []
    for i in range(3):
        _, h, _ = await arm.reimage(f"{SS}/virtualMachines/{i}/reimage")
        urls.append(h["Azure-AsyncOperation"])
    statuses = [(await arm.call("GET", urls[n % 3]))[0] for n in range(46)]
    assert statuses.count(200) == 45 and statuses[-1] == 429


async def test_arms_own_read_bucket_answers_subscription_requests_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    s = await start_standins(monkeypatch, VirtualClock(), arm_limits=ArmLimits.azure().lifted(1000).model_copy(
        update={"arm_reads": (25, 250)}))
    async with aiohttp.ClientSession() as http:
        arm = Arm(s, http)
        for n in range(250):
            status, h, _ = await arm.call("GET", f"{BASE}/virtualMachines/vm-{n}")  # 404s are charged too
            assert status == 404
        assert h["x-ms-ratelimit-remaining-subscription-reads"] == "0"
        assert int(h["x-ms-ratelimit-remaining-subscription-global-reads"]) == 3750 - 250
        status, h, body = await arm.call("GET", VM)
        assert status == 429 and h["Retry-After"] == "1" and h["x-ms-failure-cause"] == "gateway"
        assert body["error"]["code"] == "SubscriptionRequestsThrottled"
        assert f"Number of 'read' requests for subscription '{SUB.lower()}' actor" in body["error"]["message"]
        s.clock.advance(1)  # type: ignore[attr-defined]
        status, _, _ = await arm.call("GET", VM)
        assert status == 404  # 25 a second: tokens again (vm1 was never created here)
    for server in s.servers:
        await server.close()


async def test_header_forms_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    legacy = ArmLimits.azure().model_copy(update={"policy_names": "legacy", "header_style": "split"})
    s = await start_standins(monkeypatch, VirtualClock(), arm_limits=legacy)
    s.sim.upsert(VM, {"location": "westus", "properties": {}})
    async with aiohttp.ClientSession() as http:
        arm = Arm(s, http)
        async with http.get(s.arm_url + VM, params=API, headers=arm.auth) as r:
            assert r.headers.getall("x-ms-ratelimit-remaining-resource") == [
                "Microsoft.Compute/LowCostGetVM3Min;35", "Microsoft.Compute/LowCostGetVM30Min;23999"]
        s.sim.arm_limits = ArmLimits.off()
        for _ in range(100):
            status, h, _ = await arm.call("GET", VM)
            assert status == 200 and "x-ms-ratelimit-remaining-resource" not in h
    for server in s.servers:
        await server.close()


def test_limits_file_overrides_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "limits.json"
    f.write_text(json.dumps({"policies": {"VMScaleSetHighCostGet": {"resource": [100, 300]}}, "armReads": [5, 50]}))
    limits = ArmLimits.load(str(f))
    assert limits.policies["VMScaleSetHighCostGet"].resource == (100, 300)
    assert limits.policies["VMScaleSetHighCostGet"].subscription == (360, 1080)  # the rest as Azure's
    assert limits.arm_reads == (5, 50) and limits.policies["GetOperation"].resource == (15, 45)
    assert ArmLimits.load("off").enabled is False and ArmLimits.load("azure") == ArmLimits()
    f.write_text(json.dumps({"policies": {"HighCostGet": {"resource": [1, 1]}}}))
    with pytest.raises(ValueError, match="unknown policies"):
        ArmLimits.load(str(f))
    with pytest.raises(ValueError, match="cannot read"):
        ArmLimits.load(str(tmp_path / "missing.json"))
