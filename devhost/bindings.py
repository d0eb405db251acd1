"""Bindings as the Python worker does them: every value in and out goes through `azure.functions`' converters.

The worker (azure-functions-python-worker, `bindings/meta.py`) looks a binding's converter up by its
type name in `azure.functions.get_binding_registry()`, decodes each input with
`converter.decode(datum, trigger_metadata=...)` and encodes the return value with
`converter.encode(obj, expected_type=...)`. devhost does the same, with datums and trigger metadata
in the shapes the Functions host sends (`GrpcMessageConversionExtensions.ToRpc`): strings arrive as
`string`, byte arrays as `bytes`, and everything else (ints, longs, DateTimes, dictionaries) as
`json` text. So a value the worker cannot encode fails here as it fails in Azure.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from azure.functions import get_binding_registry
from azure.functions.meta import Datum


@dataclass(frozen=True)
class BindingInfo:
    name: str
    type: str
    direction: str  # "in" | "out"
    data_type: str | None = None


class Invocable(Protocol):
    """What invoking a function needs of it (`devhost.functions.FunctionEntry`, as indexed, is one)."""

    @property
    def name(self) -> str: ...

    @property
    def user(self) -> Callable[..., Any]: ...

    @property
    def bindings(self) -> Sequence[BindingInfo]: ...

    @property
    def return_binding(self) -> str | None: ...

    @property
    def return_pytype(self) -> type | None: ...

    def inputs(self, trigger: Datum | None, client_binding: str | None = None) -> dict[str, Datum | None]: ...


class _GenericBinding:
    """The worker's fallback for a binding type no converter claims (worker `bindings/generic.py`)."""

    @classmethod
    def has_trigger_support(cls) -> bool:
        return False

    @classmethod
    def decode(cls, data: Datum | None, *, trigger_metadata: Mapping[str, Datum]) -> Any:
        if data is None or data.type is None:
            return None
        if data.type in ("string", "bytes", "json"):
            return data.value
        raise ValueError(f'unexpected type of data received for the "generic" binding : {data.type!r}')

    @classmethod
    def encode(cls, obj: Any, *, expected_type: type | None) -> Datum:
        if isinstance(obj, str):
            return Datum(obj, "string")
        if isinstance(obj, bytes | bytearray):
            return Datum(bytes(obj), "bytes")
        if obj is None:
            return Datum(None, None)
        for kind, name in ((dict, "dict"), (list, "list"), (bool, "bool"), (int, "int"), (float, "double")):
            if isinstance(obj, kind):
                return Datum(obj, name)
        raise NotImplementedError


def converter(binding_type: str) -> Any:
    """worker `bindings/meta.py:get_binding`: the library's registry first, else the generic binding."""
    found = get_binding_registry().get(binding_type)  # type: ignore[no-untyped-call]  # untyped in the library
    return found if found is not None else _GenericBinding


def is_trigger_binding(binding_type: str) -> bool:
    return bool(converter(binding_type).has_trigger_support())


def has_implicit_output(binding_type: str) -> bool:
    conv = converter(binding_type)
    if conv is _GenericBinding:
        return binding_type != "durableClient"
    return bool(getattr(conv, "has_implicit_output", lambda: False)())


def decode(binding_type: str, datum: Datum | None, trigger_metadata: Mapping[str, Datum] | None) -> Any:
    """worker `from_incoming_proto`: NotImplementedError from a converter becomes the worker's TypeError."""
    try:
        return converter(binding_type).decode(datum, trigger_metadata=dict(trigger_metadata or {}))
    except NotImplementedError:
        kind = datum.type if datum is not None else None
        raise TypeError(f"unable to decode incoming TypedData: unsupported combination of TypedData field "
                        f"{kind!r} and expected binding type {converter(binding_type)}") from None


