"""The reimage LROs: the POST that starts one (202 + Azure-AsyncOperation + Location), preemption of the
running operation on the same VM / scale set, settling an operation once it has ended, and the answers of
the async-operation and Location (`monitor=true`) polls.

Operations are indexed by id and by lock key, and a heap of end times says which ones ended since the last
request, so per-request work does not grow with the number of operations, finished or running.
"""

from __future__ import annotations

import heapq
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from devhost.clock import Clock
from devhost.compute.arm import Parsed, cloud_error, iso, lock_key
from devhost.compute.faults import Fault
from devhost.compute.persistence import Store
from devhost.compute.resources import Inventory, model_version

VM_REIMAGE_KEYS = {"tempDisk", "exactVersion", "osProfile"}
VMSS_VM_REIMAGE_KEYS = VM_REIMAGE_KEYS | {"forceUpdateOSDiskForEphemeral"}
VMSS_REIMAGE_KEYS = VMSS_VM_REIMAGE_KEYS | {"instanceIds"}
# kubernetes-sigs/cloud-provider-azure pkg/consts/consts.go (OperationPreemptedErrorMessage) and its
# test fixture `Code="OperationPreempted" Message="Operation execution has been preempted by a more recent operation."`
PREEMPTED_CODE = "OperationPreempted"
PREEMPTED_MESSAGE = "Operation execution has been preempted by a more recent operation."


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
    health_after: str | None = None  # a bad image (a fault's healthAfter): what its machines report once it ended

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
                "settled": self.settled, "ended": self.ended, "failureStatus": self.failure_status,
                "healthAfter": self.health_after}

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Operation:
        return cls(id=d["id"], lock_key=d["lockKey"], location=d["location"], subscription=d["subscription"],
                   started=d["started"], duration=d["duration"], instance_keys=list(d["instanceKeys"]),
                   version=d["version"], outcome=d["outcome"], code=d.get("code"), message=d.get("message"),
                   settled=bool(d.get("settled")), ended=d.get("ended"), failure_status=d.get("failureStatus"),
                   health_after=d.get("healthAfter"))


class LroSettings(Protocol):
    """The simulator's switches a reimage reads, at each request (tests change them between requests)."""

    protected_named_refused: bool
    operation_seconds: float
    retry_after: int | None
    location: str
    durations: dict[str, float]
    async_operation_header: bool
    operation_origin: str | None


