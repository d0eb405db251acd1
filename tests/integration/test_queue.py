"""The Service Bus trigger through devhost's admin API: the message is enqueued on devhost's queue and
delivered as the real trigger delivers it (converter-built ServiceBusMessage, abandon on failure,
redelivery, dead-letter after maxDeliveryCount 5)."""

from __future__ import annotations

import json
from typing import Any

import azure.durable_functions as df
import pytest

from devhost.compute import Fault
from shared.adapters.publishers import ServiceBusPublisher
from tests.integration.conftest import LINUX_VM, VMSS, Host
from tests.unit.adapters.test_publishers import RecordingClient


async def test_valid_message_is_reimaged(host: Host) -> None:
    s, out = await host.queue({"target": LINUX_VM, "reason": "drain"}, messageId="m-1", correlationId="c-1")
    assert s == 202 and (out["settlement"], out["deliveryCount"], out["messageId"]) == ("completed", 1, "m-1")
    events = await host.until_completed()
    data = events[0]["data"]
    assert (data["status"], data["trigger"], data["requestId"], data["correlationId"]) == (
        "Succeeded", "queue", "m-1", "c-1")


async def test_redelivered_message_posts_once(host: Host) -> None:
    for _ in range(3):
        s, _ = await host.queue({"target": VMSS, "instanceIds": ["1"]}, messageId="m-redeliver")
        assert s == 202
    await host.until_completed()
    assert len(host.reimage_posts()) == 1
    assert len(host.completed()) == 1


async def test_invalid_message_completes_with_a_rejected_event(host: Host) -> None:
    s, out = await host.queue({"target": LINUX_VM, "tempdisk": True, "correlationId": "corr-7"}, messageId="m-bad")
    assert s == 202 and out["settlement"] == "completed"  # retrying would not make it valid
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
    host.dh.runtime._publisher = ServiceBusPublisher(host.dh.runtime.settings, client=client)  # type: ignore[union-attr,arg-type]
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
    host.dh.runtime._publisher = ServiceBusPublisher(host.dh.runtime.settings, client=client)  # type: ignore[union-attr,arg-type]
    await host.queue({"target": "nope"}, messageId="m-rej", replyTo="caller-replies", correlationId="cc")
    reply = client.senders[("queue", "caller-replies")].sent
    assert [m.subject for m in reply] == ["reimager.request.rejected"] and reply[0].correlation_id == "m-rej"
    assert client.senders[("topic", "reimage-events")].sent[0].correlation_id == "cc"


async def test_arm_unavailable_is_redelivered_and_succeeds_on_the_second_delivery(host: Host) -> None:
    # 4 = one delivery's worth of attempts (the ARM client retries a GET 3 times): delivery 1 fails
    host.dh.sim.faults.append(Fault(match="get", status=503, times=4))
    s, out = await host.queue({"target": LINUX_VM}, messageId="m-503")
    assert s == 202 and (out["settlement"], out["deliveryCount"]) == ("completed", 2)
    await host.until_completed()
    assert len(host.reimage_posts()) == 1 and host.events("reimager.request.rejected") == []
    assert host.completed()[0]["data"]["requestId"] == "m-503"


async def test_throttled_preflight_is_redelivered_and_succeeds_on_the_second_delivery(host: Host) -> None:
    # 429 with a Retry-After longer than the client waits for: transient, so the message is abandoned
    host.dh.sim.faults.append(Fault(match="get", status=429, retry_after=3600, times=1))
    s, out = await host.queue({"target": LINUX_VM}, messageId="m-429")
    assert s == 202 and (out["settlement"], out["deliveryCount"]) == ("completed", 2)
    await host.until_completed()
    assert len(host.reimage_posts()) == 1 and host.events("reimager.request.rejected") == []
    assert [e["data"]["status"] for e in host.completed()] == ["Succeeded"]


async def test_arm_down_for_good_dead_letters_after_five_deliveries(host: Host) -> None:
    host.dh.sim.faults.append(Fault(match="get", status=503, times=1000))
    s, out = await host.queue({"target": LINUX_VM}, messageId="m-down")
    assert s == 500 and (out["settlement"], out["deliveryCount"]) == ("deadLettered", 5)
    assert "ComputeUnavailable" in out["error"]
    _, dead = await host.get("/devhost/servicebus/deadletter")
    assert [(d["messageId"], d["deliveryCount"], d["deadLetterReason"]) for d in dead] == [
        ("m-down", 5, "MaxDeliveryCountExceeded")]
    assert host.events() == [] and host.reimage_posts() == []


