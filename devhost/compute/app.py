"""The simulator as one aiohttp app: `ComputeSimulator` holds the switches and the state, wires the parts
together, and routes each request (log, auth, faults, api-version, then the resource or operation
endpoint). It is the one object devhost and the tests hold; its methods are the simulator's public API."""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from devhost.clock import Clock
from devhost.compute.arm import (
    LOCKS_PATH,
    OPERATION_PATH,
    RESOURCE_PATH,
    VM_LIST_PATH,
    HealthState,
    Parsed,
    api_version_error,
    cloud_error,
    lock_key,
)
from devhost.compute.evidence import BootDiagnosticsStorage, Evidence, Snapshot
from devhost.compute.faults import Fault, injected_answer, take_fault
from devhost.compute.fleet import FleetApi, flexible
from devhost.compute.limits import ArmLimits
from devhost.compute.locks import Locks
from devhost.compute.operations import Operation, Operations
from devhost.compute.persistence import Store
from devhost.compute.resource_api import ResourceApi
from devhost.compute.resources import Inventory
from devhost.compute.throttle import Throttle
from devhost.compute.views import InstanceViews, SettleHealth, health_extension
from devhost.identity import TokenIssuer
from devhost.serving import Served, serve

log = logging.getLogger("devhost.compute")


@dataclass
class ComputeSimulator:
    clock: Clock
    issuer: TokenIssuer
    operation_seconds: float = 5.0
    retry_after: int | None = None  # ARM sends none on compute reimage (recorded exchange); opt in here
    location: str = "westus"
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    instances: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    operations: dict[str, Operation] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)  # per resource name (lower case), seconds
    async_operation_header: bool = True  # False: answer in the Location style only
    operation_origin: str | None = None  # set to hand out operation URLs on another host
    state_dir: Path | None = None
    health_settle_seconds: float = 0.0  # after a reimage, the health extension settles this long...
    settle_health: SettleHealth = "initializing"  # ...reporting this meanwhile ("absent": no vmHealth yet)
    list_page_size: int | None = None  # page scale-set VM lists with nextLink (None: one page)
    next_link_origin: str | None = None  # set to hand out list nextLinks on another host
    request_log_limit: int = 100_000
    # Compute's and ARM's throttling (devhost/compute/throttle.py), on by default as in Azure. Swap the object to
    # change it (every bucket starts full again): ArmLimits.off(), ArmLimits().lifted(10), ArmLimits.load(FILE).
    arm_limits: ArmLimits = field(default_factory=ArmLimits.azure)
    # Flexible scale sets and instance protection where the docs are silent or conflict (devhost/compute/fleet.py):
    flex_set_instance_view: bool = False  # False: a Flexible set's instance view is refused 409 (nomad's capture)
    flex_reimage_any_os_disk: bool = False  # False: a Flexible member's reimage needs an ephemeral OS disk (APICMP)
    protected_named_refused: bool = False  # False: a set-level reimage silently skips protected instances
    locks_list_subscription: bool = False  # False: a group's or resource's lock list omits the subscription's
    # Evidence (devhost/compute/evidence.py): how long a snapshot takes to succeed, and how long serial logs are
    snapshot_seconds: float = 2.0
    serial_log_bytes: int = 0

    def __post_init__(self) -> None:
        # The parts share this object's dicts, and read its switches (fields above) at each request.
        self._store = Store(Path(self.state_dir)) if self.state_dir is not None else None
        self._meta: dict[str, Any] = {}
        self._inventory = Inventory(self.resources, self.instances, self._store)
        self._operations = Operations(self.clock, self, self._inventory, self.operations, self._store)
        views = InstanceViews(self, self._inventory, self._operations)
        self._resource_api = ResourceApi(self.clock, self, self._inventory, self._operations, views)
        self._fleet = FleetApi(self.clock, self, self._inventory, views)
        self.locks = Locks(self._store, self.locks_list_subscription)
        # Boot diagnostics' storage, on a host of its own (serve_boot_diagnostics), and snapshots
        self.boot_diagnostics = BootDiagnosticsStorage(self.clock, self._inventory, self)
        self._evidence = Evidence(self.clock, self._inventory, self, self.boot_diagnostics)
        self.throttle = Throttle(self)
        if self._store is not None:
            self._meta = self._store.read_meta()
            self.locks.load()
            self._inventory.load()
            self._operations.load()
            self.requests.extend(self._store.read_requests(self.request_log_limit))

    # ---- the public API: seeding, per-machine state, introspection ------------------------------
    def upsert(self, resource_id: str, body: dict[str, Any], patch: bool = False) -> dict[str, Any]:
        """Create or update a VM or scale set (also used to seed devhost). sku.capacity sizes a scale set."""
        return self._inventory.upsert(resource_id, body, patch)

    def seed_scale_set(self, resource_id: str, capacity: int, *, location: str = "westus",
                       health_extension: bool = True, ephemeral: bool = True, flexible: bool = False,
                       boot_diagnostics: bool = False, **properties: Any) -> dict[str, Any]:
        """A Linux scale set of `capacity` instances (for scale tests): one PUT's worth of model. `flexible`: in
        Flexible orchestration mode (its instances are member VMs); `boot_diagnostics`: managed boot diagnostics
        enabled in its VM profile; `properties`: more of the set's properties (e.g. automaticRepairsPolicy)."""
        return self._inventory.seed_scale_set(resource_id, capacity, location=location,
                                              health_extension=health_extension, ephemeral=ephemeral,
                                              flexible=flexible, boot_diagnostics=boot_diagnostics, **properties)

    @property
    def snapshots(self) -> dict[str, Snapshot]:
        """The snapshots taken (lower-cased id -> snapshot)."""
        return self._evidence.snapshots

    def set_power_state(self, resource_id: str, state: str) -> None:
        """For example "deallocated": a reimage of a deallocated VM or instance is refused (409)."""
        self._inventory.set_power_state(resource_id, state)

    def set_health(self, resource_id: str, state: HealthState) -> None:
        """What the application health extension reports for a VM or instance until changed."""
        self._inventory.set_health(resource_id, state)

    def members(self, scale_set_id: str) -> list[dict[str, Any]]:
        """A Flexible set's member VMs (by name)."""
        return self._inventory.members_of(scale_set_id)

    def protect(self, instance_id: str, scale_set_actions: bool = True) -> dict[str, Any]:
        """Set a Uniform instance's protectionPolicy (as its PUT does)."""
        return self._inventory.set_protection(instance_id, {"protectFromScaleIn": True,
                                                            "protectFromScaleSetActions": scale_set_actions})

    def lock(self, scope: str, name: str = "do-not-touch", level: str = "ReadOnly") -> dict[str, Any]:
        """Put an ARM management lock on a subscription, resource group or resource (as its PUT does)."""
        return self.locks.add(scope, name, level)

    def repairs(self, scale_set_id: str) -> str | None:
        """The AutomaticRepairs service's state in the set's instance view (None: no policy)."""
        key = lock_key(scale_set_id)
        return self._fleet.repairs_state(key, self.resources[key])

    health_extension = staticmethod(health_extension)

    def busy(self, lock_key: str) -> Operation | None:
        """The operation running on a VM or scale set (by lower-cased id), if any."""
        return self._operations.busy(lock_key)

    def operation_key(self, operation_id: str) -> str | None:
        """The resource an operation runs on (its Get Operation bucket), if the simulator knows the operation."""
        op = self.operations.get(operation_id)
        return op.lock_key if op is not None else None

    def instance_count(self, key: str) -> int:
        return len(self.instances.get(key, {}))

    def throttled(self) -> list[dict[str, Any]]:
        """The requests answered 429 (by the throttle, or by a fault)."""
        return [r for r in self.requests if r["status"] == 429]

    def reimage_posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and re.search(r"/reimage(all)?$", r["path"], re.I)]

    # ---- the operation index (tests register and settle operations directly) -------------------
    @property
    def _active(self) -> dict[str, str]:
        return self._operations.active

    def _register(self, op: Operation) -> None:
        self._operations.register(op)

    def _settle_due(self) -> None:
        self._operations.settle_due()

    def _operation_status(self, request: web.Request, op_id: str, sub: str, fault: Fault | None) -> web.Response:
        return self._operations.status(request, op_id, sub, fault)

    # ---- serving --------------------------------------------------------------------------------
    @property
    def preferred_port(self) -> int | None:
        """The port this state directory's simulator was bound to before (operation URLs name it)."""
        port = self._meta.get("port")
        return int(port) if port else None

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> Served:
        """Serve on `port`; with port 0, on the recorded port when there is one (else any free port)."""
        served: Served | None = None
        if port == 0 and self.preferred_port:
            try:
                served = await serve(self.app(), host, self.preferred_port)
            except OSError as exc:  # taken: URLs handed out before will not answer; say so
                log.warning("ARM simulator: recorded port %s is not free (%s); operation URLs handed out "
                            "before this restart will not answer", self.preferred_port, exc)
        if served is None:
            served = await serve(self.app(), host, port)
        self._meta["port"] = int(served.url.rsplit(":", 1)[1])
        if self._store is not None:
            self._store.write(self._store.meta, self._meta)
        return served

    async def serve_boot_diagnostics(self, host: str = "127.0.0.1") -> Served:
        """Serve boot diagnostics' storage on a port of its own: the host retrieveBootDiagnosticsData's SAS URIs
        name, which is not ARM's (a bearer token must never go there)."""
        served = await serve(self.boot_diagnostics.app(), host, 0)
        self.boot_diagnostics.url = served.url
        return served

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
                 "body": body, "status": 0, "at": self.clock.now()}
        self._log_request(entry)
        try:
            response = await self._respond(request, body, raw)
        finally:
            self._operations.settle_due()
        # ARM RPC: every response carries the service's x-ms-request-id (the id support asks for).
        response.headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        entry["status"] = response.status
        if self._store is not None:
            self._store.append_request(entry)
        return response

    def _log_request(self, entry: dict[str, Any]) -> None:
        self.requests.append(entry)
        if len(self.requests) > self.request_log_limit:  # amortised: trim a quarter at a time
            del self.requests[: self.request_log_limit // 4]

    async def _respond(self, request: web.Request, body: Any, raw: bytes) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not self.issuer.valid(auth[7:]):
            code = "AuthenticationFailed" if not auth else "InvalidAuthenticationToken"
            return cloud_error(401, code, "Authentication failed. The access token is missing or invalid.",
                               headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        fault = take_fault(self.faults, request.method, request.path, dict(request.query))
        if fault is not None:
            injected = await injected_answer(fault, request)
            if injected is not None:
                return injected
        verdict = self.throttle.check(self.arm_limits, request.method, request.path, body,
                                      self.issuer.principal(auth[7:]), self.clock.now())
        if verdict.refused is not None:
            return verdict.refused
        return verdict.apply(self._checked(request, body, raw, fault))

    def _checked(self, request: web.Request, body: Any, raw: bytes, fault: Fault | None) -> web.StreamResponse:
        if LOCKS_PATH.match(request.path):  # Microsoft.Authorization: its own api-versions (devhost/compute/locks.py)
            self.locks.list_includes_subscription = self.locks_list_subscription
            return self.locks.route(request, body)
        version = request.query.get("api-version")
        refused = api_version_error(version)
        if refused is not None:
            return refused
        assert version is not None
        if raw and not isinstance(body, dict):
            return cloud_error(400, "InvalidRequestContent", "The request content was invalid and could not be "
                               "deserialized.")
        return self._route(request, body, version, fault)

    def _route(self, request: web.Request, body: Any, version: str, fault: Fault | None) -> web.StreamResponse:
        path = request.path
        evidence = self._evidence.route(request, body)  # boot diagnostics, snapshots and their operations
        if evidence is not None:
            return evidence
        if m := OPERATION_PATH.match(path):
            return self._operation_status(request, m["id"], m["sub"], fault)
        if m := VM_LIST_PATH.match(path):
            if request.method != "GET":
                return cloud_error(405, "MethodNotAllowed", "Use GET.")
            return self._fleet.vm_list(request, f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}", fault)
        m = RESOURCE_PATH.match(path)
        if m is None:
            return cloud_error(404, "NotFound", f"The requested resource path '{path}' was not found.")
        p = Parsed.of(m)
        resource = self.resources.get(lock_key(p.resource_id))
        refused = self._fleet.refusal(p, resource, request.method)
        if refused is None and request.method != "GET":  # a write under a ReadOnly lock (devhost/compute/locks.py)
            refused = self.locks.refusal(path, p.resource_id + (f"/virtualMachines/{p.inst}" if p.inst else ""))
        if refused is not None:
            return refused
        return self._dispatch(request, p, resource, body, version, fault)

    def _dispatch(self, request: web.Request, p: Parsed, resource: dict[str, Any] | None, body: Any, version: str,
                  fault: Fault | None) -> web.StreamResponse:
        if p.action == "instanceview":
            if request.method != "GET" or p.is_list:
                return cloud_error(405, "MethodNotAllowed", "Use GET.")
            if p.rtype == "virtualmachinescalesets" and p.inst is None and resource is not None:
                return self._fleet.set_instance_view(p, resource)
            return self._resource_api.get(request, p, fault, view_only=True)
        if p.action == "setorchestrationservicestate":
            return self._orchestration(request, p, resource, body)
        if p.action:
            if request.method != "POST":
                return cloud_error(405, "MethodNotAllowed", "Use POST.")
            refused = self._fleet.member_refusal(p, resource) if resource is not None and p.inst is None else None
            return refused or self._operations.reimage(request, p, body or {}, version, fault)
        if request.method == "GET":
            if p.is_list and flexible(resource):
                assert resource is not None
                return self._fleet.set_vm_list(request, resource)
            return self._resource_api.get(request, p, fault)
        if request.method in ("PUT", "PATCH") and p.inst is None and not p.is_list:
            return self._resource_api.put(p, body or {}, patch=request.method == "PATCH")
        if request.method in ("PUT", "PATCH") and p.inst is not None:
            return self._resource_api.put_instance(p, body or {})
        return cloud_error(405, "MethodNotAllowed", f"{request.method} is not supported here.")

    def _orchestration(self, request: web.Request, p: Parsed, resource: dict[str, Any] | None, body: Any
                       ) -> web.StreamResponse:
        if request.method != "POST" or p.inst is not None or p.rtype != "virtualmachinescalesets":
            return cloud_error(405, "MethodNotAllowed", "Use POST on a scale set.")
        if resource is None:
            return cloud_error(404, "ResourceNotFound", f"The Resource '{p.name}' was not found.")
        return self._fleet.set_orchestration_service_state(p, resource, body or {})
