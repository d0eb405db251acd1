"""Reads a FunctionApp the way the Functions host does: triggers, bindings, routes, user code."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FunctionEntry:
    name: str
    trigger_type: str
    trigger_param: str
    user: Callable[..., Any]
    client_params: list[str] = field(default_factory=list)
    route: str | None = None
    methods: list[str] = field(default_factory=list)
    auth_level: str = "FUNCTION"
    queue_name: str | None = None

    async def invoke(self, value: Any, client_binding: str | None = None, **extra: Any) -> Any:
        kwargs: dict[str, Any] = {self.trigger_param: value, **extra}
        for param in self.client_params:
            kwargs[param] = client_binding
        result = self.user(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


@dataclass
class FunctionIndex:
    entries: dict[str, FunctionEntry]

    def of_type(self, trigger_type: str) -> list[FunctionEntry]:
        return [e for e in self.entries.values() if e.trigger_type == trigger_type]


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


def index_app(app: Any) -> FunctionIndex:
    """`app.get_functions()` can be called only once per app object: call this once."""
    entries: dict[str, FunctionEntry] = {}
    for fn in app.get_functions():
        trigger = fn.get_trigger()
        ttype = _enum_value(trigger.type)
        name = fn.get_function_name()
        entry = FunctionEntry(name=name, trigger_type=ttype, trigger_param=trigger.name,
                              user=fn.get_user_function())
        for binding in fn.get_bindings():
            if _enum_value(binding.type) == "durableClient":
                entry.client_params.append(binding.name)
        if ttype == "httpTrigger":
            entry.route = getattr(trigger, "route", None) or name
            entry.methods = [_enum_value(m).upper() for m in (getattr(trigger, "methods", None) or ["GET", "POST"])]
            entry.auth_level = _enum_value(getattr(trigger, "auth_level", None) or "FUNCTION").upper()
        if ttype == "serviceBusTrigger":
            entry.queue_name = getattr(trigger, "queue_name", None)
        entries[name] = entry
    return FunctionIndex(entries)
