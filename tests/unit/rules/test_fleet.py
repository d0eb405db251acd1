"""shared/rules/fleet.py: who governs a request, what leaves machines alone, and a Flexible batch's members."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.domain.arm_call import TargetModel
from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.fleet import FleetFacts, Lock, Member
from shared.domain.records import OperationRecord, TargetRecord
from shared.domain.request import parse_request
from shared.domain.status import OperationStatus
from shared.domain.targets import parse_target
from shared.rules import dryrun, fleet
from shared.settings import Settings

SUB = "00000000-0000-0000-0000-000000000001"
RG = f"/subscriptions/{SUB}/resourceGroups/rg1"
FLEX = f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/flex"
UNIFORM = f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/uni"
VM = f"{RG}/providers/Microsoft.Compute/virtualMachines"
NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
MEMBERS = tuple(Member(name=n, id=f"{VM}/{n}", os_type="Linux", ephemeral_os_disk=True)
                for n in ("flex_0a1b2c3d", "flex_9f8e7d6c", "Flex_Upper"))


def settings(**kw: str) -> Settings:
    return Settings(**{"ALLOWED_SCOPES": RG, **kw})  # type: ignore[arg-type]


def flex_model(**facts: Any) -> TargetModel:
    return TargetModel(id=FLEX, os_type=None, ephemeral_os_disk=False, instance_ids=tuple(m.name for m in MEMBERS),
                       fleet=FleetFacts(orchestration_mode="Flexible", members=MEMBERS, **facts))


def refused(code: ErrorCode, fn: Any, *args: Any) -> ReimagerError:
    with pytest.raises(ReimagerError) as info:
        fn(*args)
    assert info.value.code is code, info.value.error
    return info.value


# ---- who governs ------------------------------------------------------------------------------------------------
def test_a_member_by_vm_id_becomes_its_sets_request_naming_it_as_arm_spells_it() -> None:
    request = parse_request({"target": f"{VM}/FLEX_0A1B2C3D", "tempDisk": True, "requestId": "k"})
    asked = fleet.as_set_request(request, parse_target(FLEX), flex_model().fleet)
    assert asked.resolved_target.id == FLEX and asked.instance_ids == ["flex_0a1b2c3d"]
    assert (asked.temp_disk, asked.request_id) == (True, "k")
    by_set = parse_request({"target": FLEX, "instanceIds": ["flex_upper", "flex_9f8e7d6c"]})
    assert fleet.as_set_request(by_set, parse_target(FLEX), flex_model().fleet).instance_ids == [
        "Flex_Upper", "flex_9f8e7d6c"]


@pytest.mark.parametrize("body,field", [
    ({"target": FLEX, "instanceIds": ["flex_0a1b2c3d"], "allDisks": True}, "allDisks"),
    ({"target": FLEX, "instanceIds": ["flex_0a1b2c3d"], "forceUpdateOSDiskForEphemeral": True},
     "forceUpdateOSDiskForEphemeral"),
    ({"target": FLEX, "instanceIds": ["flex_0a1b2c3d", "FLEX_0A1B2C3D"]}, "instanceIds"),
    ({"target": FLEX, "instanceIds": ["flex_0a1b2c3d", "flex_9f8e7d6c"],
      "osProfile": {"adminPassword": "Str0ng-Passw0rd!"}}, "osProfile"),
])
def test_what_a_single_vm_reimage_cannot_do_is_refused(body: dict[str, Any], field: str) -> None:
    err = refused(ErrorCode.INVALID_REQUEST, fleet.as_set_request, parse_request(body), parse_target(FLEX),
                  flex_model().fleet)
    assert err.error.target == field


def test_a_name_the_set_does_not_list_is_not_found() -> None:
    err = refused(ErrorCode.TARGET_NOT_FOUND, fleet.as_set_request,
                  parse_request({"target": FLEX, "instanceIds": ["flex_gone"]}), parse_target(FLEX), flex_model().fleet)
    assert [d.message for d in err.error.details] == ["flex_gone"]


def test_a_member_by_vm_id_must_be_that_very_vm_not_a_namesake_in_the_sets_resource_group() -> None:
    """rg2/flex_0a1b2c3d names the set, whose resource group lists its own flex_0a1b2c3d: the request is refused,
    never turned into a reimage of the namesake (the POST is built from the set's group and the name)."""
    other = f"/subscriptions/{SUB}/resourceGroups/rg2/providers/Microsoft.Compute/virtualMachines"
    for vm in (f"{other}/flex_0a1b2c3d", f"{other}/only_here", f"{VM}/not_listed"):
        err = refused(ErrorCode.TARGET_NOT_FOUND, fleet.as_set_request, parse_request({"target": vm}),
                      parse_target(FLEX), flex_model().fleet)
        assert err.error.target == "target" and [d.message for d in err.error.details] == [parse_target(vm).id]
    # a member listed under another resource group (never by the set's group's list) is not reimaged by name either
    elsewhere = FleetFacts(orchestration_mode="Flexible", members=(Member(name="away", id=f"{other}/away"),))
    for body in ({"target": FLEX, "instanceIds": ["away"]}, {"target": f"{other}/away"}):
        refused(ErrorCode.TARGET_NOT_FOUND, fleet.as_set_request, parse_request(body), parse_target(FLEX), elsewhere)


def test_the_named_members_disks_decide_the_ephemeral_only_options() -> None:
    mixed = (*MEMBERS, Member(name="managed", id=f"{VM}/managed", os_type="Linux", ephemeral_os_disk=False))
    model = TargetModel(id=FLEX, os_type=None, ephemeral_os_disk=False, fleet=FleetFacts(
        orchestration_mode="Flexible", members=mixed))
    assert fleet.member_view(model, ["flex_0a1b2c3d"]).ephemeral_os_disk is True
    assert fleet.member_view(model, ["flex_0a1b2c3d", "managed"]).ephemeral_os_disk is False
    assert fleet.member_view(model, None).os_type == "Linux"


def test_a_flexible_sets_calls_are_single_vm_posts_with_the_secrets_only_for_one() -> None:
    request = fleet.as_set_request(parse_request({"target": f"{VM}/flex_0a1b2c3d", "exactVersion": "1.2.3",
                                                  "osProfile": {"adminPassword": "Str0ng-Passw0rd!"}}),
                                   parse_target(FLEX), flex_model().fleet)
    [call] = fleet.arm_calls(request, parse_target(FLEX), ["flex_0a1b2c3d"], "2024-07-01")
    assert call.path == f"{VM}/flex_0a1b2c3d/reimage" and call.operation.value == "VirtualMachines_Reimage"
    assert call.redacted_body() == {"exactVersion": "1.2.3", "osProfile": {"adminPassword": "***"}}
    batch = fleet.batch_call(parse_target(FLEX), {"operation": "VirtualMachines_Reimage", "tempDisk": True},
                             "flex_9f8e7d6c", "2024-07-01")
    assert batch.path == f"{VM}/flex_9f8e7d6c/reimage" and batch.wire_body() == {"tempDisk": True}


# ---- what leaves machines alone -------------------------------------------------------------------------------------
def test_a_protected_uniform_instance_is_refused_by_name() -> None:
    model = TargetModel(id=UNIFORM, os_type="Linux", ephemeral_os_disk=True, instance_ids=("0", "1", "2"),
                        fleet=FleetFacts(protected=("1",)))
    fleet.check_protection(model, ["0", "2"])
    err = refused(ErrorCode.INSTANCE_PROTECTED, fleet.check_protection, model, ["0", "1"])
    assert err.extra["protected"] == ["1"]


def test_read_only_locks_cover_their_scope_and_below_ignoring_case() -> None:
    lock = Lock.from_id(f"{RG.upper()}/providers/Microsoft.Authorization/locks/keep", "ReadOnly")
    assert (lock.scope, lock.name) == (RG.upper(), "keep")
    assert lock.covers(f"{VM}/flex_0a1b2c3d") and lock.covers(RG) and not lock.covers(RG + "2")
    member = Lock.from_id(f"{VM}/flex_0a1b2c3d/providers/Microsoft.Authorization/locks/m", "ReadOnly")
    on_set = Lock.from_id(f"{FLEX}/providers/Microsoft.Authorization/locks/s", "ReadOnly")
    soft = Lock.from_id(f"{VM}/flex_9f8e7d6c/providers/Microsoft.Authorization/locks/d", "CanNotDelete")
    model = flex_model(locks=(member, on_set, soft))
    target = parse_target(FLEX)
    fleet.check_locks(model, fleet.posted_resources(target, model, ["flex_9f8e7d6c"]))  # the set's lock is its own
    err = refused(ErrorCode.TARGET_LOCKED, fleet.check_locks, model,
                  fleet.posted_resources(target, model, ["flex_9f8e7d6c", "flex_0a1b2c3d"]))
    assert err.extra["lock"]["name"] == "m"
    uniform = TargetModel(id=FLEX, os_type="Linux", ephemeral_os_disk=True, fleet=FleetFacts(locks=(on_set,)))
    assert fleet.posted_resources(target, uniform, ["3"]) == [FLEX]  # a Uniform set's instances are its children


@pytest.mark.parametrize("state,refuses", [("Running", True), ("Unknown", True), ("Suspended", False),
                                           ("NotRunning", False), (None, False)])
def test_automatic_repairs_refuse_while_they_run(state: str | None, refuses: bool) -> None:
    model = flex_model(automatic_repairs=state)
    if refuses:
        err = refused(ErrorCode.AUTOMATIC_REPAIRS_ACTIVE, fleet.check_repairs, parse_target(FLEX), model, settings())
        assert "az vmss set-orchestration-service-state --service-name AutomaticRepairs --action Suspend --name " \
               "flex --resource-group rg1" in err.error.message
    else:
        fleet.check_repairs(parse_target(FLEX), model, settings())
    fleet.check_repairs(parse_target(FLEX), model, settings(AUTOMATIC_REPAIRS="allow"))


def test_a_members_own_protect_tag_leaves_it_alone() -> None:
    tagged = (*MEMBERS[:1], Member(name="kept", id=f"{VM}/kept", tags={"Reimager-Protect": "TRUE"}))
    model = TargetModel(id=FLEX, os_type=None, ephemeral_os_disk=True, fleet=FleetFacts(
        orchestration_mode="Flexible", members=tagged))
    fleet.check_member_tags(model, ["flex_0a1b2c3d"], settings())
    err = refused(ErrorCode.TARGET_PROTECTED, fleet.check_member_tags, model, ["kept"], settings())
    assert "kept" in err.error.message


def test_the_dry_run_reports_every_fleet_check() -> None:
    lock = Lock.from_id(f"{VM}/flex_0a1b2c3d/providers/Microsoft.Authorization/locks/m", "ReadOnly")
    request = parse_request({"target": FLEX, "instanceIds": ["flex_0a1b2c3d"], "dryRun": True})
    run = dryrun.evaluate(request, settings(), model=flex_model(locks=(lock,), automatic_repairs="Running"),
                          not_found=None, record=TargetRecord(key="k"), now=NOW, governing=parse_target(FLEX))
    checks = {c["name"]: c for c in run.checks}
    assert checks["lock"]["code"] == "TargetLocked" and checks["automaticRepairs"]["code"] == "AutomaticRepairsActive"
    assert checks["instanceProtection"]["result"] == "passed" and not run.passed


# ---- a Flexible batch ---------------------------------------------------------------------------------------------
def members(**states: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: dict(v) for k, v in states.items()}


def test_no_more_than_the_cap_in_flight_and_a_throttled_member_waits_its_retry_after() -> None:
    later = (NOW + timedelta(seconds=30)).isoformat()
    ms = members(a={"state": "running"}, b={"state": "sending"}, c={"state": "pending"}, d={"state": "pending"},
                 e={"state": "pending", "notBefore": later}, f={"state": "Succeeded"})
    assert fleet.to_send(ms, 3, NOW) == ["c"]
    assert fleet.to_send(ms, 2, NOW) == []
    assert fleet.to_send(ms, 9, NOW + timedelta(seconds=31)) == ["c", "d", "e"]
    assert fleet.aggregate(ms, NOW)["state"] == "Running"
    assert fleet.aggregate(members(e={"state": "pending", "notBefore": later}), NOW)["retryAfter"] == 30


def test_the_batch_as_one_operation_and_each_requests_own_outcome() -> None:
    ms = members(a={"state": "Succeeded"}, b={"state": "Failed", "error": {"code": "OSProvisioningTimedOut",
                                                                          "message": "no"}})
    assert fleet.aggregate(ms, NOW)["state"] == "Succeeded"  # the succeeded member's health is verified next
    assert fleet.aggregate(members(b=ms["b"]), NOW)["errorCode"] == "OSProvisioningTimedOut"
    batch = OperationRecord(operation_id="b-1", request_id="b-1", target=FLEX, lease_key="k", trigger="batch",
                            created_time=NOW, last_updated_time=NOW, members=["op-a", "op-b"],
                            options={"operation": "VirtualMachines_Reimage"}, arm={"members": ms},
                            status=OperationStatus.SUCCEEDED)
    assert fleet.is_flexible_batch(batch)
    status, error = fleet.batch_outcome(batch, OperationStatus.SUCCEEDED, None)
    assert status == OperationStatus.FAILED and error is not None and error["code"] == "OSProvisioningTimedOut"
    assert fleet.member_outcome(batch, ["a"]) == (OperationStatus.SUCCEEDED, None, True)
    own = fleet.member_outcome(batch, ["a", "b"])
    assert own is not None and own[0] == OperationStatus.FAILED and own[1] is not None and own[2] is False
    assert fleet.member_outcome(batch, ["x"]) is None
    running = batch.model_copy(update={"arm": {"members": members(a={"state": "running"})}})
    assert fleet.member_outcome(running, ["a"]) is None  # timed out while it ran: the batch's outcome
    uniform = batch.model_copy(update={"options": {"operation": "VirtualMachineScaleSets_Reimage"}})
    assert not fleet.is_flexible_batch(uniform)


def test_a_member_arm_refused_is_no_failed_reimage_and_is_withdrawn() -> None:
    """A member ARM refused (409 ScopeLocked: nothing applied) fails its own request, but the batch is no failed
    reimage for the breaker, its cooldown and budget count are withdrawn, and its request was not applied."""
    ms = members(a={"state": "Succeeded", "applied": True}, b={"state": "Failed", "applied": False, "error": {
        "code": "TargetLocked", "message": "locked"}}, c={"state": "pending"})
    batch = OperationRecord(operation_id="b-1", request_id="b-1", target=FLEX, lease_key="k", trigger="batch",
                            created_time=NOW, last_updated_time=NOW, members=["op-a", "op-b"],
                            options={"operation": "VirtualMachines_Reimage"}, arm={"members": ms},
                            status=OperationStatus.SUCCEEDED)
    assert fleet.batch_outcome(batch, OperationStatus.SUCCEEDED, None) == (OperationStatus.SUCCEEDED, None)
    assert fleet.not_applied(batch) == ["b", "c"]
    assert fleet.members_applied(batch, ["b"]) is False and fleet.members_applied(batch, ["a", "b"]) is True
    assert fleet.members_applied(batch, ["c"]) is False and fleet.members_applied(batch, ["x"]) is None
    own = fleet.member_outcome(batch, ["b"])
    assert own is not None and own[0] == OperationStatus.FAILED and own[1] is not None
    assert own[1]["code"] == "TargetLocked"
