"""The Service Bus namespace behind the SDK stand-in (devhost/broker/client.py): which entities exist, what the
app's identity may send to, duplicate detection with each entity's window, the broker's refusals, and where
accepted messages go (the topic's to `GET /devhost/events`, a queue's to `GET /devhost/servicebus/replies`).

Refusals are raised as the AMQP conditions the broker sends (`amqp:not-found`, `amqp:unauthorized-access`,
`amqp:link:message-size-exceeded`, `com.microsoft:server-busy`, ...), so the SDK's own code turns them into
its exceptions and decides, as it does against Azure, which ones it retries (docs/fidelity.md, rows O1-O8)."""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web
from azure.servicebus import ServiceBusMessage
from azure.servicebus._common.constants import ERROR_CODE_SERVER_BUSY, ERROR_CODE_TIMEOUT
from azure.servicebus._pyamqp.error import AMQPLinkError, ErrorCondition, MessageException
from pydantic import TypeAdapter

from devhost.broker.entities import (
    MAX_MESSAGE_BYTES,
    Delivered,
    Entity,
    QueueSpec,
    SendFault,
    duration_seconds,
)
from devhost.clock import Clock
from devhost.serving import append_posted, bad_request

log = logging.getLogger("devhost.broker")
NAMESPACE = "devhost.servicebus.windows.net"
DEDUPE_WINDOW = "PT1H"  # infra/core/servicebus.bicep: duplicateDetectionHistoryTimeWindow (queue and topic)
_FAULTS = TypeAdapter(list[SendFault])
_REFUSALS = {
    "ServerBusy": (ERROR_CODE_SERVER_BUSY, "The request was terminated because the entity is being throttled. "
                   "Please wait and retry the operation."),
    "Timeout": (ERROR_CODE_TIMEOUT, "The operation did not complete within the allocated time."),
    "AcceptedThenTimeout": (ERROR_CODE_TIMEOUT, "The operation did not complete within the allocated time."),
    "QuotaExceeded": (ErrorCondition.ResourceLimitExceeded, "The maximum entity size has been reached or "
                      "exceeded for the entity."),
}
Subscriber = Callable[[Delivered], None]


