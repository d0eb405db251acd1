"""Replay: one episode of an orchestrator, as the Functions host drives the SDK. The history (the events
played before, then the new ones) goes to the orchestrator (`handle(context_json)`) in the context the
extension builds; its actions come back flattened in the order DTFx numbers them, and are checked against
the actions recorded in earlier episodes (a replay that differs is non-deterministic)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from devhost.durable.history import CREATE_TIMER, WHEN_ALL, WHEN_ANY
from devhost.durable.instance import Instance

OrchestratorFn = Callable[[str], str]

# What the extension puts in the orchestrator's context (OrchestrationTriggerAttributeBindingProvider.cs
# OrchestrationContextToString): SchemaVersion.V2 and .V3 are the enum values 1 and 2
# (OutOfProcOrchestrationShim.cs), serialised as numbers; the timer limits are the Azure Storage
# provider's MaximumDelayTime (6 days) and LongRunningTimerIntervalLength (3 days), as TimeSpans.
UPPER_SCHEMA_VERSION = 1
UPPER_SCHEMA_VERSION_NEW = 2
MAXIMUM_SHORT_TIMER_DURATION = "6.00:00:00"
LONG_RUNNING_TIMER_INTERVAL = "3.00:00:00"


@dataclass
class Episode:
    history: list[dict[str, Any]]  # the played events, then the new ones
    state: dict[str, Any]  # the SDK's orchestration state (actions, isDone, output, customStatus)
    error: str | None  # the orchestrator's failure, if it raised
    actions: list[dict[str, Any]]  # the leaves of `state["actions"]`, in DTFx's order


def replay(orchestrators: Mapping[str, OrchestratorFn], inst: Instance, new: list[dict[str, Any]],
           long_timers: bool) -> Episode:
    old = [{**e, "IsPlayed": True} for e in inst.history]
    history = old + new
    error: str | None = None
    try:
        state = json.loads(orchestrators[inst.name](json.dumps(context(inst, history, long_timers))))
    except Exception as exc:  # the SDK raises with the state appended after a marker
        text = str(exc)
        marker = "\n\n$OutOfProcData$:"
        error, _, rest = text.partition(marker)
        try:
            state = json.loads(rest) if rest else {"actions": []}
        except ValueError:
            state = {"actions": []}
    return Episode(history, state, error, list(leaves(state.get("actions", []))))


def context(inst: Instance, history: list[dict[str, Any]], long_timers: bool) -> dict[str, Any]:
    """The orchestrator's context, as OrchestrationContextToString writes it."""
    doc: dict[str, Any] = {
        "history": history, "instanceId": inst.id, "isReplaying": False, "parentInstanceId": None,
        "input": inst.input, "upperSchemaVersion": UPPER_SCHEMA_VERSION,
        "upperSchemaVersionNew": UPPER_SCHEMA_VERSION_NEW,
    }
    if long_timers:
        doc["maximumShortTimerDuration"] = MAXIMUM_SHORT_TIMER_DURATION
        doc["longRunningTimerIntervalDuration"] = LONG_RUNNING_TIMER_INTERVAL
    return doc


def leaves(actions: list[Any]) -> Iterator[dict[str, Any]]:
    """Flatten the SDK's action payload: V1 nests lists, V2/V3 nest WhenAny/WhenAll compound actions.

    DTFx numbers the leaves in this order (the extension's InvokeAPIFromAction recurses into
    compoundActions), as does the SDK's `_add_to_open_tasks`.
    """
    for action in actions:
        if isinstance(action, list):
            yield from leaves(action)
        elif action.get("actionType") in (WHEN_ANY, WHEN_ALL):
            yield from leaves(action.get("compoundActions") or [])
        else:
            yield action


def signature(action: dict[str, Any]) -> tuple[Any, ...]:
    kind = action.get("actionType")
    name = action.get("functionName") or action.get("externalEventName")
    return (kind, name, action.get("fireAt") if kind == CREATE_TIMER else None)


def mismatch(recorded: list[tuple[Any, ...]], actions: list[dict[str, Any]]) -> str | None:
    """How the replayed actions differ from those recorded, if they do (non-determinism)."""
    for index, expected in enumerate(recorded):
        if index >= len(actions):
            return None  # the orchestrator has not replayed that far (it awaits an earlier task)
        got = signature(actions[index])
        if got != expected:
            return f"action #{index} was {expected}, replay produced {got}"
    return None
