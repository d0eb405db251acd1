"""ARM resource ids of reimage targets: parsing, normalisation and building."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class TargetKind(StrEnum):
    VM = "virtualMachine"
    VMSS = "virtualMachineScaleSet"
    VMSS_INSTANCE = "virtualMachineScaleSetInstance"


class TargetError(ValueError):
    """An id that is not a supported reimage target. The message names what was seen."""


_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# Resource group names: 1-90 of letters, digits, '.', '_', '-', '(', ')', not ending in '.'.
RESOURCE_GROUP_PATTERN = r"[-\w.()]{0,89}[-\w()]"
# Compute resource names: 1-80 of letters, digits, '.', '_', '-'.
RESOURCE_NAME_PATTERN = r"[A-Za-z0-9_][-\w.]{0,79}"
INSTANCE_ID_PATTERN = r"[0-9]{1,10}"

_PREFIX = (
    rf"^/subscriptions/(?P<sub>{_GUID})/resourcegroups/(?P<rg>{RESOURCE_GROUP_PATTERN})"
    r"/providers/(?P<provider>[^/]+)/(?P<type>[^/]+)/(?P<name>[^/]+)"
    r"(?:/(?P<child_type>[^/]+)/(?P<child>[^/]+))?/?$"
)
_ID_RE = re.compile(_PREFIX, re.IGNORECASE)
_NAME_RE = re.compile(rf"^{RESOURCE_NAME_PATTERN}$")
_RG_RE = re.compile(rf"^{RESOURCE_GROUP_PATTERN}$")
_SUB_RE = re.compile(rf"^{_GUID}$")
_INSTANCE_RE = re.compile(rf"^{INSTANCE_ID_PATTERN}$")


@dataclass(frozen=True)
class Target:
    """A normalised reimage target.

    `id` keeps the caller's casing of names but canonical casing of fixed segments; `key`
    is the case-insensitive identity used for idempotency, overlap and cooldown.
    """

    subscription_id: str
    resource_group: str
    kind: TargetKind
    name: str
    instance_id: str | None = None

    @property
    def resource_group_id(self) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"

    @property
    def vm_id(self) -> str:
        """The VM or VM scale set id (the model a preflight GET reads)."""
        segment = "virtualMachines" if self.kind is TargetKind.VM else "virtualMachineScaleSets"
        return f"{self.resource_group_id}/providers/Microsoft.Compute/{segment}/{self.name}"

    @property
    def id(self) -> str:
        if self.kind is TargetKind.VMSS_INSTANCE:
            return f"{self.vm_id}/virtualMachines/{self.instance_id}"
        return self.vm_id

    @property
    def key(self) -> str:
        return self.id.lower()

    @property
    def lock_key(self) -> str:
        """Overlap is counted per VM and per scale set, whatever instances are named."""
        return self.vm_id.lower()

    @property
    def is_scale_set(self) -> bool:
        return self.kind is not TargetKind.VM

    def __str__(self) -> str:
        return self.id


def parse_target(resource_id: str) -> Target:
    """Parse a VM, VMSS or VMSS-instance id, matching segment names case-insensitively."""
    if not isinstance(resource_id, str) or not resource_id.strip():
        raise TargetError("target must be a non-empty ARM resource id")
    match = _ID_RE.match(resource_id.strip())
    if match is None:
        raise TargetError(
            "target is not an ARM resource id of the form /subscriptions/{guid}/resourceGroups/"
            "{group}/providers/Microsoft.Compute/{type}/{name}"
        )
    provider, rtype, child_type = match["provider"], match["type"], match["child_type"]
    seen = f"{provider}/{rtype}" + (f"/{child_type}" if child_type else "")
    if provider.lower() != "microsoft.compute":
        raise TargetError(f"unsupported resource type '{seen}': only virtual machines and scale sets")
    kind: TargetKind
    instance: str | None = None
    if rtype.lower() == "virtualmachines" and child_type is None:
        kind = TargetKind.VM
    elif rtype.lower() == "virtualmachinescalesets" and child_type is None:
        kind = TargetKind.VMSS
    elif rtype.lower() == "virtualmachinescalesets" and child_type.lower() == "virtualmachines":
        kind = TargetKind.VMSS_INSTANCE
        instance = match["child"]
        if not _INSTANCE_RE.match(instance):
            raise TargetError(f"scale set instance id '{instance}' is not a decimal instance id")
    else:
        raise TargetError(f"unsupported resource type '{seen}': only virtual machines and scale sets")
    if not _NAME_RE.match(match["name"]):
        raise TargetError("resource name has characters ARM does not allow")
    return Target(match["sub"].lower(), match["rg"], kind, match["name"], instance)


def build_target(
    subscription_id: str,
    resource_group_name: str,
    vm_name: str | None = None,
    vm_scale_set_name: str | None = None,
    instance_id: str | None = None,
) -> Target:
    """Build a target from the cmdlet-style parts (seed 002)."""
    if not _SUB_RE.match(subscription_id or ""):
        raise TargetError("subscriptionId must be a subscription GUID")
    if not _RG_RE.match(resource_group_name or ""):
        raise TargetError("resourceGroupName is not a valid resource group name")
    if (vm_name is None) == (vm_scale_set_name is None):
        raise TargetError("give exactly one of vmName and vmScaleSetName")
    name = vm_name if vm_name is not None else vm_scale_set_name
    assert name is not None
    if not _NAME_RE.match(name):
        raise TargetError("resource name has characters ARM does not allow")
    if vm_name is not None:
        if instance_id is not None:
            raise TargetError("an instance id applies to a scale set, not a VM")
        return Target(subscription_id.lower(), resource_group_name, TargetKind.VM, name)
    if instance_id is not None:
        if not _INSTANCE_RE.match(instance_id):
            raise TargetError(f"scale set instance id '{instance_id}' is not a decimal instance id")
        return Target(
            subscription_id.lower(), resource_group_name, TargetKind.VMSS_INSTANCE, name, instance_id
        )
    return Target(subscription_id.lower(), resource_group_name, TargetKind.VMSS, name)


def parse_scope(scope: str) -> str:
    """Normalise an allowed scope: a subscription or resource-group id, lower-cased."""
    s = scope.strip().rstrip("/")
    m = re.match(rf"^/subscriptions/({_GUID})(?:/resourcegroups/({RESOURCE_GROUP_PATTERN}))?$", s, re.I)
    if m is None:
        raise TargetError(f"'{scope}' is not a subscription or resource group id")
    out = f"/subscriptions/{m[1]}"
    if m[2]:
        out += f"/resourceGroups/{m[2]}"
    return out.lower()


def within_scope(target: Target, scope: str) -> bool:
    """True when target lies under a normalised scope (segment-wise, not by string prefix)."""
    return target.key == scope or target.key.startswith(scope + "/")
