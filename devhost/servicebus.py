"""A Service Bus queue and its Functions trigger, as hostile as the real pair.

What the broker and the trigger do (sources in docs/fidelity.md and research/sb-fidelity.md):
- every message gets a SequenceNumber at enqueue, stable across redeliveries; a message sent
  without a MessageId reaches the function with `message_id` None;
- each delivery increments DeliveryCount (1 on the first) under a new lock token;
- the trigger completes the message when the function returns, and abandons it when the function
  (or the worker's binding of it) raises; an abandoned message is delivered again at once;
- after `maxDeliveryCount` deliveries an abandoned message is moved to the dead-letter queue with
  DeadLetterReason `MaxDeliveryCountExceeded`;
- the trigger renews a message's lock for `maxAutoLockRenewalDuration` (host.json, 5 min) and then stops
  while the function still runs: the lock lapses and the message is delivered again (DeliveryCount+1, a new
  lock token) *while the first invocation goes on*; that invocation's Complete then fails (MessageLockLost),
  and the trigger neither completes nor abandons it (devhost loses the lock at the renewal limit itself, the
  early end of "within one lockDuration after renewal stops");
- duplicate detection is not modelled: a resent MessageId is delivered again (the dangerous reading
  for an app that must be idempotent anyway).

Trigger metadata and the body reach the function through `devhost.bindings`, i.e. through the
library's `ServiceBusMessageInConverter`, in the host's shapes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from azure.functions.meta import Datum

from devhost import bindings
from devhost.clock import Clock
from devhost.functions import FunctionEntry

log = logging.getLogger("devhost.servicebus")

Settlement = Literal["pending", "completed", "abandoned", "deadLettered", "lockLost"]
MAX_DELIVERY_COUNT = 5  # infra/core/servicebus.bicep: maxDeliveryCount
LOCK_LOST = "MessageLockLostError: the lock expired while the function ran (maxAutoLockRenewalDuration passed)"
ADMIN_INVOKE_FIELDS = {"input", "messageId", "correlationId", "replyTo", "contentType", "subject", "to", "sessionId",
                       "applicationProperties", "deliverUntilSettled", "loseLockAfterSuccess"}
NEVER = datetime(9999, 12, 31, 23, 59, 59, 999999)  # .NET DateTimeOffset.MaxValue: no TTL on the queue


def max_auto_lock_renewal(host_json: Path) -> float:
    """`extensions.serviceBus.maxAutoLockRenewalDuration` from host.json (a TimeSpan, `[d.]hh:mm:ss`) in
    seconds; 5 min when absent (the extension's default, ServiceBusOptions.MaxAutoLockRenewalDuration)."""
    doc = json.loads(host_json.read_text()) if host_json.exists() else {}
    text = str(doc.get("extensions", {}).get("serviceBus", {}).get("maxAutoLockRenewalDuration", "00:05:00"))
    days = 0.0
    if "." in text.split(":")[0]:
        whole, _, text = text.partition(".")
        days = float(whole)
    h, m, sec = (float(x) for x in text.split(":"))
    return days * 86400 + h * 3600 + m * 60 + sec


@dataclass
class QueuedMessage:
    body: bytes
    sequence_number: int
    enqueued_time: datetime
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    content_type: str | None = None
    subject: str | None = None
    to: str | None = None
    session_id: str | None = None
    application_properties: dict[str, Any] = field(default_factory=dict)
    delivery_count: int = 0
    lock_token: str | None = None
    settlement: Settlement = "pending"
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    errors: list[str] = field(default_factory=list)
    lose_lock_times: int = 0  # fault: the next N successful deliveries lose their lock before completing
    redelivery: asyncio.Task[None] | None = None  # the delivery that followed a lost lock, while it runs

    def metadata(self, function_name: str, now: datetime) -> dict[str, Datum]:
        """The Service Bus extension's binding data (`ServiceBusTriggerBindingStrategy.AddBindingData`),
        sent through the host's `ToRpc`: strings as `string`, the rest as JSON text; null values absent.
        MessageActions/Client are not sent (objects the worker cannot use)."""
        enqueued = self.enqueued_time.astimezone(UTC)
        expires = NEVER
        return bindings.trigger_metadata({
            "DeliveryCount": self.delivery_count,
            "DeadLetterSource": None,
            "LockToken": self.lock_token,
            "ExpiresAtUtc": expires,  # DateTimeOffset.DateTime: Kind Unspecified, so no offset
            "ExpiresAt": expires.replace(tzinfo=UTC),
            "EnqueuedTimeUtc": enqueued.replace(tzinfo=None),
            "EnqueuedTime": enqueued,
            "MessageId": self.message_id,
            "ContentType": self.content_type,
            "ReplyTo": self.reply_to,
            "SequenceNumber": self.sequence_number,
            "To": self.to,
            "Subject": self.subject,
            "Label": self.subject,
            "CorrelationId": self.correlation_id,
            "ApplicationProperties": self.application_properties,
            "UserProperties": self.application_properties,
            "SessionId": self.session_id,
            "ReplyToSessionId": None,
            "PartitionKey": None,
            "TransactionPartitionKey": None,
            "sys": {"MethodName": function_name, "UtcNow": now.replace(tzinfo=None).isoformat(),
                    "RandGuid": str(uuid.uuid4())},
        })

    def public(self) -> dict[str, Any]:
        return {"messageId": self.message_id, "sequenceNumber": self.sequence_number,
                "deliveryCount": self.delivery_count, "settlement": self.settlement,
                "correlationId": self.correlation_id, "replyTo": self.reply_to,
                "applicationProperties": self.application_properties,
                "deadLetterReason": self.dead_letter_reason,
                "deadLetterErrorDescription": self.dead_letter_description,
                "errors": self.errors, "body": self.body.decode("utf-8", errors="replace")}


class ServiceBusQueues:
    """The messages sent to Service Bus-triggered functions, and their delivery.

    Completed messages are dropped; abandoned ones stay until settled, dead-lettered ones stay listed.
    Sequence numbers start from the clock in milliseconds, so they keep growing across a devhost
    restart on the same state directory, as the broker's do (a restart at 1 would make `sb-seq:` keys
    collide with operations the ledger already holds).
    """

    def __init__(self, clock: Clock, client_binding: Callable[[], str], *,
                 max_delivery_count: int = MAX_DELIVERY_COUNT, lock_renewal: float | None = 300.0) -> None:
        """`lock_renewal`: seconds an invocation may run before its lock is lost (None: never lost)."""
        self.clock = clock
        self.client_binding = client_binding
        self.max_delivery_count = max_delivery_count
        self.lock_renewal = lock_renewal
        self._sequence = itertools.count(int(clock.now() * 1000))
        self.messages: list[QueuedMessage] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def deadletter(self) -> list[QueuedMessage]:
        return [m for m in self.messages if m.settlement == "deadLettered"]

    def enqueue(self, body: bytes, **props: Any) -> QueuedMessage:
        msg = QueuedMessage(body=body, sequence_number=next(self._sequence), enqueued_time=self.clock.utcnow(),
                            **props)
        self.messages.append(msg)
        return msg

    def _datum(self, entry: FunctionEntry, msg: QueuedMessage) -> Datum:
        """The body as the host binds it: bytes for `dataType: binary`, else a string, decoded as the
        extension's MessageToStringConverter does (strict UTF-8, else with replacement characters)."""
        if entry.trigger_data_type == "binary":
            return Datum(msg.body, "bytes")
        return Datum(msg.body.decode("utf-8", errors="replace"), "string")

    async def _lock_held(self, invocation: asyncio.Future[Any]) -> bool:
        """Wait for the invocation; False as soon as it outlives the lock renewal (it then goes on running)."""
        if self.lock_renewal is None:
            await asyncio.wait({invocation})
            return True
        lapse = asyncio.ensure_future(self.clock.sleep(self.lock_renewal))
        try:
            done, _ = await asyncio.wait({invocation, lapse}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lapse.cancel()
        return invocation in done

    async def _lock_lost(self, entry: FunctionEntry, msg: QueuedMessage, invocation: asyncio.Future[Any]) -> Settlement:
        """The lock lapsed mid-invocation: the broker hands the message out again now (or dead-letters it once
        its deliveries are used up); this invocation's own Complete or Abandon later fails with lock lost."""
        log.warning("message seq=%s id=%s: lock lost after %ss while delivery %s still runs; delivered again",
                    msg.sequence_number, msg.message_id, self.lock_renewal, msg.delivery_count)
        msg.errors.append(LOCK_LOST)
        if self._abandon(msg) == "abandoned":
            msg.redelivery = self._background(self._redeliver(entry, msg))
        try:
            await invocation
        except Exception as exc:  # its failure can no longer abandon the message: the lock is gone
            msg.errors.append(bindings.worker_message(exc))
        return "lockLost"

    async def deliver_once(self, entry: FunctionEntry, msg: QueuedMessage) -> Settlement:
        """One delivery under a fresh lock: complete on success, abandon on failure, and dead-letter
        an abandoned message that has used up its deliveries; "lockLost" when it outlived its lock."""
        msg.delivery_count += 1
        msg.lock_token = str(uuid.uuid4())
        invocation = asyncio.ensure_future(entry.invoke(
            self._datum(entry, msg), metadata=msg.metadata(entry.name, self.clock.utcnow()),
            client_binding=self.client_binding()))
        if not await self._lock_held(invocation):
            return await self._lock_lost(entry, msg, invocation)
        try:
            invocation.result()
        except Exception as exc:  # the worker reports it as a failed invocation; the trigger abandons
            msg.errors.append(bindings.worker_message(exc))
            log.info("message seq=%s id=%s delivery %s failed: %s", msg.sequence_number, msg.message_id,
                     msg.delivery_count, msg.errors[-1])
            return self._abandon(msg)
        if msg.lose_lock_times > 0:
            # At-least-once: the lock expired (or the connection dropped) before Complete reached the
            # broker, so the message is delivered again although the function succeeded.
            msg.lose_lock_times -= 1
            msg.errors.append("MessageLockLostException: the lock expired before the message was completed")
            return self._abandon(msg)
        msg.settlement = "completed"
        self.messages.remove(msg)
        return msg.settlement

    def _abandon(self, msg: QueuedMessage) -> Settlement:
        """Back to the queue, or to the dead-letter queue once maxDeliveryCount deliveries are used up."""
        if msg.delivery_count >= self.max_delivery_count:
            msg.settlement = "deadLettered"
            msg.dead_letter_reason = "MaxDeliveryCountExceeded"
            msg.dead_letter_description = (f"Message could not be consumed after {self.max_delivery_count} "
                                           "delivery attempts.")
        else:
            msg.settlement = "abandoned"
        return msg.settlement

    async def deliver(self, entry: FunctionEntry, msg: QueuedMessage, *, until_settled: bool = True) -> Settlement:
        """Deliver now. `until_settled` redelivers at once until completed or dead-lettered; otherwise
        one delivery happens now and any redelivery runs in the background on devhost's clock."""
        settlement = await self.deliver_once(entry, msg)
        while until_settled and settlement == "abandoned":
            settlement = await self.deliver_once(entry, msg)
        if settlement == "abandoned":
            self._background(self._redeliver(entry, msg))
        if until_settled and settlement == "lockLost":
            while msg.redelivery is not None:  # the deliveries that followed the lost lock decide
                redelivery, msg.redelivery = msg.redelivery, None
                await redelivery
            settlement = msg.settlement
        return settlement

    async def admin_invoke(self, entry: FunctionEntry, doc: Any) -> tuple[int, dict[str, Any]]:
        """`POST /admin/functions/{name}` for a Service Bus function: enqueue the message described by `doc`
        and deliver it. By default delivery goes on until the message is settled; `"deliverUntilSettled":
        false` makes one delivery and leaves redelivery to the background. `"loseLockAfterSuccess": n`
        makes the next n successful deliveries lose their lock (at-least-once). Answers 202 when the
        message was completed, 500 when the function failed (abandoned or dead-lettered)."""
        unknown = sorted(set(doc) - ADMIN_INVOKE_FIELDS) if isinstance(doc, dict) else ["<not an object>"]
        if unknown:  # a typo must not silently become a message without that property
            return 400, {"error": {"code": "BadRequest", "message": f"unknown fields: {unknown}"}}
        body = doc.get("input", "")
        raw = body.encode("utf-8", errors="surrogatepass") if isinstance(body, str) else json.dumps(body).encode()
        msg = self.enqueue(
            raw, message_id=doc.get("messageId"), correlation_id=doc.get("correlationId"),
            reply_to=doc.get("replyTo"), content_type=doc.get("contentType"),
            subject=doc.get("subject"), to=doc.get("to"), session_id=doc.get("sessionId"),
            application_properties=doc.get("applicationProperties") or {},
            lose_lock_times=int(doc.get("loseLockAfterSuccess", 0)))
        settlement = await self.deliver(entry, msg, until_settled=bool(doc.get("deliverUntilSettled", True)))
        answer: dict[str, Any] = {"settlement": settlement, "deliveryCount": msg.delivery_count,
                                  "messageId": msg.message_id, "sequenceNumber": msg.sequence_number}
        if settlement != "completed":
            answer["error"] = msg.errors[-1] if msg.errors else None
        return (202 if settlement == "completed" else 500), answer

    async def _redeliver(self, entry: FunctionEntry, msg: QueuedMessage) -> None:
        settlement: Settlement = "abandoned"
        while settlement == "abandoned" and msg.settlement == "abandoned":
            await self.clock.sleep(0)  # an abandoned message is available again at once
            settlement = await self.deliver_once(entry, msg)  # lockLost: its own redelivery took over

    def _background(self, work: Awaitable[None]) -> asyncio.Task[None]:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def deliver_later(self, entry: FunctionEntry, msg: QueuedMessage) -> None:
        """A message sent to the queue (not through the admin API): the trigger picks it up in the background."""
        self._background(self._deliver_quietly(entry, msg))

    async def _deliver_quietly(self, entry: FunctionEntry, msg: QueuedMessage) -> None:
        await self.deliver(entry, msg, until_settled=False)

    async def idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
