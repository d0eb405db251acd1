"""A stand-in for `azure.servicebus.aio.ServiceBusClient` whose senders are the SDK's own `ServiceBusSender`
with only the AMQP link replaced by devhost's broker. So everything the SDK does before and after the wire is
the SDK's: it takes real `ServiceBusMessage`s (a list becomes a size-checked batch), opens the link lazily at
the first send or `async with`, turns the broker's conditions into its exceptions, and retries the retryable
ones with its own policy (3 retries, 0.8 s exponential backoff by default), re-sending what may have been
accepted. The app is given one with `ServiceBusPublisher(settings, client=StandInServiceBusClient(broker))`."""

from __future__ import annotations

from typing import Any

from azure.core.credentials import AccessToken
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus._common.constants import MAX_BATCH_SIZE_STANDARD
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender

from devhost.broker.broker import NAMESPACE, Broker
from devhost.broker.entities import MAX_MESSAGE_BYTES


class _NoCredential:
    """The link is never authenticated (the broker checks the Send claim itself)."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise RuntimeError("devhost's Service Bus stand-in needs no token")

    async def close(self) -> None:
        return None


class StandInSender(ServiceBusSender):
    def __init__(self, broker: Broker, entity: str, **kwargs: Any) -> None:
        super().__init__(NAMESPACE, _NoCredential(), **kwargs)  # type: ignore[arg-type]
        self._broker = broker
        self._entity = entity

    async def _open(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the SDK's signature
        """Attach the send link: fails at `async with` or at the first send, not at `get_*_sender`."""
        if self._running:
            return
        self._broker.attach(self._entity)
        self._running = True
        self._max_message_size_on_link = MAX_MESSAGE_BYTES  # Standard tier
        self._max_batch_size_on_link = MAX_BATCH_SIZE_STANDARD

    async def _send(self, message: ServiceBusMessage | ServiceBusMessageBatch,
                    timeout: float | None = None,  # noqa: ASYNC109 - the SDK's signature
                    last_exception: Exception | None = None) -> None:
        await self._open(timeout)
        if isinstance(message, ServiceBusMessageBatch):
            messages = list(message._messages)
            size = message.size_in_bytes
        else:
            messages = [message]
            size = PyamqpTransport.get_message_encoded_size(message._message)
        self._broker.accept(self._entity, messages, size)

    async def _close_handler(self) -> None:
        self._running = False


class StandInServiceBusClient(ServiceBusClient):
    """`ServiceBusClient` for devhost: topic and queue senders on `broker`. `retry_backoff_factor` (the SDK's
    default 0.8) can be lowered by tests that want the SDK's retries without its waits."""

    def __init__(self, broker: Broker, **kwargs: Any) -> None:
        super().__init__(NAMESPACE, _NoCredential(), **kwargs)  # type: ignore[arg-type]
        self._broker = broker

    def _sender(self, entity: str, **names: str) -> ServiceBusSender:
        config = self._config
        handler = StandInSender(self._broker, entity, retry_mode=config.retry_mode, retry_total=config.retry_total,
                                retry_backoff_factor=config.retry_backoff_factor,
                                retry_backoff_max=config.retry_backoff_max, try_timeout=config.try_timeout,
                                **names)
        self._handlers.add(handler)
        return handler

    def get_queue_sender(self, queue_name: str, **kwargs: Any) -> ServiceBusSender:
        return self._sender(queue_name, queue_name=queue_name)

    def get_topic_sender(self, topic_name: str, **kwargs: Any) -> ServiceBusSender:
        return self._sender(topic_name, topic_name=topic_name)
