"""ARM calls of evidence capture (shared/workflow/evidence.py), the fewest that get it (research `arm.md` C10-C12):
- the machines' models with their instance views: one GET of a VM or one instance (`?$expand=instanceView`), or,
  for several instances of a set, the set's VM list with `$expand=instanceView`, one page at a time until every
  asked instance was seen (each page one of the set's High Cost Get reads). A Flexible set's members are VMs of
  their own: one member's GET, or the resource group's VM list filtered on the set (`members`), and each member's
  boot diagnostics on its own VM path;
- `retrieveBootDiagnosticsData` (a POST: an ARM write; 200 with read-only SAS URIs of the serial console log and
  the screenshot), one per machine whose boot diagnostics is enabled, asking for short-lived URIs;
- a snapshot: one PUT of `Microsoft.Compute/snapshots/{name}` (Disk RP, its own api-version; incremental, copied
  from the OS disk), then its Azure-AsyncOperation (or the snapshot itself) read until it Succeeded, at the pace
  ARM's Retry-After asks, until the caller's deadline.
Bearer tokens go to the ARM host only (the pipeline's guard): the SAS URIs are never fetched here, and never
logged or stored (shared/adapters/evidence.py downloads the log, with no token). A 429 is not waited out here:
evidence never holds a reimage back for long, and says what ARM answered instead.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from azure.core.rest import HttpRequest

from shared.adapters.arm.lro import error_from_response
from shared.domain.errors import ReimagerError
from shared.domain.evidence import SAS_MINUTES
from shared.domain.targets import Target, TargetKind

Guarded = Callable[..., Awaitable[tuple[int, dict[str, str], bytes]]]
DISK_API_VERSION = "2024-03-02"  # Microsoft.Compute/snapshots is the Disk RP's (its versions differ from Compute's)
_KIND = "evidence"
_MAX_PAGES = 1000


class EvidenceCallFailed(RuntimeError):
    """One evidence call failed; the message says what ARM answered (no URI with a SAS in it)."""


class ArmEvidence:
    def __init__(self, origin: str, api_version: str, guarded: Guarded, now: Callable[[], float],
                 same_origin: Callable[[str, str], bool], sleep: Callable[[float], Awaitable[None]]) -> None:
        self.origin, self.api_version = origin, api_version
        self._guarded, self._now, self._same_origin, self._sleep = guarded, now, same_origin, sleep

    async def _call(self, request: HttpRequest, what: str, resource: str) -> tuple[int, dict[str, str], bytes]:
        try:
            return await self._guarded(request, what, _KIND, resource, hold_throttled=False)
        except ReimagerError as exc:
            raise EvidenceCallFailed(f"{what}: {exc.error.message}") from None

    def _failed(self, status: int, headers: dict[str, str], body: bytes, what: str) -> EvidenceCallFailed:
        return EvidenceCallFailed(error_from_response(status, headers, body, what, self._now()).error.message[:512])

    async def machines(self, target: Target, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Each asked machine's model with its instance view ("" for a VM); one missing from the set is absent."""
        params = {"api-version": self.api_version, "$expand": "instanceView"}
        what = "reading the machine before the reimage"
        if target.kind is TargetKind.VM or len(keys) == 1:
            path = target.vm_id if target.kind is TargetKind.VM else f"{target.vm_id}/virtualMachines/{keys[0]}"
            status, headers, body = await self._call(HttpRequest("GET", f"{self.origin}{path}", params=params),
                                                     what, target.vm_id)
            if status != 200:
                raise self._failed(status, headers, body, what)
            return {"" if target.kind is TargetKind.VM else keys[0]: _object(body, what)}
        wanted, found = set(keys), {}
        request = HttpRequest("GET", f"{self.origin}{target.vm_id}/virtualMachines", params=params)
        for _ in range(_MAX_PAGES):
            status, headers, body = await self._call(request, what, target.vm_id)
            if status != 200:
                raise self._failed(status, headers, body, what)
            doc = _object(body, what)
            for item in doc.get("value") or []:
                inst = str(item.get("instanceId")) if isinstance(item, dict) else None
                if inst in wanted:
                    found[inst] = item
            link = doc.get("nextLink")
            if wanted <= found.keys() or not link:
                break
            if not isinstance(link, str) or not self._same_origin(link, self.origin):
                raise EvidenceCallFailed(f"{what}: ARM named a next page on another host; not followed")
            request = HttpRequest("GET", link)
        return found

    async def members(self, scale_set: Target, names: list[str]) -> dict[str, dict[str, Any]]:
        """A Flexible set's members (VMs of their own, in the set's resource group), each model with its instance
        view, keyed by the asked name: one VM's GET for one member; for several, the resource group's VM list
        filtered on the set with `$expand=instanceView` (VirtualMachines_List: only with a filter), one page at a
        time until every asked member was seen. Never the set's Uniform instance paths: a Flexible set has none."""
        params = {"api-version": self.api_version, "$expand": "instanceView"}
        what = "reading the machine before the reimage"
        if len(names) == 1:
            vm = f"{scale_set.resource_group_id}/providers/Microsoft.Compute/virtualMachines/{names[0]}"
            status, headers, body = await self._call(HttpRequest("GET", f"{self.origin}{vm}", params=params),
                                                     what, vm)
            if status != 200:
                raise self._failed(status, headers, body, what)
            return {names[0]: _object(body, what)}
        wanted = {n.lower(): n for n in names}
        found: dict[str, dict[str, Any]] = {}
        request = HttpRequest("GET", f"{self.origin}{scale_set.resource_group_id}/providers/Microsoft.Compute/"
                              "virtualMachines", params={**params, "$filter": "'virtualMachineScaleSet/id' eq "
                                                         f"'{scale_set.vm_id}'"})
        for _ in range(_MAX_PAGES):
            status, headers, body = await self._call(request, what, scale_set.vm_id)
            if status != 200:
                raise self._failed(status, headers, body, what)
            doc = _object(body, what)
            for item in doc.get("value") or []:
                name = str(item.get("name") or "").lower() if isinstance(item, dict) else ""
                if name in wanted:
                    found[wanted[name]] = item
            link = doc.get("nextLink")
            if len(found) == len(wanted) or not link:
                break
            if not isinstance(link, str) or not self._same_origin(link, self.origin):
                raise EvidenceCallFailed(f"{what}: ARM named a next page on another host; not followed")
            request = HttpRequest("GET", link)
        return found

    async def serial_log_uri(self, target: Target, key: str) -> str:
        """The read-only SAS URI of the machine's serial console log (retrieveBootDiagnosticsData)."""
        path = target.vm_id if target.kind is TargetKind.VM else f"{target.vm_id}/virtualMachines/{key}"
        what = "retrieving the boot diagnostics"
        request = HttpRequest("POST", f"{self.origin}{path}/retrieveBootDiagnosticsData",
                              params={"api-version": self.api_version,
                                      "sasUriExpirationTimeInMinutes": str(SAS_MINUTES)})
        request.headers["Content-Length"] = "0"
        status, headers, body = await self._call(request, what, target.vm_id)
        if status != 200:
            raise self._failed(status, headers, body, what)
        uri = _object(body, what).get("serialConsoleLogBlobUri")
        if not isinstance(uri, str) or not uri:
            raise EvidenceCallFailed(f"{what}: ARM named no serial console log")
        return uri

    async def snapshot(self, *, resource_group_id: str, name: str, disk_id: str, location: str,
                       tags: dict[str, str], deadline: float) -> dict[str, Any]:
        """PUT an incremental snapshot of `disk_id` and wait (until `deadline`, on the runtime's clock) for it to
        succeed. Its document; raises EvidenceCallFailed when it failed or did not succeed in time."""
        url = f"{self.origin}{resource_group_id}/providers/Microsoft.Compute/snapshots/{name}"
        what = "snapshotting the OS disk"
        body = {"location": location, "tags": tags, "properties": {
            "creationData": {"createOption": "Copy", "sourceResourceId": disk_id}, "incremental": True}}
        request = HttpRequest("PUT", url, params={"api-version": DISK_API_VERSION}, json=body)
        status, headers, raw = await self._call(request, what, disk_id)
        if status not in (200, 201, 202):
            raise self._failed(status, headers, raw, what)
        lower = {k.lower(): v for k, v in headers.items()}
        doc = _object(raw, what) if raw else {}
        monitor = lower.get("azure-asyncoperation")
        while _state(doc) != "Succeeded":
            if _state(doc) in ("Failed", "Canceled"):
                raise EvidenceCallFailed(f"{what}: the snapshot ended {_state(doc)}")
            wait = _retry_after(lower.get("retry-after"))
            if self._now() + wait > deadline:
                raise EvidenceCallFailed(f"{what}: the snapshot had not succeeded by EVIDENCE_TIMEOUT_SECONDS "
                                         f"(last state: {_state(doc) or 'unknown'})")
            await self._sleep(wait)
            doc, lower = await self._snapshot_state(url, monitor, what, disk_id)
        return doc

    async def _snapshot_state(self, url: str, monitor: str | None, what: str, disk_id: str
                              ) -> tuple[dict[str, Any], dict[str, str]]:
        if monitor and self._same_origin(monitor, self.origin):
            status, headers, raw = await self._call(HttpRequest("GET", monitor), what, disk_id)
            if status != 200:
                raise self._failed(status, headers, raw, what)
            op = _object(raw, what)
            state = str(op.get("status") or "")
            output = (op.get("properties") or {}).get("output") if isinstance(op.get("properties"), dict) else None
            doc = output if isinstance(output, dict) else {"properties": {"provisioningState": state}}
            doc.setdefault("properties", {})["provisioningState"] = "Succeeded" if state == "Succeeded" else (
                state if state in ("Failed", "Canceled") else "Updating")
            return doc, {k.lower(): v for k, v in headers.items()}
        status, headers, raw = await self._call(HttpRequest("GET", url, params={"api-version": DISK_API_VERSION}),
                                                what, disk_id)
        if status != 200:
            raise self._failed(status, headers, raw, what)
        return _object(raw, what), {k.lower(): v for k, v in headers.items()}


def _state(doc: dict[str, Any]) -> str:
    props = doc.get("properties")
    return str(props.get("provisioningState") or "") if isinstance(props, dict) else ""


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 2), 1.0), 30.0)
    except ValueError:
        return 2.0


def _object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise EvidenceCallFailed(f"{what}: ARM answered with a body that is not a JSON object")
    return doc
