"""Refusals and failures a person can act on, through devhost's real HTTP paths: ARM's code is kept in
details, status and events; a cooldown names the operation and when it ends; a missing instance is a 404
that stores nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from devhost.compute import Fault
from tests.integration.conftest import LINUX_VM, VMSS, WINDOWS_VM, Host, NewHost, checks


async def test_a_cooldown_refusal_names_the_operation_and_when_it_ends(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"COOLDOWN_MINUTES": "30"})
    s, first, _ = await h.reimage({"target": LINUX_VM})
    await h.until_completed()
    s, answer, headers = await h.reimage({"target": LINUX_VM})
    assert s == 429 and answer["error"]["code"] == "CooldownActive"
    message = answer["error"]["message"]
    assert first["operationId"] in message and answer["cooldown"]["operationId"] == first["operationId"]
    assert answer["cooldown"]["until"] in message and int(headers["Retry-After"]) > 1700


async def test_an_arm_failure_keeps_arms_code_in_details_in_status_and_events(host: Host) -> None:
    host.dh.sim.faults.append(Fault.model_validate({"match": "operations", "outcome": "Failed",
                                                    "code": "VMAgentStatusCommunicationError",
                                                    "message": "The VM agent did not report."}))
    s, accepted, _ = await host.reimage({"target": LINUX_VM})
    [event] = await host.until_completed()
    s, status = await host.get(f"/api/reimage/{accepted['operationId']}")
    for error in (event["data"]["error"], status["error"]):
        assert error["code"] == "VMAgentStatusCommunicationError", error
        assert error["message"] == "The VM agent did not report."
    # a refused POST: 502 ComputeError with ARM's code in details[0]
    host.dh.sim.faults.append(Fault(match="reimage", status=400, code="OperationNotAllowed", message="busy"))
    s, answer, _ = await host.reimage({"target": WINDOWS_VM})
    assert s == 502 and answer["error"]["code"] == "ComputeError"
    assert answer["error"]["details"][0] == {"code": "OperationNotAllowed", "message": "busy"}


# --- a missing scale-set instance ----------------------------------------------------------------------
@pytest.mark.parametrize("body", [{"target": VMSS + "/virtualMachines/77"},
                                  {"target": VMSS, "instanceIds": ["0", "77"]}])
async def test_a_missing_instance_is_a_404_with_no_operation_and_no_event(host: Host, body: dict[str, Any]) -> None:
    s, answer, _ = await host.reimage(body)
    assert s == 404 and answer["error"]["code"] == "TargetNotFound" and "77" in answer["error"]["message"], answer
    assert "operationId" not in answer and host.events() == [] and host.reimage_posts() == []
    rt = host.dh.runtime
    assert rt is not None and (await rt.ledger.list_operations(top=10)).items == []
    s, answer, _ = await host.reimage({**body, "dryRun": True})
    assert s == 200 and checks(answer)["targetExists"]["result"] == "failed"


async def test_a_compute_error_after_the_claim_keeps_arms_code_in_details_in_status_and_events(host: Host) -> None:
    """A 5xx on the POST may have been applied: the operation ends Failed, and ARM's code stays in details[0]."""
    host.dh.sim.faults.append(Fault(match="reimage", status=500, code="InternalExecutionError",
                                    message="An internal execution error occurred."))
    s, answer, _ = await host.reimage({"target": LINUX_VM, "requestId": "five-hundred"})
    assert s in (502, 503) and answer["error"]["details"][0]["code"] == "InternalExecutionError", answer
    [event] = host.completed()
    s, status = await host.get(f"/api/reimage/{answer['operationId']}")
    for error in (event["data"]["error"], status["error"], answer["error"]):
        detail = error["details"][0]
        assert (detail["code"], detail["message"]) == ("InternalExecutionError",
                                                       "An internal execution error occurred."), error
