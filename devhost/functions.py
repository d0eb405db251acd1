"""Reads a FunctionApp the way the Functions host and the Python worker do: triggers, bindings, routes,
the return binding, and the user function. Invocation goes through `devhost.bindings`, so every value
in and out passes the `azure.functions` library's own converters."""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.functions.meta import Datum

from devhost.bindings import BindingInfo, has_implicit_output, invoke


@dataclass
class FunctionEntry:
    name: str
    trigger_type: str
    trigger_param: str
    user: Callable[..., Any]
    bindings: list[BindingInfo] = field(default_factory=list)
    return_binding: str | None = None
    return_pytype: type | None = None
    client_params: list[str] = field(default_factory=list)
    route: str | None = None
    methods: list[str] = field(default_factory=list)
    auth_level: str = "FUNCTION"
    queue_name: str | None = None
    schedule: str | None = None
    run_on_startup: bool = False
    use_monitor: bool | None = None

    @property
    def trigger_data_type(self) -> str | None:
        return next((b.data_type for b in self.bindings if b.name == self.trigger_param), None)

    def inputs(self, trigger: Datum | None, client_binding: str | None = None) -> dict[str, Datum | None]:
        """The input data the host sends: the trigger's datum and each durable client's binding string."""
        values: dict[str, Datum | None] = {self.trigger_param: trigger}
        for param in self.client_params:
            values[param] = Datum(client_binding, "string") if client_binding is not None else None
        return values

    async def invoke(self, trigger: Datum | None, *, metadata: Mapping[str, Datum] | None = None,
                     client_binding: str | None = None) -> Datum | None:
        return await invoke(self, self.inputs(trigger, client_binding), metadata)  # devhost.bindings.invoke


@dataclass
class FunctionIndex:
    entries: dict[str, FunctionEntry]

    def of_type(self, trigger_type: str) -> list[FunctionEntry]:
        return [e for e in self.entries.values() if e.trigger_type == trigger_type]


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


def _direction(binding: Any) -> str:
    raw = getattr(binding, "direction", None)
    name = str(getattr(raw, "name", raw)).upper()
    return "out" if name in ("OUT", "1") else "in"


def _data_type(binding: Any) -> str | None:
    raw = getattr(binding, "data_type", None)
    return None if raw is None else str(getattr(raw, "name", raw)).lower()


def _return_binding(bindings: list[BindingInfo]) -> str | None:
    """worker `functions.py:get_return_binding`: an explicit `$return` wins, else a binding with
    implicit output (activity and orchestration triggers)."""
    explicit = next((b.type for b in bindings if b.name == "$return"), None)
    if explicit is not None:
        return explicit
    return next((b.type for b in bindings if has_implicit_output(b.type)), None)


def index_app(app: Any) -> FunctionIndex:
    """`app.get_functions()` can be called only once per app object: call this once."""
    entries: dict[str, FunctionEntry] = {}
    for fn in app.get_functions():
        trigger = fn.get_trigger()
        ttype = _enum_value(trigger.type)
        name = fn.get_function_name()
        user = fn.get_user_function()
        infos = [BindingInfo(b.name, _enum_value(b.type), _direction(b), _data_type(b)) for b in fn.get_bindings()]
        try:
            hints = typing.get_type_hints(user)
        except Exception:  # annotations that do not resolve: the worker would pass no expected type either
            hints = {}
        ret = hints.get("return")
        entry = FunctionEntry(name=name, trigger_type=ttype, trigger_param=trigger.name, user=user,
                              bindings=infos, return_binding=_return_binding(infos),
                              return_pytype=ret if isinstance(ret, type) else None)
        entry.client_params = [b.name for b in infos if b.type == "durableClient"]
        if ttype == "httpTrigger":
            entry.route = getattr(trigger, "route", None) or name
            entry.methods = [_enum_value(m).upper() for m in (getattr(trigger, "methods", None) or ["GET", "POST"])]
            entry.auth_level = _enum_value(getattr(trigger, "auth_level", None) or "FUNCTION").upper()
        if ttype == "serviceBusTrigger":
            entry.queue_name = getattr(trigger, "queue_name", None)
        if ttype == "timerTrigger":
            entry.schedule = getattr(trigger, "schedule", None)
            entry.run_on_startup = bool(getattr(trigger, "run_on_startup", None))
            entry.use_monitor = getattr(trigger, "use_monitor", None)
        entries[name] = entry
    return FunctionIndex(entries)
