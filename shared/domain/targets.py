"""ARM resource ids of reimage targets: parsing, normalisation and building."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum


class TargetKind(StrEnum):
    VM = "virtualMachine"
    VMSS = "virtualMachineScaleSet"
    VMSS_INSTANCE = "virtualMachineScaleSetInstance"


class TargetError(ValueError):
    """An id that is not a supported reimage target. The message names what was seen.

    `field` is the request field the problem is in (camelCase), for error details.
    """

    def __init__(self, message: str, field: str = "target") -> None:
        super().__init__(message)
        self.field = field


# ARM compares ids ordinally, ignoring ASCII case only: str.lower() would also fold non-ASCII
# look-alikes into ASCII (KELVIN SIGN -> "k"), so a group outside a scope could match it.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_SPACE = " \t\r\n"


def ascii_fold(text: str) -> str:
    """Lower-case A-Z only; every other character stays as it is (ordinal comparison)."""
    return text.translate(_ASCII_LOWER)


def loose_fold(text: str) -> str:
    """Fold at least every pair ARM may treat as equal ("GRÜPPE"/"grüppe", dotless i/"i"), and some it does not
    (KELVIN SIGN/"k"). Right for locks and cooldowns, where one key too few lets a VM be reimaged twice;
    never for scopes, where one key too many lets a look-alike in."""
    return text.upper().casefold()


_GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Compute resource names: 1-80 ASCII letters, digits, '.', '_', '-', starting with a letter, digit or '_'.
RESOURCE_NAME_PATTERN = r"[A-Za-z0-9_][-A-Za-z0-9_.]{0,79}"
# Instance ids are canonical decimal strings: "7", never "07", "+7" or " 7".
INSTANCE_ID_PATTERN = r"0|[1-9][0-9]{0,9}"
INSTANCE_ID_RULE = 'instance ids are canonical decimal strings like "7" (no leading zeros, signs or spaces)'
# A Flexible scale set's instances are its member VMs, named by their VM names (research notes `arm.md` B6: a
# Flexible set's `instanceId` is the VM name). Only names that start with a letter: one that starts with a digit
# could be a Uniform id written wrongly ("07"), and a member so named is still reached by its VM id.
MEMBER_NAME_PATTERN = r"[A-Za-z][-A-Za-z0-9_.]{0,79}"
MEMBER_NAME_RULE = "a Flexible scale set's members are named by their VM names, starting with a letter"
_NAME_RE = re.compile(RESOURCE_NAME_PATTERN)
_INSTANCE_RE = re.compile(INSTANCE_ID_PATTERN)
_MEMBER_RE = re.compile(MEMBER_NAME_PATTERN)
# Resource group names: 1-90 characters that .NET's Char.IsLetterOrDigit accepts (Unicode letters and
# decimal digits in the BMP), or '-', '_', '.', '(', ')'; not ending in '.'.
_RG_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nd"})
_RG_PUNCTUATION = frozenset("-_.()")


def valid_resource_group(name: str) -> bool:
    return (
        isinstance(name, str)
        and 1 <= len(name) <= 90
        and not name.endswith(".")
        and all(c in _RG_PUNCTUATION or (ord(c) <= 0xFFFF and unicodedata.category(c) in _RG_CATEGORIES)
                for c in name)
    )


def valid_instance_id(value: str) -> bool:
    return isinstance(value, str) and _INSTANCE_RE.fullmatch(value) is not None


def valid_member_name(value: str) -> bool:
    return isinstance(value, str) and _MEMBER_RE.fullmatch(value) is not None


def _check_name(name: str, field: str, what: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise TargetError(
            f"{what} has characters ARM does not allow: 1-80 ASCII letters, digits, '.', '_' or '-'", field
        )


def _check_instance(instance_id: str, field: str = "target") -> None:
    if not valid_instance_id(instance_id):
        raise TargetError(f"scale set instance id is not valid: {INSTANCE_ID_RULE}", field)


@dataclass(frozen=True)
class Target:
    """A normalised reimage target.

    `id` keeps the caller's casing of names but canonical casing of fixed segments; `key` is
    the identity ARM compares (ordinal after ASCII folding), for scopes and idempotency; `lock_key`
    folds more, for overlap and cooldown.
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
        return ascii_fold(self.id)

    @property
    def lock_key(self) -> str:
        """Overlap is counted per VM and per scale set, whatever instances are named, on a key that folds
        at least as much as ARM does (see loose_fold)."""
        return loose_fold(self.vm_id)

    def __str__(self) -> str:
        return self.id


_SHAPE = ("/subscriptions/{guid}/resourceGroups/{group}/providers/Microsoft.Compute/{type}/{name}"
          "[/virtualMachines/{instanceId}]")


