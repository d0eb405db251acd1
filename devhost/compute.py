"""ARM Compute simulator (aiohttp): VMs, scale sets, their instances, instance views, and the reimage LROs.

Faithful where reimager and azure-mgmt-compute look, and never kinder than Azure (sources are
cited where each behaviour is implemented; the project's fidelity table lists them all):
- paths matched case-insensitively; api-version and bearer tokens required;
- a reimage answers 202 + Azure-AsyncOperation + Location (`monitor=true`) and, like the
  recorded exchange, no Retry-After unless the constructor or a fault asks for one;
- a newer operation on a VM / scale set preempts the running one (scale-set and instance
  operations on one set preempt each other): the old one ends Canceled/OperationPreempted;
- an empty or missing `instanceIds` reimages every instance (the API's dangerous rule);
- a Location poll after a failure answers the failure's status code with its CloudError;
- instance views with ProvisioningState / PowerState / vmHealth, which faults can bend.

Per-request work does not grow with the number of operations, finished or running: operations
are indexed by id and by resource, and a heap of end times says which ones ended since. With `state_dir` the
resources, instances, operations and request log persist (one atomically replaced file per
resource and per operation, the request log appended as JSON lines), and a new simulator on
the same directory carries on, on the port it was bound to before (`preferred_port`), so
operation URLs handed out earlier stay valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import heapq
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from devhost.clock import Clock
from devhost.identity import TokenIssuer
from devhost.serving import Served, serve

log = logging.getLogger("devhost.compute")

# The reimage operations exist from 2017-03-30 on (spec version list); newer SDKs send newer versions.
FIRST_API_VERSION = "2017-03-30"
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
DEFAULT_IMAGE_VERSION = "2026.1.0"
VM_REIMAGE_KEYS = {"tempDisk", "exactVersion", "osProfile"}
VMSS_VM_REIMAGE_KEYS = VM_REIMAGE_KEYS | {"forceUpdateOSDiskForEphemeral"}
VMSS_REIMAGE_KEYS = VMSS_VM_REIMAGE_KEYS | {"instanceIds"}
# kubernetes-sigs/cloud-provider-azure pkg/consts/consts.go (OperationPreemptedErrorMessage) and its
# test fixture `Code="OperationPreempted" Message="Operation execution has been preempted by a more recent operation."`
PREEMPTED_CODE = "OperationPreempted"
PREEMPTED_MESSAGE = "Operation execution has been preempted by a more recent operation."
HEALTH_EXTENSIONS = {"applicationhealthlinux", "applicationhealthwindows"}
HealthState = Literal["healthy", "unhealthy", "unknown", "initializing"]
SettleHealth = Literal["initializing", "unhealthy", "absent"]
_HEALTH_TEXT = {"healthy": ("Info", "The VM is healthy"), "unhealthy": ("Warning", "The VM is unhealthy"),
                "unknown": ("Warning", "The VM health is unknown"),
                "initializing": ("Warning", "The VM health is initializing")}

_PREFIX = r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/microsoft\.compute"
_RESOURCE = re.compile(
    _PREFIX + r"/(?P<type>virtualmachines|virtualmachinescalesets)/(?P<name>[^/]+)"
    r"(?P<list>/virtualmachines)?(?:/virtualmachines/(?P<inst>[^/]+))?"
    r"(?:/(?P<action>reimage|reimageall|instanceview))?/?$",
    re.IGNORECASE,
)
_OPERATION = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/microsoft\.compute/locations/(?P<loc>[^/]+)"
    r"/operations/(?P<id>[^/]+)$",
    re.IGNORECASE,
)


class Fault(BaseModel):
    """One injected fault, consumed by the next `times` requests that match.

    `health` bends what instance-view reads report (`match: "instanceView"`). Without `instanceIds`
    it is used up by the next `times` matching requests, as every fault is: each page of a list is
    one request (ARM charges per HTTP request, and SDKs fetch each nextLink as its own GET). With
    `instanceIds`, `times` counts the reads *of each named instance* (a GET of its view, or a list
    page that shows it), and reads that show none of them leave it untouched, so "instance 7 is
    unhealthy for its next 3 reads" holds however the set is paged. `status` instead makes the
    matching requests fail (request-level, whatever `instanceIds` says).
    `failureStatus` is the HTTP status a Location poll answers once an outcome fault's
    operation has failed (default 500, or 409 for a canceled / preempted one).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    match: str = Field(description="'reimage', 'operations', 'get', 'put', 'instanceView', or a path substring")
    method: str | None = None
    status: int | None = Field(None, ge=400, le=599)
    retry_after: int | None = Field(None, alias="retryAfter", ge=0)
    times: int = Field(1, ge=1)
    drop: bool = False
    delay_seconds: float = Field(0, alias="delaySeconds", ge=0, le=120)
    outcome: Literal["Failed", "Canceled", "Never"] | None = None
    code: str | None = None
    message: str | None = None
    health: HealthState | None = None
    failure_status: int | None = Field(None, alias="failureStatus", ge=400, le=599)
    instance_ids: list[str] | None = Field(None, alias="instanceIds")
    _reads: dict[str, int] = PrivateAttr(default_factory=dict)  # per-instance health faults: reads so far

    @property
    def per_instance(self) -> bool:
        return self.health is not None and self.instance_ids is not None and self.status is None

    def bend(self, inst: str) -> bool:
        """A per-instance health fault: count one read of `inst` if it still has reads left."""
        assert self.instance_ids is not None
        if inst not in self.instance_ids or self._reads.get(inst, 0) >= self.times:
            return False
        self._reads[inst] = self._reads.get(inst, 0) + 1
        return True

    @property
    def used_up(self) -> bool:
        return self.instance_ids is not None and all(self._reads.get(i, 0) >= self.times for i in self.instance_ids)

    def matches(self, method: str, path: str, query: dict[str, str] | None = None) -> bool:
        if self.method and self.method.upper() != method:
            return False
        low = path.lower()
        view = _is_instance_view(method, low, query or {})
        if self.health is not None and not view:
            return False  # a health fault only means something to an instance-view read
        if self.match == "reimage":
            return method == "POST" and (low.endswith("/reimage") or low.endswith("/reimageall"))
        if self.match == "operations":
            return "/operations/" in low
        if self.match.lower() == "instanceview":
            return view
        if self.match in ("get", "put"):
            return method == self.match.upper() and "/operations/" not in low
        return self.match.lower() in low


