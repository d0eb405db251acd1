"""One fleet model for both orchestration modes: pure decisions on what the preflight read (shared/domain/fleet.py).

- A request on a Flexible scale set's member (by its VM id), or naming members of a Flexible set, is the set's
  request naming those members: the set's lease, queue, batch cap, budget, breaker, approvals and cooldowns govern
  it, keyed by member name (`as_set_request`, `member_view`).
- What leaves a machine alone: a member VM tagged PROTECT_TAG, a Uniform instance protected from scale set actions,
  a ReadOnly lock, and the set's automatic repairs while they run (`check_fleet`).
- A Flexible batch is one single-VM reimage POST per member, never more than the batch cap in flight, each
  member's operation and outcome kept in the batch record's `arm.members` (`to_send`, `aggregate`,
  `member_outcome`; shared/workflow/fleet.py does the I/O).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from shared.domain.arm_call import ArmCall, OperationState, OsType, ReimageOperation, TargetModel
from shared.domain.errors import DetailCode, ErrorCode, ErrorDetail, ReimagerError
from shared.domain.fleet import (
    READ_ONLY,
    REPAIRS_RUNNING,
    REPAIRS_UNKNOWN,
    FleetFacts,
    Lock,
    Member,
    member_target,
)
from shared.domain.records import OperationRecord
from shared.domain.request import ReimageRequest
from shared.domain.status import OperationStatus
from shared.domain.targets import Target, TargetKind, ascii_fold, parse_target
from shared.settings import Settings

# The states of one member of a Flexible batch (arm.members[name]["state"]): waiting to be sent (the cap, or ARM's
# Retry-After), being sent (a run of an activity holds it by token), its operation running, or ended as ARM said.
PENDING, SENDING, RUNNING = "pending", "sending", "running"
ENDED = (OperationState.SUCCEEDED.value, OperationState.FAILED.value, OperationState.CANCELED.value)
_SUSPEND = ("az vmss set-orchestration-service-state --service-name AutomaticRepairs --action Suspend "
            "--name {name} --resource-group {group}")


# ---- who governs a request ---------------------------------------------------------------------------------------
def flexible_member(model: TargetModel) -> str | None:
    """A VM's model that names a scale set: the set's id (only a Flexible set's members are VMs of their own)."""
    return model.fleet.scale_set_id


def _no_such_member(names: list[str], scale_set: Target) -> ReimagerError:
    return ReimagerError(ErrorCode.TARGET_NOT_FOUND, f"The Flexible scale set {scale_set.name} lists no member "
                         f"{', '.join(names[:10])} (ARM lists a set's members in its resource group).",
                         target="instanceIds", details=[ErrorDetail(code=DetailCode.INSTANCE_NOT_FOUND,
                                                                    target="instanceIds", message=n)
                                                        for n in names[:10]])


def _not_listed(vm: Target, scale_set: Target) -> ReimagerError:
    return ReimagerError(ErrorCode.TARGET_NOT_FOUND, f"The VM {vm.name} in resource group {vm.resource_group} names "
                         f"the Flexible scale set {scale_set.name}, which lists no such member: its members are "
                         f"listed in its own resource group ({scale_set.resource_group}), and a member is reimaged "
                         "there only.", target="target",
                         details=[ErrorDetail(code=DetailCode.INSTANCE_NOT_FOUND, target="target", message=vm.id)])


def _own(member: Member, scale_set: Target) -> bool:
    """The member's own VM id is the one its POST, evidence and health name (its set's resource group and its name):
    a member listed anywhere else is not reimaged under a path that could name another VM."""
    return ascii_fold(member.id) == ascii_fold(member_target(scale_set, member.name).id)


def as_set_request(request: ReimageRequest, scale_set: Target, facts: FleetFacts) -> ReimageRequest:
    """The request as its Flexible set sees it: the set, naming the members by ARM's own spelling of their names.
    A request by a member's VM id names that one member. Options a single-VM reimage does not take are refused."""
    target = request.resolved_target
    problems = [(name, f"{name} applies to Uniform scale sets only: a Flexible set's members are reimaged one VM "
                 "at a time, with the single-VM API (which has no reimage-all)")
                for name, given in (("allDisks", request.all_disks),
                                    ("forceUpdateOSDiskForEphemeral",
                                     request.force_update_os_disk_for_ephemeral is not None)) if given]
    if problems:
        raise ReimagerError(ErrorCode.INVALID_REQUEST, "; ".join(m for _, m in problems), target=problems[0][0])
    if request.all_instances:
        return request
    wanted = [target.name] if target.kind is TargetKind.VM else list(request.effective_instance_ids or [])
    found = [facts.member(n) for n in wanted]
    if target.kind is TargetKind.VM and (found[0] is None or ascii_fold(found[0].id) != ascii_fold(target.vm_id)):
        raise _not_listed(target, scale_set)  # a name alone could be another member, in the set's resource group
    missing = [n for n, m in zip(wanted, found, strict=True) if m is None or not _own(m, scale_set)]
    if missing:
        raise _no_such_member(missing, scale_set)
    names = list(dict.fromkeys(m.name for m in found if m is not None))
    if len(names) != len(wanted):
        raise ReimagerError(ErrorCode.INVALID_REQUEST, "instanceIds names the same member twice (VM names are "
                            "compared ignoring case).", target="instanceIds")
    if request.os_profile is not None and len(names) > 1:
        raise ReimagerError(ErrorCode.INVALID_REQUEST, "A request carrying osProfile secrets names one member of a "
                            "Flexible scale set: each member is its own POST, and secrets are never stored.",
                            target="osProfile")
    copy = request.model_copy(update={"target": scale_set.id, "subscription_id": None, "resource_group_name": None,
                                      "vm_name": None, "vm_scale_set_name": None, "instance_ids": names})
    copy._target = scale_set
    return copy


def member_view(set_model: TargetModel, names: list[str] | None) -> TargetModel:
    """The set's model as the named members' checks need it: a Flexible set's OS disk and OS type are its members'
    (a set may have no VM profile); every named member must be ephemeral for the ephemeral-only options."""
    facts = set_model.fleet
    chosen = [m for m in facts.members if names is None or m.name in names]
    if not chosen:
        return set_model
    os_types: set[OsType] = {m.os_type for m in chosen if m.os_type in ("Windows", "Linux")}  # type: ignore[misc]
    return replace(set_model, ephemeral_os_disk=all(m.ephemeral_os_disk for m in chosen),
                   os_type=os_types.pop() if len(os_types) == 1 else set_model.os_type)


def arm_calls(request: ReimageRequest, scale_set: Target, names: list[str], api_version: str) -> list[ArmCall]:
    """A Flexible set's reimage: one single-VM POST per member (VirtualMachines_Reimage; osProfile only for the one
    member a request with secrets names)."""
    single = request.model_copy(update={"instance_ids": None, "all_instances": False})
    calls = []
    for name in names:
        vm = member_target(scale_set, name)
        single._target = vm
        calls.append(single.arm_call(api_version, ReimageOperation.VM_REIMAGE))
    return calls


def batch_call(scale_set: Target, options: dict[str, Any], name: str, api_version: str) -> ArmCall:
    """One member's POST of a Flexible batch (no secrets: requests with osProfile never wait)."""
    body: dict[str, Any] = {k: options[k] for k in ("tempDisk", "exactVersion") if k in options}
    return ArmCall(ReimageOperation.VM_REIMAGE, member_target(scale_set, name), api_version, body or None)


def is_flexible_batch(record: OperationRecord) -> bool:
    """A batch on a scale set whose requests are single-VM reimages: a Flexible set's batch."""
    return (record.is_batch and record.options.get("operation") == ReimageOperation.VM_REIMAGE.value
            and parse_target(record.target).kind is TargetKind.VMSS)


def flexible_set(record: OperationRecord) -> Target | None:
    """The Flexible set whose members `record` reimages with single-VM POSTs (its cooldown keys are their names): a
    Flexible batch, or a request on a Flexible member that led its own POST; None otherwise (a VM, a Uniform set)."""
    if record.options.get("operation") != ReimageOperation.VM_REIMAGE.value:
        return None
    governing = parse_target(parse_target(record.governed_by).vm_id)
    return governing if governing.kind is TargetKind.VMSS else None


# ---- what leaves machines alone ------------------------------------------------------------------------------------
def check_fleet(target: Target, model: TargetModel, instances: list[str] | None, settings: Settings) -> None:
    """After policy.check_model, in this order: a member VM's protect tag, protected Uniform instances, ReadOnly
    locks over what would be POSTed, the set's automatic repairs. `target`: the VM or scale set that governs."""
    check_member_tags(model, instances, settings)
    check_protection(model, instances)
    check_locks(model, posted_resources(target, model, instances))
    check_repairs(target, model, settings)


def posted_resources(target: Target, model: TargetModel, instances: list[str] | None) -> list[str]:
    """What the reimage POSTs name, for the locks over them: a Flexible set's member VMs, else the VM or the set
    (a lock on a set covers its Uniform instances, its child resources; a Flexible member is a resource of its own)."""
    if model.fleet.flexible:
        return [member_target(target, name).id for name in instances or ()]
    return [target.vm_id]


def check_member_tags(model: TargetModel, instances: list[str] | None, settings: Settings) -> None:
    """A Flexible member is a VM of its own: its own PROTECT_TAG leaves it alone, as the set's does every member."""
    for member in _named(model.fleet, instances):
        value = {k.lower(): v for k, v in member.tags.items()}.get(settings.protect_tag_name.lower())
        if value is not None and value.strip().lower() == settings.protect_tag_value.lower():
            raise ReimagerError(ErrorCode.TARGET_PROTECTED, f"Member VM {member.name} is tagged "
                                f"{settings.protect_tag_name}={value}; reimager will not touch it.", target="target")


def _named(facts: FleetFacts, instances: list[str] | None) -> list[Member]:
    wanted = {ascii_fold(i) for i in instances or ()}
    return [m for m in facts.members if ascii_fold(m.name) in wanted]


def check_protection(model: TargetModel, instances: list[str] | None) -> None:
    """Uniform instances with protectionPolicy.protectFromScaleSetActions are left alone by actions on the set; a
    scale-set reimage would skip them silently (research notes `arm.md` B8), so reimager refuses to name them."""
    hit = [i for i in instances or () if i in set(model.fleet.protected)]
    if hit:
        raise ReimagerError(ErrorCode.INSTANCE_PROTECTED, f"Instance{'s' if len(hit) > 1 else ''} "
                            f"{', '.join(hit[:10])} of the scale set {'are' if len(hit) > 1 else 'is'} protected "
                            "from scale set actions (protectionPolicy.protectFromScaleSetActions); reimager leaves "
                            "it alone. Name the other instances, or remove the protection.", target="instanceIds",
                            extra={"protected": hit})


def lock_on(facts: FleetFacts, resource_ids: list[str]) -> tuple[Lock, str] | None:
    """The first ReadOnly lock over one of these resources (ARM refuses every POST under it), and which."""
    for rid in resource_ids:
        for lock in facts.locks:
            if lock.level == READ_ONLY and lock.covers(rid):
                return lock, rid
    return None


def check_locks(model: TargetModel, resource_ids: list[str]) -> None:
    """A ReadOnly lock refuses the reimage POST (409 ScopeLocked: LOCKS "Locks prevent the POST method"); it is
    Flexible's instance protection (APICMP), so it is refused here, before ARM."""
    found = lock_on(model.fleet, resource_ids)
    if found is not None:
        lock, rid = found
        raise ReimagerError(ErrorCode.TARGET_LOCKED, f"{rid.rsplit('/', 1)[-1]} is under a ReadOnly lock "
                            f"({lock.name or 'unnamed'} on {lock.scope}): ARM refuses every reimage under it. "
                            "Remove the lock if the reimage is really wanted.", target="target",
                            extra={"lock": {"name": lock.name, "scope": lock.scope, "level": lock.level}})


def repairs_active(model: TargetModel) -> bool:
    """The set's automatic repairs are enabled and running (or enabled and their state could not be read)."""
    return model.fleet.automatic_repairs in (REPAIRS_RUNNING, REPAIRS_UNKNOWN)


def check_repairs(target: Target, model: TargetModel, settings: Settings) -> None:
    """Azure's automatic instance repairs and reimager must not act on the same instance at once (Azure/ARO-RP#4441
    turns them off first): refused while they run, unless AUTOMATIC_REPAIRS=allow."""
    if settings.automatic_repairs == "allow" or not repairs_active(model):
        return
    raise repairs_error(target, model.fleet.automatic_repairs or REPAIRS_RUNNING)


def repairs_error(target: Target, state: str) -> ReimagerError:
    how = _SUSPEND.format(name=target.name, group=target.resource_group)
    seen = ("their state could not be read (a Flexible set's instance view may be refused), so they are taken to "
            "be running" if state == REPAIRS_UNKNOWN else "the AutomaticRepairs service is Running")
    return ReimagerError(ErrorCode.AUTOMATIC_REPAIRS_ACTIVE, f"The scale set {target.name} has automatic instance "
                         f"repairs enabled and {seen}: Azure may repair the same instance while reimager reimages "
                         f"it. Suspend them first (`{how}`; `--action Resume` afterwards), turn the policy off, or "
                         "set AUTOMATIC_REPAIRS=allow to reimage beside them.", target="target",
                         extra={"automaticRepairs": state})


# ---- a Flexible batch: one POST per member, at most the cap in flight ---------------------------------------------
def in_flight(members: dict[str, dict[str, Any]]) -> int:
    return sum(1 for m in members.values() if m.get("state") in (SENDING, RUNNING))


def to_send(members: dict[str, dict[str, Any]], cap: int, now: datetime) -> list[str]:
    """Pending members whose Retry-After (if ARM throttled them) has passed, in order, while fewer than `cap` are in
    flight."""
    room = cap - in_flight(members)
    ready = [k for k, m in members.items() if m.get("state") == PENDING
             and (not m.get("notBefore") or datetime.fromisoformat(m["notBefore"]) <= now)]
    return ready[:max(0, room)]


def next_pending(members: dict[str, dict[str, Any]], now: datetime) -> float | None:
    """Seconds until the earliest throttled pending member may be sent (None: none waits on ARM)."""
    waits = [(datetime.fromisoformat(m["notBefore"]) - now).total_seconds() for m in members.values()
             if m.get("state") == PENDING and m.get("notBefore")]
    return max(0.0, min(waits)) if waits else None


def aggregate(members: dict[str, dict[str, Any]], now: datetime) -> dict[str, Any]:
    """The batch as one operation, as the monitor reads it (a PollResult's shape): Running while a member is not
    ended; then Succeeded when any member succeeded (its health is verified next; the others end with their own
    outcome), else the first member's failure."""
    waiting = [m for m in members.values() if m.get("state") not in ENDED]
    if waiting:
        retries = [float(m["retryAfter"]) for m in waiting if m.get("state") == RUNNING and m.get("retryAfter")]
        pending = next_pending(members, now)
        after = min([*retries, *([pending] if pending is not None else [])], default=None)
        return {"state": OperationState.RUNNING.value, "retryAfter": after, "statusCode": 200, "readFailed": False}
    if any(m.get("state") == OperationState.SUCCEEDED.value for m in members.values()):
        return {"state": OperationState.SUCCEEDED.value, "retryAfter": None, "statusCode": 200, "readFailed": False}
    first = next(iter(sorted(members.items())))[1] if members else {}
    error = first.get("error") or {}
    return {"state": first.get("state") or OperationState.FAILED.value, "retryAfter": None,
            "errorCode": error.get("code"), "errorMessage": error.get("message"), "statusCode": 200,
            "readFailed": False}


def batch_outcome(record: OperationRecord, status: OperationStatus, error: dict[str, Any] | None
                  ) -> tuple[OperationStatus, dict[str, Any] | None]:
    """A Flexible batch's own ending, for its failure streak: Failed when any member failed (as a Uniform batch whose
    one operation failed), with that member's error; else as the monitor saw it."""
    members = (record.arm or {}).get("members") or {}
    if status != OperationStatus.SUCCEEDED:
        return status, error
    failed = [(k, m) for k, m in sorted(members.items()) if m.get("state") in ENDED[1:] and _applied(m)]
    if not failed:  # a member ARM refused was not reimaged: no failure of a reimage (a refused Uniform POST's rule)
        return status, error
    name, member = failed[0]
    err = dict(member.get("error") or {"code": ErrorCode.OPERATION_FAILED, "message": ""})
    err["message"] = f"{len(failed)} of {len(members)} members did not reimage; {name}: {err.get('message', '')}"
    return OperationStatus(member["state"]), err


def _applied(member: dict[str, Any]) -> bool:
    """A member's POST may have reached ARM (only one ARM certainly refused says `applied: false`)."""
    return member.get("applied") is not False


def not_applied(record: OperationRecord) -> list[str]:
    """A Flexible batch's members ARM certainly refused, or never sent (it ended first): nothing applied, so their
    provisional cooldowns and budget count are withdrawn when the batch ends."""
    members = (record.arm or {}).get("members") or {}
    return [k for k, m in members.items() if m.get("state") == PENDING or (m.get("state") in ENDED and not _applied(m))]


def members_applied(batch: OperationRecord, keys: list[str]) -> bool | None:
    """Whether a request's own members of a Flexible batch may have been reimaged (None: not a Flexible batch, or
    none of them has an entry: the batch's `applied` stands)."""
    members = (batch.arm or {}).get("members") or {}
    mine = [members[k] for k in keys if k in members]
    return any(_applied(m) and m.get("state") != PENDING for m in mine) if mine else None


def member_outcome(batch: OperationRecord, keys: list[str]) -> tuple[OperationStatus, dict[str, Any] | None,
                                                                     bool] | None:
    """A request's own ending in a Flexible batch: its members' outcomes (the worst: a failed member fails it),
    not the batch's. (status, error, ok) where ok says its members all succeeded; None: not a Flexible batch, or
    none of its members has an outcome of its own (the batch's applies)."""
    members = (batch.arm or {}).get("members") or {}
    mine = [(k, members[k]) for k in keys if k in members]
    if not mine:
        return None
    bad = [(k, m) for k, m in mine if m.get("state") in ENDED[1:]]
    if bad:
        name, member = bad[0]
        error = dict(member.get("error") or {"code": ErrorCode.OPERATION_FAILED, "message": ""})
        error["message"] = f"{name}: {error.get('message', '')}".strip()
        return OperationStatus(member["state"]), error, False
    if all(m.get("state") == OperationState.SUCCEEDED.value for _, m in mine):
        return OperationStatus.SUCCEEDED, None, True
    return None  # still running when the batch ended (timed out): the batch's outcome


def member_states(members: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each member's state, for logs and the demo."""
    return {k: str(m.get("state")) for k, m in members.items()}