def _segments(resource_id: str, what: str) -> list[str]:
    """The id's segments after the leading '/'; surrounding ASCII white space and one trailing '/' ignored."""
    text = resource_id.strip(_ASCII_SPACE)
    if not text.startswith("/"):
        raise TargetError(f"{what} is not an ARM resource id of the form {_SHAPE}")
    return text[1:].removesuffix("/").split("/")


def _subscription_and_group(parts: list[str], what: str) -> tuple[str, str]:
    if (len(parts) < 4 or ascii_fold(parts[0]) != "subscriptions" or ascii_fold(parts[2]) != "resourcegroups"):
        raise TargetError(f"{what} is not an ARM resource id of the form {_SHAPE}")
    if not _GUID_RE.fullmatch(parts[1]):
        raise TargetError(f"{what} does not name a subscription GUID")
    if not valid_resource_group(parts[3]):
        raise TargetError(f"{what} does not name a valid resource group")
    return ascii_fold(parts[1]), parts[3]


def parse_target(resource_id: str) -> Target:
    """Parse a VM, VMSS or VMSS-instance id. Fixed segments match ignoring ASCII case only."""
    if not isinstance(resource_id, str) or not resource_id.strip(_ASCII_SPACE):
        raise TargetError("target must be a non-empty ARM resource id")
    parts = _segments(resource_id, "target")
    sub, group = _subscription_and_group(parts, "target")
    if len(parts) not in (8, 10) or ascii_fold(parts[4]) != "providers" or not all(parts[5:]):
        raise TargetError(f"target is not an ARM resource id of the form {_SHAPE}")
    provider, rtype, name = parts[5], parts[6], parts[7]
    child_type = parts[8] if len(parts) == 10 else None
    seen = f"{provider}/{rtype}" + (f"/{child_type}" if child_type else "")
    supported = ascii_fold(provider) == "microsoft.compute" and (
        (ascii_fold(rtype) in ("virtualmachines", "virtualmachinescalesets") and child_type is None)
        or (ascii_fold(rtype) == "virtualmachinescalesets" and ascii_fold(child_type or "") == "virtualmachines")
    )
    if not supported:
        raise TargetError(f"unsupported resource type '{seen}': only virtual machines and scale sets")
    _check_name(name, "target", "the resource name in target")
    if child_type is not None:
        _check_instance(parts[9])
        return Target(sub, group, TargetKind.VMSS_INSTANCE, name, parts[9])
    kind = TargetKind.VM if ascii_fold(rtype) == "virtualmachines" else TargetKind.VMSS
    return Target(sub, group, kind, name)


def build_target(
    subscription_id: str,
    resource_group_name: str,
    vm_name: str | None = None,
    vm_scale_set_name: str | None = None,
    instance_id: str | None = None,
) -> Target:
    """Build a target from the cmdlet-style parts (seed 002)."""
    if not isinstance(subscription_id, str) or not _GUID_RE.fullmatch(subscription_id):
        raise TargetError("subscriptionId must be a subscription GUID", "subscriptionId")
    if not valid_resource_group(resource_group_name):
        raise TargetError(
            "resourceGroupName is not a valid resource group name: 1-90 letters, digits, '-', '_', '.', "
            "'(' or ')', not ending in '.'", "resourceGroupName")
    if (vm_name is None) == (vm_scale_set_name is None):
        raise TargetError("give exactly one of vmName and vmScaleSetName",
                          "vmName" if vm_name is not None else "vmScaleSetName")
    field = "vmName" if vm_name is not None else "vmScaleSetName"
    name = vm_name if vm_name is not None else vm_scale_set_name
    assert name is not None
    _check_name(name, field, field)
    sub = ascii_fold(subscription_id)
    if vm_name is not None:
        if instance_id is not None:
            raise TargetError("an instance id applies to a scale set, not a VM", "vmName")
        return Target(sub, resource_group_name, TargetKind.VM, name)
    if instance_id is not None:
        _check_instance(instance_id, "instanceId")
        return Target(sub, resource_group_name, TargetKind.VMSS_INSTANCE, name, instance_id)
    return Target(sub, resource_group_name, TargetKind.VMSS, name)


def parse_scope(scope: str) -> str:
    """Normalise an allowed scope (a subscription or resource-group id) to its ASCII-folded form."""
    what = f"'{scope}'"
    parts = _segments(scope, what) if isinstance(scope, str) else []
    if len(parts) == 2 and ascii_fold(parts[0]) == "subscriptions" and _GUID_RE.fullmatch(parts[1]):
        return ascii_fold(f"/subscriptions/{parts[1]}")
    if len(parts) == 4:
        sub, group = _subscription_and_group(parts, what)
        return ascii_fold(f"/subscriptions/{sub}/resourceGroups/{group}")
    raise TargetError(f"{what} is not a subscription or resource group id")


def within_scope(target: Target, scope: str) -> bool:
    """True when target lies under a normalised scope: segment-wise, ordinal after ASCII folding."""
    return target.key == scope or target.key.startswith(scope + "/")
