"""Fault x phase: nothing is lost, nothing is submitted twice, and the status endpoint agrees."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from devhost.compute import Fault
from tests.integration.conftest import LINUX_VM, Host

NewHost = Callable[..., Any]
FAULTS: dict[str, dict[str, Any]] = {
    "429": {"status": 429, "retryAfter": 1},
    "500": {"status": 500},
    "503": {"status": 503},
    "drop": {"drop": True},
    "slow": {"delaySeconds": 1.5},  # past ARM_TIMEOUT_SECONDS=1
    "Failed": {"outcome": "Failed", "code": "InternalExecutionError"},
    "Canceled": {"outcome": "Canceled"},
    "Preempted": {"outcome": "Failed", "code": "OperationPreempted"},
    "Never": {"outcome": "Never"},
}
PHASES = {"preflight": "get", "submit": "reimage", "poll": "operations"}
# (fault, phase) -> (HTTP status, terminal event status or None, error code, fault repetitions)
EXPECTED: dict[tuple[str, str], tuple[int, str | None, str | None, int]] = {
    ("429", "preflight"): (202, "Succeeded", None, 1),
    ("500", "preflight"): (202, "Succeeded", None, 1),
    ("503", "preflight"): (503, None, "ComputeUnavailable", 4),    # every attempt fails: not accepted, nothing to end
    ("drop", "preflight"): (202, "Succeeded", None, 1),
    ("slow", "preflight"): (202, "Succeeded", None, 1),
    ("429", "submit"): (202, "Succeeded", None, 1),                # never applied: retried after Retry-After
    ("500", "submit"): (503, "Failed", "ComputeUnavailable", 1),   # may have applied: never re-sent
    ("503", "submit"): (503, "Failed", "ComputeUnavailable", 1),
    ("drop", "submit"): (502, "Failed", "SubmissionUncertain", 1),
    ("slow", "submit"): (502, "Failed", "SubmissionUncertain", 1),
    ("Failed", "submit"): (202, "Failed", "InternalExecutionError", 1),
    ("Canceled", "submit"): (202, "Canceled", "OperationCanceled", 1),
    ("Preempted", "submit"): (202, "Failed", "OperationPreempted", 1),
    ("Never", "submit"): (202, "TimedOut", "TimedOut", 1),
    ("429", "poll"): (202, "Succeeded", None, 1),
    ("500", "poll"): (202, "Succeeded", None, 2),
    ("503", "poll"): (202, "Succeeded", None, 4),                  # a read failure is not an operation failure
    ("drop", "poll"): (202, "Succeeded", None, 1),
    ("slow", "poll"): (202, "Succeeded", None, 1),
    ("Failed", "poll"): (202, "Failed", "InternalExecutionError", 1),
    ("Canceled", "poll"): (202, "Canceled", "OperationCanceled", 1),
    ("Preempted", "poll"): (202, "Failed", "OperationPreempted", 1),
    ("Never", "poll"): (202, "TimedOut", "TimedOut", 1),
}
# Outcome faults describe how an ARM operation ends; a preflight GET has no operation to end.
NOT_APPLICABLE = {(f, "preflight") for f in ("Failed", "Canceled", "Preempted", "Never")}


def test_matrix_is_complete() -> None:
    assert set(EXPECTED) | NOT_APPLICABLE == {(f, p) for f in FAULTS for p in PHASES}


@pytest.mark.parametrize(("fault", "phase"), sorted(EXPECTED), ids=lambda v: str(v))
async def test_fault(new_host: NewHost, fault: str, phase: str) -> None:
    h: Host = await new_host(settings={"ARM_TIMEOUT_SECONDS": "1", "OPERATION_TIMEOUT_MINUTES": "3"})
    status, event_status, code, times = EXPECTED[(fault, phase)]
    h.dh.sim.faults.append(Fault(match=PHASES[phase], times=times, **FAULTS[fault]))
    body = {"target": LINUX_VM, "requestId": f"matrix-{fault}-{phase}"}
    s, answer, _ = await h.reimage(body)
    assert s == status, answer
    if event_status is None:
        assert answer["error"]["code"] == code
        assert h.dh.sim.faults == []  # the fault was really met
        await h.settle(lambda: True)
        assert h.completed() == [] and h.reimage_posts() == []
        return
    events = await h.until_completed()
    await h.settle(lambda: True)
    assert len(events) == 1, events
    assert h.dh.sim.faults == []  # the fault was really met
    data = events[0]["data"]
    assert data["status"] == event_status and (data["error"] or {}).get("code") == code
    s, view = await h.get(f"/api/reimage/{data['operationId']}")
    assert s == 200 and view["status"] == event_status and (view["error"] or {}).get("code") == code
    applied = [p for p in h.reimage_posts() if p["status"] != 429]
    assert len(applied) <= 1
    # Asking again with the same key never submits again.
    s, again, _ = await h.reimage(body)
    assert again["operationId"] == data["operationId"] and again["status"] == event_status
    assert len([p for p in h.reimage_posts() if p["status"] != 429]) == len(applied)
