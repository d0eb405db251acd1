"""The preflight's fleet reads (shared/adapters/arm/fleet.py) against the ARM simulator, over real loopback HTTP:
a VM's set, a Flexible set's members, a Uniform set's protected instances, automatic repairs and locks; what they
cost; and that the custom role grants exactly the reads they make."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from devhost.compute import Fault
from shared.adapters.arm.client import ComputeClient
from shared.domain.errors import ComputeThrottled
from shared.domain.fleet import REPAIRS_RUNNING, REPAIRS_SUSPENDED, REPAIRS_UNKNOWN
from shared.domain.targets import parse_target
from tests.conftest import StandIns
from tests.helpers import SUB
from tests.integration.adapters.test_instance_health import rbac_action

GROUP = f"/subscriptions/{SUB}/resourceGroups/fleet"
BASE = f"{GROUP}/providers/Microsoft.Compute"
FLEX = f"{BASE}/virtualMachineScaleSets/flex"
UNIFORM = f"{BASE}/virtualMachineScaleSets/uni"
LONE = f"{BASE}/virtualMachines/lone"
REPAIRS = {"automaticRepairsPolicy": {"enabled": "true", "gracePeriod": "PT10M"}}  # REPAIR's own example: a string


@pytest.fixture
async def client(standins: StandIns) -> AsyncIterator[ComputeClient]:
    standins.sim.seed_scale_set(FLEX, 5, flexible=True)
    standins.sim.seed_scale_set(UNIFORM, 4, **REPAIRS)
    standins.sim.upsert(LONE, {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}})
    c = ComputeClient(standins.settings(PREFLIGHT_CACHE_SECONDS="0"), clock=standins.clock.now)
    yield c
    await c.close()


def reads(standins: StandIns, since: int = 0) -> list[dict[str, Any]]:
    return [r for r in standins.sim.requests[since:] if r["method"] == "GET"]


async def test_a_flexible_set_lists_its_members_and_a_member_names_its_set(client: ComputeClient,
                                                                           standins: StandIns) -> None:
    members = standins.sim.members(FLEX)
    model = await client.get_model(parse_target(FLEX))
    assert model.fleet.flexible and model.instance_ids == tuple(m["name"] for m in members)
    assert all(m.ephemeral_os_disk and m.os_type == "Linux" for m in model.fleet.members)
    assert [r["path"] for r in reads(standins)] == [FLEX, f"{GROUP}/providers/Microsoft.Compute/virtualMachines",
                                                    f"{GROUP}/providers/Microsoft.Authorization/locks"]
    member = await client.get_model(parse_target(members[0]["id"]))
    assert member.fleet.scale_set_id == FLEX and not member.fleet.flexible
    lone = await client.get_model(parse_target(LONE))
    assert lone.fleet.scale_set_id is None


async def test_members_follow_pages_and_ignore_what_the_filter_should_have_left_out(
        client: ComputeClient, standins: StandIns) -> None:
    standins.sim.list_page_size = 2
    model = await client.get_model(parse_target(FLEX))
    assert len(model.fleet.members) == 5
    lists = [r for r in reads(standins) if r["path"].endswith("/virtualMachines")]
    assert len(lists) == 3 and all("virtualMachineScaleSet/id" in r["query"]["$filter"] for r in lists)


async def test_protected_instances_and_automatic_repairs_of_a_uniform_set(client: ComputeClient,
                                                                          standins: StandIns) -> None:
    standins.sim.protect(f"{UNIFORM}/virtualMachines/1")
    model = await client.get_model(parse_target(UNIFORM))
    assert model.fleet.protected == ("1",) and model.fleet.automatic_repairs == REPAIRS_RUNNING
    standins.sim.upsert(UNIFORM, {"properties": {"automaticRepairsPolicy": {"enabled": False}}}, patch=True)
    assert (await client.get_model(parse_target(UNIFORM))).fleet.automatic_repairs is None  # not read at all
    assert not any(r["path"].endswith("/instanceView") for r in reads(standins)[-3:])


async def test_repairs_state_unknown_when_the_flexible_view_is_refused(client: ComputeClient,
                                                                       standins: StandIns) -> None:
    standins.sim.upsert(FLEX, {"properties": REPAIRS}, patch=True)
    assert (await client.get_model(parse_target(FLEX))).fleet.automatic_repairs == REPAIRS_UNKNOWN
    standins.sim.flex_set_instance_view = True
    assert (await client.get_model(parse_target(FLEX))).fleet.automatic_repairs == REPAIRS_RUNNING
    standins.sim.faults.append(Fault(match="flex/instanceView", status=429, retry_after=60))
    with pytest.raises(ComputeThrottled):  # a 429 is the preflight's 429: the request waits, it is not refused
        await client.get_model(parse_target(FLEX))
    standins.sim.upsert(FLEX, {"properties": {"automaticRepairsPolicy": {"enabled": True}}}, patch=True)
    standins.clock.advance(61)  # type: ignore[attr-defined]
    status, _ = await _suspend(standins, FLEX)
    assert status == 200
    assert (await client.get_model(parse_target(FLEX))).fleet.automatic_repairs == REPAIRS_SUSPENDED


async def _suspend(standins: StandIns, scale_set: str) -> tuple[int, str]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(
            f"{standins.arm_url}{scale_set}/setOrchestrationServiceState", params={"api-version": "2024-07-01"},
            json={"serviceName": "AutomaticRepairs", "action": "Suspend"},
            headers={"Authorization": f"Bearer {standins.issuer.issue()[0]}"}) as r:
        return r.status, await r.text()


async def test_locks_of_the_group_are_read_once_and_a_refused_read_lets_the_post_decide(
        client: ComputeClient, standins: StandIns) -> None:
    standins.sim.lock(LONE, "keep")
    standins.sim.lock(GROUP, "whole-group", "CanNotDelete")
    model = await client.get_model(parse_target(LONE))
    assert {(lock.name, lock.level) for lock in model.fleet.locks} == {("keep", "ReadOnly"),
                                                                         ("whole-group", "CanNotDelete")}
    assert [lk.scope for lk in model.fleet.locks if lk.name == "keep"] == [LONE]
    standins.sim.faults.append(Fault(match="Microsoft.Authorization/locks", status=403, code="AuthorizationFailed"))
    refused = await client.get_model(parse_target(LONE))
    assert refused.fleet.locks == () and refused.fleet.locks_read is False


async def test_the_role_grants_exactly_the_reads_the_checks_make(client: ComputeClient, standins: StandIns) -> None:
    """Every read the preflight makes (a VM, a Flexible member and its set, a Uniform set with automatic repairs)
    is granted by the custom role; the actions the new checks added are used (tests/infra/test_infra.py)."""
    from tests.infra.test_infra import ROLE_ACTIONS

    await client.get_model(parse_target(LONE))
    await client.get_model(parse_target(standins.sim.members(FLEX)[0]["id"]))
    await client.get_model(parse_target(FLEX))
    await client.get_model(parse_target(UNIFORM))
    used = {rbac_action(r["method"], r["path"]) for r in standins.sim.requests}
    assert {u.lower() for u in used} <= {a.lower() for a in ROLE_ACTIONS}
    assert {"Microsoft.Authorization/locks/read", "Microsoft.Compute/virtualMachineScaleSets/instanceView/read",
            "Microsoft.Compute/virtualMachines/read", "Microsoft.Compute/virtualMachineScaleSets/read",
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read"} == used
