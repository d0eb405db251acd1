"""The Service Bus trigger, invoked through devhost's admin API with real ServiceBusMessage objects."""

from __future__ import annotations

from typing import Any

from devhost.compute import Fault
from shared import runtime
from shared.events import ServiceBusPublisher
from shared.settings import get_settings
from tests.integration.conftest import LINUX_VM, VMSS, Host
from tests.unit.test_servicebus_publisher import RecordingClient


async def test_valid_message_is_reimaged(host: Host) -> None:
    s, out = await host.queue({"target": LINUX_VM, "reason": "drain"}, messageId="m-1", correlationId="c-1")
    assert s == 202 and out["status"] == "Completed"
    events = await host.until_completed()
    data = events[0]["data"]
    assert (data["status"], data["trigger"], data["requestId"], data["correlationId"]) == (
        "Succeeded", "queue", "m-1", "c-1")


async def test_redelivered_message_posts_once(host: Host) -> None:
    for _ in range(3):
        s, _ = await host.queue({"target": VMSS, "instanceIds": ["1"]}, messageId="m-redeliver")
        assert s == 202
    assert len(host.reimage_posts()) == 1
    await host.until_completed()
    assert len(host.completed()) == 1


async def test_invalid_message_completes_with_a_rejected_event(host: Host) -> None:
    s, out = await host.queue({"target": LINUX_VM, "tempdisk": True, "correlationId": "corr-7"}, messageId="m-bad")
    assert s == 202  # completed: retrying would not make it valid
    rejected = host.events("reimager.request.rejected")
    assert len(rejected) == 1
    data = rejected[0]["data"]
    assert data["status"] == "Rejected" and data["error"]["code"] == "InvalidRequest"
    assert data["error"]["details"][0]["target"] == "tempdisk"
    assert data["correlationId"] == "corr-7" and data["requestId"] == "m-bad"
    s, _ = await host.queue("not json at all", messageId="m-garbage", correlationId="corr-8")
    assert s == 202 and host.events("reimager.request.rejected")[-1]["data"]["correlationId"] == "corr-8"
    assert host.reimage_posts() == []


async def test_forbidden_and_missing_targets_are_rejected(host: Host) -> None:
    await host.queue({"target": LINUX_VM.replace("web-linux-01", "ghost")}, messageId="m-404")
    await host.queue({"target": LINUX_VM.replace("web-linux-01", "db-linux-01")}, messageId="m-403")
    codes = [e["data"]["error"]["code"] for e in host.events("reimager.request.rejected")]
    assert codes == ["TargetNotFound", "TargetProtected"]


async def test_reply_to_gets_the_completion_event(host: Host) -> None:
    client = RecordingClient()
    runtime._publisher = ServiceBusPublisher(get_settings(), client=client)  # type: ignore[arg-type]
    s, _ = await host.queue({"target": LINUX_VM}, messageId="m-reply", replyTo="caller-replies")
    assert s == 202
    def replies() -> list[Any]:
        sender = client.senders.get(("queue", "caller-replies"))
        return sender.sent if sender is not None else []

    await host.settle(lambda: any(m.subject == "reimager.operation.completed" for m in replies()))
    reply = replies()
    assert [m.subject for m in reply] == ["reimager.operation.completed"]
    assert reply[0].correlation_id == "m-reply"
    topic = client.senders[("topic", "reimage-events")].sent
    assert [m.subject for m in topic] == ["reimager.operation.accepted", "reimager.operation.completed"]


async def test_reply_to_gets_the_rejection(host: Host) -> None:
    client = RecordingClient()
    runtime._publisher = ServiceBusPublisher(get_settings(), client=client)  # type: ignore[arg-type]
    await host.queue({"target": "nope"}, messageId="m-rej", replyTo="caller-replies", correlationId="cc")
    reply = client.senders[("queue", "caller-replies")].sent
    assert [m.subject for m in reply] == ["reimager.request.rejected"] and reply[0].correlation_id == "m-rej"
    assert client.senders[("topic", "reimage-events")].sent[0].correlation_id == "cc"


async def test_arm_unavailable_raises_for_redelivery(host: Host) -> None:
    host.dh.sim.faults.append(Fault(match="get", status=503, times=50))
    s, out = await host.queue({"target": LINUX_VM}, messageId="m-503")
    assert s == 500 and "ComputeUnavailable" in out["error"]
    assert host.events() == [] and host.reimage_posts() == []
    host.dh.sim.faults.clear()
    s, _ = await host.queue({"target": LINUX_VM}, messageId="m-503")  # the redelivery
    assert s == 202
    await host.until_completed()
    assert len(host.reimage_posts()) == 1
