"""The Service Bus stand-in at the SDK boundary: the app's own ServiceBusPublisher, real ServiceBusMessage
objects, the SDK's own sender code and retry policy, and the broker's refusals and duplicate detection
(docs/fidelity.md, rows O1-O8)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusAuthorizationError,
    ServiceBusServerBusyError,
)

from devhost.broker import Broker, SendFault, StandInServiceBusClient
from devhost.broker.broker import DEDUPE_WINDOW
from devhost.broker.entities import duration_seconds
from devhost.clock import VirtualClock
from shared.adapters.publishers import ServiceBusPublisher
from shared.settings import Settings
from tests.unit.adapters.test_publishers import event

ROOT = Path(__file__).resolve().parents[2]
TOPIC, REQUESTS = "reimage-events", "reimage-requests"


@pytest.fixture
def broker() -> Broker:
    return Broker(VirtualClock(), topic=TOPIC, requests_queue=REQUESTS)


def publisher(broker: Broker, **client: Any) -> ServiceBusPublisher:
    return ServiceBusPublisher(Settings(), client=StandInServiceBusClient(broker, **client))


def outcomes(broker: Broker) -> list[tuple[str, str]]:
    return [(s["entity"], s["outcome"]) for s in broker.sends]


async def test_an_unknown_reply_to_raises_the_sdks_entity_not_found(broker: Broker) -> None:
    pub = publisher(broker)
    ev = event()
    await pub.publish(ev)
    with pytest.raises(MessagingEntityNotFoundError, match="could not be found"):
        await pub.reply(ev, "no-such-queue", "m-1")
    assert outcomes(broker) == [(TOPIC, "delivered")]
    await pub.close()


async def test_a_reply_to_without_the_send_claim_raises_the_sdks_authorization_error(broker: Broker) -> None:
    broker.create_queue("locked", send_allowed=False)
    pub = publisher(broker)
    with pytest.raises(ServiceBusAuthorizationError, match="'Send' claim"):
        await pub.reply(event(), "locked", "m-1")
    await pub.close()


async def test_the_link_fails_at_the_first_send_not_when_the_sender_is_made(broker: Broker) -> None:
    client = StandInServiceBusClient(broker)
    sender = client.get_queue_sender("missing")  # no error yet: the SDK attaches the link lazily
    with pytest.raises(MessagingEntityNotFoundError):
        async with sender:
            pass
    await client.close()


async def test_a_reply_reaches_an_existing_queue_with_the_requests_message_id_as_correlation(broker: Broker) -> None:
    broker.create_queue("caller-replies")
    pub = publisher(broker)
    ev = event()
    await pub.reply(ev, "caller-replies", "m-42")
    [reply] = broker.replies()
    assert (reply.entity, reply.message_id, reply.correlation_id, reply.subject) == (
        "caller-replies", ev.id, "m-42", "reimager.operation.completed")
    assert json.loads(reply.body)["data"]["operationId"] == "op-1"
    await pub.close()


async def test_a_message_over_256_kb_is_refused_and_not_retried(broker: Broker) -> None:
    client = StandInServiceBusClient(broker)
    async with client.get_topic_sender(TOPIC) as sender:
        with pytest.raises(MessageSizeExceededError, match="exceeds the limit"):
            await sender.send_messages(ServiceBusMessage(b"x" * (256 * 1024)))
        await sender.send_messages(ServiceBusMessage(b"x" * (255 * 1024)))
    assert outcomes(broker) == [(TOPIC, "refused: MessageSizeExceeded"), (TOPIC, "delivered")]
    await client.close()


async def test_server_busy_is_retried_by_the_sdk_and_raised_once_its_retries_are_spent(broker: Broker) -> None:
    broker.faults.append(SendFault(error="ServerBusy", times=1))
    pub = publisher(broker, retry_backoff_factor=0.001)
    await pub.publish(event())
    assert outcomes(broker) == [(TOPIC, "refused: ServerBusy"), (TOPIC, "delivered")]
    broker.faults.append(SendFault(entity="reimage-*", error="ServerBusy", times=4))  # 1 try + 3 retries
    with pytest.raises(ServiceBusServerBusyError):
        await pub.publish(event())
    assert outcomes(broker)[2:] == [(TOPIC, "refused: ServerBusy")] * 4
    await pub.close()


async def test_a_resend_within_the_window_is_accepted_and_dropped_after_it_delivered(broker: Broker) -> None:
    assert isinstance(broker.clock, VirtualClock)
    pub = publisher(broker)
    ev = event()
    await pub.publish(ev)
    broker.clock.advance(duration_seconds(DEDUPE_WINDOW) - 1)
    await pub.publish(ev)  # succeeds, as Azure answers a duplicate
    broker.clock.advance(1)
    await pub.publish(ev)  # the broker no longer remembers the id
    assert outcomes(broker) == [(TOPIC, "delivered"), (TOPIC, "duplicate"), (TOPIC, "delivered")]
    assert broker.entities[TOPIC].messages == []  # the topic's go to its subscribers, not into memory
    await pub.close()


async def test_an_accepted_send_that_timed_out_is_resent_by_the_sdk(broker: Broker) -> None:
    broker.create_queue("plain")  # a queue without duplicate detection
    broker.faults += [SendFault(entity=TOPIC, error="AcceptedThenTimeout"),
                      SendFault(entity="plain", error="AcceptedThenTimeout")]
    pub = publisher(broker, retry_backoff_factor=0.001)
    ev = event()
    await pub.publish(ev)
    await pub.reply(ev, "plain", "m-1")
    assert outcomes(broker) == [(TOPIC, "delivered"), (TOPIC, "duplicate"),  # the topic drops the resend
                                ("plain", "delivered"), ("plain", "delivered")]  # the plain queue does not
    await pub.close()


def test_the_dedupe_window_is_the_one_deployed() -> None:
    bicep = (ROOT / "infra/core/servicebus.bicep").read_text()
    assert re.findall(r"duplicateDetectionHistoryTimeWindow: '([^']+)'", bicep) == [DEDUPE_WINDOW, DEDUPE_WINDOW]
    assert duration_seconds("PT1H") == 3600 and duration_seconds("P7D") == 7 * 86400
    assert duration_seconds("PT20S") == 20 and duration_seconds("PT1M30S") == 90
