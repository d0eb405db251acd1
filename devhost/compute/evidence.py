"""What the simulator has of evidence: boot diagnostics and its storage, managed OS disks and their snapshots.

- `POST .../virtualMachines/{vm}/retrieveBootDiagnosticsData` and `.../virtualMachineScaleSets/{set}/
  virtualMachines/{id}/retrieveBootDiagnosticsData` (research notes `arm.md` C10): synchronous, 200 with
  `consoleScreenshotBlobUri` and `serialConsoleLogBlobUri`, read-only SAS URIs (`sasUriExpirationTimeInMinutes`,
  1-1440, default 120) on the boot diagnostics storage, which is **another host** than ARM (its own port here). With
  boot diagnostics not enabled in the machine's model: 409 `OperationNotAllowed` (the dangerous reading: Azure's
  answer is not documented).
- The storage host (`BootDiagnosticsStorage`) serves those blobs as Blob Storage does: `GET`/`HEAD` with the SAS in
  the query (signature and expiry checked: 403 `AuthenticationFailed` otherwise, Blob Storage's XML error), ranged
  reads (`x-ms-range` or `Range`: 206 and `Content-Range`), and it **refuses a request that also carries an
  Authorization header** (403), so a bearer token sent there fails, and is logged: its request log
  (`requests`) says for each request whether one was sent, never the signature. `delay_seconds` makes it hang.
  The serial console log is the machine's: its boot, its computer name, and what its application health says.
- `PUT /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/snapshots/{name}` (C11): `Copy` from a
  managed OS disk the simulator knows (a VM's or an instance's `storageProfile.osDisk.managedDisk.id`); an
  ephemeral OS disk, or any other id, is 404 `ResourceNotFound` (the dangerous reading). 202 with
  `provisioningState: Updating`, an `Azure-AsyncOperation` on `locations/{loc}/DiskOperations/{id}`, and
  `Succeeded` after `snapshot_seconds`; `GET` of the snapshot and of its operation. Kept in memory (`snapshots`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from aiohttp import web

from devhost.clock import Clock
from devhost.compute.arm import cloud_error, iso, lock_key
from devhost.compute.resources import Inventory

_PREFIX = r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/microsoft\.compute"
BOOT_DIAGNOSTICS_PATH = re.compile(
    _PREFIX + r"/(?P<type>virtualmachines|virtualmachinescalesets)/(?P<name>[^/]+)"
    r"(?:/virtualmachines/(?P<inst>[^/]+))?/retrievebootdiagnosticsdata/?$", re.IGNORECASE)
SNAPSHOT_PATH = re.compile(_PREFIX + r"/snapshots/(?P<name>[^/]+)/?$", re.IGNORECASE)
DISK_OPERATION_PATH = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/providers/microsoft\.compute/locations/"
                                 r"(?P<loc>[^/]+)/diskoperations/(?P<id>[^/]+)/?$", re.IGNORECASE)
BLOB_VERSION = "2021-08-06"


class EvidenceSettings(Protocol):
    """The simulator's switches this part reads at each request."""

    snapshot_seconds: float
    serial_log_bytes: int


@dataclass
class Snapshot:
    id: str
    name: str
    subscription: str
    location: str
    tags: dict[str, str]
    source: str
    incremental: bool
    operation_id: str
    created: float
    ready: float

    def state(self, now: float) -> str:
        return "Succeeded" if now >= self.ready else "Updating"

    def doc(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "type": "Microsoft.Compute/snapshots", "location": self.location,
                "tags": self.tags, "sku": {"name": "Standard_LRS", "tier": "Standard"},
                "properties": {"creationData": {"createOption": "Copy", "sourceResourceId": self.source},
                               "incremental": self.incremental, "provisioningState": self.state(now),
                               "timeCreated": iso(self.created), "diskSizeGB": 30,
                               "diskSizeBytes": 32212254720, "completionPercent": 100.0 if self.state(now)
                               == "Succeeded" else 0.0}}