def encode(binding_type: str, obj: Any, expected_type: type | None = None) -> Datum:
    """worker `get_datum`: NotImplementedError from a converter becomes the worker's TypeError."""
    conv = converter(binding_type)
    try:
        datum: Datum = conv.encode(obj, expected_type=expected_type)
    except NotImplementedError:
        raise TypeError(f'unable to encode outgoing TypedData: unsupported type "{conv}" for '
                        f'Python type "{type(obj).__name__}"') from None
    return datum


def as_host_value(datum: Datum | None) -> Any:
    """What the host receives back (worker `datum_as_proto`, then the host's `TypedData.ToObject`)."""
    if datum is None or datum.type is None:
        return None
    if datum.type in ("json",):
        return json.loads(datum.value)
    if datum.type in ("dict", "list"):
        return json.loads(json.dumps(datum.value))
    if datum.type == "bool":
        return int(datum.value)
    if datum.type in ("string", "bytes", "int", "double", "http"):
        return datum.value
    raise NotImplementedError(f"unexpected Datum type: {datum.type!r}")


# ---- the host's shapes ----------------------------------------------------------------------
def host_value(value: Any) -> Datum | None:
    """`GrpcMessageConversionExtensions.ToRpc` for one binding-data value.

    null -> absent; string -> string; byte[] -> bytes; double -> double; everything else (int, long,
    DateTime, dictionaries) -> `JsonConvert.SerializeObject`, i.e. `json` text. Binding data whose
    value is null is not sent at all (`ScriptInvocationContextExtensions`).
    """
    if value is None:
        return None
    if isinstance(value, str):
        return Datum(value, "string")
    if isinstance(value, bytes | bytearray):
        return Datum(bytes(value), "bytes")
    if isinstance(value, float):
        return Datum(value, "double")
    if isinstance(value, datetime):
        return Datum(json.dumps(newtonsoft_datetime(value)), "json")
    return Datum(json.dumps(value), "json")


def trigger_metadata(values: Mapping[str, Any]) -> dict[str, Datum]:
    out: dict[str, Datum] = {}
    for key, value in values.items():
        datum = host_value(value)
        if datum is not None:
            out[key] = datum
    return out


