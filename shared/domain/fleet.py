"""What a preflight learns about a target's fleet besides its model: a Flexible scale set's members, a Uniform
set's protected instances, the set's automatic repairs, and the ARM locks over it. No I/O.

Flexible orchestration (research notes `arm.md` B5-B9): every member is a `Microsoft.Compute/virtualMachines`
resource whose model names its set (`properties.virtualMachineScaleSet.id`); it is listed with the VM list's
`$filter=virtualMachineScaleSet/id eq '<set id>'` and reimaged with the single-VM API (learn.microsoft.com,
"Orchestration modes API comparison": Reimage -> "Invoke Single VM API - Reimage"; Reimage All -> not
applicable). reimager names a member by its VM name, in the set's resource group (where ARM's filter lists it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.domain.targets import Target, TargetKind, ascii_fold

FLEXIBLE = "Flexible"
# The AutomaticRepairs orchestration service's states (SDK enum OrchestrationServiceState), and ours when the set
# says the policy is enabled but its state could not be read (a Flexible set's instance view may be refused).
REPAIRS_RUNNING, REPAIRS_SUSPENDED, REPAIRS_NOT_RUNNING, REPAIRS_UNKNOWN = "Running", "Suspended", "NotRunning", \
    "Unknown"
READ_ONLY = "ReadOnly"
LOCKS_PATH = "/providers/Microsoft.Authorization/locks/"


@dataclass(frozen=True)
class Member:
    """A Flexible scale set's member VM, as the filtered VM list shows it."""

    name: str
    id: str
    tags: dict[str, str] = field(default_factory=dict)
    os_type: str | None = None
    ephemeral_os_disk: bool = False


@dataclass(frozen=True)
class Lock:
    """An ARM management lock: the scope it is on (recovered from its id) and its level."""

    scope: str
    level: str
    name: str = ""

    @classmethod
    def from_id(cls, lock_id: str, level: str) -> Lock:
        scope, _, name = lock_id.rpartition(LOCKS_PATH)
        if not _:  # not a lock id ("/providers/..." on its own names no scope)
            scope, name = "", lock_id
        return cls(scope=scope.rstrip("/"), level=level, name=name)

    def covers(self, resource_id: str) -> bool:
        """A lock on a scope applies to it and to everything under it (ARM compares ids ignoring case)."""
        scope, rid = ascii_fold(self.scope), ascii_fold(resource_id)
        return bool(scope) and (rid == scope or rid.startswith(scope + "/"))


@dataclass(frozen=True)
class FleetFacts:
    """Read with the target's model (shared/adapters/arm/fleet.py) and shared by every request within
    PREFLIGHT_CACHE_SECONDS. Empty for what was not read."""

    orchestration_mode: str | None = None  # scale sets: "Uniform" / "Flexible" (absent: Uniform)
    scale_set_id: str | None = None  # a VM: the scale set it is a member of (properties.virtualMachineScaleSet.id)
    members: tuple[Member, ...] = ()  # a Flexible set: its member VMs
    protected: tuple[str, ...] = ()  # a Uniform set: instances with protectionPolicy.protectFromScaleSetActions
    # None: no automaticRepairsPolicy enabled on the set; else the AutomaticRepairs service's serviceState
    automatic_repairs: str | None = None
    locks: tuple[Lock, ...] = ()  # the locks over the target's resource group (its own, and on resources in it)
    locks_read: bool = True  # False: the locks could not be read (the reimage POST's ScopeLocked still refuses)

    @property
    def flexible(self) -> bool:
        return self.orchestration_mode is not None and ascii_fold(self.orchestration_mode) == "flexible"

    def member(self, name: str) -> Member | None:
        folded = ascii_fold(name)
        return next((m for m in self.members if ascii_fold(m.name) == folded), None)


def member_target(scale_set: Target, name: str) -> Target:
    """A Flexible member's VM, in its set's resource group."""
    return Target(scale_set.subscription_id, scale_set.resource_group, TargetKind.VM, name)
