"""The whole app on one machine: identity, ARM simulator, durable stand-in, Functions routing.

The real `function_app` is imported and indexed the way the Functions host does it; HTTP
triggers are routed from their bindings, function keys are enforced, and non-HTTP triggers
are invoked with `POST /admin/functions/{name}`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from devhost import azurite, bindings
from devhost.broker import Broker, StandInServiceBusClient
from devhost.clock import Clock, VirtualClock
from devhost.compute import ArmLimits, ComputeSimulator, Fault
from devhost.durable import DurableEngine, Fidelity, Instance
from devhost.functions import FunctionEntry, FunctionIndex, index_app
from devhost.identity import PATH as IDENTITY_PATH
from devhost.identity import TokenIssuer
from devhost.outputs import front_storage, wire_broker
from devhost.servicebus import ServiceBusQueues, max_auto_lock_renewal
from devhost.serving import Served, serve
from devhost.storage import Chaos, StorageProxy
from devhost.terminal import TerminalPublisher, request_lines
from devhost.timers import TimerScheduler

if TYPE_CHECKING:
    from shared.runtime import Runtime
    from shared.settings import Settings

log = logging.getLogger("devhost")
monitor_log = logging.getLogger("devhost.monitor")  # detail: `python -m devhost -v` shows it
DEMO_SUBSCRIPTION = "7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2910"
DEMO_GROUP = "reimager-demo"
_INDEX: FunctionIndex | None = None
ROOT = Path(__file__).resolve().parent.parent


async def reset_durable_session() -> None:
    """The durable SDK keeps a module-level aiohttp session: a new event loop needs a new one."""
    from azure.durable_functions.models.utils import http_utils

    session = http_utils._client_session
    if session is not None and not session.closed:
        await session.close()
    http_utils._client_session = None
    http_utils._session_lock = asyncio.Lock()


def function_index() -> FunctionIndex:
    """Index function_app once per process (app.get_functions() can run only once per app)."""
    global _INDEX
    if _INDEX is None:
        import function_app

        _INDEX = index_app(function_app.app)
    return _INDEX


def demo_resources(sub: str = DEMO_SUBSCRIPTION, group: str = DEMO_GROUP) -> dict[str, dict[str, Any]]:
    base = f"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute"
    disk = {"createOption": "FromImage", "managedDisk": {"storageAccountType": "Premium_LRS"}}
    boot = {"bootDiagnostics": {"enabled": True}}  # managed boot diagnostics (no storageUri)
    return {
        f"{base}/virtualMachines/web-linux-01": {
            "location": "westus", "tags": {"role": "web"},
            "properties": {"hardwareProfile": {"vmSize": "Standard_D2s_v5"}, "diagnosticsProfile": boot,
                           "osProfile": {"computerName": "web-linux-01", "adminUsername": "azureuser",
                                         "linuxConfiguration": {"disablePasswordAuthentication": False}},
                           "storageProfile": {"imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts",
                                                                 "sku": "server", "version": "latest"},
                                              "osDisk": {**disk, "osType": "Linux"}}}},
        f"{base}/virtualMachines/app-win-01": {
            "location": "westus", "tags": {"role": "app"},
            "properties": {"hardwareProfile": {"vmSize": "Standard_D4s_v5"}, "diagnosticsProfile": boot,
                           "osProfile": {"computerName": "app-win-01", "adminUsername": "azureadmin",
                                         "windowsConfiguration": {"provisionVMAgent": True}},
                           "storageProfile": {"imageReference": {"publisher": "MicrosoftWindowsServer",
                                                                 "offer": "WindowsServer", "sku": "2022-datacenter",
                                                                 "version": "20348.2700.240905"},
                                              "osDisk": {**disk, "osType": "Windows"}}}},
        f"{base}/virtualMachines/db-linux-01": {
            "location": "westus", "tags": {"role": "db", "reimager-protect": "true"},
            "properties": {"storageProfile": {"imageReference": {"publisher": "Canonical", "version": "latest"},
                                              "osDisk": {**disk, "osType": "Linux"}}}},
        f"{base}/virtualMachineScaleSets/workers": {
            "location": "westus", "tags": {"role": "worker"},
            "sku": {"name": "Standard_D2s_v5", "tier": "Standard", "capacity": 4},
            "properties": {"upgradePolicy": {"mode": "Manual"}, "overprovision": False,
                           "virtualMachineProfile": {
                               "osProfile": {"computerNamePrefix": "worker", "adminUsername": "azureuser"},
                               "diagnosticsProfile": boot,
                               "storageProfile": {
                                   "imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts",
                                                      "sku": "server", "version": "latest"},
                                   "osDisk": {"createOption": "FromImage", "caching": "ReadOnly", "osType": "Linux",
                                              "diffDiskSettings": {"option": "Local"},
                                              "managedDisk": {"storageAccountType": "Standard_LRS"}}},
                               "networkProfile": {"networkInterfaceConfigurations": []}}}},
    }


@dataclass(frozen=True)
class ExternalArm:
    """An ARM simulator and identity endpoint served by another process (several app processes sharing one ARM,
    as instances of a scaled-out app share Azure's): its URLs and the identity header its issuer checks."""

    arm_url: str
    identity_url: str
    identity_header: str


@functools.cache
def _route_regex(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\{(\w+)(?::[^}]*)?\}", r"(?P<\1>[^/]+)", template.strip("/"))
    return re.compile(f"^{pattern}$", re.IGNORECASE)



@contextmanager
def environ(**values: str | None) -> Iterator[None]:
    """The process environment with `values` set (None: removed) for the block, then put back as it was."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

class DevHost:
    def __init__(self, *, clock: Clock | None = None, host: str = "127.0.0.1", port: int = 0,
                 state_dir: Path | str = ".devhost", operation_seconds: float = 5.0, retry_after: int | None = None,
                 settings: dict[str, str] | None = None, seed: bool = True,
                 durable_fidelity: Fidelity | None = None, storage_chaos: Chaos | None = None,
                 timer_overlap: bool = False, servicebus_stand_in: bool = True,
                 arm_limits: ArmLimits | None = None, external_arm: ExternalArm | None = None,
                 storage_proxy: bool = True) -> None:
        """`storage_chaos`: random Table Storage faults; `timer_overlap`: a timer run that outlives its lease is
        run again while it goes on; `servicebus_stand_in=False`: events go to EVENTS_FILE (the app's own local
        mode) instead of through the Service Bus stand-in; `arm_limits`: ARM's request quotas (throttling);
        `external_arm`: use another process's ARM simulator and identity endpoint instead of serving its own
        (`self.sim` then stays empty and unserved). With an `AzureWebJobsStorage` setting no Azurite is started
        either: several hosts so share one ARM and one ledger, each with its own durable stand-in.
        `storage_proxy=False`: the ledger talks to `AzureWebJobsStorage` directly, not through a storage proxy of
        this process (another process serves one, as Storage is not in the worker in Azure)."""
        self.clock = clock or Clock()
        self.host, self.port = host, port
        self.state_dir = Path(state_dir)
        self.issuer = TokenIssuer()
        self.sim = ComputeSimulator(clock=self.clock, issuer=self.issuer, operation_seconds=operation_seconds,
                                    retry_after=retry_after, state_dir=self.state_dir / "arm",
                                    arm_limits=arm_limits or ArmLimits.azure())
        self.function_key = secrets.token_urlsafe(24)
        self.overrides = dict(settings or {})
        self.seed = seed
        self.durable_fidelity = durable_fidelity  # None: as hostile as Azure (devhost/durable/fidelity.py)
        self.servers: list[Served] = []
        self.engine: DurableEngine | None = None
        self.servicebus: ServiceBusQueues | None = None
        self.timers: TimerScheduler | None = None
        self.functions_url = self.arm_url = self.identity_url = ""
        self._last_progress: dict[str, str] = {}  # instance id -> last status logged
        self.azurite: azurite.Azurite | None = None
        self.runtime: Runtime | None = None
        self.settings: Settings | None = None
        self.storage_chaos = storage_chaos
        self.timer_overlap = timer_overlap
        self.servicebus_stand_in = servicebus_stand_in
        self.storage: StorageProxy | None = None
        self.broker: Broker | None = None
        self.external_arm = external_arm
        self.storage_proxy = storage_proxy
        if external_arm is not None:
            self.issuer.header_secret = external_arm.identity_header  # what the app's credential sends

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> DevHost:
        self.state_dir.mkdir(parents=True, exist_ok=True)  # events.jsonl is appended to, never wiped
        if self.external_arm is None:
            identity = await serve(self.issuer.app(), self.host)
            arm = await self.sim.serve(self.host)  # on its recorded port: operation URLs outlive a restart
            boot_diagnostics = await self.sim.serve_boot_diagnostics(self.host)  # another host than ARM's
            self.servers += [identity, arm, boot_diagnostics]
            self.identity_url, self.arm_url = identity.url + IDENTITY_PATH, arm.url
        else:
            self.identity_url, self.arm_url = self.external_arm.identity_url, self.external_arm.arm_url
        await reset_durable_session()
        from shared import runtime
        from shared.settings import load_settings

        values = {
            "ARM_ENDPOINT": self.arm_url, "ALLOWED_SCOPES": f"/subscriptions/{DEMO_SUBSCRIPTION}",
            "DEFAULT_SUBSCRIPTION_ID": DEMO_SUBSCRIPTION, "EVENTS_FILE": str(self.events_file),
            "ServiceBusConnection__fullyQualifiedNamespace": "", **self.overrides,
        }
        settings = load_settings(**values)  # fails now, naming the setting, if an override is bad
        if not settings.storage_connection_string and not settings.table_service_uri:
            self.azurite = await azurite.start(self.state_dir)
            settings = load_settings(**{**values, "AzureWebJobsStorage": self.azurite.connection_string})
        if settings.storage_connection_string and self.storage_proxy:
            front = await front_storage(settings.storage_connection_string.get_secret_value(), self.host,
                                        self.storage_chaos)
            if front is not None:
                self.storage, served, proxied = front
                self.servers.append(served)
                settings = load_settings(**{**values, "AzureWebJobsStorage": proxied})
        self.settings = settings
        self.broker = Broker(self.clock, topic=settings.events_topic, requests_queue=settings.requests_queue)
        self.runtime = runtime.Runtime(settings, clock=self.clock.utcnow, sleep=self._wait,
                                       credential_factory=self._credential,
                                       publisher=TerminalPublisher(self._publisher(settings)))
        runtime.install(self.runtime)
        index = function_index()
        self.index = index
        self.engine = DurableEngine(
            self.clock,
            {e.name: bindings.orchestrator_function(e) for e in index.of_type("orchestrationTrigger")},
            {e.name: self._activity(e) for e in index.of_type("activityTrigger")},
            fidelity=self.durable_fidelity, state_dir=self.state_dir / "taskhub",
        )
        self.engine.listeners.append(self._on_change)
        self.servicebus = ServiceBusQueues(self.clock, self.client_binding,
                                           lock_renewal=max_auto_lock_renewal(ROOT / "host.json"))
        wire_broker(self.broker, self.events_file, self.servicebus, index.of_type("serviceBusTrigger"),
                    settings.requests_queue, self.seed)
        app = web.Application(client_max_size=1024 * 1024, middlewares=[request_lines])
        app.add_routes(self.engine.routes())
        app.add_routes(self.broker.routes())
        if self.storage is not None:
            app.add_routes(self.storage.routes())
        app.add_routes([
            web.get("/devhost/events", self._events),
            web.get("/devhost/compute/requests", self._requests),
            web.post("/devhost/compute/faults", self._faults),
            web.get("/devhost/compute/bootdiagnostics/requests", self._boot_diagnostics_requests),
            web.get("/devhost/compute/snapshots", self._snapshots),
            web.get("/devhost/durable/instances", self._instances),
            web.post("/admin/functions/{name}", self._admin_invoke),
            web.get("/devhost/servicebus/deadletter", self._deadletter),
            web.route("*", "/api/{tail:.*}", self._http_trigger),
            web.get("/", self._root),
        ])
        functions = await serve(app, self.host, self.port)
        self.servers.append(functions)
        self.functions_url = functions.url
        self.engine.start_worker()
        self.start_timers(index.of_type("timerTrigger"))
        if self.seed and self.external_arm is None:
            for rid, body in demo_resources().items():
                self.sim.upsert(rid, body)
        # Written whole or not at all: other processes (the CLI, tests, benches) poll for it and read it at once.
        tmp = self.state_dir / f".endpoints.{os.getpid()}.json"
        tmp.write_text(json.dumps(self.endpoints()))
        os.replace(tmp, self.state_dir / "endpoints.json")
        return self

    async def stop(self) -> None:
        from shared import runtime

        if self.timers is not None:
            await self.timers.close()
        if self.servicebus is not None:
            await self.servicebus.close()
        if self.engine is not None:
            await self.engine.close()
        if self.runtime is not None:
            await self.runtime.close()
            if runtime._installed is self.runtime:
                runtime.install(None)
        await reset_durable_session()
        for server in reversed(self.servers):
            await server.close()
        self.servers.clear()
        if self.storage is not None:
            await self.storage.close()
        if self.azurite is not None:
            await self.azurite.stop()
            self.azurite = None

    async def __aenter__(self) -> DevHost:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def quiesce(self) -> None:
        """Wait for timer functions and queue deliveries in flight (virtual-clock drivers call this before
        moving time on, so time does not jump while a sweep is half done)."""
        if self.timers is not None:
            await self.timers.idle()
        if self.servicebus is not None:
            await self.servicebus.idle()

    async def _wait(self, seconds: float) -> None:
        """How the app waits inside a request (ARM's Retry-After). On a virtual clock the wait moves time
        forward itself, as a real wait would let it pass: nothing else would move it while a caller waits."""
        if isinstance(self.clock, VirtualClock):
            self.clock.advance(seconds)
            await asyncio.sleep(0)
        else:
            await self.clock.sleep(seconds)

    def _credential(self) -> Any:
        """azure-identity's real ManagedIdentityCredential, pointed at the identity stand-in. It reads the
        platform's IDENTITY_* variables when it is built, so they are set for that moment only."""
        from azure.identity.aio import ManagedIdentityCredential

        assert self.settings is not None  # set by start(), before any credential is needed
        with environ(IDENTITY_ENDPOINT=self.identity_url, IDENTITY_HEADER=self.issuer.header_secret,
                     MSI_ENDPOINT=None):
            return ManagedIdentityCredential(client_id=self.settings.azure_client_id or None)

    def _publisher(self, settings: Settings) -> Any:
        """The app's own ServiceBusPublisher on the Service Bus stand-in (or its EVENTS_FILE publisher)."""
        from shared.adapters.publishers import ServiceBusPublisher, make_publisher

        if not self.servicebus_stand_in or self.broker is None:
            return make_publisher(settings)
        return ServiceBusPublisher(settings, client=StandInServiceBusClient(self.broker))

    @property
    def events_file(self) -> Path:
        return self.state_dir / "events.jsonl"

    def endpoints(self) -> dict[str, Any]:
        resources = []
        for rid, res in self.sim.resources.items():
            props = res["properties"]
            profile = props if "virtualMachineProfile" not in props else props["virtualMachineProfile"]
            os_disk = profile.get("storageProfile", {}).get("osDisk", {})
            resources.append({
                "id": res["id"], "kind": "virtualMachineScaleSet" if "virtualMachineProfile" in props
                else "virtualMachine", "osType": os_disk.get("osType"),
                "ephemeralOSDisk": bool(os_disk.get("diffDiskSettings")),
                "instanceIds": sorted(self.sim.instances.get(rid, {}), key=int) if rid in self.sim.instances
                else None, "tags": res.get("tags", {})})
        return {"functions": self.functions_url, "arm": self.arm_url, "identity": self.identity_url,
                "identityHeader": self.issuer.header_secret, "functionKey": self.function_key,
                "subscriptionId": DEMO_SUBSCRIPTION, "resources": resources}

    # ---- functions ------------------------------------------------------------------------
    def client_binding(self) -> str:
        assert self.engine is not None
        return self.engine.binding(self.functions_url)

    def start_timers(self, entries: list[FunctionEntry]) -> TimerScheduler:
        """Run every timer trigger on its NCRONTAB schedule, on devhost's clock. A `%NAME%` schedule is
        resolved from the app settings, as the host resolves binding expressions."""
        import dataclasses

        from shared.settings import env_name

        assert self.settings is not None
        names = {env_name(f): f for f in type(self.settings).model_fields}
        resolved = []
        for entry in entries:
            schedule = entry.schedule or ""
            if schedule.startswith("%") and schedule.endswith("%"):
                schedule = str(getattr(self.settings, names[schedule.strip("%")]))
            resolved.append(dataclasses.replace(entry, schedule=schedule))
        entries = resolved
        self.timers = TimerScheduler(self.clock, entries, self.state_dir / "timers.json",
                                     client_binding=self.client_binding,
                                     overlap_after=60.0 if self.timer_overlap else None)  # ListenerLockPeriod
        self.timers.start()
        return self.timers

    def _activity(self, entry: FunctionEntry) -> Callable[[Any], Awaitable[Any]]:
        return bindings.activity_function(entry, self.client_binding)

    def _authorised(self, request: web.Request, entry: FunctionEntry) -> bool:
        if entry.auth_level == "ANONYMOUS":
            return True
        given = request.query.get("code") or request.headers.get("x-functions-key")
        # bytes: compare_digest refuses non-ASCII str, and a fuzzer will send some
        return given is not None and secrets.compare_digest(given.encode(), self.function_key.encode())

    async def _http_trigger(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"].strip("/")
        for entry in self.index.of_type("httpTrigger"):
            m = _route_regex(entry.route or entry.name).match(tail)
            if m is None:
                continue
            if request.method not in entry.methods:
                continue
            if not self._authorised(request, entry):
                return web.json_response({"error": {"code": "Unauthorized", "message": "A function key is "
                                                    "required (?code= or x-functions-key)."}}, status=401)
            headers = self._easy_auth(bindings.joined(request.headers, ", "))
            if headers is None:
                return web.json_response({"error": {"code": "Unauthorized", "message": "The bearer token is not "
                                                    "valid (App Service authentication)."}}, status=401)
            datum = bindings.http_datum(method=request.method, url=str(request.url), headers=headers,
                                        query=bindings.joined(request.query, ","),
                                        route_params=m.groupdict(), body=await request.read())
            try:
                out = await entry.invoke(datum, client_binding=self.client_binding())
            except Exception as exc:  # the host answers a failed invocation with a bare 500
                log.error("function %s failed: %s", entry.name, bindings.worker_message(exc))
                return web.Response(status=500)
            status, headers, body = bindings.http_response_parts(out)
            return web.Response(status=status, body=body, headers=headers)
        return web.json_response({"error": {"code": "NotFound", "message": "No such route."}}, status=404)

    def _easy_auth(self, headers: dict[str, str]) -> dict[str, str] | None:
        """App Service authentication's stand-in, on only with EASY_AUTH_ENABLED=true: a request with a bearer
        token from devhost's identity endpoint (its Entra) gets the principal headers the platform adds for
        that identity, replacing any the client sent; a bearer token it did not issue is refused (None).
        Requests without a bearer token pass as they are (App Service's "allow unauthenticated requests")."""
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if self.settings is None or not self.settings.easy_auth_enabled or not auth.startswith("Bearer "):
            return headers
        client_id = self.issuer.client_of(auth[7:])
        if client_id is None:
            return None
        principal = {"auth_typ": "aad", "name_typ": "name", "role_typ": "roles", "claims": [
            {"typ": "appid", "val": client_id},
            {"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": client_id}]}
        kept = {k: v for k, v in headers.items() if not k.lower().startswith("x-ms-client-principal")}
        return {**kept, "X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps(principal).encode()).decode(),
                "X-MS-CLIENT-PRINCIPAL-ID": client_id, "X-MS-CLIENT-PRINCIPAL-IDP": "aad"}

    async def _admin_invoke(self, request: web.Request) -> web.Response:
        """The host's admin API for non-HTTP triggers. For Service Bus the message goes through devhost's
        queue and is delivered as the trigger delivers it (see ServiceBusQueues.admin_invoke)."""
        if self.function_key not in (request.headers.get("x-functions-key"), request.query.get("code")):
            return web.json_response({"error": {"code": "Unauthorized", "message": "master key required"}}, status=401)
        entry = self.index.entries.get(request.match_info["name"])
        if entry is None or entry.trigger_type != "serviceBusTrigger" or self.servicebus is None:
            return web.json_response({"error": {"code": "NotFound", "message": "no such non-HTTP function"}},
                                     status=404)
        try:
            doc = await request.json()
        except ValueError:
            doc = None
        status, answer = await self.servicebus.admin_invoke(entry, doc)
        return web.json_response(answer, status=status)

    async def _deadletter(self, request: web.Request) -> web.Response:
        assert self.servicebus is not None
        return web.json_response([m.public() for m in self.servicebus.deadletter])

    # ---- introspection --------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines() if line.strip()]

    async def _events(self, request: web.Request) -> web.Response:
        return web.json_response(self.events())

    async def _requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.requests)

    async def _boot_diagnostics_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.boot_diagnostics.requests)

    async def _snapshots(self, request: web.Request) -> web.Response:
        now = self.clock.now()
        return web.json_response([s.doc(now) for s in self.sim.snapshots.values()])

    async def _faults(self, request: web.Request) -> web.Response:
        doc = await request.json()
        faults = [Fault.model_validate(d) for d in (doc if isinstance(doc, list) else [doc])]
        self.sim.faults.extend(faults)
        return web.json_response({"queued": len(faults)}, status=201)

    async def _instances(self, request: web.Request) -> web.Response:
        assert self.engine is not None
        return web.json_response([i.public(show_input=True) for i in self.engine.instances.values()])

    async def _root(self, request: web.Request) -> web.Response:
        return web.json_response({"service": "reimager devhost", **{k: v for k, v in self.endpoints().items()
                                                                   if k != "resources"}})

    def _on_change(self, inst: Instance) -> None:
        """One line per change of a monitor's status (not per poll; `-v` shows them). The engine reports an
        ended instance more than once (when it ends and when it is released): only the first one is logged."""
        if inst.name != "reimage_monitor":
            return
        if inst.status in ("Pending", "Running"):
            if self._last_progress.get(inst.id) == inst.status:
                return
            self._last_progress[inst.id] = inst.status
        elif self._last_progress.pop(inst.id, None) is None:
            return  # already logged as ended (or never seen live): an ended monitor keeps nothing here
        monitor_log.info("%s monitor %s after %.1fs", inst.id, inst.status, self.clock.now() - inst.created)