def newtonsoft_datetime(when: datetime) -> str:
    """Json.NET's ISO form of a .NET DateTime: up to 7 fractional digits with trailing zeros trimmed,
    and no offset for `DateTimeKind.Unspecified`, which is what `DateTimeOffset.DateTime` gives
    (the Service Bus extension's `EnqueuedTimeUtc`). A naive `when` is such a value."""
    base = when.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{when.microsecond:06d}0".rstrip("0")
    text = base + (f".{frac}" if frac else "")
    offset = when.utcoffset()
    if offset is not None:  # a DateTimeOffset: Json.NET writes the offset as +hh:mm
        minutes = int(offset.total_seconds() // 60)
        sign = "-" if minutes < 0 else "+"
        text += f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return text


def http_datum(*, method: str, url: str, headers: Mapping[str, str], query: Mapping[str, str],
               route_params: Mapping[str, str], body: bytes) -> Datum:
    """The host's `ToRpcHttp` for a Python worker, which declares RawHttpBodyBytes and RpcHttpBodyOnly:
    header names lower-cased, empty query values dropped, the body as raw bytes (absent when empty)."""
    return Datum({
        "method": Datum(method, "string"),
        "url": Datum(url, "string"),
        "headers": {k.lower(): Datum(v, "string") for k, v in headers.items()},
        "query": {k: Datum(v, "string") for k, v in query.items() if v},
        "params": {k: Datum(v, "string") for k, v in route_params.items() if v is not None},
        # worker datumdef: a missing body becomes an empty `bytes` datum
        "body": Datum(body, "bytes"),
    }, "http")


def joined(values: Any, sep: str) -> dict[str, str]:
    """A multi-valued mapping as the host flattens it (`StringValues.ToString()` joins with commas)."""
    out: dict[str, list[str]] = {}
    for key, value in values.items():
        out.setdefault(key, []).append(value)
    return {k: sep.join(v) for k, v in out.items()}


def http_response_parts(datum: Datum | None) -> tuple[int, dict[str, str], bytes]:
    """The host's side of the `http` output: status, headers, body."""
    if datum is None or datum.type is None:
        return 204, {}, b""
    if datum.type == "string":
        return 200, {"content-type": "text/plain; charset=utf-8"}, str(datum.value).encode()
    if datum.type != "http":
        raise TypeError(f"an http output cannot carry a {datum.type!r} datum")
    value = datum.value
    body = value["body"]
    raw = body.value if body.type == "bytes" else str(body.value).encode()
    return int(value["status_code"].value), {k: v.value for k, v in value["headers"].items()}, raw


# ---- invocation -----------------------------------------------------------------------------
def worker_message(exc: BaseException) -> str:
    """The failure message the worker reports to the host (`Dispatcher._serialize_exception`)."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return "Unhandled exception in function. Could not serialize original exception message."


async def invoke(entry: Invocable, inputs: Mapping[str, Datum | None],
                 trigger_metadata: Mapping[str, Datum] | None = None) -> Datum | None:
    """One invocation as `Dispatcher._handle__invocation_request` runs it.

    `inputs` maps each bound parameter to the datum the host sends for it. Only the trigger binding
    gets the trigger metadata. Coroutine functions are awaited on the loop; others run in a thread,
    as the worker's thread pool runs them. Returns the encoded return value (None without one).
    Raises the function's own exception, or the worker's TypeError/ValueError/RuntimeError.
    """
    args = _arguments(entry, inputs, trigger_metadata)
    if inspect.iscoroutinefunction(entry.user):
        result = await entry.user(**args)
    else:
        result = await asyncio.get_running_loop().run_in_executor(None, functools.partial(entry.user, **args))
        if inspect.isawaitable(result):  # a sync wrapper around a coroutine function
            result = await result
    return _output(entry, result)


def invoke_sync(entry: Invocable, inputs: Mapping[str, Datum | None],
                trigger_metadata: Mapping[str, Datum] | None = None) -> Datum | None:
    """For callers that must stay synchronous (the durable engine's orchestrator episodes)."""
    args = _arguments(entry, inputs, trigger_metadata)
    return _output(entry, entry.user(**args))


def _arguments(entry: Invocable, inputs: Mapping[str, Datum | None],
               trigger_metadata: Mapping[str, Datum] | None) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for binding in entry.bindings:
        if binding.direction != "in" or binding.name not in inputs:
            continue
        meta = trigger_metadata if is_trigger_binding(binding.type) else None
        args[binding.name] = decode(binding.type, inputs[binding.name], meta)
    return args


def _output(entry: Invocable, result: Any) -> Datum | None:
    if result is not None and entry.return_binding is None:
        # the worker's message, missing space included
        raise RuntimeError(f"function {entry.name!r} without a $return bindingreturned a non-None value")
    return None if entry.return_binding is None else encode(entry.return_binding, result, entry.return_pytype)


def activity_function(entry: Invocable, client_binding: Callable[[], str]) -> Callable[[Any], Awaitable[Any]]:
    """An activity for the durable engine: the input as the extension sends it (JSON text), the result
    through ActivityTriggerConverter.encode, so a value the worker cannot encode (a set, a pydantic
    model) fails the activity with the worker's ValueError, as in Azure."""
    async def run(value: Any) -> Any:
        out = await invoke(entry, entry.inputs(Datum(json.dumps(value), "json"), client_binding()))
        return as_host_value(out)

    return run


def orchestrator_function(entry: Invocable) -> Callable[[str], str]:
    """An orchestrator for the durable engine: the context JSON in through OrchestrationTriggerConverter,
    the SDK's state JSON out through its encode."""
    def run(context_json: str) -> str:
        out = invoke_sync(entry, entry.inputs(Datum(context_json, "string")))
        if out is None or out.type != "json":
            raise TypeError(f"orchestrator {entry.name!r} returned no orchestration state")
        return str(out.value)

    return run
