"""The HTTP API the durable SDK's DurableOrchestrationClient calls under `rpcBaseUrl` (start, status,
raiseEvent, terminate), answered as the extension's HttpApiHandler answers, and the durableClient binding
value that points a function at it."""

from __future__ import annotations

import json
from typing import Any, Protocol

from aiohttp import web

from devhost.durable.fidelity import Fidelity
from devhost.durable.instance import ACTIVE, AlreadyExists, Instance

# The body HttpApiHandler.HandleRequestAsync's catch-all produces (CreateErrorResponse with the exception).
ALREADY_EXISTS_TYPE = "DurableTask.Core.Exceptions.OrchestrationAlreadyExistsException"
GENERIC_ERROR = "Something went wrong while processing your request"


class Client(Protocol):
    """What the HTTP API calls on the engine: the orchestration client's operations."""

    task_hub: str
    fidelity: Fidelity
    instances: dict[str, Instance]
    raise_event_failures: int

    async def start_async(self, name: str, instance_id: str | None, input_json: str | None,
                          input_is_string: bool = False) -> Instance: ...

    def raise_event(self, instance_id: str, name: str, data_json: str | None) -> int: ...

    def terminate(self, instance_id: str, reason: str) -> int: ...

    def history_of(self, inst: Instance) -> list[dict[str, Any]]: ...


class HttpApi:
    def __init__(self, engine: Client) -> None:
        self.engine = engine

    def binding(self, base_url: str) -> str:
        """The durableClient binding value the host hands to a function."""
        rpc = f"{base_url}/durabletask/"
        mgmt = f"{rpc}instances/INSTANCEID"
        return json.dumps({
            "taskHubName": self.engine.task_hub,
            "creationUrls": {"createNewInstancePostUri": f"{rpc}orchestrators/{{functionName}}[/{{instanceId}}]"},
            "managementUrls": {"id": "INSTANCEID", "statusQueryGetUri": mgmt,
                               "sendEventPostUri": f"{mgmt}/raiseEvent/{{eventName}}",
                               "terminatePostUri": f"{mgmt}/terminate?reason={{text}}",
                               "purgeHistoryDeleteUri": mgmt},
            "rpcBaseUrl": rpc,
            "baseUrl": f"{base_url}/runtime/webhooks/durabletask",
            "requiredQueryStringParameters": "",
        })

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/durabletask/orchestrators/{name}", self._http_start),
            web.post("/durabletask/orchestrators/{name}/{instance_id}", self._http_start),
            web.get("/durabletask/instances/{instance_id}", self._http_status),
            web.post("/durabletask/instances/{instance_id}/raiseEvent/{event}", self._http_raise),
            web.post("/durabletask/instances/{instance_id}/terminate", self._http_terminate),
        ]

    @staticmethod
    def _error(status: int, message: str, exc_type: str, exc_message: str) -> web.Response:
        """HttpRequestMessageExtensions.CreateErrorResponse(request, status, message, e)."""
        return web.json_response({"Message": message, "ExceptionMessage": exc_message, "ExceptionType": exc_type,
                                  "StackTrace": f"   at {exc_type} (devhost durable stand-in)"}, status=status)

    async def _body(self, request: web.Request) -> tuple[str | None, bool]:
        """The body as the extension keeps it: (JSON text, is it a JSON string).

        The Python SDK JSON-encodes the value itself and posts that text with `json=`, so the body
        is the value encoded twice. The extension parses the body once (JsonConvert / ConvertToJToken)
        and stores the result re-serialised: a JSON *string* holding the caller's JSON. With
        `stringly_typed` off, one more layer is stripped (the kind, non-Azure reading).
        """
        raw = await request.read()
        if not raw:
            return None, False
        outer = json.loads(raw)
        if outer is None:
            return None, False
        if isinstance(outer, str) and not self.engine.fidelity.stringly_typed:
            return outer, False
        return json.dumps(outer), isinstance(outer, str)

    async def _http_start(self, request: web.Request) -> web.Response:
        name, iid = request.match_info["name"], request.match_info.get("instance_id")
        try:
            text, is_string = await self._body(request)
        except ValueError as exc:  # the one exception HandleStartOrchestratorRequestAsync catches
            return self._error(400, "Invalid JSON content", "Newtonsoft.Json.JsonReaderException", str(exc))
        try:
            if is_string:  # the value the orchestrator's context carries is the inner JSON text
                inst = await self.engine.start_async(name, iid, json.loads(text or "null"), input_is_string=True)
            else:
                inst = await self.engine.start_async(name, iid, text)
        except KeyError:
            msg = f"The function '{name}' doesn't exist, is disabled, or is not an orchestrator function."
            return self._error(400, "One or more of the arguments submitted is incorrect", "System.ArgumentException",
                               msg)
        except AlreadyExists as exc:
            # OrchestrationAlreadyExistsException is an InvalidOperationException, not caught by the
            # handler itself: HandleRequestAsync's catch-all answers 500.
            return self._error(500, GENERIC_ERROR, ALREADY_EXISTS_TYPE, str(exc))
        inst.trace_parent = request.headers.get("traceparent")
        base = f"{request.url.origin()}/durabletask/instances/{inst.id}"
        return web.json_response({"id": inst.id, "statusQueryGetUri": base,
                                  "sendEventPostUri": f"{base}/raiseEvent/{{eventName}}",
                                  "terminatePostUri": f"{base}/terminate?reason={{text}}",
                                  "purgeHistoryDeleteUri": base}, status=202, headers={"Location": base})

    async def _http_status(self, request: web.Request) -> web.Response:
        inst = self.engine.instances.get(request.match_info["instance_id"])
        if inst is None:
            return web.json_response(None, status=404)
        show_input = request.query.get("showInput", "true").lower() != "false"
        show_history = request.query.get("showHistory", "false").lower() == "true"
        # HttpApiHandler.HandleGetStatusRequestAsync: 202 while active, 200 once ended (Failed too,
        # unless returnInternalServerErrorOnFailure).
        failed_500 = request.query.get("returnInternalServerErrorOnFailure", "").lower() == "true"
        status = 202 if inst.status in ACTIVE else (500 if inst.status == "Failed" and failed_500 else 200)
        doc = inst.public(show_input)
        if show_history:
            doc["historyEvents"] = self.engine.history_of(inst)
        return web.json_response(doc, status=status)

    async def _http_raise(self, request: web.Request) -> web.Response:
        if self.engine.raise_event_failures > 0:
            self.engine.raise_event_failures -= 1
            return web.json_response({"Message": "injected failure"}, status=500)
        inst = self.engine.instances.get(request.match_info["instance_id"])
        if inst is None:
            return web.Response(status=404)
        if inst.status not in ACTIVE:
            return web.Response(status=410)
        try:
            text, _ = await self._body(request)
        except ValueError as exc:
            return self._error(400, "Invalid JSON content", "Newtonsoft.Json.JsonReaderException", str(exc))
        code = self.engine.raise_event(request.match_info["instance_id"], request.match_info["event"], text)
        return web.Response(status=code)

    async def _http_terminate(self, request: web.Request) -> web.Response:
        code = self.engine.terminate(request.match_info["instance_id"], request.query.get("reason", ""))
        return web.Response(status=code)

