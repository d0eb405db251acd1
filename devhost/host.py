"""The whole app on one machine: identity, ARM simulator, durable stand-in, Functions routing.

The real `function_app` is imported and indexed the way the Functions host does it; HTTP
triggers are routed from their bindings, function keys are enforced, and non-HTTP triggers
are invoked with `POST /admin/functions/{name}`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from devhost.clock import Clock
from devhost.compute import ComputeSimulator, Fault
from devhost.durable import DurableEngine, Fidelity, Instance
from devhost.functions import FunctionEntry, FunctionIndex, index_app
from devhost.identity import PATH as IDENTITY_PATH
from devhost.identity import TokenIssuer
from devhost.serving import Served, serve

log = logging.getLogger("devhost")
DEMO_SUBSCRIPTION = "7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2910"
DEMO_GROUP = "reimager-demo"
_INDEX: FunctionIndex | None = None


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
    return {
        f"{base}/virtualMachines/web-linux-01": {
            "location": "westus", "tags": {"role": "web"},
            "properties": {"hardwareProfile": {"vmSize": "Standard_D2s_v5"},
                           "osProfile": {"computerName": "web-linux-01", "adminUsername": "azureuser",
                                         "linuxConfiguration": {"disablePasswordAuthentication": False}},
                           "storageProfile": {"imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts",
                                                                 "sku": "server", "version": "latest"},
                                              "osDisk": {**disk, "osType": "Linux"}}}},
        f"{base}/virtualMachines/app-win-01": {
            "location": "westus", "tags": {"role": "app"},
            "properties": {"hardwareProfile": {"vmSize": "Standard_D4s_v5"},
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
                               "storageProfile": {
                                   "imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts",
                                                      "sku": "server", "version": "latest"},
                                   "osDisk": {"createOption": "FromImage", "caching": "ReadOnly", "osType": "Linux",
                                              "diffDiskSettings": {"option": "Local"},
                                              "managedDisk": {"storageAccountType": "Standard_LRS"}}},
                               "networkProfile": {"networkInterfaceConfigurations": []}}}},
    }


@functools.cache
def _route_regex(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\{(\w+)(?::[^}]*)?\}", r"(?P<\1>[^/]+)", template.strip("/"))
    return re.compile(f"^{pattern}$", re.IGNORECASE)


class DevHost:
    def __init__(self, *, clock: Clock | None = None, host: str = "127.0.0.1", port: int = 0,
                 state_dir: Path | str = ".devhost", operation_seconds: float = 5.0, retry_after: int | None = 1,
                 settings: dict[str, str] | None = None, seed: bool = True,
                 durable_fidelity: Fidelity | None = None) -> None:
        self.clock = clock or Clock()
        self.host, self.port = host, port
        self.state_dir = Path(state_dir)
        self.issuer = TokenIssuer()
        self.sim = ComputeSimulator(clock=self.clock, issuer=self.issuer, operation_seconds=operation_seconds,
                                    retry_after=retry_after)
        self.function_key = secrets.token_urlsafe(24)
        self.overrides = dict(settings or {})
        self.seed = seed
        self.durable_fidelity = durable_fidelity  # None: as hostile as Azure (devhost/durable.py)
        self.servers: list[Served] = []
        self.engine: DurableEngine | None = None
        self.functions_url = self.arm_url = self.identity_url = ""
        self._last_progress: dict[str, str] = {}  # instance id -> last line logged

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> DevHost:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.events_file.unlink(missing_ok=True)
        identity = await serve(self.issuer.app(), self.host)
        arm = await serve(self.sim.app(), self.host)
        self.servers += [identity, arm]
        self.identity_url, self.arm_url = identity.url + IDENTITY_PATH, arm.url
        env = {
            "ARM_ENDPOINT": self.arm_url, "IDENTITY_ENDPOINT": self.identity_url,
            "IDENTITY_HEADER": self.issuer.header_secret, "ALLOWED_SCOPES": f"/subscriptions/{DEMO_SUBSCRIPTION}",
            "DEFAULT_SUBSCRIPTION_ID": DEMO_SUBSCRIPTION, "EVENTS_FILE": str(self.events_file),
            "ServiceBusConnection__fullyQualifiedNamespace": "",
            **self.overrides,
        }
        os.environ.update(env)
        os.environ.pop("MSI_ENDPOINT", None)
        await self._reset_clients()
        from shared import runtime
        from shared.settings import get_settings

        runtime.set_clock(self.clock.utcnow)

        get_settings()  # fail now, naming the setting, if an override is bad
        index = function_index()
        self.index = index
        self.engine = DurableEngine(
            self.clock,
            {e.name: e.user for e in index.of_type("orchestrationTrigger")},
            {e.name: self._activity(e) for e in index.of_type("activityTrigger")},
            fidelity=self.durable_fidelity, state_dir=self.state_dir / "taskhub",
        )
        self.engine.listeners.append(self._on_change)
        app = web.Application(client_max_size=1024 * 1024)
        app.add_routes(self.engine.routes())
        app.add_routes([
            web.get("/devhost/events", self._events),
            web.get("/devhost/compute/requests", self._requests),
            web.post("/devhost/compute/faults", self._faults),
            web.get("/devhost/durable/instances", self._instances),
            web.post("/admin/functions/{name}", self._admin_invoke),
            web.route("*", "/api/{tail:.*}", self._http_trigger),
            web.get("/", self._root),
        ])
        functions = await serve(app, self.host, self.port)
        self.servers.append(functions)
        self.functions_url = functions.url
        self.engine.start_worker()
        if self.seed:
            for rid, body in demo_resources().items():
                self.sim.upsert(rid, body)
        (self.state_dir / "endpoints.json").write_text(json.dumps(self.endpoints()))
        return self

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.close()
        await self._reset_clients()
        for server in reversed(self.servers):
            await server.close()
        self.servers.clear()

    async def __aenter__(self) -> DevHost:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @staticmethod
    async def _reset_clients() -> None:
        """New loop, new settings: drop cached clients, including the durable SDK's module session."""
        from azure.durable_functions.models.utils import http_utils

        from shared import runtime

        await runtime.reset()
        session = http_utils._client_session
        if session is not None and not session.closed:
            await session.close()
        http_utils._client_session = None
        http_utils._session_lock = asyncio.Lock()

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

    def _activity(self, entry: FunctionEntry) -> Callable[[Any], Awaitable[Any]]:
        async def run(value: Any) -> Any:
            return await entry.invoke(value, client_binding=self.client_binding())

        return run

    def _authorised(self, request: web.Request, entry: FunctionEntry) -> bool:
        if entry.auth_level == "ANONYMOUS":
            return True
        given = request.query.get("code") or request.headers.get("x-functions-key")
        # bytes: compare_digest refuses non-ASCII str, and a fuzzer will send some
        return given is not None and secrets.compare_digest(given.encode(), self.function_key.encode())

    async def _http_trigger(self, request: web.Request) -> web.StreamResponse:
        import azure.functions as func

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
            req = func.HttpRequest(method=request.method, url=str(request.url), headers=dict(request.headers),
                                   params=dict(request.query), route_params=m.groupdict(),
                                   body=await request.read())
            resp = await entry.invoke(req, client_binding=self.client_binding())
            headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-type"}
            return web.Response(status=resp.status_code, body=resp.get_body(), headers=headers,
                                content_type=resp.mimetype or "application/json")
        return web.json_response({"error": {"code": "NotFound", "message": "No such route."}}, status=404)

    async def _admin_invoke(self, request: web.Request) -> web.Response:
        """The host's admin API for non-HTTP triggers. For Service Bus, message properties ride along."""
        import azure.functions as func
        from azure.functions.servicebus import ServiceBusMessage

        if self.function_key not in (request.headers.get("x-functions-key"), request.query.get("code")):
            return web.json_response({"error": {"code": "Unauthorized", "message": "master key required"}}, status=401)
        entry = self.index.entries.get(request.match_info["name"])
        if entry is None or entry.trigger_type != "serviceBusTrigger":
            return web.json_response({"error": {"code": "NotFound", "message": "no such non-HTTP function"}},
                                     status=404)
        doc = await request.json()
        body = doc.get("input", "")
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        msg = ServiceBusMessage(body=raw, message_id=doc.get("messageId") or secrets.token_hex(16),
                                correlation_id=doc.get("correlationId"), reply_to=doc.get("replyTo"),
                                content_type=doc.get("contentType", "application/json"),
                                delivery_count=int(doc.get("deliveryCount", 1)),
                                application_properties=doc.get("applicationProperties") or {},
                                user_properties=doc.get("applicationProperties") or {})
        assert isinstance(msg, func.ServiceBusMessage)
        try:
            await entry.invoke(msg, client_binding=self.client_binding())
        except Exception as exc:  # the real host abandons the message; Service Bus redelivers it
            return web.json_response({"status": "Failed", "error": f"{type(exc).__name__}: {exc}"}, status=500)
        return web.json_response({"status": "Completed"}, status=202)

    # ---- introspection --------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines() if line.strip()]

    async def _events(self, request: web.Request) -> web.Response:
        return web.json_response(self.events())

    async def _requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.requests)

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
        if inst.name != "reimage_monitor":
            return
        custom = inst.custom_status or {}
        trigger = json.loads(inst.input or "{}").get("trigger", "?")
        line = (f"{inst.id[:15]}  {trigger:<5} {inst.status:<9} status={custom.get('status')} "
                f"polls={custom.get('polls')} "
                f"target={str(custom.get('target', '')).rsplit('/', 1)[-1]} "
                f"elapsed={self.clock.now() - inst.created:.1f}s")
        if self._last_progress.get(inst.id) != line:
            self._last_progress[inst.id] = line
            log.info("%s", line)
