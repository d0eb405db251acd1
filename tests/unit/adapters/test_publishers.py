"""The Service Bus publisher at the SDK boundary: real ServiceBusMessage objects, a recording sender."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from azure.servicebus import ServiceBusMessage

from shared.adapters.publishers import ServiceBusPublisher, make_publisher
from shared.domain.events import CONTENT_TYPE, EventData, EventType, build_event
from shared.settings import Settings


class RecordingSender:
    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name, self.sent = kind, name, []  # type: ignore[var-annotated]
        self.closed = False

    async def send_messages(self, message: Any) -> None:
        self.sent.append(message)

    async def close(self) -> None:
        self.closed = True


class RecordingClient:
    def __init__(self) -> None:
        self.senders: dict[tuple[str, str], RecordingSender] = {}
        self.closed = False

    def get_topic_sender(self, topic_name: str) -> RecordingSender:
        return self.senders.setdefault(("topic", topic_name), RecordingSender("topic", topic_name))

    def get_queue_sender(self, queue_name: str) -> RecordingSender:
        return self.senders.setdefault(("queue", queue_name), RecordingSender("queue", queue_name))

    async def close(self) -> None:
        self.closed = True


def settings() -> Settings:
    return Settings(**{"ServiceBusConnection__fullyQualifiedNamespace": "fleet.servicebus.windows.net"})  # type: ignore[arg-type]


def event() -> Any:
    data = EventData(operation_id="op-1", request_id="req-1", correlation_id="corr-9", target="/subscriptions/x/vm",
                     instance_ids=None, status="Succeeded", trigger="queue", polls=3,
                     completed_at=datetime(2026, 1, 1, tzinfo=UTC))
    return build_event(EventType.COMPLETED, data, time=datetime(2026, 1, 1, tzinfo=UTC))


async def test_topic_message_properties_and_reply_to() -> None:
    client = RecordingClient()
    pub = ServiceBusPublisher(settings(), client=client)  # type: ignore[arg-type]
    ev = event()
    await pub.publish(ev)
    await pub.reply(ev, "caller-replies", "msg-42")
    topic = client.senders[("topic", "reimage-events")].sent
    reply = client.senders[("queue", "caller-replies")].sent
    assert len(topic) == 1 and len(reply) == 1
    for msg in (topic[0], reply[0]):
        assert isinstance(msg, ServiceBusMessage)
        assert msg.content_type == CONTENT_TYPE
        assert msg.message_id == ev.id
        assert msg.subject == "reimager.operation.completed"
        assert msg.application_properties == {"status": "Succeeded", "target": "/subscriptions/x/vm"}
        body = json.loads(b"".join(msg.body))
        assert body["specversion"] == "1.0" and body["data"]["operationId"] == "op-1"
    assert topic[0].correlation_id == "corr-9"   # the request's correlationId
    assert reply[0].correlation_id == "msg-42"   # the request message's MessageId
    await pub.close()
    assert client.closed and all(s.closed for s in client.senders.values())


async def test_correlation_falls_back_to_request_id_and_ids_are_stable() -> None:
    client = RecordingClient()
    pub = ServiceBusPublisher(settings(), client=client)  # type: ignore[arg-type]
    ev = event()
    ev.data.correlation_id = None
    await pub.publish(ev)
    assert client.senders[("topic", "reimage-events")].sent[0].correlation_id == "req-1"
    assert ("queue", "caller-replies") not in client.senders
    assert build_event(EventType.COMPLETED, ev.data).id == ev.id  # a re-send is a duplicate Service Bus drops


def test_choice_by_settings(tmp_path: Any) -> None:
    assert isinstance(make_publisher(settings()), ServiceBusPublisher)
    local = make_publisher(Settings(EVENTS_FILE=str(tmp_path / "e.jsonl")))  # type: ignore[call-arg]
    assert type(local).__name__ == "FilePublisher"
