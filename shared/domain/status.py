"""The states an operation passes through: one vocabulary for the ledger, the API, events and history.

`Claimed` and `Submitting` are internal steps of an accepted request; callers see them as `Accepted`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema


class OperationStatus(StrEnum):
    CLAIMED = "Claimed"  # the key is ours; not yet admitted (internal)
    SUBMITTING = "Submitting"  # the POST is being sent (internal): never sent twice from here
    QUEUED = "Queued"
    AWAITING_APPROVAL = "AwaitingApproval"
    ACCEPTED = "Accepted"
    RUNNING = "Running"
    VERIFYING = "Verifying"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"
    TIMED_OUT = "TimedOut"
    # Internal: ARM certainly refused the POST, and nothing was applied. The record only holds the key for a
    # moment so that concurrent deliveries of the request share that answer (one POST per key); it is never
    # shown, and a later retry of the request takes the key over.
    REFUSED = "Refused"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def public(self) -> OperationStatus:
        """What a caller is shown: the internal steps of an accepted request are `Accepted`."""
        return OperationStatus.ACCEPTED if self in IN_PROGRESS else self


TERMINAL = frozenset({OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELED,
                      OperationStatus.TIMED_OUT})
IN_PROGRESS = frozenset({OperationStatus.CLAIMED, OperationStatus.SUBMITTING})  # claimed, POST not yet answered
SUBMITTED = frozenset({OperationStatus.ACCEPTED, OperationStatus.RUNNING, OperationStatus.VERIFYING})
# Outcomes that count toward the breaker's failure streak (an Unhealthy success counts too).
FAILED_OUTCOMES = frozenset({OperationStatus.FAILED, OperationStatus.TIMED_OUT})
# The statuses a caller can see, in the order an operation passes through them (history's filter).
PUBLIC = tuple(s for s in OperationStatus if s not in IN_PROGRESS and s is not OperationStatus.REFUSED)


class EventStatus(StrEnum):
    """Statuses only events carry: a request refused before it was accepted, a target suspended or resumed."""

    REJECTED = "Rejected"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"


# Every status an event carries: an operation's public status, or an event-only one.
EVENT_STATUSES = (*PUBLIC, *EventStatus)


def _member_of(values: tuple[str, ...]) -> Callable[[str], str]:
    allowed = frozenset(values)

    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(values)}")
        return str(value)

    return check


# Wire fields: plain strings restricted to one of the lists above, with the list as the schema's enum.
PublicStatus = Annotated[str, AfterValidator(_member_of(PUBLIC)),
                         WithJsonSchema({"type": "string", "enum": [s.value for s in PUBLIC]})]
EventStatusValue = Annotated[str, AfterValidator(_member_of(EVENT_STATUSES)),
                             WithJsonSchema({"type": "string", "enum": [str(s) for s in EVENT_STATUSES]})]
