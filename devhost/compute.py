"""ARM Compute simulator (aiohttp): VMs, scale sets, their instances, and the reimage LROs.

Faithful where reimager and azure-mgmt-compute look: paths matched case-insensitively,
api-version and bearer tokens required, 202 + Azure-AsyncOperation + Location + Retry-After,
operation status in both styles, CloudError bodies with real codes, 409 while a resource is
busy. Adds a request log and fault injection for tests and the demo.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from devhost.clock import Clock
from devhost.identity import TokenIssuer

# The reimage operations exist from 2017-03-30 on (spec version list); newer SDKs send newer versions.
FIRST_API_VERSION = "2017-03-30"
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
DEFAULT_IMAGE_VERSION = "2026.1.0"
VM_REIMAGE_KEYS = {"tempDisk", "exactVersion", "osProfile"}
VMSS_VM_REIMAGE_KEYS = VM_REIMAGE_KEYS | {"forceUpdateOSDiskForEphemeral"}
VMSS_REIMAGE_KEYS = VMSS_VM_REIMAGE_KEYS | {"instanceIds"}

_PREFIX = r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/microsoft\.compute"
_RESOURCE = re.compile(
    _PREFIX + r"/(?P<type>virtualmachines|virtualmachinescalesets)/(?P<name>[^/]+)"
    r"(?P<list>/virtualmachines)?(?:/virtualmachines/(?P<inst>[^/]+))?"
    r"(?:/(?P<action>reimage|reimageall))?/?$",
    re.IGNORECASE,
)
_OPERATION = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/microsoft\.compute/locations/(?P<loc>[^/]+)"
    r"/operations/(?P<id>[^/]+)$",
    re.IGNORECASE,
)


class Fault(BaseModel):
    """One injected fault, consumed by the next `times` requests that match."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    match: str = Field(description="'reimage', 'operations', 'get', 'put', or a path substring")
    method: str | None = None
    status: int | None = Field(None, ge=400, le=599)
    retry_after: int | None = Field(None, alias="retryAfter", ge=0)
    times: int = Field(1, ge=1)
    drop: bool = False
    delay_seconds: float = Field(0, alias="delaySeconds", ge=0, le=120)
    outcome: Literal["Failed", "Canceled", "Never"] | None = None
    code: str | None = None
    message: str | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        low = path.lower()
        if self.match == "reimage":
            return method == "POST" and (low.endswith("/reimage") or low.endswith("/reimageall"))
        if self.match == "operations":
            return "/operations/" in low
        if self.match in ("get", "put"):
            return method == self.match.upper() and "/operations/" not in low
        return self.match.lower() in low


