"""History events and actions as the SDK's replay numbers them, and the timestamps the extension writes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from azure.durable_functions.models.actions.ActionType import ActionType
from azure.durable_functions.models.history.HistoryEventType import HistoryEventType

from devhost.clock import Clock

# Numbers from the SDK's own enums, so they cannot drift from what its replay expects
# (EventRaised is 15; 14 is EventSent).
EXECUTION_STARTED = int(HistoryEventType.EXECUTION_STARTED)
EXECUTION_COMPLETED = int(HistoryEventType.EXECUTION_COMPLETED)
TASK_SCHEDULED = int(HistoryEventType.TASK_SCHEDULED)
TASK_COMPLETED = int(HistoryEventType.TASK_COMPLETED)
TASK_FAILED = int(HistoryEventType.TASK_FAILED)
TIMER_CREATED = int(HistoryEventType.TIMER_CREATED)
TIMER_FIRED = int(HistoryEventType.TIMER_FIRED)
ORCHESTRATOR_STARTED = int(HistoryEventType.ORCHESTRATOR_STARTED)
ORCHESTRATOR_COMPLETED = int(HistoryEventType.ORCHESTRATOR_COMPLETED)
EVENT_RAISED = int(HistoryEventType.EVENT_RAISED)
CALL_ACTIVITY = int(ActionType.CALL_ACTIVITY)
CALL_ACTIVITY_WITH_RETRY = int(ActionType.CALL_ACTIVITY_WITH_RETRY)
CONTINUE_AS_NEW = int(ActionType.CONTINUE_AS_NEW)
CREATE_TIMER = int(ActionType.CREATE_TIMER)
WAIT_FOR_EVENT = int(ActionType.WAIT_FOR_EXTERNAL_EVENT)
WHEN_ANY = int(ActionType.WHEN_ANY)
WHEN_ALL = int(ActionType.WHEN_ALL)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def event(clock: Clock, event_type: int, event_id: int = -1, **extra: Any) -> dict[str, Any]:
    """A history event, stamped now."""
    return {"EventType": event_type, "EventId": event_id, "IsPlayed": False,
            "Timestamp": iso(clock.now()), **extra}
