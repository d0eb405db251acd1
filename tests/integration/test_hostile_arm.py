"""The app against the hostile simulator, end to end through devhost: what ARM's behaviours become as events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from devhost.compute import Fault
from tests.integration.conftest import LINUX_VM, Host

NewHost = Callable[..., Any]


async def completion(h: Host) -> dict[str, Any]:
    events = await h.until_completed()
    await h.settle(lambda: True)
    assert len(h.completed()) == 1, h.completed()
    data: dict[str, Any] = events[0]["data"]
    return data


@pytest.mark.parametrize(("fault", "code"), [
    ({"outcome": "Failed", "code": "OSProvisioningClientError", "message": "OS provisioning failed"},
     "OSProvisioningClientError"),
    ({"outcome": "Failed", "failureStatus": 400, "code": "InvalidParameter", "message": "bad"}, "InvalidParameter"),
    ({"outcome": "Canceled"}, "OperationCanceled"),
])
async def test_location_only_failure_ends_failed_with_arms_code_not_timed_out(new_host: NewHost,
                                                                             fault: dict[str, Any],
                                                                             code: str) -> None:
    h: Host = await new_host(retry_after=None, settings={"OPERATION_TIMEOUT_MINUTES": "30"})
    h.dh.sim.async_operation_header = False
    h.dh.sim.faults.append(Fault.model_validate({"match": "reimage", **fault}))
    s, _, _ = await h.reimage({"target": LINUX_VM})
    assert s == 202
    data = await completion(h)
    assert data["status"] == "Failed" and data["error"]["code"] == code, data
    assert data["durationSeconds"] < 30 * 60  # it ended when ARM said so, not at the time-out
    polls = [r for r in h.dh.sim.requests if "/operations/" in r["path"]]
    assert polls[-1]["status"] >= 400 and all(r["query"].get("monitor") == "true" for r in polls)


async def test_reimage_preempted_by_someone_else_ends_canceled(new_host: NewHost) -> None:
    """Another actor (portal, autoscale, a second reimager) reimages the VM while ours runs."""
    h: Host = await new_host(retry_after=None)
    s, _, _ = await h.reimage({"target": LINUX_VM})
    assert s == 202
    await h.settle(lambda: any("/operations/" in r["path"] for r in h.dh.sim.requests))
    sim = h.dh.sim
    import aiohttp

    token = sim.issuer.issue()[0]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{h.dh.arm_url}{LINUX_VM}/reimage", params={"api-version": "2024-07-01"},
                             headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 202
    data = await completion(h)
    assert data["status"] == "Canceled" and data["error"]["code"] == "OperationPreempted", data
    assert data["error"]["message"] == "Operation execution has been preempted by a more recent operation."