@dataclass
class BootDiagnosticsStorage:
    """The storage account boot diagnostics writes to, on its own host: SAS-signed blobs, and a request log."""

    clock: Clock
    inventory: Inventory
    settings: EvidenceSettings
    url: str = ""  # set once served
    delay_seconds: float = 0.0  # a storage that hangs: every request waits this long (real time) first
    requests: list[dict[str, Any]] = field(default_factory=list)
    blobs: dict[str, tuple[str, str]] = field(default_factory=dict)  # blob path -> (resource key, instance)
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def _sign(self, path: str, expiry: str) -> str:
        return base64.b64encode(hmac.new(self._key, f"r\n{expiry}\n{path}".encode(), hashlib.sha256).digest()).decode()

    def sas_uri(self, key: str, inst: str, computer: str, vm_id: str, leaf: str, minutes: int) -> str:
        path = f"/bootdiagnostics-{computer[:9].lower()}-{vm_id[:8]}/{computer}.{vm_id}.{leaf}"
        self.blobs[path] = (key, inst)
        expiry = datetime.fromtimestamp(self.clock.now() + minutes * 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        query = {"sv": BLOB_VERSION, "se": expiry, "sr": "b", "sp": "r", "sig": self._sign(path, expiry)}
        return f"{self.url}{quote(path)}?{urlencode(query)}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._entry)
        return app

    async def _entry(self, request: web.Request) -> web.StreamResponse:
        entry = {"method": request.method, "path": request.path, "authorization": "Authorization" in request.headers,
                 "range": request.headers.get("x-ms-range") or request.headers.get("Range"), "status": 0,
                 "at": self.clock.now()}
        self.requests.append(entry)
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        response = self._answer(request)
        entry["status"] = response.status
        return response

    def _answer(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _storage_error(403, "AuthorizationPermissionMismatch", "This request is not authorized to "
                                  "perform this operation using this permission.")
        if "Authorization" in request.headers:  # a SAS is the credential here; a bearer token has no business here
            return _storage_error(403, "AuthenticationFailed", "Server failed to authenticate the request.",
                                  "A request may carry a shared access signature or an Authorization header, not both.")
        expiry, sig = request.query.get("se", ""), request.query.get("sig", "")
        if not expiry or not hmac.compare_digest(sig, self._sign(request.path, expiry)):
            return _storage_error(403, "AuthenticationFailed", "Server failed to authenticate the request. Make sure "
                                  "the value of Authorization header is formed correctly including the signature.",
                                  "Signature did not match.")
        if datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() < self.clock.now():
            return _storage_error(403, "AuthenticationFailed", "Server failed to authenticate the request.",
                                  "Signed expiry time has to be after signed start time")
        found = self.blobs.get(request.path)
        if found is None:
            return _storage_error(404, "BlobNotFound", "The specified blob does not exist.")
        data = self.serial_log(*found).encode() if request.path.endswith(".serialconsole.log") else _BMP
        headers = {"x-ms-blob-type": "BlockBlob", "x-ms-version": BLOB_VERSION,
                   "Content-Type": "text/plain" if request.path.endswith(".log") else "image/bmp",
                   "ETag": f'"0x{hashlib.sha256(data).hexdigest()[:16].upper()}"'}
        wanted = request.headers.get("x-ms-range") or request.headers.get("Range")
        if wanted and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())):
            start, end = int(m[1]), int(m[2]) if m[2] else len(data) - 1
            if start >= len(data):
                return _storage_error(416, "InvalidRange", "The range specified is invalid for the current size "
                                      "of the resource.")
            part = data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
            return web.Response(status=206, body=b"" if request.method == "HEAD" else part, headers=headers)
        return web.Response(status=200, body=b"" if request.method == "HEAD" else data, headers=headers)

    def serial_log(self, key: str, inst: str) -> str:
        """The machine's serial console: its boot, and what its application health says now."""
        res = self.inventory.resources.get(key) or {}
        model = (self.inventory.instances.get(key, {}).get(inst) or {}) if inst else res
        props = model.get("properties") or {}
        computer = (props.get("osProfile") or {}).get("computerName") or model.get("name") or "vm"
        health = str(self.inventory.vm_state.get(key, {}).get(inst, {}).get("health", "healthy"))
        lines = ["[    0.000000] Linux version 6.8.0-1015-azure (buildd@lcy02-amd64-044) #17-Ubuntu SMP",
                 f"[    0.412093] hv_vmbus: registering driver hv_netvsc ({model.get('id', key)})",
                 f"[    3.118274] cloud-init[612]: Cloud-init v. 24.1 running 'init' at {computer}",
                 f"[    6.902311] systemd[1]: Reached target multi-user.target on {computer}."]
        if health == "unhealthy":
            lines += ["[   41.553908] app.service: Main process exited, code=exited, status=1/FAILURE",
                      "[   41.554012] app.service: Failed with result 'exit-code'.",
                      f"[   41.560117] {computer} ApplicationHealth: probe http://localhost:80/health failed: "
                      "connection refused"]
        text = "\n".join(lines) + "\n"
        n = len(lines)
        while len(text) < self.settings.serial_log_bytes:  # a long-running machine's log
            n += 1
            text += f"[{n * 60:>8}.000000] systemd[1]: Started session-{n}.scope - Session {n} of user azureuser.\n"
        return text


