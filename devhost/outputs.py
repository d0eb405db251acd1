"""Where the app's I/O to Azure's data services goes under devhost: Table Storage through the storage proxy
(devhost/storage/), Service Bus sends to the broker (devhost/broker/). The topic's messages are written to
`events.jsonl` (what `GET /devhost/events` serves, in the same JSON as the app's own EVENTS_FILE mode), and a
message sent to the requests queue is delivered to its Service Bus trigger."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from devhost.broker import Broker, Delivered
from devhost.serving import Served
from devhost.storage import Chaos, StorageProxy

if TYPE_CHECKING:
    from devhost.functions import FunctionEntry
    from devhost.servicebus import ServiceBusQueues

log = logging.getLogger("devhost")
DEMO_REPLY_QUEUE = "my-replies"  # the README's and the curl examples' ReplyTo, seeded with the demo resources


def table_endpoint(connection_string: str) -> str | None:
    """The connection string's `TableEndpoint` (Azurite's always has one)."""
    for part in connection_string.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "tableendpoint" and value:
            return value.strip()
    return None


async def front_storage(connection_string: str, host: str, chaos: Chaos | None
                        ) -> tuple[StorageProxy, Served, str] | None:
    """Start the proxy in front of the connection string's table endpoint; the app gets the string it returns."""
    upstream = table_endpoint(connection_string)
    if upstream is None:
        log.warning("AzureWebJobsStorage has no TableEndpoint: the ledger talks to storage without devhost's proxy")
        return None
    proxy = StorageProxy(upstream, chaos=chaos)
    served = await proxy.serve(host)
    return proxy, served, proxy.connection_string(connection_string)


class EventsFile:
    """The events topic's subscriber: one JSON line per delivered message, as the app's FilePublisher writes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, message: Delivered) -> None:
        try:
            line = json.dumps(json.loads(message.body), separators=(",", ":"))
        except ValueError:
            line = json.dumps({"body": message.body.decode("utf-8", errors="replace")})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


class ToTrigger:
    """The requests queue's receiver: a message sent there through the SDK reaches the Service Bus trigger."""

    def __init__(self, queues: ServiceBusQueues, entry: FunctionEntry) -> None:
        self.queues, self.entry = queues, entry

    def __call__(self, m: Delivered) -> None:
        msg = self.queues.enqueue(m.body, message_id=m.message_id, correlation_id=m.correlation_id,
                                  reply_to=m.reply_to, content_type=m.content_type, subject=m.subject,
                                  application_properties=dict(m.application_properties))
        self.queues.deliver_later(self.entry, msg)


def wire_broker(broker: Broker, events: Path, queues: ServiceBusQueues, triggers: list[FunctionEntry],
                requests_queue: str, seed: bool) -> None:
    broker.subscribe(broker.topic, EventsFile(events))
    for entry in triggers:
        if entry.queue_name in (requests_queue, "%REQUESTS_QUEUE%"):
            broker.subscribe(requests_queue, ToTrigger(queues, entry))
    if seed:
        broker.create_queue(DEMO_REPLY_QUEUE)