class Broker:
    def __init__(self, clock: Clock, *, topic: str, requests_queue: str) -> None:
        self.clock = clock
        window = duration_seconds(DEDUPE_WINDOW)
        self.entities: dict[str, Entity] = {
            topic: Entity(topic, "topic", dedupe_window=window),
            requests_queue: Entity(requests_queue, "queue", dedupe_window=window),
        }
        self.topic, self.requests_queue = topic, requests_queue
        self.faults: list[SendFault] = []
        self.sends: deque[dict[str, Any]] = deque(maxlen=10_000)  # the last send attempts, and what came of each
        self.subscribers: dict[str, list[Subscriber]] = {}  # entity -> called with each accepted message
        self._sequence = itertools.count(int(clock.now() * 1000))

    # ---- entities -------------------------------------------------------------------------
    def create_queue(self, name: str, *, duplicate_detection: str | None = None,
                     send_allowed: bool = True) -> Entity:
        window = duration_seconds(duplicate_detection) if duplicate_detection else None
        entity = self.entities.get(name)
        if entity is None:
            entity = self.entities[name] = Entity(name, "queue")
        entity.dedupe_window, entity.send_allowed = window, send_allowed
        return entity

    def replies(self) -> list[Delivered]:
        return [m for e in self.entities.values() if e.kind == "queue" and e.name != self.requests_queue
                for m in e.messages]

    def subscribe(self, entity: str, subscriber: Subscriber) -> None:
        self.subscribers.setdefault(entity, []).append(subscriber)

    # ---- what a sender's link meets -------------------------------------------------------
    def attach(self, name: str) -> Entity:
        """Opening a send link: the entity must exist and the identity must hold the Send claim on it."""
        entity = self.entities.get(name)
        resource = f"sb://{NAMESPACE}/{name}"
        if entity is None:
            raise AMQPLinkError(ErrorCondition.NotFound,
                                description=f"The messaging entity '{resource}' could not be found. To know more "
                                "visit https://aka.ms/sbResourceMgrExceptions.")
        if not entity.send_allowed:
            raise AMQPLinkError(ErrorCondition.UnauthorizedAccess,
                                description=f"Unauthorized access. 'Send' claim(s) are required to perform this "
                                f"operation. Resource: '{resource}'.")
        return entity

    def accept(self, name: str, messages: list[ServiceBusMessage], encoded_size: int) -> None:
        """One transfer on the link: refused (raised as the broker's condition) or accepted, each message then
        delivered, or dropped as a duplicate within the entity's window."""
        entity = self.attach(name)
        fault = self._fault(name)
        if encoded_size > MAX_MESSAGE_BYTES:
            self._log(name, messages, "refused: MessageSizeExceeded")
            raise MessageException(ErrorCondition.LinkMessageSizeExceeded,
                                   description=f"The received message (delivery-id:0, size:{encoded_size} bytes) "
                                   f"exceeds the limit ({MAX_MESSAGE_BYTES} bytes) currently allowed on the link.")
        if fault is not None and fault.error != "AcceptedThenTimeout":
            self._log(name, messages, f"refused: {fault.error}")
            raise self._refusal(fault)
        now = self.clock.now()
        for message in messages:
            if entity.duplicate(message.message_id, now):
                self._log(name, [message], "duplicate")
                continue
            self._deliver(entity, message)
        if fault is not None:
            raise self._refusal(fault)

    @staticmethod
    def _refusal(fault: SendFault) -> MessageException:
        condition, text = _REFUSALS[fault.error]
        return MessageException(condition, description=text)

    def _fault(self, name: str) -> SendFault | None:
        for fault in self.faults:
            if fault.take(name):
                if fault.used_up:
                    self.faults.remove(fault)
                return fault
        return None

    def _deliver(self, entity: Entity, message: ServiceBusMessage) -> None:
        props = {str(k.decode() if isinstance(k, bytes) else k): v.decode() if isinstance(v, bytes) else v
                 for k, v in (message.application_properties or {}).items()}
        body = b"".join(message.body) if not isinstance(message.body, bytes) else message.body
        delivered = Delivered(entity.name, next(self._sequence), self.clock.utcnow(), message.message_id,
                              message.correlation_id, message.subject, message.content_type, message.reply_to,
                              props, body)
        if entity.kind == "queue":
            entity.messages.append(delivered)
        self._log(entity.name, [message], "delivered")
        for subscriber in self.subscribers.get(entity.name, []):
            subscriber(delivered)

    def _log(self, name: str, messages: list[ServiceBusMessage], outcome: str) -> None:
        at = self.clock.utcnow().isoformat()
        self.sends.extend({"entity": name, "messageId": m.message_id, "subject": m.subject, "outcome": outcome,
                           "at": at} for m in messages)

    # ---- devhost's /devhost/servicebus/* routes -------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.get("/devhost/servicebus/queues", self._queues),
                web.post("/devhost/servicebus/queues", self._create_queue),
                web.get("/devhost/servicebus/faults", self._list_faults),
                web.post("/devhost/servicebus/faults", self._add_faults),
                web.get("/devhost/servicebus/replies", self._replies),
                web.get("/devhost/servicebus/sends", self._sends)]

    async def _queues(self, request: web.Request) -> web.Response:
        return web.json_response([e.public() for e in self.entities.values()])

    async def _create_queue(self, request: web.Request) -> web.Response:
        try:
            spec = QueueSpec.model_validate(await request.json())
            entity = self.create_queue(spec.name, duplicate_detection=spec.duplicate_detection,
                                       send_allowed=spec.send_allowed)
        except ValueError as exc:
            return bad_request(exc)
        return web.json_response(entity.public(), status=201)

    async def _add_faults(self, request: web.Request) -> web.Response:
        return await append_posted(request, _FAULTS, self.faults)

    async def _list_faults(self, request: web.Request) -> web.Response:
        return web.json_response([f.public() for f in self.faults])

    async def _replies(self, request: web.Request) -> web.Response:
        return web.json_response([m.public() for m in self.replies()])

    async def _sends(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.sends))
