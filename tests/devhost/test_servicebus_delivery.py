"""devhost's Service Bus queue delivers as the real trigger does, and the function gets a ServiceBusMessage
built by the library's ServiceBusMessageInConverter from trigger metadata in the host's shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func
import pytest

from devhost.clock import VirtualClock
from devhost.functions import FunctionIndex, index_app
from devhost.servicebus import ServiceBusQueues

bp = df.Blueprint()
SEEN: list[func.ServiceBusMessage] = []
FAIL = {"times": 0}


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="q", connection="SB")
async def record(msg: func.ServiceBusMessage) -> None:
    SEEN.append(msg)
    if FAIL["times"] > 0:
        FAIL["times"] -= 1
        raise RuntimeError("transient")


@pytest.fixture(scope="module")
def index() -> FunctionIndex:
    app = df.DFApp()
    app.register_functions(bp)
    return index_app(app)


@pytest.fixture
def queues() -> ServiceBusQueues:
    SEEN.clear()
    FAIL["times"] = 0
    return ServiceBusQueues(VirtualClock(), lambda: "{}")


async def test_message_properties_reach_the_function_in_the_libraries_types(index: FunctionIndex,
                                                                           queues: ServiceBusQueues) -> None:
    msg = queues.enqueue(b'{"a": 1}', message_id="m-1", correlation_id="c-1", reply_to="r",
                         content_type="application/json", application_properties={"k": "v", "n": 2})
    assert await queues.deliver(index.entries["record"], msg) == "completed"
    got = SEEN[0]
    assert isinstance(got, func.ServiceBusMessage)
    assert got.get_body() == b'{"a": 1}'
    assert (got.message_id, got.correlation_id, got.reply_to, got.content_type) == ("m-1", "c-1", "r",
                                                                                    "application/json")
    assert got.delivery_count == 1 and got.sequence_number == msg.sequence_number
    assert got.application_properties == {"k": "v", "n": 2} and got.user_properties == {"k": "v", "n": 2}
    # EnqueuedTimeUtc is a .NET DateTime of Kind Unspecified: the library parses it as a naive datetime
    assert isinstance(got.enqueued_time_utc, datetime) and got.enqueued_time_utc.tzinfo is None
    assert got.lock_token and got.expires_at_utc is not None
    assert got.metadata is not None and got.metadata["DeliveryCount"] == 1  # json text, decoded


async def test_no_message_id_means_none(index: FunctionIndex, queues: ServiceBusQueues) -> None:
    msg = queues.enqueue(b"x")
    await queues.deliver(index.entries["record"], msg)
    assert SEEN[0].message_id is None and SEEN[0].sequence_number == msg.sequence_number


async def test_failure_abandons_and_redelivers_with_the_same_ids(index: FunctionIndex,
                                                               queues: ServiceBusQueues) -> None:
    FAIL["times"] = 2
    msg = queues.enqueue(b"x", message_id="m-2")
    assert await queues.deliver(index.entries["record"], msg) == "completed"
    assert [m.delivery_count for m in SEEN] == [1, 2, 3]
    assert {(m.message_id, m.sequence_number) for m in SEEN} == {("m-2", msg.sequence_number)}
    assert len({m.lock_token for m in SEEN}) == 3  # a new lock each delivery
    assert queues.deadletter == [] and msg.errors == ["RuntimeError: transient"] * 2


async def test_dead_letter_after_max_delivery_count(index: FunctionIndex, queues: ServiceBusQueues) -> None:
    FAIL["times"] = 99
    msg = queues.enqueue(b"x", message_id="m-3")
    assert await queues.deliver(index.entries["record"], msg) == "deadLettered"
    assert [m.delivery_count for m in SEEN] == [1, 2, 3, 4, 5]
    assert queues.deadletter == [msg] and msg.dead_letter_reason == "MaxDeliveryCountExceeded"


async def test_invalid_utf8_arrives_as_replacement_characters(index: FunctionIndex,
                                                              queues: ServiceBusQueues) -> None:
    # MessageToStringConverter: strict UTF-8 first, then BinaryData.ToString(), which replaces bad bytes
    await queues.deliver(index.entries["record"], queues.enqueue(b'{"a": "\xff"}'))
    assert SEEN[0].get_body() == '{"a": "\ufffd"}'.encode()


def _metadata_types(queues: ServiceBusQueues) -> dict[str, Any]:
    msg = queues.enqueue(b"x", message_id="m")
    msg.delivery_count = 1
    return {k: d.type for k, d in msg.metadata("f", queues.clock.utcnow()).items()}


def test_metadata_is_in_the_hosts_shapes(queues: ServiceBusQueues) -> None:
    types = _metadata_types(queues)
    # GrpcMessageConversionExtensions.ToRpc: strings as string; ints, longs, DateTimes, dicts as json
    assert types["MessageId"] == "string" and types["DeliveryCount"] == "json"
    assert types["SequenceNumber"] == "json" and types["EnqueuedTimeUtc"] == "json"
    assert types["UserProperties"] == "json" and "CorrelationId" not in types  # null: not sent


def test_datetimes_are_written_as_json_net_writes_them() -> None:
    from datetime import UTC

    from devhost.bindings import newtonsoft_datetime

    assert newtonsoft_datetime(datetime(2026, 1, 1, 0, 0, 0, 123400)) == "2026-01-01T00:00:00.1234"  # Unspecified
    assert newtonsoft_datetime(datetime(2026, 1, 1)) == "2026-01-01T00:00:00"
    assert newtonsoft_datetime(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00+00:00"  # DateTimeOffset


def test_sequence_numbers_keep_growing_across_a_restart() -> None:
    clock = VirtualClock()
    first = ServiceBusQueues(clock, lambda: "{}").enqueue(b"x").sequence_number
    clock.advance(1)
    second = ServiceBusQueues(clock, lambda: "{}").enqueue(b"x").sequence_number  # a new devhost process
    assert second > first
