"""ComputeClient.instance_health against the ARM simulator, over real loopback HTTP.

The simulator's request log is the evidence for how many ARM reads a health check costs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from devhost.compute import Fault
from devhost.serving import serve
from shared.adapters.arm.client import ComputeClient
from shared.domain.errors import InstanceViewUnavailable
from shared.domain.health import Health
from shared.domain.targets import parse_target
from shared.rules.health import summarize
from tests.conftest import StandIns
from tests.helpers import SUB

RG = "fleet"
BASE = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute"
VM = f"{BASE}/virtualMachines/vm1"
VM_WITH_HEALTH = f"{BASE}/virtualMachines/web1"
SS = f"{BASE}/virtualMachineScaleSets/ss1"
BIG = f"{BASE}/virtualMachineScaleSets/big"
HEALTH_EXTENSION = {"name": "HealthExtension", "properties": {
    "publisher": "Microsoft.ManagedServices", "type": "ApplicationHealthLinux", "typeHandlerVersion": "2.0",
    "settings": {"protocol": "http", "port": 80, "requestPath": "/health"}}}


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
async def client(standins: StandIns) -> AsyncIterator[ComputeClient]:
    sim = standins.sim
    storage = {"imageReference": {"publisher": "Canonical", "version": "1.2.3"},
               "osDisk": {"osType": "Linux", "createOption": "FromImage"}}
    sim.upsert(VM, {"location": "westus", "properties": {"storageProfile": storage}})
    sim.upsert(VM_WITH_HEALTH, {"location": "westus", "properties": {"storageProfile": storage},
                                "resources": [HEALTH_EXTENSION]})
    sim.seed_scale_set(SS, 10)
    c = ComputeClient(standins.settings(), sleep=Sleeps(), clock=standins.clock.now)
    yield c
    await c.close()


def reads(standins: StandIns, since: int = 0) -> list[dict[str, Any]]:
    return [r for r in standins.sim.requests[since:] if r["method"] == "GET"]


def advance(standins: StandIns, seconds: float) -> None:
    standins.clock.advance(seconds)  # type: ignore[attr-defined]


# ---- a VM: one GET of its instance view ----------------------------------------------------------
async def test_vm_is_one_instance_view_get(client: ComputeClient, standins: StandIns) -> None:
    got = await client.instance_health(parse_target(VM))
    assert list(got) == [""] and got[""].health is Health.HEALTHY
    (read,) = reads(standins)
    assert read["path"] == f"{VM}/instanceView" and read["query"] == {"api-version": "2024-07-01"}


async def test_vm_with_the_health_extension_follows_what_it_reports(client: ComputeClient,
                                                                   standins: StandIns) -> None:
    target = parse_target(VM_WITH_HEALTH)
    assert (await client.instance_health(target))[""].health is Health.HEALTHY
    standins.sim.set_health(VM_WITH_HEALTH, "unhealthy")
    got = await client.instance_health(target)
    assert got[""].health is Health.UNHEALTHY and "unhealthy" in got[""].detail
    standins.sim.set_power_state(VM_WITH_HEALTH, "deallocated")
    assert (await client.instance_health(target))[""].detail == "power state deallocated"


# ---- a scale set: one list read, per page ----------------------------------------------------------
async def test_several_instances_are_one_list_read(client: ComputeClient, standins: StandIns) -> None:
    got = await client.instance_health(parse_target(SS), ["1", "2", "5"])
    assert {i: h.health for i, h in got.items()} == {"1": Health.HEALTHY, "2": Health.HEALTHY, "5": Health.HEALTHY}
    (read,) = reads(standins)
    assert read["path"] == f"{SS}/virtualMachines"
    assert read["query"] == {"api-version": "2024-07-01", "$expand": "instanceView"}


async def test_paged_list_is_followed_and_stops_once_every_asked_instance_is_seen(client: ComputeClient,
                                                                                  standins: StandIns) -> None:
    standins.sim.list_page_size = 3  # pages 0-2, 3-5, 6-8, 9
    got = await client.instance_health(parse_target(SS), ["1", "7"])
    assert set(got) == {"1", "7"} and all(h.health is Health.HEALTHY for h in got.values())
    pages = reads(standins)
    assert len(pages) == 3  # page 4 holds nothing asked for: not read
    assert all(p["path"] == f"{SS}/virtualMachines" and p["query"]["$expand"] == "instanceView" for p in pages)
    assert [p["query"].get("$skiptoken") for p in pages] == [None, "3", "6"]

    mark = len(standins.sim.requests)
    every = await client.instance_health(parse_target(SS))
    assert sorted(every, key=int) == [str(i) for i in range(10)]
    assert len(reads(standins, mark)) == 4


async def test_a_thousand_instances_one_read_per_page(client: ComputeClient, standins: StandIns) -> None:
    standins.sim.seed_scale_set(BIG, 1000)
    got = await client.instance_health(parse_target(BIG))
    assert len(got) == 1000 and summarize(got).health is Health.HEALTHY
    assert len(reads(standins)) == 1  # ARM's default: one page

    standins.sim.list_page_size = 100
    mark = len(standins.sim.requests)
    ids = [str(i) for i in range(0, 1000, 7)]
    got = await client.instance_health(parse_target(BIG), ids)
    assert list(got) == ids and summarize(got, ids).done
    assert len(reads(standins, mark)) == 10  # 994, the last asked, is on the tenth page


async def test_nothing_asked_is_nothing_read(client: ComputeClient, standins: StandIns) -> None:
    assert await client.instance_health(parse_target(SS), []) == {}
    assert reads(standins) == []


async def test_an_instance_the_set_no_longer_has_is_unknown(client: ComputeClient, standins: StandIns) -> None:
    got = await client.instance_health(parse_target(SS), ["3", "42"])
    assert got["3"].health is Health.HEALTHY
    assert (got["42"].health, got["42"].detail) == (Health.UNKNOWN, "not in the scale set")
    assert summarize(got, ["3", "42"], final=True).health is Health.UNKNOWN


# ---- one instance: one GET of its own view -----------------------------------------------------------
@pytest.mark.parametrize("target,ids", [(f"{SS}/virtualMachines/2", None), (SS, ["2"])])
async def test_one_instance_is_one_get_of_its_view(client: ComputeClient, standins: StandIns, target: str,
                                                   ids: list[str] | None) -> None:
    got = await client.instance_health(parse_target(target), ids)
    assert list(got) == ["2"] and got["2"].health is Health.HEALTHY
    (read,) = reads(standins)
    assert read["path"] == f"{SS}/virtualMachines/2/instanceView"


# ---- health over time: reimage, settle, faults ----------------------------------------------------
async def test_reimaged_instances_pending_until_healthy(client: ComputeClient, standins: StandIns) -> None:
    sim = standins.sim
    sim.health_settle_seconds, sim.settle_health = 30, "absent"  # the extension has not reported yet
    sim.list_page_size = 4
    target, ids = parse_target(SS), ["0", "5"]
    await client.submit(parse_request_call(SS, ids))
    during = await client.instance_health(target, ids)
    assert {h.detail for h in during.values()} == {"provisioning updating"}
    advance(standins, 61)  # the reimage is over; the extension is still silent
    after = await client.instance_health(target, ids)
    assert {h.detail for h in after.values()} == {"application health extension installed, no health report yet"}
    single = await client.instance_health(parse_target(f"{SS}/virtualMachines/5"))  # the view's extensions say so
    assert single["5"].health is Health.PENDING
    assert not summarize(after, ids).done
    assert summarize(after, ids, final=True).health is Health.UNHEALTHY
    advance(standins, 30)
    settled = await client.instance_health(target, ids)
    assert summarize(settled, ids).done and summarize(settled, ids).health is Health.HEALTHY


def parse_request_call(target: str, ids: list[str]) -> Any:
    from shared.domain.request import parse_request

    return parse_request({"target": target, "instanceIds": ids}).arm_call("2024-07-01")


async def test_health_fault_makes_an_instance_unhealthy_for_its_next_reads_whatever_the_paging(
        client: ComputeClient, standins: StandIns) -> None:
    standins.sim.list_page_size = 2
    standins.sim.faults.append(Fault.model_validate({"match": "instanceView", "health": "unhealthy", "times": 2,
                                                     "instanceIds": ["7"]}))
    target, ids = parse_target(SS), ["1", "7"]
    seen = []
    for _ in range(3):
        got = await client.instance_health(target, ids)
        seen.append((got["1"].health, got["7"].health, summarize(got, ids).done))
    assert seen == [(Health.HEALTHY, Health.UNHEALTHY, False), (Health.HEALTHY, Health.UNHEALTHY, False),
                    (Health.HEALTHY, Health.HEALTHY, True)]
    assert standins.sim.faults == []
    assert len(reads(standins)) == 3 * 4  # instance 7 is on the fourth page of two


async def test_health_fault_without_instance_ids_counts_requests(client: ComputeClient,
                                                                 standins: StandIns) -> None:
    standins.sim.list_page_size = 5
    standins.sim.faults.append(Fault.model_validate({"match": "instanceView", "health": "unhealthy", "times": 1}))
    got = await client.instance_health(parse_target(SS))
    # one request = one count: the first page of five is bent, the second is not
    assert [got[str(i)].health for i in range(10)] == [Health.UNHEALTHY] * 5 + [Health.HEALTHY] * 5


# ---- failed reads: a typed error ---------------------------------------------------------------------
@pytest.mark.parametrize("target,ids", [(VM, None), (SS, ["1", "2"]), (SS, ["1"])])
async def test_a_read_that_keeps_failing_raises_instance_view_unavailable(
        client: ComputeClient, standins: StandIns, target: str, ids: list[str] | None) -> None:
    standins.sim.faults.append(Fault.model_validate({"match": "instanceView", "status": 503, "times": 10}))
    with pytest.raises(InstanceViewUnavailable) as info:
        await client.instance_health(parse_target(target), ids)
    assert info.value.transient and info.value.arm_status == 503
    assert len(reads(standins)) == 4  # the GET retry policy's 3 retries, then the error


async def test_a_transient_failure_is_retried_like_any_get(client: ComputeClient, standins: StandIns) -> None:
    standins.sim.faults.append(Fault.model_validate({"match": "instanceView", "status": 500, "times": 1}))
    got = await client.instance_health(parse_target(SS), ["1", "2"])
    assert {h.health for h in got.values()} == {Health.HEALTHY}
    assert [r["status"] for r in reads(standins)] == [500, 200]


async def test_a_missing_target_is_a_permanent_failure(client: ComputeClient, standins: StandIns) -> None:
    for target in (VM.replace("vm1", "ghost"), SS.replace("ss1", "ghost"), f"{SS}/virtualMachines/99"):
        with pytest.raises(InstanceViewUnavailable) as info:
            await client.instance_health(parse_target(target), None if "99" in target else ["1", "2"])
        assert info.value.arm_status == 404 and not info.value.transient


async def test_a_next_link_on_another_host_is_refused_and_never_fetched(client: ComputeClient,
                                                                       standins: StandIns) -> None:
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.headers.get("Authorization", ""))
        return web.json_response({"value": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    other = await serve(app)
    standins.sim.list_page_size, standins.sim.next_link_origin = 3, other.url
    try:
        with pytest.raises(InstanceViewUnavailable) as info:
            await client.instance_health(parse_target(SS), ["1", "8"])
    finally:
        await other.close()
    assert info.value.code == "UntrustedOperationUrl" and not info.value.transient
    assert hits == [] and len(reads(standins)) == 1


# ---- the custom role grants exactly what these reads need ---------------------------------------------
def rbac_action(method: str, path: str) -> str:
    """ARM's action for a request: the provider, the resource types along the path, then read/action."""
    parts = path.strip("/").split("/")
    at = [p.lower() for p in parts].index("providers")
    namespace, rest = parts[at + 1], parts[at + 2:]
    if method == "POST":  # .../{type}/{name}/{action}
        return "/".join([namespace, *rest[0:-1:2], rest[-1], "action"])
    return "/".join([namespace, *rest[0::2], "read"])  # a resource, a list, or a child such as instanceView