_BMP = b"BM" + bytes(52)  # a screenshot's header: never fetched by reimager


def _storage_error(status: int, code: str, message: str, detail: str | None = None) -> web.Response:
    extra = f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail>" if detail else ""
    body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}\n'
            f"RequestId:{uuid.uuid4()}\nTime:{datetime.now(UTC).isoformat()}</Message>{extra}</Error>")
    return web.Response(status=status, body=body.encode(), content_type="application/xml",
                        headers={"x-ms-error-code": code})


@dataclass(eq=False)
class Evidence:
    """The ARM side: retrieveBootDiagnosticsData, snapshots and their operations."""

    clock: Clock
    inventory: Inventory
    settings: EvidenceSettings
    storage: BootDiagnosticsStorage
    snapshots: dict[str, Snapshot] = field(default_factory=dict)  # lower-cased id -> snapshot

    def route(self, request: web.Request, body: Any) -> web.Response | None:
        """The answer when the request is one of these; None otherwise."""
        path = request.path
        if m := BOOT_DIAGNOSTICS_PATH.match(path):
            if request.method != "POST":
                return cloud_error(405, "MethodNotAllowed", "Use POST.")
            return self._boot_diagnostics(m, request)
        if m := SNAPSHOT_PATH.match(path):
            if request.method == "PUT":
                return self._put_snapshot(m, body or {}, request)
            if request.method == "GET":
                snap = self.snapshots.get(lock_key(_snapshot_id(m)))
                if snap is None:
                    return cloud_error(404, "ResourceNotFound", f"The Resource 'Microsoft.Compute/snapshots/"
                                       f"{m['name']}' under resource group '{m['rg']}' was not found.")
                return web.json_response(snap.doc(self.clock.now()))
            return cloud_error(405, "MethodNotAllowed", f"{request.method} is not supported here.")
        if m := DISK_OPERATION_PATH.match(path):
            return self._disk_operation(m["id"])
        return None

    def _boot_diagnostics(self, m: re.Match[str], request: web.Request) -> web.Response:
        vm = m["type"].lower() == "virtualmachines"
        seg = "virtualMachines" if vm else "virtualMachineScaleSets"
        key = lock_key(f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/Microsoft.Compute/{seg}/"
                       f"{m['name']}")
        res = self.inventory.resources.get(key)
        if res is None or (vm and m["inst"]):
            return cloud_error(404, "ResourceNotFound", f"The Resource 'Microsoft.Compute/{seg}/{m['name']}' under "
                               f"resource group '{m['rg']}' was not found.")
        inst = m["inst"] or ""
        model = self.inventory.instances.get(key, {}).get(inst) if inst else res
        if model is None:
            return cloud_error(404, "NotFound", f"The entity was not found in this Azure location. Instance '{inst}' "
                               "does not exist.")
        props = model.get("properties") or {}
        enabled = ((props.get("diagnosticsProfile") or {}).get("bootDiagnostics") or {}).get("enabled") is True
        if not enabled:
            return cloud_error(409, "OperationNotAllowed", "Boot diagnostics is not enabled for this VM.")
        minutes_text = request.query.get("sasUriExpirationTimeInMinutes", "120")
        if not minutes_text.isdigit() or not 1 <= int(minutes_text) <= 1440:
            return cloud_error(400, "InvalidParameter", "sasUriExpirationTimeInMinutes must be between 1 and 1440.",
                               target="sasUriExpirationTimeInMinutes")
        computer = (props.get("osProfile") or {}).get("computerName") or model.get("name") or m["name"]
        vm_id = str(props.get("vmId") or uuid.uuid5(uuid.NAMESPACE_URL, key + inst))
        minutes = int(minutes_text)
        return web.json_response({
            "consoleScreenshotBlobUri": self.storage.sas_uri(key, inst, computer, vm_id, "screenshot.bmp", minutes),
            "serialConsoleLogBlobUri": self.storage.sas_uri(key, inst, computer, vm_id, "serialconsole.log", minutes)})

    def _put_snapshot(self, m: re.Match[str], body: dict[str, Any], request: web.Request) -> web.Response:
        props: dict[str, Any] = body["properties"] if isinstance(body.get("properties"), dict) else {}
        creation: dict[str, Any] = props["creationData"] if isinstance(props.get("creationData"), dict) else {}
        if not body.get("location"):
            return cloud_error(400, "LocationRequired", "The location property is required for this definition.")
        if creation.get("createOption") not in ("Copy", "CopyStart"):
            return cloud_error(400, "InvalidParameter", "Required parameter 'creationData.createOption' is missing "
                               "or invalid.", target="creationData.createOption")
        source = str(creation.get("sourceResourceId") or "")
        if not self._managed_disk(source):
            name = source.rstrip("/").rsplit("/", 1)[-1] or "?"
            return cloud_error(404, "ResourceNotFound", f"The Resource 'Microsoft.Compute/disks/{name}' under "
                               f"resource group '{m['rg']}' was not found.")
        snap_id = _snapshot_id(m)
        now = self.clock.now()
        existing = self.snapshots.get(lock_key(snap_id))
        snap = existing or Snapshot(id=snap_id, name=m["name"], subscription=m["sub"],
                                    location=str(body["location"]).replace(" ", "").lower(),
                                    tags={str(k): str(v) for k, v in (body.get("tags") or {}).items()},
                                    source=source, incremental=bool(props.get("incremental")),
                                    operation_id=str(uuid.uuid4()), created=now,
                                    ready=now + self.settings.snapshot_seconds)
        self.snapshots[lock_key(snap_id)] = snap
        origin = str(request.url.origin())
        monitor = (f"{origin}/subscriptions/{m['sub']}/providers/Microsoft.Compute/locations/{snap.location}/"
                   f"DiskOperations/{snap.operation_id}?api-version={request.query.get('api-version')}")
        return web.json_response(snap.doc(now), status=200 if existing else 202,
                                 headers={"Azure-AsyncOperation": monitor, "Location": monitor, "Retry-After": "1"})

    def _disk_operation(self, op_id: str) -> web.Response:
        now = self.clock.now()
        snap = next((s for s in self.snapshots.values() if s.operation_id == op_id), None)
        if snap is None:
            return cloud_error(404, "NotFound", f"The operation '{op_id}' was not found.")
        done = snap.state(now) == "Succeeded"
        doc: dict[str, Any] = {"name": op_id, "status": "Succeeded" if done else "InProgress",
                               "startTime": iso(snap.created)}
        if done:
            doc["endTime"] = iso(snap.ready)
            doc["properties"] = {"output": snap.doc(now)}
        return web.json_response(doc, headers={} if done else {"Retry-After": "1"})

    def _managed_disk(self, disk_id: str) -> bool:
        """A managed OS disk some VM or instance has (an ephemeral one is no disk ARM can read)."""
        wanted = disk_id.lower()
        if not wanted:
            return False
        for key, res in self.inventory.resources.items():
            models = [res] if "virtualMachineProfile" not in (res.get("properties") or {}) else list(
                self.inventory.instances.get(key, {}).values())
            for model in models:
                os_disk = ((model.get("properties") or {}).get("storageProfile") or {}).get("osDisk") or {}
                if str((os_disk.get("managedDisk") or {}).get("id", "")).lower() == wanted:
                    return not os_disk.get("diffDiskSettings")
        return False


def _snapshot_id(m: re.Match[str]) -> str:
    return f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/Microsoft.Compute/snapshots/{m['name']}"


def disk_id(resource_group_id: str, name: str) -> str:
    return f"{resource_group_id}/providers/Microsoft.Compute/disks/{name}"