def _is_instance_view(method: str, low_path: str, query: dict[str, str]) -> bool:
    if method != "GET" or "/operations/" in low_path:
        return False
    return low_path.rstrip("/").endswith("/instanceview") or query.get("$expand", "").lower() == "instanceview"


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
    ended: float | None = None  # set when the operation ended early (preempted)
    failure_status: int | None = None  # what a Location poll answers after a failure

    def __post_init__(self) -> None:
        self._members = frozenset(self.instance_keys)

    def status(self, now: float) -> str:
        if self.ended is not None:
            return self.outcome if now >= self.ended else "InProgress"
        if self.outcome == "Never" or now < self.started + self.duration:
            return "InProgress"
        return self.outcome

    @property
    def end(self) -> float:
        return self.ended if self.ended is not None else self.started + self.duration

    def covers(self, instance_key: str) -> bool:
        return instance_key in self._members

    def location_failure_status(self) -> int:
        if self.failure_status is not None:
            return self.failure_status
        return 409 if self.outcome == "Canceled" or self.code in (PREEMPTED_CODE, "OperationCanceled") else 500

    def to_doc(self) -> dict[str, Any]:
        return {"id": self.id, "lockKey": self.lock_key, "location": self.location, "subscription": self.subscription,
                "started": self.started, "duration": self.duration, "instanceKeys": self.instance_keys,
                "version": self.version, "outcome": self.outcome, "code": self.code, "message": self.message,
                "settled": self.settled, "ended": self.ended, "failureStatus": self.failure_status}

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Operation:
        return cls(id=d["id"], lock_key=d["lockKey"], location=d["location"], subscription=d["subscription"],
                   started=d["started"], duration=d["duration"], instance_keys=list(d["instanceKeys"]),
                   version=d["version"], outcome=d["outcome"], code=d.get("code"), message=d.get("message"),
                   settled=bool(d.get("settled")), ended=d.get("ended"), failure_status=d.get("failureStatus"))


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


