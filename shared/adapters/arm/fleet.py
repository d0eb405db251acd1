"""The reads that tell how a target's fleet is governed, made with its preflight and shared with it (the same
PREFLIGHT_CACHE_SECONDS, the same coalescing: shared/adapters/arm/reads.py):

- a VM's model names the scale set it belongs to (`properties.virtualMachineScaleSet.id`): the caller then reads
  that set (shared/workflow/fleet.py);
- a Flexible set's members: the VM list of the set's resource group filtered on the set,
  `GET .../virtualMachines?$filter=virtualMachineScaleSet/id eq '<set id>'` (SDK `VirtualMachinesOperations.list`
  docstring; research notes `arm.md` B6), following nextLink. One High Cost Get VM read per page, charged to the
  subscription only (CTL);
- the set's automatic repairs, only when its model enables the policy: the AutomaticRepairs service's
  `serviceState` in the set's instance view (REPAIR, "Viewing and updating the service state"). A Flexible set's
  instance view may be refused (409, hashicorp/nomad-autoscaler#1096) and a set's may lack `orchestrationServices`
  (SPEC MinimumSet): then the state is Unknown, and taken to be running;
- the ARM locks over the target's resource group, `GET .../resourceGroups/{rg}/providers/Microsoft.Authorization/
  locks?api-version=2016-09-01` (LOCKS; ManagementLocks_ListAtResourceGroupLevel): the group's own and those on
  resources in it, one read per group. A lock list that cannot be read (no `Microsoft.Authorization/locks/read`)
  is logged and let through: ARM still refuses the reimage POST under a ReadOnly lock (409 ScopeLocked), with
  nothing applied. Subscription-level locks may be missing from the group's list (the dangerous reading, arm.md
  B9); the POST's ScopeLocked is the backstop for those too.
A 429 on any of them is the preflight's 429 (the request waits Queued for ARM's Retry-After).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from azure.core.rest import HttpRequest

from shared.adapters.arm.lro import error_from_response
from shared.adapters.arm.reads import SharedReads
from shared.domain.errors import ComputeThrottled, ReimagerError, UntrustedOperationUrl
from shared.domain.fleet import (
    REPAIRS_UNKNOWN,
    FleetFacts,
    Lock,
    Member,
)
from shared.domain.targets import Target, TargetKind, ascii_fold

Guarded = Callable[..., Awaitable[tuple[int, dict[str, str], bytes]]]
LOCKS_API_VERSION = "2016-09-01"  # LOCKS: "For the API version, use 2016-09-01"
_MAX_PAGES = 1000  # a page holds many items; this bounds a server that loops
log = logging.getLogger("reimager.compute")


def enabled(policy: Any) -> bool:
    """automaticRepairsPolicy.enabled: a boolean, or the string "true" (REPAIR's own REST example sends one)."""
    value = policy.get("enabled") if isinstance(policy, dict) else None
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def protected(item: dict[str, Any]) -> bool:
    """A Uniform instance protected from scale set actions (PROT; protectionPolicy on the instance model)."""
    policy = (item.get("properties") or {}).get("protectionPolicy") or {}
    return policy.get("protectFromScaleSetActions") is True


class FleetReads:
    def __init__(self, origin: str, api_version: str, guarded: Guarded, now: Callable[[], float],
                 same_origin: Callable[[str, str], bool], max_age: float) -> None:
        self.origin, self.api_version = origin, api_version
        self._guarded, self._now, self._same_origin = guarded, now, same_origin
        self.locks_reads: SharedReads[tuple[tuple[Lock, ...], bool]] = SharedReads(max_age, now)

    async def facts(self, target: Target, doc: dict[str, Any]) -> FleetFacts:
        """What `doc` (the target's model, just read) and the reads it calls for say."""
        props = doc.get("properties") or {}
        if target.kind is TargetKind.VM:
            scale_set = (props.get("virtualMachineScaleSet") or {}).get("id")
            locks, read = await self.locks(target)
            return FleetFacts(scale_set_id=str(scale_set) if scale_set else None, locks=locks, locks_read=read)
        mode = props.get("orchestrationMode")
        flexible = isinstance(mode, str) and ascii_fold(mode) == "flexible"
        repairs = enabled(props.get("automaticRepairsPolicy"))
        members, state, (locks, read) = await asyncio.gather(
            self.members(target) if flexible else _nothing(()),
            self.repairs(target) if repairs else _nothing(None),
            self.locks(target))
        return FleetFacts(orchestration_mode=str(mode) if mode else None, members=members,
                          automatic_repairs=state, locks=locks, locks_read=read)

    async def _pages(self, request: HttpRequest, what: str, kind: str, resource: str) -> list[dict[str, Any]]:
        """Every item of a paged ARM list (same-origin nextLinks only)."""
        items: list[dict[str, Any]] = []
        for _ in range(_MAX_PAGES):
            status, headers, body = await self._guarded(request, what, kind, resource)
            if status != 200:
                raise error_from_response(status, headers, body, what, self._now())
            doc = json.loads(body)
            items += [v for v in doc.get("value") or [] if isinstance(v, dict)]
            link = doc.get("nextLink")
            if not link:
                break
            if not self._same_origin(link, self.origin):
                raise UntrustedOperationUrl(link)
            request = HttpRequest("GET", link)
        return items

    async def members(self, scale_set: Target) -> tuple[Member, ...]:
        """A Flexible set's member VMs: the VM list of its resource group, filtered on the set."""
        url = f"{self.origin}{scale_set.resource_group_id}/providers/Microsoft.Compute/virtualMachines"
        request = HttpRequest("GET", url, params={
            "api-version": self.api_version, "$filter": f"'virtualMachineScaleSet/id' eq '{scale_set.vm_id}'"})
        items = await self._pages(request, "listing the Flexible scale set's members", "instances", scale_set.vm_id)
        mine = ascii_fold(scale_set.vm_id)
        out = []
        for item in items:
            props = item.get("properties") or {}
            owner = (props.get("virtualMachineScaleSet") or {}).get("id")
            if not item.get("name") or not isinstance(owner, str) or ascii_fold(owner) != mine:
                continue  # a filter the server did not apply is applied here
            os_disk = (props.get("storageProfile") or {}).get("osDisk") or {}
            out.append(Member(name=str(item["name"]), id=str(item.get("id") or ""),
                              tags={str(k): str(v) for k, v in (item.get("tags") or {}).items()},
                              os_type=os_disk.get("osType"), ephemeral_os_disk=bool(os_disk.get("diffDiskSettings"))))
        return tuple(sorted(out, key=lambda m: m.name.lower()))

    async def repairs(self, scale_set: Target) -> str:
        """The AutomaticRepairs service's serviceState in the set's instance view; Unknown when it cannot be read."""
        what = "reading the scale set's orchestration services"
        request = HttpRequest("GET", f"{self.origin}{scale_set.vm_id}/instanceView",
                              params={"api-version": self.api_version})
        try:
            status, headers, body = await self._guarded(request, what, "repairs", scale_set.vm_id)
        except ComputeThrottled:
            raise
        except ReimagerError as exc:
            log.warning("%s of %s: %s; taken to be running", what, scale_set.vm_id, exc.error.message)
            return REPAIRS_UNKNOWN
        if status == 429:
            raise error_from_response(status, headers, body, what, self._now())
        try:
            doc = json.loads(body) if status == 200 else None
        except ValueError:
            doc = None
        services = doc.get("orchestrationServices") if isinstance(doc, dict) else None
        for service in services if isinstance(services, list) else []:
            if isinstance(service, dict) and str(service.get("serviceName", "")).lower() == "automaticrepairs":
                return str(service.get("serviceState") or REPAIRS_UNKNOWN)
        log.warning("%s of %s: ARM answered %s without the AutomaticRepairs service; taken to be running", what,
                    scale_set.vm_id, status)
        return REPAIRS_UNKNOWN

    async def locks(self, target: Target) -> tuple[tuple[Lock, ...], bool]:
        """The ARM locks over the target's resource group (one read per group, shared); (locks, read)."""
        group = target.resource_group_id
        return await self.locks_reads.get(ascii_fold(group), lambda: self._read_locks(group, target.vm_id))

    async def _read_locks(self, group: str, resource: str) -> tuple[tuple[Lock, ...], bool]:
        request = HttpRequest("GET", f"{self.origin}{group}/providers/Microsoft.Authorization/locks",
                              params={"api-version": LOCKS_API_VERSION})
        try:
            items = await self._pages(request, "listing the resource group's locks", "locks", resource)
        except ComputeThrottled:
            raise
        except ReimagerError as exc:  # the POST's ScopeLocked still refuses under a lock: nothing is applied
            log.warning("could not read the locks of %s (%s); a ReadOnly lock will refuse the POST instead", group,
                        exc.error.message)
            return (), False
        locks = tuple(Lock.from_id(str(item.get("id") or ""), str((item.get("properties") or {}).get("level")))
                      for item in items)
        return tuple(lock for lock in locks if lock.scope), True


async def _nothing(value: Any) -> Any:
    return value
