"""The resource endpoints: GET of a VM, scale set or instance (with `$expand=instanceView`, or its
`/instanceView`), the scale set's VM list (paged with nextLink when switched on), and PUT/PATCH of a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web

from devhost.clock import Clock
from devhost.compute.arm import Parsed, cloud_error, lock_key
from devhost.compute.faults import Fault, per_instance_faults
from devhost.compute.operations import Operations
from devhost.compute.resources import Inventory
from devhost.compute.views import InstanceViews, extension_resources, health_extension


class PageSettings(Protocol):
    """How the VM list pages, read at each request (tests change it between requests)."""

    list_page_size: int | None
    next_link_origin: str | None
    faults: list[Fault]


@dataclass(eq=False)
class ResourceApi:
    clock: Clock
    settings: PageSettings
    inventory: Inventory
    operations: Operations
    views: InstanceViews

    def get(self, request: web.Request, p: Parsed, fault: Fault | None, view_only: bool = False) -> web.Response:
        now = self.clock.now()
        key = lock_key(p.resource_id)
        self.operations.settle_key(key, now)
        res = self.inventory.resources.get(key)
        if res is None:
            if p.inst is not None or p.is_list:
                return cloud_error(404, "ParentResourceNotFound",
                                   f"Can not perform requested operation on nested resource. Parent resource "
                                   f"'{p.name}' not found.")
            kind = "virtualMachines" if p.rtype == "virtualmachines" else "virtualMachineScaleSets"
            return cloud_error(404, "ResourceNotFound", f"The Resource 'Microsoft.Compute/{kind}/{p.name}' under "
                               f"resource group '{p.rg}' was not found.")
        headers: dict[str, str] = {}
        expand = request.query.get("$expand", "").lower() == "instanceview"
        ext = health_extension(res)
        if p.is_list:
            return self._list(request, key, res, ext, expand, now, fault, headers)
        if p.inst is not None:
            inst = self.inventory.instances.get(key, {}).get(p.inst)
            if inst is None:
                return cloud_error(404, "NotFound", f"The entity was not found in this Azure location. Instance "
                                   f"'{p.inst}' does not exist.")
            doc, name, inst_id = inst, inst["properties"]["osProfile"].get("computerName", inst["name"]), p.inst
        else:
            if p.rtype == "virtualmachinescalesets":
                if view_only:
                    return cloud_error(404, "NotFound", "The scale set instance view summary is not simulated.")
                return web.json_response(res, headers=headers)
            doc, name, inst_id = res, (res["properties"].get("osProfile") or {}).get("computerName", p.name), ""
        if view_only or expand:
            view = self.views.view(key, inst_id, name, ext, now, fault,
                                   per_instance_faults(self.settings.faults, request))
            if view_only:
                return web.json_response(view, headers=headers)
            doc = {**doc, "properties": {**doc["properties"], "instanceView": view}}
        return web.json_response(doc, headers=headers)

    def _list(self, request: web.Request, key: str, res: dict[str, Any], ext: dict[str, Any] | None, expand: bool,
              now: float, fault: Fault | None, headers: dict[str, str]) -> web.Response:
        insts = self.inventory.instances.get(key, {})
        ids = sorted(insts, key=int)
        page_size = self.settings.list_page_size
        start = int(request.query.get("$skiptoken", "0") or 0)
        page = ids[start:start + page_size] if page_size else ids[start:]
        values = []
        per_instance = per_instance_faults(self.settings.faults, request) if expand else []
        extension = extension_resources(res)
        for inst_id in page:
            inst = insts[inst_id]
            if expand:
                view = self.views.view(key, inst_id, inst["properties"]["osProfile"].get("computerName", ""),
                                       ext, now, fault, per_instance)
                inst = {**inst, "properties": {**inst["properties"], "instanceView": view}}
            if extension:  # the spec's list items carry the VM's extensions as `resources`
                inst = {**inst, "resources": [{**e, "id": f"{inst['id']}/extensions/{e['name']}"} for e in extension]}
            values.append(inst)
        doc: dict[str, Any] = {"value": values}
        if page_size and start + len(page) < len(ids):
            query = {k: v for k, v in request.query.items() if k != "$skiptoken"}
            query["$skiptoken"] = str(start + len(page))
            origin = self.settings.next_link_origin or str(request.url.origin())
            doc["nextLink"] = f"{origin}{request.path}?{urlencode(query, safe='$')}"
        return web.json_response(doc, headers=headers)

    def put_instance(self, p: Parsed, body: dict[str, Any]) -> web.Response:
        """A Uniform instance's model update: reimager's simulator keeps only its protectionPolicy (PROT)."""
        policy = ((body.get("properties") or {}) if isinstance(body, dict) else {}).get("protectionPolicy")
        if not isinstance(policy, dict):
            return cloud_error(400, "InvalidParameter", "Only properties.protectionPolicy of an instance can be "
                               "changed here.", target="properties.protectionPolicy")
        try:
            return web.json_response(self.inventory.set_protection(f"{p.resource_id}/virtualMachines/{p.inst}",
                                                                   policy))
        except LookupError:
            return cloud_error(404, "NotFound", f"The entity was not found in this Azure location. Instance "
                               f"'{p.inst}' does not exist.")
        except ValueError as exc:
            return cloud_error(400, "InvalidParameter", str(exc), target="properties.protectionPolicy")

    def put(self, p: Parsed, body: dict[str, Any], patch: bool) -> web.Response:
        key = lock_key(p.resource_id)
        existing = self.inventory.resources.get(key)
        if patch and existing is None:
            return cloud_error(404, "ResourceNotFound", f"The Resource '{p.name}' was not found.")
        running = self.operations.busy(key)
        try:
            res = self.inventory.upsert(p.resource_id, body, patch=patch)
        except ValueError as exc:
            return cloud_error(400, "InvalidParameter", str(exc))
        if running is not None:  # a model update is a newer operation on the resource: it preempts
            self.operations.preempt(running, self.clock.now())
        return web.json_response(res, status=200 if existing else 201)
