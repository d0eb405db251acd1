"""The app's own triggers overlapping themselves as Azure lets them, with real concurrency (docs/fidelity.md S15,
T8): a Service Bus message delivered again while its first invocation is still inside a slow ledger write, and
a sweeper run that another run overlaps while it is ending the same records."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from devhost.storage.faults import StorageFault
from tests.integration.conftest import LINUX_VM, VMSS, WINDOWS_VM, Host
from tests.reliability.test_crashes_and_load import _crashed_claim

NewHost = Callable[..., Any]
TARGETS = (LINUX_VM, WINDOWS_VM)
HOURLY = "0 0 * * * *"  # no sweep inside the first minutes: the test says when one runs


def storage_fault(h: Host, **doc: Any) -> None:
    assert h.dh.storage is not None
    h.dh.storage.faults.append(StorageFault.model_validate(doc))


async def until_in_flight(h: Host, effect: str) -> None:
    """Until a request given `effect` has reached the proxy and not been answered yet (real time)."""
    assert h.dh.storage is not None
    for _ in range(500):
        if any(r.get("effect") == effect and "status" not in r for r in h.dh.storage.requests):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no request held by {effect!r}")


@pytest.mark.parametrize("body", [{"target": LINUX_VM}, {"target": VMSS, "instanceIds": ["3"]}],
                         ids=["vm-lead", "set-queue"])
async def test_a_redelivery_while_the_first_invocation_is_inside_a_slow_write_posts_once(
        new_host: NewHost, body: dict[str, Any]) -> None:
    h: Host = await new_host(settings={"SWEEP_SCHEDULE": HOURLY})
    # The worst moment: the first invocation has claimed the key and its admission (the target's entity group
    # transaction) hangs.
    storage_fault(h, match={"table": "*targets", "operation": "batch"}, effect="delay", seconds=3)
    first = asyncio.ensure_future(h.queue(body, messageId="m-slow"))
    await until_in_flight(h, "delay")
    # Five virtual minutes: the lock's renewal stops (host.json) and the claim (CLAIM_SECONDS) runs out, so
    # the broker hands the message out again while the first invocation still waits on its write.
    h.dh.clock.advance(301)
    s, out = await first
    assert s == 202 and out["settlement"] == "completed" and out["deliveryCount"] == 2, out
    await h.until_completed()
    assert len(h.reimage_posts()) == 1
    assert [e["data"]["status"] for e in h.completed()] == ["Succeeded"]
    assert len(h.events("reimager.operation.accepted")) == 1


async def test_overlapping_sweeper_runs_end_each_stranded_request_once(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"SWEEP_SCHEDULE": "0 */1 * * * *", "SUBMIT_TIMEOUT_SECONDS": "5"},
                             timer_overlap=True)
    ops = [await _crashed_claim(h, f"stranded-{i}", "Claimed", target) for i, target in enumerate(TARGETS)]
    # Every write to the operations table hangs for a second: the first sweep run goes on past its singleton
    # lease, and the next run starts over the same records while the first is still ending them.
    storage_fault(h, match={"table": "*ops", "operation": "update"}, effect="delay", seconds=1, times=8)
    h.dh.clock.advance(60)  # the first sweep
    await until_in_flight(h, "delay")
    h.dh.clock.advance(61)  # its lease (60 s) lapses while its write hangs: another instance runs it again
    await h.settle(lambda: len(h.completed()) >= len(ops), max_virtual_seconds=900)
    later = h.dh.clock.now() + 300  # five more sweeps: still one event each
    await h.settle(lambda: h.dh.clock.now() >= later, max_virtual_seconds=600)
    assert h.dh.timers is not None
    assert any(run.lease_lost for run in h.dh.timers.runs if run.function == "reimage_sweeper")
    ended = Counter((e["data"]["operationId"], e["data"]["error"]["code"]) for e in h.completed())
    assert ended == {(op, "NotSubmitted"): 1 for op in ops}
    assert h.reimage_posts() == []