class _Store:
    """The simulator's files: one per resource and per operation (replaced atomically), plus an appended log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.resources = root / "resources"
        self.operations = root / "operations"
        self.requests = root / "requests.jsonl"
        self.meta = root / "meta.json"
        for d in (self.resources, self.operations):
            d.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def write(path: Path, doc: Any) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one

    def resource_path(self, key: str) -> Path:
        return self.resources / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def append_request(self, entry: dict[str, Any]) -> None:
        with self.requests.open("a", encoding="utf-8") as f:
            f.write(json.dumps(_redacted(entry), separators=(",", ":")) + "\n")

    @staticmethod
    def read_all(directory: Path) -> list[Any]:
        docs = []
        for path in sorted(directory.glob("*.json")):
            with contextlib.suppress(ValueError, OSError):
                docs.append(json.loads(path.read_text()))
        return docs

    def read_requests(self, limit: int) -> list[dict[str, Any]]:
        if not self.requests.exists():
            return []
        out = []
        for line in self.requests.read_text(encoding="utf-8").splitlines()[-limit:]:
            with contextlib.suppress(ValueError):  # a line torn by a kill is skipped
                out.append(json.loads(line))
        return out


def _redacted(entry: dict[str, Any]) -> dict[str, Any]:
    """ARM receives secrets; the simulator's files on disk never keep them."""
    body = entry.get("body")
    if isinstance(body, dict) and isinstance(body.get("osProfile"), dict):
        os_profile = {k: ("[redacted]" if k in ("adminPassword", "customData") else v)
                      for k, v in body["osProfile"].items()}
        entry = {**entry, "body": {**body, "osProfile": os_profile}}
    return entry


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
    _writes_left: int = 1200
    _reads_left: int = 12000

    def __post_init__(self) -> None:
        self._active: dict[str, str] = {}  # lock key -> id of the operation not yet settled
        self._ends: list[tuple[float, str]] = []  # heap of (end, operation id) of operations not yet settled
        # lock key -> instance id ("" for a VM) -> {"power", "health", "reimagedAt"}
        self._vm_state: dict[str, dict[str, dict[str, Any]]] = {}
        self._store = _Store(Path(self.state_dir)) if self.state_dir is not None else None
        self._meta: dict[str, Any] = {}
        if self._store is not None:
            self._load()

    # ---- persistence --------------------------------------------------------------------------
    def _load(self) -> None:
        assert self._store is not None
        if self._store.meta.exists():
            self._meta = json.loads(self._store.meta.read_text())
        for doc in self._store.read_all(self._store.resources):
            key = doc["key"]
            self.resources[key] = doc["resource"]
            if doc.get("instances") is not None:
                self.instances[key] = doc["instances"]
            self._vm_state[key] = doc.get("vmState") or {}
        for doc in self._store.read_all(self._store.operations):
            op = Operation.from_doc(doc)
            self.operations[op.id] = op
            if not op.settled:
                self._active[op.lock_key] = op.id
                heapq.heappush(self._ends, (op.end, op.id))
        self.requests.extend(self._store.read_requests(self.request_log_limit))

    def _save_resource(self, key: str) -> None:
        if self._store is None:
            return
        path = self._store.resource_path(key)
        if key not in self.resources:
            path.unlink(missing_ok=True)
            return
        self._store.write(path, {"key": key, "resource": self.resources[key], "instances": self.instances.get(key),
                                 "vmState": self._vm_state.get(key, {})})

    def _save_operation(self, op: Operation) -> None:
        if self._store is not None:
            self._store.write(self._store.operations / f"{op.id}.json", op.to_doc())

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
            self._settle_due()
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
        fault = self._take_fault(request.method, request.path, dict(request.query))
        if fault is not None:
            if fault.delay_seconds:
                await asyncio.sleep(fault.delay_seconds)
            if fault.drop:
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=599)
            if fault.status is not None:
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                code = fault.code or {404: "NotFound", 409: "Conflict", 429: "TooManyRequests",
                                      503: "ServiceUnavailable", 504: "GatewayTimeout"}.get(
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
            return self._operation_status(request, m["id"], m["sub"], fault)
        m = _RESOURCE.match(path)
        if m is None:
            return cloud_error(404, "NotFound", f"The requested resource path '{path}' was not found.")
        p = _Parsed(m["sub"], m["rg"], m["type"].lower(), m["name"], m["inst"],
                    m["action"].lower() if m["action"] else None, bool(m["list"]))
        if p.action == "instanceview":
            if request.method != "GET" or p.is_list:
                return cloud_error(405, "MethodNotAllowed", "Use GET.")
            return self._get(request, p, fault, view_only=True)
        if p.action:
            if request.method != "POST":
                return cloud_error(405, "MethodNotAllowed", "Use POST.")
            return self._reimage(request, p, body or {}, version, fault)
        if request.method == "GET":
            return self._get(request, p, fault)
        if request.method in ("PUT", "PATCH") and p.inst is None and not p.is_list:
            return self._put(p, body or {}, patch=request.method == "PATCH")
        return cloud_error(405, "MethodNotAllowed", f"{request.method} is not supported here.")

    def _take_fault(self, method: str, path: str, query: dict[str, str]) -> Fault | None:
        for fault in self.faults:
            if fault.per_instance:
                continue  # counted per instance read, where the views are built (_instance_faults)
            if fault.matches(method, path, query):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    # ---- operations: index, settle, preempt -----------------------------------------------------
    def _key(self, rid: str) -> str:
        return rid.lower()

    def _settle_due(self) -> None:
        """Settle the operations that have ended: those at the front of the end-time heap, so a request looks
        at no running operation that has not ended (an outcome fault of "Never" leaves the heap unsettled:
        it never ends, unless preempted, which settles it at once)."""
        now = self.clock.now()
        while self._ends and self._ends[0][0] <= now:
            _, op_id = heapq.heappop(self._ends)
            op = self.operations.get(op_id)
            if op is not None and not op.settled:
                self._settle(op, now)

    def _settle_key(self, lock_key: str, now: float) -> None:
        op_id = self._active.get(lock_key)
        if op_id is not None:
            self._settle(self.operations[op_id], now)

    def _settle(self, op: Operation, now: float) -> None:
        """Apply an operation's effects once it has ended: instances return to the model's image."""
        if op.settled or op.status(now) == "InProgress":
            return
        op.settled = True
        if self._active.get(op.lock_key) == op.id:
            del self._active[op.lock_key]
        if op.status(now) == "Succeeded":
            for key in op.instance_keys:
                vmss_key, _, inst = key.partition("#")
                target = self.instances.get(vmss_key, {}).get(inst) if inst else self.resources.get(vmss_key)
                if target is None:
                    continue  # scaled in meanwhile
                image = target["properties"]["storageProfile"].setdefault("imageReference", {})
                image["exactVersion"] = op.version
                self._state_of(vmss_key, inst)["reimagedAt"] = op.end
            self._save_resource(op.lock_key)
        self._save_operation(op)

    def busy(self, lock_key: str) -> Operation | None:
        op_id = self._active.get(lock_key)
        if op_id is None:
            return None
        op = self.operations[op_id]
        return op if op.status(self.clock.now()) == "InProgress" else None

    def _preempt(self, op: Operation, now: float) -> None:
        op.outcome, op.code, op.message, op.ended = "Canceled", PREEMPTED_CODE, PREEMPTED_MESSAGE, now
        op.failure_status = None
        self._settle(op, now)

    def _register(self, op: Operation) -> None:
        self.operations[op.id] = op
        self._active[op.lock_key] = op.id
        heapq.heappush(self._ends, (op.end, op.id))
        self._save_operation(op)

    def _running_on(self, lock_key: str, instance_key: str, now: float) -> Operation | None:
        op_id = self._active.get(lock_key)
        if op_id is None:
            return None
        op = self.operations[op_id]
        return op if op.status(now) == "InProgress" and op.covers(instance_key) else None

    # ---- per-machine state: power, health -------------------------------------------------------
    def _state_of(self, lock_key: str, inst: str) -> dict[str, Any]:
        return self._vm_state.setdefault(lock_key, {}).setdefault(inst, {})

    def _split(self, resource_id: str) -> tuple[str, str]:
        """(lock key, instance id or "") for a VM, a scale set instance, or (all of) a scale set."""
        m = _RESOURCE.match(resource_id)
        if m is None or m["action"] or m["list"]:
            raise ValueError(f"not a VM or scale set instance id: {resource_id}")
        p = _Parsed(m["sub"], m["rg"], m["type"].lower(), m["name"], m["inst"], None, False)
        return self._key(p.resource_id), p.inst or ""

    def set_power_state(self, resource_id: str, state: str) -> None:
        """For example "deallocated": a reimage of a deallocated VM or instance is refused (409)."""
        key, inst = self._split(resource_id)
        self._state_of(key, inst)["power"] = state
        self._save_resource(key)

    def set_health(self, resource_id: str, state: HealthState) -> None:
        """What the application health extension reports for a VM or instance until changed."""
        key, inst = self._split(resource_id)
        self._state_of(key, inst)["health"] = state
        self._save_resource(key)

    def _power(self, key: str, inst: str) -> str:
        return str(self._vm_state.get(key, {}).get(inst, {}).get("power", "running"))

    @staticmethod
    def _extension_resources(vmss: dict[str, Any]) -> list[dict[str, Any]]:
        profile = (vmss.get("properties") or {}).get("virtualMachineProfile") or {}
        out = []
        for e in (profile.get("extensionProfile") or {}).get("extensions") or []:
            if isinstance(e, dict) and e.get("name"):
                props = {k: v for k, v in (e.get("properties") or {}).items() if k != "protectedSettings"}
                out.append({"name": e["name"], "type": "Microsoft.Compute/virtualMachines/extensions",
                            "location": vmss.get("location"),
                            "properties": {**props, "provisioningState": "Succeeded"}})
        return out

    @staticmethod
    def health_extension(resource: dict[str, Any]) -> dict[str, Any] | None:
        """The application health extension in a VM's or scale set's model, if it has one."""
        props = resource.get("properties") or {}
        if "virtualMachineProfile" in props:
            extensions = ((props["virtualMachineProfile"].get("extensionProfile") or {}).get("extensions") or [])
        else:  # a VM's extensions are child resources; the simulator reads them from the VM body
            extensions = resource.get("resources") or []
        return next((e for e in extensions if isinstance(e, dict)
                     and str((e.get("properties") or {}).get("type", "")).lower() in HEALTH_EXTENSIONS), None)

    def _instance_faults(self, request: web.Request) -> list[Fault]:
        return [f for f in self.faults if f.per_instance and f.matches(request.method, request.path,
                                                                          dict(request.query))]

    def _bent(self, inst: str, fault: Fault | None, per_instance: list[Fault]) -> HealthState | None:
        """The health a fault makes this read of `inst` report, counting the read against it."""
        for f in per_instance:
            if f.bend(inst):
                if f.used_up and f in self.faults:
                    self.faults.remove(f)
                return f.health
        if fault is not None and fault.health and fault.instance_ids is None:
            return fault.health
        return None

    def _instance_view(self, key: str, inst: str, computer_name: str, ext: dict[str, Any] | None, now: float,
                       fault: Fault | None, per_instance: list[Fault] | None = None) -> dict[str, Any]:
        instance_key = f"{key}#{inst}" if inst else key
        running = self._running_on(key, instance_key, now) is not None
        state = self._vm_state.get(key, {}).get(inst, {})
        power = str(state.get("power", "running"))
        if running:
            prov = {"code": "ProvisioningState/updating", "level": "Info", "displayStatus": "Updating"}
        else:
            prov = {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded",
                    "time": _iso(float(state.get("reimagedAt") or now))}
        view: dict[str, Any] = {"computerName": computer_name, "statuses": [
            prov, {"code": f"PowerState/{power}", "level": "Info", "displayStatus": f"VM {power}"}]}
        if ext is not None:
            # The extension's own instance view ("{publisher}.{type}"), as ARM lists each extension of the machine.
            ext_props = ext.get("properties") or {}
            view["extensions"] = [{
                "name": ext.get("name", "HealthExtension"),
                "type": f"{ext_props.get('publisher', 'Microsoft.ManagedServices')}.{ext_props.get('type')}",
                "typeHandlerVersion": str(ext_props.get("typeHandlerVersion", "2.0")),
                "statuses": [{"code": "ProvisioningState/succeeded", "level": "Info",
                              "displayStatus": "Provisioning succeeded"}]}]
            health: str | None = str(state.get("health", "healthy"))
            if running:
                health = "unknown"
            elif now < float(state.get("reimagedAt") or 0) + self.health_settle_seconds:
                health = None if self.settle_health == "absent" else self.settle_health
            bent = self._bent(inst, fault, per_instance or [])
            health = bent or health
            if health is not None:
                level, text = _HEALTH_TEXT[health]
                view["vmHealth"] = {"status": {"code": f"HealthState/{health}", "level": level,
                                               "displayStatus": text, "time": _iso(now)}}
        return view

    # ---- resources ------------------------------------------------------------------------------
    def _get(self, request: web.Request, p: _Parsed, fault: Fault | None, view_only: bool = False) -> web.Response:
        now = self.clock.now()
        key = self._key(p.resource_id)
        self._settle_key(key, now)
        res = self.resources.get(key)
        if res is None:
            if p.inst is not None or p.is_list:
                return cloud_error(404, "ParentResourceNotFound",
                                   f"Can not perform requested operation on nested resource. Parent resource "
                                   f"'{p.name}' not found.")
            kind = "virtualMachines" if p.rtype == "virtualmachines" else "virtualMachineScaleSets"
            return cloud_error(404, "ResourceNotFound", f"The Resource 'Microsoft.Compute/{kind}/{p.name}' under "
                               f"resource group '{p.rg}' was not found.")
        headers = {"x-ms-ratelimit-remaining-subscription-reads": str(self._read())}
        expand = request.query.get("$expand", "").lower() == "instanceview"
        ext = self.health_extension(res)
        if p.is_list:
            return self._list(request, key, res, ext, expand, now, fault, headers)
        if p.inst is not None:
            inst = self.instances.get(key, {}).get(p.inst)
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
            view = self._instance_view(key, inst_id, name, ext, now, fault, self._instance_faults(request))
            if view_only:
                return web.json_response(view, headers=headers)
            doc = {**doc, "properties": {**doc["properties"], "instanceView": view}}
        return web.json_response(doc, headers=headers)

    def _list(self, request: web.Request, key: str, res: dict[str, Any], ext: dict[str, Any] | None, expand: bool,
              now: float, fault: Fault | None, headers: dict[str, str]) -> web.Response:
        insts = self.instances.get(key, {})
        ids = sorted(insts, key=int)
        start = int(request.query.get("$skiptoken", "0") or 0)
        page = ids[start:start + self.list_page_size] if self.list_page_size else ids[start:]
        values = []
        per_instance = self._instance_faults(request) if expand else []
        extension = self._extension_resources(res)
        for inst_id in page:
            inst = insts[inst_id]
            if expand:
                view = self._instance_view(key, inst_id, inst["properties"]["osProfile"].get("computerName", ""),
                                           ext, now, fault, per_instance)
                inst = {**inst, "properties": {**inst["properties"], "instanceView": view}}
            if extension:  # the spec's list items carry the VM's extensions as `resources`
                inst = {**inst, "resources": [{**e, "id": f"{inst['id']}/extensions/{e['name']}"} for e in extension]}
            values.append(inst)
        doc: dict[str, Any] = {"value": values}
        if self.list_page_size and start + len(page) < len(ids):
            query = {k: v for k, v in request.query.items() if k != "$skiptoken"}
            query["$skiptoken"] = str(start + len(page))
            origin = self.next_link_origin or str(request.url.origin())
            doc["nextLink"] = f"{origin}{request.path}?{urlencode(query, safe='$')}"
        return web.json_response(doc, headers=headers)

    def _put(self, p: _Parsed, body: dict[str, Any], patch: bool) -> web.Response:
        key = self._key(p.resource_id)
        existing = self.resources.get(key)
        if patch and existing is None:
            return cloud_error(404, "ResourceNotFound", f"The Resource '{p.name}' was not found.")
        running = self.busy(key)
        try:
            res = self.upsert(p.resource_id, body, patch=patch)
        except ValueError as exc:
            return cloud_error(400, "InvalidParameter", str(exc))
        if running is not None:  # a model update is a newer operation on the resource: it preempts
            self._preempt(running, self.clock.now())
        return web.json_response(res, status=200 if existing else 201)

    def upsert(self, resource_id: str, body: dict[str, Any], patch: bool = False) -> dict[str, Any]:
        """Create or update a VM or scale set (also used to seed devhost). sku.capacity sizes a scale set."""
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
        old_props = (old or {}).get("properties") or {}
        if p.rtype == "virtualmachines":
            res["type"] = "Microsoft.Compute/virtualMachines"
            props.setdefault("vmId", old_props.get("vmId") or str(uuid.uuid4()))
            storage = props.setdefault("storageProfile", {})
            _fill_image(storage)
            storage.setdefault("osDisk", {}).setdefault("osType", _os_type(props))
        else:
            res["type"] = "Microsoft.Compute/virtualMachineScaleSets"
            sku = res.get("sku") or {}
            capacity = int(sku.get("capacity", 0))
            props.setdefault("uniqueId", old_props.get("uniqueId") or str(uuid.uuid4()))
            props.setdefault("orchestrationMode", "Uniform")
            vm_profile = props.setdefault("virtualMachineProfile", {})
            storage = vm_profile.setdefault("storageProfile", {})
            _fill_image(storage)
            storage.setdefault("osDisk", {}).setdefault("osType", _os_type(vm_profile))
            self._resize(res, capacity)
        self.resources[key] = res
        self._save_resource(key)
        return res

    def _resize(self, vmss: dict[str, Any], capacity: int) -> None:
        key = self._key(vmss["id"])
        insts = self.instances.setdefault(key, {})
        next_id = max((int(i) for i in insts), default=-1) + 1
        if len(insts) < capacity:
            template = self._instance_template(vmss)
            while len(insts) < capacity:
                insts[str(next_id)] = self._new_instance(vmss, template, str(next_id))
                next_id += 1
        for extra in sorted(insts, key=int)[capacity:]:
            del insts[extra]
            self._vm_state.get(key, {}).pop(extra, None)

    @staticmethod
    def _instance_template(vmss: dict[str, Any]) -> dict[str, Any]:
        profile = vmss["properties"]["virtualMachineProfile"]
        storage = copy.deepcopy(profile.get("storageProfile", {}))
        image = storage.setdefault("imageReference", {})
        image["exactVersion"] = _model_version(image)
        os_profile = {k: v for k, v in (profile.get("osProfile") or {}).items() if k != "computerNamePrefix"}
        prefix = (profile.get("osProfile") or {}).get("computerNamePrefix", vmss["name"])
        return {"storageProfile": storage, "osProfile": os_profile, "prefix": prefix,
                "sku": vmss.get("sku")}

    @staticmethod
    def _new_instance(vmss: dict[str, Any], template: dict[str, Any], inst: str) -> dict[str, Any]:
        # json round trip: a fast deep copy for plain JSON, so a 1,000-instance set is created in milliseconds
        storage = json.loads(json.dumps(template["storageProfile"]))
        os_profile = {**template["osProfile"], "computerName": f"{template['prefix']}{int(inst):06x}"}
        return {
            "id": f"{vmss['id']}/virtualMachines/{inst}",
            "name": f"{vmss['name']}_{inst}",
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "location": vmss["location"],
            "instanceId": inst,
            "sku": dict(template["sku"]) if template["sku"] else None,
            "properties": {"latestModelApplied": True, "provisioningState": "Succeeded",
                           "vmId": str(uuid.uuid4()), "storageProfile": storage, "osProfile": os_profile},
        }

    def seed_scale_set(self, resource_id: str, capacity: int, *, location: str = "westus",
                       health_extension: bool = True, ephemeral: bool = True) -> dict[str, Any]:
        """A Linux scale set of `capacity` instances (for scale tests): one PUT's worth of model."""
        os_disk: dict[str, Any] = {"createOption": "FromImage", "osType": "Linux", "caching": "ReadOnly"}
        if ephemeral:
            os_disk["diffDiskSettings"] = {"option": "Local"}
        profile: dict[str, Any] = {
            "osProfile": {"computerNamePrefix": resource_id.rsplit("/", 1)[-1][:9], "adminUsername": "azureuser"},
            "storageProfile": {"imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts",
                                                  "sku": "server", "version": "latest"}, "osDisk": os_disk}}
        if health_extension:
            profile["extensionProfile"] = {"extensions": [{"name": "HealthExtension", "properties": {
                "publisher": "Microsoft.ManagedServices", "type": "ApplicationHealthLinux",
                "typeHandlerVersion": "2.0", "settings": {"protocol": "http", "port": 80, "requestPath": "/health"}}}]}
        return self.upsert(resource_id, {"location": location,
                                         "sku": {"name": "Standard_D2s_v5", "tier": "Standard", "capacity": capacity},
                                         "properties": {"upgradePolicy": {"mode": "Manual"}, "overprovision": False,
                                                        "virtualMachineProfile": profile}})

    # ---- reimage --------------------------------------------------------------------------------
    def _reimage(self, request: web.Request, p: _Parsed, body: dict[str, Any], version: str,
                 fault: Fault | None) -> web.Response:
        key = self._key(p.resource_id)
        now = self.clock.now()
        self._settle_key(key, now)
        res = self.resources.get(key)
        if res is None:
            code = "ParentResourceNotFound" if p.inst else "ResourceNotFound"
            return cloud_error(404, code, f"The Resource '{p.name}' under resource group '{p.rg}' was not found.")
        assert p.action is not None
        is_vm = p.rtype == "virtualmachines"
        if is_vm and (p.inst or p.action == "reimageall"):
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
            ids = [""]
            instance_keys = [key]
        else:
            insts = self.instances.get(key, {})
            if p.inst is not None:
                if p.inst not in insts:
                    return cloud_error(404, "NotFound", f"The entity was not found in this Azure location. Instance "
                                       f"'{p.inst}' does not exist.")
                ids = [p.inst]
            else:
                given = body.get("instanceIds")
                if given is not None and (not isinstance(given, list) or not all(isinstance(i, str) for i in given)):
                    return cloud_error(400, "InvalidRequestContent", "instanceIds must be a list of strings.",
                                       target="instanceIds")
                if not given:
                    # The API's rule, and the dangerous one: a missing OR EMPTY list means every instance.
                    ids = sorted(insts, key=int)
                else:
                    missing = next((i for i in given if i not in insts), None)
                    if missing is not None:
                        return cloud_error(400, "InvalidParameter", f"The provided instanceId {missing} is not an "
                                           "active Virtual Machine Scale Set VM instanceId.", target="instanceIds")
                    ids = list(dict.fromkeys(given))
            instance_keys = [f"{key}#{i}" for i in ids]
        stopped = next((i for i in ids if self._power(key, i) == "deallocated"), None)
        if stopped is not None:
            what = f"VM '{p.name}'" if is_vm else f"instance '{stopped}' of scale set '{p.name}'"
            return cloud_error(409, "OperationNotAllowed", f"Operation '{p.action}' is not allowed on {what} since "
                               "the VM is deallocated.")
        running = self.busy(key)
        if running is not None:
            self._preempt(running, now)  # ARM: the newer operation wins; the running one ends Canceled
        image = profile.get("storageProfile", {}).get("imageReference", {})
        op = Operation(
            id=str(uuid.uuid4()), lock_key=key, location=res.get("location", self.location).replace(" ", "").lower(),
            subscription=p.sub, started=now, duration=self.durations.get(p.name.lower(), self.operation_seconds),
            instance_keys=instance_keys, version=str(body.get("exactVersion") or _model_version(image)),
        )
        if fault is not None and fault.outcome:
            self._apply_outcome(op, fault)
        self._register(op)
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
        retry_after = self._retry_after(fault)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return web.Response(status=202, headers=headers)

    def _retry_after(self, fault: Fault | None) -> int | None:
        if fault is not None and fault.status is None and fault.retry_after is not None:
            return fault.retry_after
        return self.retry_after

    @staticmethod
    def _allowed_keys(is_vm: bool, p: _Parsed) -> set[str]:
        assert p.action is not None
        if is_vm:
            return VM_REIMAGE_KEYS
        if p.action == "reimageall":
            return set() if p.inst else {"instanceIds"}
        return VMSS_VM_REIMAGE_KEYS if p.inst else VMSS_REIMAGE_KEYS

    @staticmethod
    def _apply_outcome(op: Operation, fault: Fault) -> None:
        assert fault.outcome is not None
        op.outcome = fault.outcome
        op.failure_status = fault.failure_status
        if fault.outcome == "Failed":
            op.code = fault.code or "InternalExecutionError"
            op.message = fault.message or "An internal execution error occurred."
        elif fault.outcome == "Canceled":
            op.code = fault.code or "OperationCanceled"
            op.message = fault.message or "The operation was canceled."

    def _operation_status(self, request: web.Request, op_id: str, sub: str, fault: Fault | None) -> web.Response:
        op = self.operations.get(op_id)
        if op is None or op.subscription.lower() != sub.lower():
            return cloud_error(404, "NotFound", f"The operation '{op_id}' was not found.")
        if fault is not None and fault.outcome and not op.settled:
            self._apply_outcome(op, fault)
            self._save_operation(op)
        now = self.clock.now()
        self._settle(op, now)
        status = op.status(now)
        headers = {"x-ms-ratelimit-remaining-resource":
                   f"Microsoft.Compute/GetOperation3Min;{self._read() % 15000},"
                   f"Microsoft.Compute/GetOperation30Min;{self._reads_left % 30000}"}
        retry_after = self._retry_after(fault)
        if status == "InProgress" and retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if request.query.get("monitor") == "true":
            # ARM RPC "202 Accepted and Location Headers": 202 while running; when done, the response the
            # operation would have given synchronously: 200 (no body, as recorded) or its error status + CloudError.
            if status == "InProgress":
                return web.Response(status=202, headers={**headers, "Location": str(request.url)})
            if status == "Succeeded":
                return web.Response(status=200, headers=headers)
            return cloud_error(op.location_failure_status(), op.code or "OperationFailed", op.message or "",
                               headers=headers)
        doc: dict[str, Any] = {"startTime": _iso(op.started), "status": status, "name": op.id}
        if status != "InProgress":
            doc["endTime"] = _iso(op.end)
        if status in ("Failed", "Canceled"):
            doc["error"] = {"code": op.code, "message": op.message}
        return web.json_response(doc, headers=headers)

    # ---- quota headers --------------------------------------------------------------------------
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

    # ---- introspection --------------------------------------------------------------------------
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