@dataclass
class Operation:
    id: str
    lock_key: str
    location: str
    subscription: str
    started: float
    duration: float
    instance_keys: list[str]
    version: str
    outcome: str = "Succeeded"
    code: str | None = None
    message: str | None = None
    settled: bool = False

    def status(self, now: float) -> str:
        if self.outcome == "Never" or now < self.started + self.duration:
            return "InProgress"
        return self.outcome

    @property
    def end(self) -> float:
        return self.started + self.duration


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def cloud_error(status: int, code: str, message: str, target: str | None = None,
                headers: dict[str, str] | None = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if target:
        err["target"] = target
    return web.json_response({"error": err}, status=status, headers=headers)


@dataclass
class _Parsed:
    sub: str
    rg: str
    rtype: str  # "virtualmachines" | "virtualmachinescalesets"
    name: str
    inst: str | None
    action: str | None
    is_list: bool

    @property
    def rg_id(self) -> str:
        return f"/subscriptions/{self.sub}/resourceGroups/{self.rg}"

    @property
    def resource_id(self) -> str:
        seg = "virtualMachines" if self.rtype == "virtualmachines" else "virtualMachineScaleSets"
        return f"{self.rg_id}/providers/Microsoft.Compute/{seg}/{self.name}"


@dataclass
class ComputeSimulator:
    clock: Clock
    issuer: TokenIssuer
    operation_seconds: float = 5.0
    retry_after: int | None = 1
    location: str = "westus"
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    instances: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    operations: dict[str, Operation] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)  # per resource name (lower case), seconds
    async_operation_header: bool = True  # False: answer in the Location style only
    operation_origin: str | None = None  # set to hand out operation URLs on another host
    _writes_left: int = 1200
    _reads_left: int = 12000

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._entry)
        return app

    # ---- entry: log, auth, api-version, faults, dispatch --------------------------------------
    async def _entry(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        entry = {"method": request.method, "path": request.path, "query": dict(request.query),
                 "body": body, "status": 0}
        self.requests.append(entry)
        response = await self._respond(request, body, raw)
        entry["status"] = response.status
        return response

    async def _respond(self, request: web.Request, body: Any, raw: bytes) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not self.issuer.valid(auth[7:]):
            code = "AuthenticationFailed" if not auth else "InvalidAuthenticationToken"
            return cloud_error(401, code, "Authentication failed. The access token is missing or invalid.",
                               headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        fault = self._take_fault(request.method, request.path)
        if fault is not None:
            if fault.delay_seconds:
                await asyncio.sleep(fault.delay_seconds)
            if fault.drop:
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=599)
            if fault.status is not None:
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                code = fault.code or {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(
                    fault.status, "InternalServerError")
                return cloud_error(fault.status, code, fault.message or f"Injected fault {fault.status}.",
                                   headers=headers)
        version = request.query.get("api-version")
        if not version:
            return cloud_error(400, "MissingApiVersionParameter",
                               "The api-version query parameter (?api-version=) is required for all requests.")
        if not _API_VERSION.match(version) or version[:10] < FIRST_API_VERSION:
            return cloud_error(400, "InvalidApiVersionParameter",
                               f"The api-version '{version}' is invalid for Microsoft.Compute.")
        if raw and not isinstance(body, dict):
            return cloud_error(400, "InvalidRequestContent", "The request content was invalid and could not be "
                               "deserialized.")
        path = request.path
        if m := _OPERATION.match(path):
            return self._operation_status(request, m["id"], m["sub"], version, fault)
        m = _RESOURCE.match(path)
        if m is None:
            return cloud_error(404, "NotFound", f"The requested resource path '{path}' was not found.")
        p = _Parsed(m["sub"], m["rg"], m["type"].lower(), m["name"], m["inst"], m["action"], bool(m["list"]))
        if p.action:
            if request.method != "POST":
                return cloud_error(405, "MethodNotAllowed", "Use POST.")
            return self._reimage(request, p, body or {}, version, fault)
        if request.method == "GET":
            return self._get(p)
        if request.method in ("PUT", "PATCH") and p.inst is None and not p.is_list:
            return self._put(p, body or {}, patch=request.method == "PATCH")
        return cloud_error(405, "MethodNotAllowed", f"{request.method} is not supported here.")

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    # ---- resources ------------------------------------------------------------------------
    def _key(self, rid: str) -> str:
        return rid.lower()

    def _settle_all(self) -> None:
        now = self.clock.now()
        for op in self.operations.values():
            self._settle(op, now)

    def _settle(self, op: Operation, now: float) -> None:
        """Apply an operation's effects once it has ended: instances return to the model's image."""
        if op.settled or op.status(now) == "InProgress":
            return
        op.settled = True
        if op.status(now) != "Succeeded":
            return
        for key in op.instance_keys:
            vmss_key, _, inst = key.partition("#")
            target = self.instances[vmss_key][inst] if inst else self.resources[vmss_key]
            image = target["properties"]["storageProfile"].setdefault("imageReference", {})
            image["exactVersion"] = op.version

    def busy(self, lock_key: str) -> Operation | None:
        now = self.clock.now()
        for op in self.operations.values():
            if op.lock_key == lock_key and op.status(now) == "InProgress":
                return op
        return None

    def _get(self, p: _Parsed) -> web.Response:
        self._settle_all()
        res = self.resources.get(self._key(p.resource_id))
        if res is None:
            if p.inst is not None or p.is_list:
                return cloud_error(404, "ParentResourceNotFound",
                                   f"Can not perform requested operation on nested resource. Parent resource "
                                   f"'{p.name}' not found.")
            kind = "virtualMachines" if p.rtype == "virtualmachines" else "virtualMachineScaleSets"
            return cloud_error(404, "ResourceNotFound", f"The Resource 'Microsoft.Compute/{kind}/{p.name}' under "
                               f"resource group '{p.rg}' was not found.")
        headers = {"x-ms-ratelimit-remaining-subscription-reads": str(self._read())}
        if p.is_list:
            values = list(self.instances.get(self._key(p.resource_id), {}).values())
            return web.json_response({"value": values}, headers=headers)
        if p.inst is not None:
            inst = self.instances.get(self._key(p.resource_id), {}).get(p.inst)
            if inst is None:
                return cloud_error(404, "NotFound", f"The entity was not found in this Azure location. Instance "
                                   f"'{p.inst}' does not exist.")
            return web.json_response(inst, headers=headers)
        return web.json_response(res, headers=headers)

    def _put(self, p: _Parsed, body: dict[str, Any], patch: bool) -> web.Response:
        key = self._key(p.resource_id)
        existing = self.resources.get(key)
        if patch and existing is None:
            return cloud_error(404, "ResourceNotFound", f"The Resource '{p.name}' was not found.")
        if self.busy(key):
            return cloud_error(409, "OperationNotAllowed", "Operation 'PUT' is not allowed while another operation "
                               "is in progress on the resource.")
        try:
            res = self.upsert(p.resource_id, body, patch=patch)
        except ValueError as exc:
            return cloud_error(400, "InvalidParameter", str(exc))
        return web.json_response(res, status=200 if existing else 201)

    def upsert(self, resource_id: str, body: dict[str, Any], patch: bool = False) -> dict[str, Any]:
        """Create or update a VM or scale set (also used to seed devhost)."""
        m = _RESOURCE.match(resource_id)
        if m is None or m["inst"] or m["action"] or m["list"]:
            raise ValueError("not a VM or scale set id")
        p = _Parsed(m["sub"], m["rg"], m["type"].lower(), m["name"], None, None, False)
        key = self._key(p.resource_id)
        old = self.resources.get(key)
        res = copy.deepcopy(old) if (old and patch) else {}
        _merge(res, copy.deepcopy(body))
        if "location" not in res:
            raise ValueError("location is required")
        props = res.setdefault("properties", {})
        os_profile = props.get("osProfile") or props.get("virtualMachineProfile", {}).get("osProfile")
        if os_profile:
            os_profile.pop("adminPassword", None)  # ARM never returns secrets
            os_profile.pop("customData", None)
        res["id"] = p.resource_id
        res["name"] = p.name
        props["provisioningState"] = "Succeeded"
        if p.rtype == "virtualmachines":
            res["type"] = "Microsoft.Compute/virtualMachines"
            props.setdefault("vmId", str(uuid.uuid4()))
            storage = props.setdefault("storageProfile", {})
            _fill_image(storage)
            storage.setdefault("osDisk", {}).setdefault("osType", _os_type(props))
        else:
            res["type"] = "Microsoft.Compute/virtualMachineScaleSets"
            sku = res.get("sku") or {}
            capacity = int(sku.get("capacity", 0))
            props.setdefault("uniqueId", str(uuid.uuid4()))
            props.setdefault("orchestrationMode", "Uniform")
            vm_profile = props.setdefault("virtualMachineProfile", {})
            storage = vm_profile.setdefault("storageProfile", {})
            _fill_image(storage)
            storage.setdefault("osDisk", {}).setdefault("osType", _os_type(vm_profile))
            self._resize(res, capacity)
        self.resources[key] = res
        return res

    def _resize(self, vmss: dict[str, Any], capacity: int) -> None:
        key = self._key(vmss["id"])
        insts = self.instances.setdefault(key, {})
        next_id = max((int(i) for i in insts), default=-1) + 1
        while len(insts) < capacity:
            insts[str(next_id)] = self._new_instance(vmss, str(next_id))
            next_id += 1
        for extra in sorted(insts, key=int)[capacity:]:
            del insts[extra]

    def _new_instance(self, vmss: dict[str, Any], inst: str) -> dict[str, Any]:
        profile = vmss["properties"]["virtualMachineProfile"]
        storage = copy.deepcopy(profile.get("storageProfile", {}))
        image = storage.setdefault("imageReference", {})
        image["exactVersion"] = _model_version(image)
        os_profile = {k: v for k, v in (profile.get("osProfile") or {}).items() if k != "computerNamePrefix"}
        os_profile["computerName"] = f"{(profile.get('osProfile') or {}).get('computerNamePrefix', vmss['name'])}" \
                                     f"{int(inst):06x}"
        return {
            "id": f"{vmss['id']}/virtualMachines/{inst}",
            "name": f"{vmss['name']}_{inst}",
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "location": vmss["location"],
            "instanceId": inst,
            "sku": copy.deepcopy(vmss.get("sku")),
            "properties": {"latestModelApplied": True, "provisioningState": "Succeeded",
                           "vmId": str(uuid.uuid4()), "storageProfile": storage, "osProfile": os_profile},
        }

    # ---- reimage --------------------------------------------------------------------------
    def _reimage(self, request: web.Request, p: _Parsed, body: dict[str, Any], version: str,
                 fault: Fault | None) -> web.Response:
        self._settle_all()
        key = self._key(p.resource_id)
        res = self.resources.get(key)
        if res is None:
            code = "ParentResourceNotFound" if p.inst else "ResourceNotFound"
            return cloud_error(404, code, f"The Resource '{p.name}' under resource group '{p.rg}' was not found.")
        is_vm = p.rtype == "virtualmachines"
        if is_vm and (p.inst or p.action.lower() == "reimageall"):
            return cloud_error(404, "NotFound", "No such operation on a virtual machine.")
        allowed = self._allowed_keys(is_vm, p)
        unknown = set(body) - allowed
        if unknown:
            return cloud_error(400, "InvalidRequestContent", f"The request content has unknown properties: "
                               f"{sorted(unknown)}.", target=sorted(unknown)[0])
        profile = res["properties"] if is_vm else res["properties"]["virtualMachineProfile"]
        os_disk = profile.get("storageProfile", {}).get("osDisk", {})
        ephemeral = bool(os_disk.get("diffDiskSettings"))
        for flag in ("tempDisk", "forceUpdateOSDiskForEphemeral"):
            if body.get(flag) and not ephemeral:
                return cloud_error(400, "InvalidParameter", f"Parameter '{flag}' is only supported for VM/VMSS with "
                                   "Ephemeral OS disk.", target=flag)
        if is_vm:
            instance_keys = [key]
        else:
            insts = self.instances.get(key, {})
            if p.inst is not None:
                if p.inst not in insts:
                    return cloud_error(404, "NotFound", f"Instance '{p.inst}' does not exist.")
                ids = [p.inst]
            elif "instanceIds" in body:
                ids = body["instanceIds"]
                if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                    return cloud_error(400, "InvalidRequestContent", "instanceIds must be a list of strings.")
                missing = [i for i in ids if i not in insts]
                if missing:
                    return cloud_error(400, "InvalidParameter", f"Instance ids {missing} are not valid instance ids "
                                       "of the scale set.", target="instanceIds")
            else:
                ids = sorted(insts, key=int)  # the API's rule: an omitted list means every instance
            instance_keys = [f"{key}#{i}" for i in ids]
        running = self.busy(key)
        if running is not None:
            return cloud_error(409, "OperationNotAllowed", f"Operation '{p.action}' is not allowed since the "
                               f"resource is in use by operation '{running.id}'.")
        image = profile.get("storageProfile", {}).get("imageReference", {})
        op = Operation(
            id=str(uuid.uuid4()), lock_key=key, location=res.get("location", self.location).replace(" ", "").lower(),
            subscription=p.sub, started=self.clock.now(),
            duration=self.durations.get(p.name.lower(), self.operation_seconds),
            instance_keys=instance_keys, version=str(body.get("exactVersion") or _model_version(image)),
        )
        if fault is not None and fault.outcome:
            self._apply_outcome(op, fault)
        self.operations[op.id] = op
        origin = self.operation_origin or str(request.url.origin())
        base = f"{origin}/subscriptions/{p.sub}/providers/Microsoft.Compute/locations/{op.location}/operations/{op.id}"
        headers = {
            "Location": f"{base}?monitor=true&api-version={version}",
            "x-ms-ratelimit-remaining-resource": self._write_quota(is_vm),
            "x-ms-ratelimit-remaining-subscription-writes": str(self._write()),
            "x-ms-request-id": op.id,
        }
        if self.async_operation_header:
            headers["Azure-AsyncOperation"] = f"{base}?api-version={version}"
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return web.Response(status=202, headers=headers)

    @staticmethod
    def _allowed_keys(is_vm: bool, p: _Parsed) -> set[str]:
        assert p.action is not None
        if is_vm:
            return VM_REIMAGE_KEYS
        if p.action.lower() == "reimageall":
            return set() if p.inst else {"instanceIds"}
        return VMSS_VM_REIMAGE_KEYS if p.inst else VMSS_REIMAGE_KEYS

    @staticmethod
    def _apply_outcome(op: Operation, fault: Fault) -> None:
        assert fault.outcome is not None
        op.outcome = fault.outcome
        if fault.outcome == "Failed":
            op.code = fault.code or "InternalExecutionError"
            op.message = fault.message or "An internal execution error occurred."
        elif fault.outcome == "Canceled":
            op.code = fault.code or "OperationCanceled"
            op.message = fault.message or "The operation was canceled."

    def _operation_status(self, request: web.Request, op_id: str, sub: str, version: str,
                          fault: Fault | None) -> web.Response:
        op = self.operations.get(op_id)
        if op is None or op.subscription.lower() != sub.lower():
            return cloud_error(404, "NotFound", f"The operation '{op_id}' was not found.")
        if fault is not None and fault.outcome and not op.settled:
            self._apply_outcome(op, fault)
        now = self.clock.now()
        self._settle(op, now)
        status = op.status(now)
        headers = {"x-ms-ratelimit-remaining-resource":
                   f"Microsoft.Compute/GetOperation3Min;{self._read() % 15000},"
                   f"Microsoft.Compute/GetOperation30Min;{self._reads_left % 30000}"}
        if status == "InProgress" and self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        doc: dict[str, Any] = {"startTime": _iso(op.started), "status": status, "name": op.id}
        if status != "InProgress":
            doc["endTime"] = _iso(op.end)
        if status in ("Failed", "Canceled"):
            doc["error"] = {"code": op.code, "message": op.message}
        if request.query.get("monitor") == "true":
            if status == "InProgress":
                return web.Response(status=202, headers={**headers, "Location": str(request.url)})
            if status == "Succeeded":
                return web.Response(status=200, headers=headers)
            return web.json_response(doc, status=200, headers=headers)
        return web.json_response(doc, headers=headers)

    # ---- quota headers --------------------------------------------------------------------
    def _write(self) -> int:
        self._writes_left = max(0, self._writes_left - 1) or 1200
        return self._writes_left

    def _read(self) -> int:
        self._reads_left = max(0, self._reads_left - 1) or 12000
        return self._reads_left

    def _write_quota(self, is_vm: bool) -> str:
        n = self._writes_left
        if is_vm:
            return f"Microsoft.Compute/UpdateVM3Min;{n % 240},Microsoft.Compute/UpdateVM30Min;{n}"
        return (f"Microsoft.Compute/VMScaleSetActions3Min;{n % 240},Microsoft.Compute/VMScaleSetActions30Min;{n},"
                f"Microsoft.Compute/VMScaleSetBatchedVMRequests5Min;{n * 3},Microsoft.Compute/VmssQueuedVMOperations;0")

    # ---- introspection --------------------------------------------------------------------
    def reimage_posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and re.search(r"/reimage(all)?$", r["path"], re.I)]


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def _fill_image(storage: dict[str, Any]) -> None:
    image = storage.get("imageReference")
    if image is not None and "exactVersion" not in image:
        image["exactVersion"] = _model_version(image)


def _model_version(image: dict[str, Any]) -> str:
    version = image.get("version")
    return DEFAULT_IMAGE_VERSION if version in (None, "latest") else str(version)


def _os_type(profile: dict[str, Any]) -> str:
    os_disk = profile.get("storageProfile", {}).get("osDisk", {})
    if os_disk.get("osType"):
        return str(os_disk["osType"])
    os_profile = profile.get("osProfile") or {}
    if "windowsConfiguration" in os_profile and "linuxConfiguration" not in os_profile:
        return "Windows"
    publisher = str(profile.get("storageProfile", {}).get("imageReference", {}).get("publisher", ""))
    return "Windows" if "windows" in publisher.lower() else "Linux"
