"""Durable Functions extension stand-in: the client HTTP API plus a replay engine.

Orchestrators run through the SDK's own replay (`handle(context_json)` on a history), exactly
as the Functions host drives them; activities run in-process. Timers use the given clock
(real for `python -m devhost`, virtual in tests). A replayed action that differs from the
recorded one fails the instance loudly (non-determinism).

The fidelity rule: this stand-in is at least as hostile as Azure (Durable extension 2.x on
the Azure Storage backend). Each hostile behaviour is a switch on `Fidelity`, ON by default;
`docs/fidelity.md` / research/engine-fidelity.md give the source of each one:
- payloads are stringly typed as the extension delivers them (raised events and the status
  `input` arrive as JSON strings);
- a start refused because the instance is active answers 500 with the extension's error body;
- the existence check and the write of a start are not atomic (two racing starts both get 202,
  one is silently discarded);
- a timer still pending when the orchestrator returns keeps the instance Running until it
  fires, and a Python `timer.cancel()` is not honoured;
- activities and raised events are delivered at least once (duplicates injected), an event
  raised before ExecutionStarted was processed is discarded, and `continue_as_new` drops
  events not yet processed;
- with a `state_dir`, the task hub survives a crash: a new engine on the same directory resumes
  every in-flight orchestration (timers re-armed, unfinished activities re-run).

The parts, each a module of this package:
- `engine`: `DurableEngine`, the instances and their episode loop, client operations, `drive`;
- `replay`: one episode: the history and context to the SDK's orchestrator, its actions back, the
  determinism check;
- `tasks`: activities (at least once, with retries) and durable timers;
- `http_api`: the routes under rpcBaseUrl that the SDK's client calls, and the durableClient binding;
- `persistence`: the task hub on disk;
- `instance`, `history`, `fidelity`: the instance record, the event and action numbers, the switches.
"""
from devhost.durable.engine import DurableEngine, drive
from devhost.durable.fidelity import Fidelity
from devhost.durable.history import TASK_COMPLETED, TIMER_CREATED, TIMER_FIRED, WHEN_ALL, WHEN_ANY
from devhost.durable.http_api import ALREADY_EXISTS_TYPE
from devhost.durable.instance import AlreadyExists, Instance
from devhost.durable.replay import OrchestratorFn
from devhost.durable.tasks import ActivityFn

__all__ = [
    "ALREADY_EXISTS_TYPE",
    "TASK_COMPLETED",
    "TIMER_CREATED",
    "TIMER_FIRED",
    "WHEN_ALL",
    "WHEN_ANY",
    "ActivityFn",
    "AlreadyExists",
    "DurableEngine",
    "Fidelity",
    "Instance",
    "OrchestratorFn",
    "drive",
]
