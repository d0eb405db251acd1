"""Injected faults: the queue tests fill (`sim.faults`, `POST /devhost/compute/faults`), which requests a
fault matches, how its uses are counted, and the answer a request-level fault gives instead of ARM's."""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from devhost.compute.arm import COMPUTE_MESSAGE, HealthState, cloud_error


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
    `healthAfter` on a reimage fault is a bad image: the machines that POST reimages report this health from the
    end of that reimage on (until changed), as an application that no longer starts would.
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
    health_after: HealthState | None = Field(None, alias="healthAfter")
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


def take_fault(faults: list[Fault], method: str, path: str, query: dict[str, str]) -> Fault | None:
    """The request-level fault this request uses up one of `times` of, if any."""
    for fault in faults:
        if fault.per_instance:
            continue  # counted per instance read, where the views are built (per_instance_faults)
        if fault.matches(method, path, query):
            fault.times -= 1
            if fault.times <= 0:
                faults.remove(fault)
            return fault
    return None


def per_instance_faults(faults: list[Fault], request: web.Request) -> list[Fault]:
    return [f for f in faults if f.per_instance and f.matches(request.method, request.path, dict(request.query))]


def bent(faults: list[Fault], inst: str, fault: Fault | None, per_instance: list[Fault]) -> HealthState | None:
    """The health a fault makes this read of `inst` report, counting the read against it."""
    for f in per_instance:
        if f.bend(inst):
            if f.used_up and f in faults:
                faults.remove(f)
            return f.health
    if fault is not None and fault.health and fault.instance_ids is None:
        return fault.health
    return None


async def injected_answer(fault: Fault, request: web.Request) -> web.Response | None:
    """Delay the request, then drop it or answer the fault's status; None when ARM's own answer follows."""
    if fault.delay_seconds:
        await asyncio.sleep(fault.delay_seconds)
    if fault.drop:
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=599)
    if fault.status is not None:
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        if fault.status == 429 and fault.code is None:  # Compute's own throttling answer (devhost/compute/throttle.py)
            return web.json_response({"error": {
                "code": "OperationNotAllowed", "message": fault.message or COMPUTE_MESSAGE,
                "details": [{"code": "TooManyRequests", "target": "InjectedFault", "message": "{}"}],
                "innererror": {"internalErrorCode": "TooManyRequestsReceived"}}}, status=429, headers=headers)
        code = fault.code or {404: "NotFound", 409: "Conflict", 429: "TooManyRequests",
                              503: "ServiceUnavailable", 504: "GatewayTimeout"}.get(
            fault.status, "InternalServerError")
        return cloud_error(fault.status, code, fault.message or f"Injected fault {fault.status}.",
                           headers=headers)
    return None
