"""The durable timer loop, driven through devhost's replay engine on a virtual clock.

Every scenario ends with exactly one completion event carrying the right status and error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from devhost.compute import Fault
from devhost.serving import serve
from shared.domain.ids import operation_id
from tests.helpers import SENTINEL_PASSWORD
from tests.integration.conftest import LINUX_VM, VMSS, Host

NewHost = Callable[..., Any]


async def one_completion(h: Host, status: str, code: str | None = None) -> dict[str, Any]:
    events = await h.until_completed()
    await h.settle(lambda: True)  # let anything still queued finish, so a second event would show
    assert len(h.completed()) == 1, h.completed()
    data = events[0]["data"]
    assert data["status"] == status, data
    assert (data["error"] or {}).get("code") == code
    s, view = await h.get(f"/api/reimage/{data['operationId']}")
    assert s == 200 and view["status"] == status and view["polls"] == data["polls"]
    return data


async def test_success_through_azure_async_operation(host: Host) -> None:
    s, body, headers = await host.reimage({"target": LINUX_VM, "requestId": "aao-1", "requestedBy": "bot"})
    assert s == 202 and headers["Location"] == body["statusUrl"] and headers["Retry-After"] == "10"
    data = await one_completion(host, "Succeeded")
    assert data["polls"] == 6 and data["requestedBy"] == "bot" and data["durationSeconds"] == 60
    assert all("monitor=true" not in r["query"] for r in host.dh.sim.requests if "/operations/" in r["path"])


async def test_success_through_location_only(new_host: NewHost) -> None:
    h = await new_host()
    h.dh.sim.async_operation_header = False
    await h.reimage({"target": LINUX_VM})
    await one_completion(h, "Succeeded")
    polls = [r for r in h.dh.sim.requests if "/operations/" in r["path"]]
    assert polls and all(r["query"].get("monitor") == "true" for r in polls)


@pytest.mark.parametrize(("retry_after", "settings", "duration"), [
    (10, {}, 60),                                          # Retry-After honoured: every 10 s
    (1, {"POLL_MIN_SECONDS": "15"}, 60),                   # clamped up to the minimum
    (600, {"POLL_MAX_SECONDS": "20"}, 60),                 # clamped down to the maximum
    (None, {"POLL_DEFAULT_SECONDS": "25"}, 100),           # no header: the default
])
async def test_polls_follow_retry_after_clamped(new_host: NewHost, retry_after: int | None,
                                               settings: dict[str, str], duration: int) -> None:
    h = await new_host(retry_after=retry_after, operation_seconds=float(duration), settings=settings)
    await h.reimage({"target": LINUX_VM})
    data = await one_completion(h, "Succeeded")
    interval = min(max(retry_after, int(settings.get("POLL_MIN_SECONDS", 5))),
                   int(settings.get("POLL_MAX_SECONDS", 120))) if retry_after else int(
        settings["POLL_DEFAULT_SECONDS"])
    assert data["polls"] == math.ceil(duration / interval)
    # Activities are at-least-once (devhost runs each twice): a poll may read ARM twice, never more.
    gets = len([r for r in h.dh.sim.requests if "/operations/" in r["path"]])
    assert data["polls"] <= gets <= 2 * data["polls"]


@pytest.mark.parametrize(("outcome", "code", "status", "expected_code"), [
    ("Failed", "DiskProcessingError", "Failed", "DiskProcessingError"),
    ("Failed", "OperationPreempted", "Failed", "OperationPreempted"),
    ("Canceled", None, "Canceled", "OperationCanceled"),
])
async def test_arm_outcomes(host: Host, outcome: str, code: str | None, status: str, expected_code: str) -> None:
    host.dh.sim.faults.append(Fault(match="operations", outcome=outcome, code=code))  # type: ignore[arg-type]
    await host.reimage({"target": LINUX_VM})
    await one_completion(host, status, expected_code)


async def test_operation_that_never_ends_times_out(new_host: NewHost) -> None:
    h = await new_host(settings={"OPERATION_TIMEOUT_MINUTES": "3"})
    h.dh.sim.faults.append(Fault(match="reimage", outcome="Never"))
    await h.reimage({"target": LINUX_VM})
    data = await one_completion(h, "TimedOut", "TimedOut")
    assert data["polls"] == 18 and data["durationSeconds"] == 180


async def test_submit_failed(host: Host) -> None:
    host.dh.sim.faults.append(Fault(match="reimage", status=500))
    s, body, _ = await host.reimage({"target": LINUX_VM})
    assert s == 503 and body["error"]["code"] == "ComputeUnavailable" and body["operationId"]
    data = await one_completion(host, "Failed", "ComputeUnavailable")
    assert data["polls"] == 0 and len(host.reimage_posts()) == 1


async def test_submission_lost_after_a_crash_between_claim_and_submit(host: Host) -> None:
    """The trigger claimed, took the lease, marked the record Submitting and died: the POST may or may
    not have gone out. The sweeper ends it Failed/SubmissionLost with one event, and starts the cooldown."""
    from datetime import timedelta

    from shared.domain.records import OperationRecord
    from shared.workflow import completion

    rt = host.dh.runtime
    assert rt is not None
    op, now = operation_id("crashed-1"), rt.now()
    record = OperationRecord(operation_id=op, request_id="crashed-1", target=LINUX_VM, lease_key=LINUX_VM.lower(),
                             cooldown_keys=[""], trigger="http", created_time=now, last_updated_time=now)
    await rt.ledger.claim(record)
    await rt.ledger.index(record)
    await completion.admit(rt, record, secret=False, capacity=1, target_id=LINUX_VM)
    await rt.ledger.update(op, lambda r: setattr(r, "status", "Submitting") or r)
    data = await one_completion(host, "Failed", "SubmissionLost")
    assert data["submittedAt"] is None
    assert host.dh.clock.utcnow() - now >= timedelta(seconds=rt.settings.submit_timeout_seconds)
    # A redelivery of the same request finds the record and never POSTs; the target cools down.
    s, body, _ = await host.reimage({"target": LINUX_VM, "requestId": "crashed-1"})
    assert s == 200 and body["operationId"] == op and body["status"] == "Failed"
    s, body, _ = await host.reimage({"target": LINUX_VM, "requestId": "fresh"})
    assert s == 429 and body["error"]["code"] == "CooldownActive"
    assert host.reimage_posts() == []


async def test_transient_poll_failure_is_retried(host: Host) -> None:
    host.dh.sim.faults.append(Fault(match="operations", status=500, times=2))
    await host.reimage({"target": LINUX_VM})
    data = await one_completion(host, "Succeeded")
    statuses = [r["status"] for r in host.dh.sim.requests if "/operations/" in r["path"]]
    assert statuses.count(500) == 2 and statuses[-1] == 200
    assert data["polls"] == 6  # a retried read is still one poll


async def test_untrusted_poll_url_is_never_fetched(host: Host) -> None:
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"status": "Succeeded"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    other = await serve(app)
    host.dh.sim.operation_origin = other.url
    try:
        await host.reimage({"target": LINUX_VM})
        await one_completion(host, "Failed", "UntrustedOperationUrl")
    finally:
        await other.close()
    assert hits == []


async def test_continue_as_new_carries_the_state(new_host: NewHost) -> None:
    h = await new_host(settings={"POLLS_PER_GENERATION": "2"})
    s, body, _ = await h.reimage({"target": VMSS, "instanceIds": ["1", "2"]})
    data = await one_completion(h, "Succeeded")
    assert data["polls"] == 6 and data["instanceIds"] == ["1", "2"]
    assert h.dh.engine is not None
    inst = h.dh.engine.instances[data["batchId"]]  # the batch's orchestration polls for its requests
    assert inst.executions == 3  # 6 polls, 2 per generation
    assert len(inst.history) < 30  # history is per generation, not per operation


async def test_no_secret_anywhere_in_durable_storage(host: Host) -> None:
    custom = "U0VOVElORUwtQ1VTVE9NLURBVEE="
    s, body, _ = await host.reimage({"target": LINUX_VM, "osProfile": {"adminPassword": SENTINEL_PASSWORD,
                                                                       "customData": custom}})
    assert s == 202
    await one_completion(host, "Succeeded")
    assert host.dh.engine is not None
    store = host.dh.engine.dump()
    assert "reimage_monitor" in store and body["operationId"] in store  # the scan reads real content
    for secret in (SENTINEL_PASSWORD, custom):
        assert secret not in store
        assert secret not in json.dumps(host.dh.events())
        assert secret not in json.dumps(body)
    posts = host.reimage_posts()
    assert posts[0]["body"]["osProfile"] == {"adminPassword": SENTINEL_PASSWORD, "customData": custom}
