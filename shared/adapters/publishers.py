"""Publishers of reimager's events: a Service Bus topic (and a request's ReplyTo queue), or a
JSON-lines file locally."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.domain.events import CONTENT_TYPE, CloudEvent, Publisher
from shared.settings import Settings

if TYPE_CHECKING:
    from azure.servicebus.aio import ServiceBusClient


class FilePublisher:
    """Local mode: one JSON line per event in EVENTS_FILE; ReplyTo copies in the file beside it
    (`<name>.replies.jsonl`), each with the CloudEvents extension attributes naming the queue."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.replies = path.with_name(f"{path.stem}.replies.jsonl")
        self._lock = asyncio.Lock()

    async def _append(self, path: Path, line: dict[str, Any]) -> None:
        async with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line, separators=(",", ":")) + "\n")

    async def publish(self, event: CloudEvent) -> None:
        await self._append(self.path, event.to_dict())

    async def reply(self, event: CloudEvent, queue: str, correlation_id: str | None) -> None:
        await self._append(self.replies, {**event.to_dict(), "reimagerreplyto": queue,
                                          "reimagerreplycorrelationid": correlation_id})

    async def close(self) -> None:
        return None


class ServiceBusPublisher:
    """Publishes to the events topic, and to a request's ReplyTo queue. One client, created lazily."""

    def __init__(self, settings: Settings, client: ServiceBusClient | None = None,
                 credential_factory: Callable[[], Any] | None = None) -> None:
        self._settings = settings
        self._client = client
        self._credential_factory = credential_factory
        self._credential: Any = None
        self._senders: dict[tuple[str, str], Any] = {}

    def _sb(self) -> ServiceBusClient:
        if self._client is None:
            from azure.identity.aio import ManagedIdentityCredential
            from azure.servicebus.aio import ServiceBusClient

            self._credential = (self._credential_factory() if self._credential_factory else
                                ManagedIdentityCredential(client_id=self._settings.azure_client_id or None))
            namespace = self._settings.service_bus_namespace
            assert namespace
            self._client = ServiceBusClient(namespace, self._credential)
        return self._client

    def _sender(self, kind: str, name: str) -> Any:
        key = (kind, name)
        if key not in self._senders:
            sb = self._sb()
            self._senders[key] = sb.get_topic_sender(name) if kind == "topic" else sb.get_queue_sender(name)
        return self._senders[key]

    @staticmethod
    def message(event: CloudEvent, correlation_id: str | None) -> Any:
        from azure.servicebus import ServiceBusMessage

        return ServiceBusMessage(
            body=event.to_json(),
            content_type=CONTENT_TYPE,
            message_id=event.id,
            correlation_id=correlation_id,
            subject=event.type,
            application_properties={"status": event.data.status, "target": event.data.target or ""},
        )

    async def publish(self, event: CloudEvent) -> None:
        correlation = event.data.correlation_id or event.data.request_id
        await self._sender("topic", self._settings.events_topic).send_messages(self.message(event, correlation))

    async def reply(self, event: CloudEvent, queue: str, correlation_id: str | None) -> None:
        await self._sender("queue", queue).send_messages(self.message(event, correlation_id))

    async def close(self) -> None:
        for sender in self._senders.values():
            await sender.close()
        self._senders.clear()
        if self._client is not None:
            await self._client.close()
        if self._credential is not None:
            await self._credential.close()


def make_publisher(settings: Settings, credential_factory: Callable[[], Any] | None = None) -> Publisher:
    if settings.service_bus_namespace:
        return ServiceBusPublisher(settings, credential_factory=credential_factory)
    return FilePublisher(settings.events_file)