async def test_one_delivery_at_a_time_then_background_redelivery(host: Host) -> None:
    host.dh.sim.faults.append(Fault(match="get", status=503, times=1000))
    s, out = await host.queue({"target": LINUX_VM}, messageId="m-bg", deliverUntilSettled=False)
    assert s == 500 and (out["settlement"], out["deliveryCount"]) == ("abandoned", 1)
    assert host.dh.servicebus is not None
    await host.dh.servicebus.idle()
    _, dead = await host.get("/devhost/servicebus/deadletter")
    assert [(d["messageId"], d["deliveryCount"]) for d in dead] == [("m-bg", 5)]


async def test_message_without_message_id_is_keyed_by_sequence_number(host: Host) -> None:
    host.dh.sim.faults.append(Fault(match="get", status=503, times=4))
    s, out = await host.queue({"target": LINUX_VM})  # no MessageId: the function sees message_id None
    assert s == 202 and out["messageId"] is None and (out["settlement"], out["deliveryCount"]) == ("completed", 2)
    await host.until_completed()
    key = f"sb-seq:{out['sequenceNumber']}"
    assert [e["data"]["requestId"] for e in host.completed()] == [key]  # the same key on both deliveries
    assert len(host.reimage_posts()) == 1


async def test_message_with_no_key_at_all_is_rejected_not_submitted(host: Host) -> None:
    from shared.surfaces import queue as messages

    out = await messages.handle_message(json.dumps({"target": LINUX_VM}).encode(), message_id=None,
                                        sequence_number=None, correlation_id="c-nokey", reply_to=None, client=None)
    assert out.outcome == "rejected" and out.error is not None and out.error.code == "MissingIdempotencyKey"
    rejected = host.events("reimager.request.rejected")
    assert [e["data"]["error"]["code"] for e in rejected] == ["MissingIdempotencyKey"]
    assert rejected[0]["data"]["correlationId"] == "c-nokey" and host.reimage_posts() == []
    # with a requestId in the body the message needs no broker key
    client = df.DurableOrchestrationClient(host.dh.client_binding())
    out = await messages.handle_message(json.dumps({"target": LINUX_VM, "requestId": "r-1"}).encode(),
                                        message_id=None, sequence_number=None, correlation_id=None,
                                        reply_to=None, client=client)
    assert out.operation_id and len(host.reimage_posts()) == 1


POISON = [
    # json.dumps escapes lone surrogates: an ASCII body with \ud800 escapes in it, as a sender makes one
    pytest.param(json.dumps({"target": LINUX_VM, "tempdisk": True, "requestedBy": "\ud800me", "reason": "x\udfff",
                             "correlationId": "\udc00"}), id="lone-surrogates"),
    pytest.param(json.dumps({"target": LINUX_VM, "requestId": "bad\ud800", "requestedBy": "\ud800"}),
                 id="surrogate-request-id"),
    pytest.param(json.dumps({"target": LINUX_VM, "\ud800": 1}), id="surrogate-key"),
    pytest.param('{"target": "' + LINUX_VM + '", "reason": ' + "[" * 100_000 + "]" * 100_000 + "}", id="deep"),
    pytest.param("[" * 65 + "]" * 65, id="depth-65"),
]


@pytest.mark.parametrize("body", POISON)
async def test_poison_messages_end_in_a_rejected_event_and_are_completed(host: Host, body: str) -> None:
    s, out = await host.queue(body, messageId="m-poison")
    assert s == 202 and (out["settlement"], out["deliveryCount"]) == ("completed", 1), out
    rejected = host.events("reimager.request.rejected")
    assert len(rejected) == 1 and rejected[0]["data"]["error"]["code"] == "InvalidRequest"
    for name in ("requestId", "requestedBy", "reason"):
        value = rejected[0]["data"][name]
        assert value is None or value.encode("utf-8")  # encodable: no lone surrogate survived
    _, dead = await host.get("/devhost/servicebus/deadletter")
    assert dead == [] and host.reimage_posts() == []


async def test_admin_invoke_refuses_unknown_fields(host: Host) -> None:
    s, out = await host.queue({"target": LINUX_VM}, messageID="typo")
    assert s == 400 and "messageID" in out["error"]["message"] and host.events() == []


async def test_lock_lost_after_success_redelivers_and_posts_once(host: Host) -> None:
    # at-least-once: the function succeeded but Complete never reached the broker
    s, out = await host.queue({"target": VMSS, "instanceIds": ["2"]}, messageId="m-lock", loseLockAfterSuccess=2)
    assert s == 202 and (out["settlement"], out["deliveryCount"]) == ("completed", 3)
    await host.until_completed()
    assert len(host.reimage_posts()) == 1 and len(host.completed()) == 1
    assert len(host.events("reimager.operation.accepted")) == 1