@dataclass(eq=False)
class Operations:
    clock: Clock
    settings: LroSettings
    inventory: Inventory
    by_id: dict[str, Operation]
    store: Store | None
    active: dict[str, str] = field(default_factory=dict)  # lock key -> id of the operation not yet settled
    # heap of (end, operation id) of operations not yet settled
    ends: list[tuple[float, str]] = field(default_factory=list)

    # ---- index, settle, preempt -----------------------------------------------------------------
    def load(self) -> None:
        assert self.store is not None
        for doc in self.store.read_all(self.store.operations):
            op = Operation.from_doc(doc)
            self.by_id[op.id] = op
            if not op.settled:
                self.active[op.lock_key] = op.id
                heapq.heappush(self.ends, (op.end, op.id))

    def save(self, op: Operation) -> None:
        if self.store is not None:
            self.store.save_operation(op.to_doc())

    def settle_due(self) -> None:
        """Settle the operations that have ended: those at the front of the end-time heap, so a request looks
        at no running operation that has not ended (an outcome fault of "Never" leaves the heap unsettled:
        it never ends, unless preempted, which settles it at once)."""
        now = self.clock.now()
        while self.ends and self.ends[0][0] <= now:
            _, op_id = heapq.heappop(self.ends)
            op = self.by_id.get(op_id)
            if op is not None and not op.settled:
                self.settle(op, now)

    def settle_key(self, key: str, now: float) -> None:
        op_id = self.active.get(key)
        if op_id is not None:
            self.settle(self.by_id[op_id], now)

    def settle(self, op: Operation, now: float) -> None:
        """Apply an operation's effects once it has ended: instances return to the model's image."""
        if op.settled or op.status(now) == "InProgress":
            return
        op.settled = True
        if self.active.get(op.lock_key) == op.id:
            del self.active[op.lock_key]
        if op.status(now) == "Succeeded":
            for key in op.instance_keys:
                vmss_key, _, inst = key.partition("#")
                target = (self.inventory.instances.get(vmss_key, {}).get(inst) if inst
                          else self.inventory.resources.get(vmss_key))
                if target is None:
                    continue  # scaled in meanwhile
                image = target["properties"]["storageProfile"].setdefault("imageReference", {})
                image["exactVersion"] = op.version
                state = self.inventory.state_of(vmss_key, inst)
                state["reimagedAt"] = op.end
                if op.health_after is not None:
                    state["health"] = op.health_after
            self.inventory.save(op.lock_key)
        self.save(op)

    def busy(self, key: str) -> Operation | None:
        op_id = self.active.get(key)
        if op_id is None:
            return None
        op = self.by_id[op_id]
        return op if op.status(self.clock.now()) == "InProgress" else None

    def preempt(self, op: Operation, now: float) -> None:
        op.outcome, op.code, op.message, op.ended = "Canceled", PREEMPTED_CODE, PREEMPTED_MESSAGE, now
        op.failure_status = None
        self.settle(op, now)

    def register(self, op: Operation) -> None:
        self.by_id[op.id] = op
        self.active[op.lock_key] = op.id
        heapq.heappush(self.ends, (op.end, op.id))
        self.save(op)

    def running_on(self, key: str, instance_key: str, now: float) -> Operation | None:
        op_id = self.active.get(key)
        if op_id is None:
            return None
        op = self.by_id[op_id]
        return op if op.status(now) == "InProgress" and op.covers(instance_key) else None

    # ---- POST .../reimage, .../reimageall -------------------------------------------------------
    def reimage(self, request: web.Request, p: Parsed, body: dict[str, Any], version: str,
                fault: Fault | None) -> web.Response:
        key = lock_key(p.resource_id)
        now = self.clock.now()
        self.settle_key(key, now)
        res = self.inventory.resources.get(key)
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
        refused = _options_error(body, profile)
        if refused is not None:
            return refused
        chosen = [""] if is_vm else self._instances(key, p, body)
        if isinstance(chosen, web.Response):
            return chosen
        ids = chosen if is_vm or p.inst else self._unprotected(key, chosen, body)
        if isinstance(ids, web.Response):
            return ids
        instance_keys = [key] if is_vm else [f"{key}#{i}" for i in ids]
        stopped = next((i for i in ids if self.inventory.power(key, i) == "deallocated"), None)
        if stopped is not None:
            what = f"VM '{p.name}'" if is_vm else f"instance '{stopped}' of scale set '{p.name}'"
            return cloud_error(409, "OperationNotAllowed", f"Operation '{p.action}' is not allowed on {what} since "
                               "the VM is deallocated.")
        running = self.busy(key)
        if running is not None:
            self.preempt(running, now)  # ARM: the newer operation wins; the running one ends Canceled
        image = profile.get("storageProfile", {}).get("imageReference", {})
        settings = self.settings
        op = Operation(
            id=str(uuid.uuid4()), lock_key=key,
            location=res.get("location", settings.location).replace(" ", "").lower(), subscription=p.sub,
            started=now, duration=settings.durations.get(p.name.lower(), settings.operation_seconds),
            instance_keys=instance_keys, version=str(body.get("exactVersion") or model_version(image)),
        )
        if fault is not None:
            self._apply_fault(op, fault)
        self.register(op)
        origin = settings.operation_origin or str(request.url.origin())
        base = f"{origin}/subscriptions/{p.sub}/providers/Microsoft.Compute/locations/{op.location}/operations/{op.id}"
        headers = {
            "Location": f"{base}?monitor=true&api-version={version}",
            "x-ms-request-id": op.id,
        }
        if settings.async_operation_header:
            headers["Azure-AsyncOperation"] = f"{base}?api-version={version}"
        retry_after = self._retry_after(fault)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return web.Response(status=202, headers=headers)

    def _retry_after(self, fault: Fault | None) -> int | None:
        if fault is not None and fault.status is None and fault.retry_after is not None:
            return fault.retry_after
        return self.settings.retry_after

    def _instances(self, key: str, p: Parsed, body: dict[str, Any]) -> list[str] | web.Response:
        """The scale-set instances a POST names, or ARM's refusal."""
        insts = self.inventory.instances.get(key, {})
        if p.inst is not None:
            if p.inst not in insts:
                return cloud_error(404, "NotFound", f"The entity was not found in this Azure location. Instance "
                                   f"'{p.inst}' does not exist.")
            return [p.inst]
        given = body.get("instanceIds")
        if given is not None and (not isinstance(given, list) or not all(isinstance(i, str) for i in given)):
            return cloud_error(400, "InvalidRequestContent", "instanceIds must be a list of strings.",
                               target="instanceIds")
        if not given:
            # The API's rule, and the dangerous one: a missing OR EMPTY list means every instance.
            return sorted(insts, key=int)
        missing = next((i for i in given if i not in insts), None)
        if missing is not None:
            return cloud_error(400, "InvalidParameter", f"The provided instanceId {missing} is not an active "
                               "Virtual Machine Scale Set VM instanceId.", target="instanceIds")
        return list(dict.fromkeys(given))

    def _unprotected(self, key: str, ids: list[str], body: dict[str, Any]) -> list[str] | web.Response:
        """A scale-set reimage leaves instances protected from scale set actions alone (PROT): silently skipped (the
        third-party account of Microsoft's support guides; the dangerous reading: the caller thinks them reimaged),
        or, with `protected_named_refused`, refused when named, as ARM refuses to delete them."""
        protected = self.inventory.protected(key)
        named = [i for i in (body.get("instanceIds") or []) if i in protected]
        if named and self.settings.protected_named_refused:
            return cloud_error(409, "OperationNotAllowed", "InstanceIds may not contain instances that are protected "
                               "from scale set actions. The following instance ids are protected from scale set "
                               f"action: {', '.join(named)}.")
        return [i for i in ids if i not in protected]

    @staticmethod
    def _allowed_keys(is_vm: bool, p: Parsed) -> set[str]:
        assert p.action is not None
        if is_vm:
            return VM_REIMAGE_KEYS
        if p.action == "reimageall":
            return set() if p.inst else {"instanceIds"}
        return VMSS_VM_REIMAGE_KEYS if p.inst else VMSS_REIMAGE_KEYS

    @classmethod
    def _apply_fault(cls, op: Operation, fault: Fault) -> None:
        """An injected outcome, and a bad image (what the machines report once it ended)."""
        if fault.outcome:
            cls._apply_outcome(op, fault)
        if fault.health_after is not None:
            op.health_after = fault.health_after

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

    # ---- GET .../locations/{loc}/operations/{id} ------------------------------------------------
    def status(self, request: web.Request, op_id: str, sub: str, fault: Fault | None) -> web.Response:
        op = self.by_id.get(op_id)
        if op is None or op.subscription.lower() != sub.lower():
            return cloud_error(404, "NotFound", f"The operation '{op_id}' was not found.")
        if fault is not None and fault.outcome and not op.settled:
            self._apply_outcome(op, fault)
            self.save(op)
        now = self.clock.now()
        self.settle(op, now)
        status = op.status(now)
        headers: dict[str, str] = {}
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
        doc: dict[str, Any] = {"startTime": iso(op.started), "status": status, "name": op.id}
        if status != "InProgress":
            doc["endTime"] = iso(op.end)
        if status in ("Failed", "Canceled"):
            doc["error"] = {"code": op.code, "message": op.message}
        return web.json_response(doc, headers=headers)


def _options_error(body: dict[str, Any], profile: dict[str, Any]) -> web.Response | None:
    """ARM refuses the ephemeral-only options on a managed OS disk."""
    ephemeral = bool(profile.get("storageProfile", {}).get("osDisk", {}).get("diffDiskSettings"))
    for flag in ("tempDisk", "forceUpdateOSDiskForEphemeral"):
        if body.get(flag) and not ephemeral:
            return cloud_error(400, "InvalidParameter", f"Parameter '{flag}' is only supported for VM/VMSS with "
                               "Ephemeral OS disk.", target=flag)
    return None
