"""devhost invokes functions as the Python worker does: through azure.functions' own converters.

A small test FunctionApp is indexed with devhost's indexer and invoked through devhost.bindings, the
same path devhost uses for the real app; the durable engine runs its activities through
ActivityTriggerConverter, so what the worker cannot encode fails here as it fails in Azure.
"""

from __future__ import annotations

import json
from typing import Any

import azure.durable_functions as df
import azure.functions as func
import pydantic
import pytest

from devhost import bindings
from devhost.clock import VirtualClock
from devhost.durable import DurableEngine, drive
from devhost.functions import FunctionIndex, index_app

bp = df.Blueprint()
SEEN: dict[str, Any] = {}


class Model(pydantic.BaseModel):
    value: int = 1


@bp.route(route="echo/{name}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def echo(req: func.HttpRequest) -> func.HttpResponse:
    SEEN["req"] = req
    return func.HttpResponse(json.dumps({"name": req.route_params.get("name")}), status_code=201,
                             headers={"X-Test": "yes"}, mimetype="application/json")


@bp.route(route="text", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def text(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("plain", mimetype="text/plain")


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="q", connection="SB")
async def returns_a_value(msg: func.ServiceBusMessage) -> None:
    return "oops"  # type: ignore[return-value]  # no $return binding: the worker refuses this


@bp.activity_trigger(input_name="payload")
async def give_set(payload: dict[str, Any]) -> Any:
    return {1, 2}


@bp.activity_trigger(input_name="payload")
async def give_model(payload: dict[str, Any]) -> Any:
    return Model()


@bp.activity_trigger(input_name="payload")
async def give_dict(payload: dict[str, Any]) -> Any:
    SEEN["activity_input"] = payload
    return {"got": payload, "model": Model(value=3).model_dump(mode="json")}


@bp.activity_trigger(input_name="payload")
def sync_activity(payload: str) -> str:  # a plain function: the worker runs it in its thread pool
    import threading

    SEEN["thread"] = threading.current_thread().name
    return payload.upper()


@bp.orchestration_trigger(context_name="context")
def calls(context: df.DurableOrchestrationContext) -> Any:
    name = context.get_input()["activity"]
    try:
        result = yield context.call_activity(name, {"n": 1})
    except Exception as exc:  # the activity's failure, as the orchestrator sees it
        return {"failed": str(exc)}
    return {"result": result}


@pytest.fixture(scope="module")
def index() -> FunctionIndex:
    app = df.DFApp()
    app.register_functions(bp)
    return index_app(app)


def test_converters_come_from_the_library_registry(index: FunctionIndex) -> None:
    from azure.functions.durable_functions import ActivityTriggerConverter, OrchestrationTriggerConverter
    from azure.functions.http import HttpRequestConverter, HttpResponseConverter
    from azure.functions.servicebus import ServiceBusMessageInConverter
    from azure.functions.timer import TimerRequestConverter

    assert bindings.converter("httpTrigger") is HttpRequestConverter
    assert bindings.converter("http") is HttpResponseConverter
    assert bindings.converter("serviceBusTrigger") is ServiceBusMessageInConverter
    assert bindings.converter("timerTrigger") is TimerRequestConverter
    assert bindings.converter("activityTrigger") is ActivityTriggerConverter
    assert bindings.converter("orchestrationTrigger") is OrchestrationTriggerConverter
    # the return binding as the worker picks it: explicit $return, else the implicit activity output
    assert index.entries["echo"].return_binding == "http"
    assert index.entries["give_set"].return_binding == "activityTrigger"
    assert index.entries["calls"].return_binding == "orchestrationTrigger"
    assert index.entries["returns_a_value"].return_binding is None


async def test_http_request_and_response_go_through_the_converters(index: FunctionIndex) -> None:
    datum = bindings.http_datum(method="POST", url="http://h/api/echo/x?a=1&empty=", headers={"X-Mixed": "v"},
                                query={"a": "1", "empty": ""}, route_params={"name": "x"}, body=b'{"k": 1}')
    out = await index.entries["echo"].invoke(datum)
    req = SEEN["req"]
    assert isinstance(req, func.HttpRequest)
    assert req.params == {"a": "1"}  # the host drops empty query values
    assert req.headers.get("x-mixed") == "v" and req.route_params == {"name": "x"}
    assert req.get_body() == b'{"k": 1}' and req.get_json() == {"k": 1}
    status, headers, body = bindings.http_response_parts(out)
    assert (status, json.loads(body)) == (201, {"name": "x"})
    assert headers["X-Test"] == "yes" and headers["content-type"] == "application/json"
    out = await index.entries["text"].invoke(bindings.http_datum(method="GET", url="http://h/api/text", headers={},
                                                                 query={}, route_params={}, body=b""))
    assert bindings.http_response_parts(out)[1]["content-type"] == "text/plain; charset=utf-8"


async def test_a_return_value_without_a_return_binding_fails_as_in_the_worker(index: FunctionIndex) -> None:
    meta = bindings.trigger_metadata({"UserProperties": {}, "MessageId": "m"})
    with pytest.raises(RuntimeError, match="without a \\$return binding"):
        await index.entries["returns_a_value"].invoke(bindings.Datum("{}", "string"), metadata=meta)


def test_service_bus_decode_needs_the_host_metadata(index: FunctionIndex) -> None:
    # Without UserProperties the library cannot tell the cardinality: the worker's TypeError path.
    with pytest.raises(NotImplementedError):
        bindings.converter("serviceBusTrigger").decode(bindings.Datum("{}", "string"), trigger_metadata={})


async def _run(index: FunctionIndex, activity: str) -> Any:
    engine = DurableEngine(VirtualClock(),
                           {e.name: bindings.orchestrator_function(e) for e in index.of_type("orchestrationTrigger")},
                           {e.name: bindings.activity_function(e, lambda: "{}")
                            for e in index.of_type("activityTrigger")})
    engine.start_worker()
    try:
        inst = engine.start("calls", None, json.dumps({"activity": activity}))
        await drive(engine, lambda: inst.status not in ("Pending", "Running"))
        return inst.output
    finally:
        await engine.close()


@pytest.mark.parametrize("activity", ["give_set", "give_model"])
async def test_an_activity_result_the_worker_cannot_encode_fails_the_activity(index: FunctionIndex,
                                                                              activity: str) -> None:
    out = await _run(index, activity)
    assert "activity trigger output must be json serializable" in out["failed"]
    assert "ValueError" in out["failed"]


async def test_json_results_and_inputs_round_trip(index: FunctionIndex) -> None:
    out = await _run(index, "give_dict")
    assert out == {"result": {"got": {"n": 1}, "model": {"value": 3}}}
    assert SEEN["activity_input"] == {"n": 1}


async def test_a_sync_activity_runs_off_the_event_loop(index: FunctionIndex) -> None:
    import threading

    entry = index.entries["sync_activity"]
    out = await bindings.activity_function(entry, lambda: "{}")("abc")
    assert out == "ABC" and SEEN["thread"] != threading.current_thread().name
