"""Flexible scale sets and automatic repairs, as ARM answers them (research notes `arm.md` B5-B8; docs/fidelity.md
rows A38-A46):

- a Flexible set's members are VMs of their own (devhost/compute/resources.py creates them on scale-out, or a VM
  PUT names its set); a resource group's VM list takes `$filter=virtualMachineScaleSet/id eq '<id>'` (the property
  quoted or not; ids compared ignoring case) and, only with a filter, `$expand=instanceView` (SDK
  `VirtualMachinesOperations.list`: "this can only be specified if a valid $filter option is specified");
- what the scale-set APIs do on a Flexible set. Reimage and Reimage All of the set, or of one of its instances:
  refused 409 `OperationNotAllowed` (APICMP: the single-VM API instead, Reimage All "not applicable"; ARM's exact
  answer is not documented: the reading that breaks a client assuming the set-level API works is modelled, in the
  wording of the one captured Flexible refusal). Its instance view: refused the same way (hashicorp/nomad-autoscaler
  #1096, "Operation 'VirtualMachineScaleSets.instanceView.GET' is not allowed on Virtual Machine Scale Set"), unless
  `flex_set_instance_view` (REPAIR documents reading a set's automatic repairs there). Its VM list: items named
  by VM name, `instanceId` the name, no model or view (SPEC
  `VirtualMachineScaleSetVM_List_WithVirtualMachineResourceId`);
- a Flexible member's single-VM reimage: only with an ephemeral OS disk (APICMP: "Reimage on Ephemeral OS VMs
  only"), else 409 `OperationNotAllowed`; `flex_reimage_any_os_disk` allows it (the 2025-04-01 spec has a
  non-ephemeral VM reimage example);
- automatic repairs: `automaticRepairsPolicy` in the set's model; the set's instance view lists the
  `AutomaticRepairs` orchestration service, `Running` when the policy is enabled, `NotRunning` when it is defined
  but not enabled, absent without a policy (REPAIR "Suspension of Repairs"); `setOrchestrationServiceState`
  suspends or resumes it (SPEC: 200), and is refused 409 `OperationNotAllowed` on a set not opted in (not
  documented: the dangerous reading).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from aiohttp import web

from devhost.clock import Clock
from devhost.compute.arm import Parsed, cloud_error, lock_key
from devhost.compute.faults import Fault, per_instance_faults
from devhost.compute.resources import Inventory
from devhost.compute.views import InstanceViews, health_extension

_FILTER = re.compile(r"^\s*'?virtualMachineScaleSet/id'?\s+eq\s+'(?P<id>[^']+)'\s*$", re.IGNORECASE)
_SERVICES = ("AutomaticRepairs",)
_ACTIONS = {"suspend": "Suspended", "resume": "Running"}
REPAIRS = "*"  # the set's own entry in Inventory.vm_state (instances use their ids, a VM "")


class FleetSettings(Protocol):
    flex_set_instance_view: bool
    flex_reimage_any_os_disk: bool
    list_page_size: int | None
    next_link_origin: str | None
    faults: list[Fault]


def flexible(resource: dict[str, Any] | None) -> bool:
    props = (resource or {}).get("properties") or {}
    return resource is not None and resource.get("type") == "Microsoft.Compute/virtualMachineScaleSets" and \
        str(props.get("orchestrationMode", "")).lower() == "flexible"


def not_allowed(operation: str, name: str) -> web.Response:
    return cloud_error(409, "OperationNotAllowed", f"Operation '{operation}' is not allowed on Virtual Machine Scale "
                       f"Set '{name}'.")


def _enabled(policy: Any) -> bool:
    value = policy.get("enabled") if isinstance(policy, dict) else None
    return value is True or (isinstance(value, str) and value.lower() == "true")


@dataclass(eq=False)
class FleetApi:
    clock: Clock
    settings: FleetSettings
    inventory: Inventory
    views: InstanceViews

    # ---- a resource group's VM list, filtered on a Flexible set --------------------------------------------------
    def vm_list(self, request: web.Request, group_id: str, fault: Fault | None) -> web.Response:
        query = request.query
        expand = query.get("$expand", "").lower() == "instanceview"
        given = query.get("$filter")
        wanted = None
        if given is not None:
            m = _FILTER.match(given)
            if m is None:
                return cloud_error(400, "InvalidParameter", f"The value '{given}' of parameter '$filter' is not "
                                   "valid: the allowed value is 'virtualMachineScaleSet/id' eq '<scale set id>'.",
                                   target="$filter")
            wanted = lock_key(m["id"])
        elif expand:
            return cloud_error(400, "InvalidParameter", "$expand=instanceView can only be specified with a valid "
                               "$filter.", target="$expand")
        prefix = lock_key(group_id) + "/providers/microsoft.compute/virtualmachines/"
        vms = sorted((r for k, r in self.inventory.resources.items() if k.startswith(prefix)),
                     key=lambda r: str(r["name"]).lower())
        if wanted is not None:
            vms = [r for r in vms if lock_key(str(((r.get("properties") or {}).get("virtualMachineScaleSet") or {})
                                                  .get("id", ""))) == wanted]
        page, next_link = self._page(request, vms)
        now = self.clock.now()
        per_instance = per_instance_faults(self.settings.faults, request) if expand else []
        values = []
        for vm in page:
            if expand:
                name = (vm["properties"].get("osProfile") or {}).get("computerName", vm["name"])
                view = self.views.view(lock_key(vm["id"]), "", name, health_extension(vm), now, fault, per_instance)
                vm = {**vm, "properties": {**vm["properties"], "instanceView": view}}
            values.append(vm)
        doc: dict[str, Any] = {"value": values}
        if next_link:
            doc["nextLink"] = next_link
        return web.json_response(doc)

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        size = self.settings.list_page_size
        start = int(request.query.get("$skiptoken", "0") or 0)
        page = items[start:start + size] if size else items[start:]
        if not size or start + len(page) >= len(items):
            return page, None
        query = {k: v for k, v in request.query.items() if k != "$skiptoken"}
        query["$skiptoken"] = str(start + len(page))
        origin = self.settings.next_link_origin or str(request.url.origin())
        return page, f"{origin}{request.path}?{urlencode(query, safe='$', quote_via=quote)}"

    # ---- the scale-set APIs on a Flexible set -----------------------------------------------------------------------
    def set_vm_list(self, request: web.Request, vmss: dict[str, Any]) -> web.Response:
        """A Flexible set's VMSS VM list: its members by name, without model or instance view."""
        items = [{"name": vm["name"], "id": f"{vmss['id']}/virtualMachines/{vm['name']}",
                  "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines", "location": vm.get("location"),
                  "instanceId": vm["name"], "etag": '"1"'} for vm in self.inventory.members_of(vmss["id"])]
        page, next_link = self._page(request, items)
        doc: dict[str, Any] = {"value": page}
        if next_link:
            doc["nextLink"] = next_link
        return web.json_response(doc)

    def refusal(self, p: Parsed, resource: dict[str, Any] | None, method: str) -> web.Response | None:
        """What ARM refuses on a Flexible set (None: not a Flexible set, or allowed)."""
        if not flexible(resource) or p.rtype != "virtualmachinescalesets":
            return None
        name = p.name
        if p.action in ("reimage", "reimageall") and method == "POST":
            what = "VirtualMachineScaleSetVMs" if p.inst else "VirtualMachineScaleSets"
            return not_allowed(f"{what}.{'ReimageAll' if p.action == 'reimageall' else 'Reimage'}.POST", name)
        if p.action == "instanceview" and p.inst is None and not self.settings.flex_set_instance_view:
            return not_allowed("VirtualMachineScaleSets.instanceView.GET", name)
        return None

    def member_refusal(self, p: Parsed, vm: dict[str, Any]) -> web.Response | None:
        """A Flexible member's single-VM reimage needs an ephemeral OS disk (APICMP), unless switched."""
        props = vm.get("properties") or {}
        if p.action != "reimage" or not props.get("virtualMachineScaleSet") or self.settings.flex_reimage_any_os_disk:
            return None
        if (props.get("storageProfile") or {}).get("osDisk", {}).get("diffDiskSettings"):
            return None
        return cloud_error(409, "OperationNotAllowed", f"Operation 'Reimage' is not allowed on VM '{p.name}': it is "
                           "a member of a Virtual Machine Scale Set in Flexible orchestration mode without an "
                           "ephemeral OS disk.")

    # ---- automatic repairs -----------------------------------------------------------------------------------------
    def repairs_state(self, key: str, vmss: dict[str, Any]) -> str | None:
        policy = (vmss.get("properties") or {}).get("automaticRepairsPolicy")
        if not isinstance(policy, dict):
            return None
        if not _enabled(policy):
            return "NotRunning"
        return str(self.inventory.vm_state.get(key, {}).get(REPAIRS, {}).get("AutomaticRepairs", "Running"))

    def set_instance_view(self, p: Parsed, vmss: dict[str, Any]) -> web.Response:
        key = lock_key(p.resource_id)
        count = len(self.inventory.members_of(vmss["id"]) if flexible(vmss) else self.inventory.instances.get(key, {}))
        doc: dict[str, Any] = {
            "virtualMachine": {"statusesSummary": [{"code": "ProvisioningState/succeeded", "count": count}]},
            "statuses": [{"code": "ProvisioningState/succeeded", "level": "Info",
                          "displayStatus": "Provisioning succeeded"}]}
        state = self.repairs_state(key, vmss)
        if state is not None:
            doc["orchestrationServices"] = [{"serviceName": "AutomaticRepairs", "serviceState": state}]
        return web.json_response(doc)

    def set_orchestration_service_state(self, p: Parsed, vmss: dict[str, Any], body: dict[str, Any]
                                        ) -> web.Response:
        service, action = body.get("serviceName"), str(body.get("action", "")).lower()
        if service not in _SERVICES or action not in _ACTIONS:
            return cloud_error(400, "InvalidParameter", "serviceName must be AutomaticRepairs and action Suspend or "
                               "Resume.", target="action" if service in _SERVICES else "serviceName")
        key = lock_key(p.resource_id)
        if self.repairs_state(key, vmss) in (None, "NotRunning"):
            return cloud_error(409, "OperationNotAllowed", f"The orchestration service {service} of Virtual Machine "
                               f"Scale Set '{p.name}' cannot be changed: the scale set is not opted into it.")
        self.inventory.state_of(key, REPAIRS)["AutomaticRepairs"] = _ACTIONS[action]
        self.inventory.save(key)
        return web.Response(status=200)