async def test_every_health_read_is_granted_by_the_role_and_every_view_action_is_used(
        client: ComputeClient, standins: StandIns) -> None:
    from tests.infra.test_infra import ROLE_ACTIONS

    await client.instance_health(parse_target(VM))
    await client.instance_health(parse_target(f"{SS}/virtualMachines/3"))
    await client.instance_health(parse_target(SS), ["1", "2"])
    used = {rbac_action(r["method"], r["path"]) for r in standins.sim.requests}
    granted = {a.lower() for a in ROLE_ACTIONS}
    assert {u.lower() for u in used} <= granted
    assert used == {"Microsoft.Compute/virtualMachines/instanceView/read",
                    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/instanceView/read",
                    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read"}
    # the set's own instance view is the automatic-repairs check's (adapters/test_fleet_reads.py), not health's
    view_actions = {a for a in granted if "instanceview" in a} - {
        "microsoft.compute/virtualmachinescalesets/instanceview/read"}
    assert view_actions == {u.lower() for u in used if "instanceview" in u.lower()}


def test_rbac_action_names_follow_the_path() -> None:
    assert rbac_action("POST", f"{SS}/reimage") == "Microsoft.Compute/virtualMachineScaleSets/reimage/action"
    assert rbac_action("GET", f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westus/operations/x"
                       ) == "Microsoft.Compute/locations/operations/read"
    assert rbac_action("GET", SS) == "Microsoft.Compute/virtualMachineScaleSets/read"
