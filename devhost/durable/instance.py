"""An orchestration instance as the task hub keeps it: status, history, inbox, what replay recorded, and
the open tasks (timers, activities, retries); what the status endpoint answers; its task-hub document."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, fields
from typing import Any

from devhost.durable.history import iso

ACTIVE = ("Pending", "Running")


class AlreadyExists(Exception):
    """A start refused: an instance with that id is Pending or Running."""


@dataclass
class Instance:
    id: str
    name: str
    # JSON text of the value the orchestrator's get_input() returns.
    input: str | None
    created: float
    last_updated: float
    status: str = "Pending"
    history: list[dict[str, Any]] = field(default_factory=list)
    inbox: list[dict[str, Any]] = field(default_factory=list)
    custom_status: Any = None
    output: Any = None
    next_seq: int = 0
    recorded: list[tuple[Any, ...]] = field(default_factory=list)
    action_seq: list[int | None] = field(default_factory=list)
    generation: int = 0
    executions: int = 1
    # True when the extension stores the input as a JSON *string* (what the Python SDK's client and
    # continue_as_new produce): the status endpoint then answers `input` as that string.
    input_is_string: bool = False
    # Persisted task-hub state: pending timers (seq -> {"fireAt", "retry"}), activities scheduled and
    # not yet completed (seq -> {"name", "input"}), retry bookkeeping (seq -> retry state).
    timer_meta: dict[int, dict[str, Any]] = field(default_factory=dict)
    activities: dict[int, dict[str, Any]] = field(default_factory=dict)
    retries: dict[int, dict[str, Any]] = field(default_factory=dict)
    # The W3C traceparent the client started it with (the durable SDK sends the caller's): activities
    # run inside that trace, as the extension's distributed tracing V2 and the worker arrange in Azure.
    trace_parent: str | None = None
    # Runtime only.
    timers: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    released: bool = False  # ended, and its replay state dropped from memory (the task-hub file keeps it)

    def status_input(self) -> Any:
        if self.input is None:
            return None
        return self.input if self.input_is_string else json.loads(self.input)

    def public(self, show_input: bool = True, show_history: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name, "instanceId": self.id, "runtimeStatus": self.status,
            "customStatus": self.custom_status, "output": self.output,
            "createdTime": iso(self.created), "lastUpdatedTime": iso(self.last_updated),
            "input": self.status_input() if show_input else None,
        }
        if show_history:
            doc["historyEvents"] = self.history
        return doc

    # ---- persistence ----------------------------------------------------------------------
    _RUNTIME_ONLY = ("timers", "released")

    def to_doc(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._RUNTIME_ONLY}
        doc["recorded"] = [list(r) for r in self.recorded]
        for key in ("timer_meta", "activities", "retries"):
            doc[key] = {str(k): v for k, v in doc[key].items()}
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Instance:
        known = {f.name for f in fields(cls)} - set(cls._RUNTIME_ONLY)
        inst = cls(**{k: v for k, v in doc.items() if k in known})
        inst.recorded = [tuple(r) for r in inst.recorded]
        inst.timer_meta = {int(k): v for k, v in inst.timer_meta.items()}
        inst.activities = {int(k): v for k, v in inst.activities.items()}
        inst.retries = {int(k): v for k, v in inst.retries.items()}
        return inst
