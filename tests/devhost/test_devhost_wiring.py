"""devhost puts its stand-ins between the app and Azure's data services by default: the ledger reaches Azurite
through the storage proxy, events leave through the Service Bus stand-in (and still appear at
`GET /devhost/events`, in the JSON of the app's own EVENTS_FILE mode), and the switches reach them.
(`new_host` is the shared devhost fixture, tests/devhost/conftest.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from azure.servicebus import ServiceBusMessage

from devhost.__main__ import hostile_options, parse_args
from devhost.broker import StandInServiceBusClient
from devhost.outputs import DEMO_REPLY_QUEUE
from shared.adapters.publishers import FilePublisher
from shared.domain.events import CloudEvent
from tests.integration.conftest import LINUX_VM, WINDOWS_VM, Host


async def test_the_ledger_goes_through_the_storage_proxy_and_its_routes(new_host: Callable[..., Any],
                                                                        azurite_storage: str) -> None:
    host: Host = await new_host()
    dh = host.dh
    assert dh.storage is not None and dh.settings is not None and dh.settings.storage_connection_string
    assert dh.storage.url in dh.settings.storage_connection_string.get_secret_value()
    assert dh.storage.url not in azurite_storage
    prefix = dh.settings.ledger_table_prefix
    # the next insert into the operations table is applied, then answered 500
    fault = {"match": {"table": f"{prefix}ops", "method": "POST"}, "effect": "applyThen500"}
    async with host.http.post(host.url + "/devhost/storage/faults", json=fault) as r:
        assert r.status == 201
    status, body, _ = await host.reimage({"target": LINUX_VM, "requestId": "wired-1"})
    assert status in (202, 500, 503)  # what the app makes of its own write's 409 is the app's business
    async with host.http.get(host.url + "/devhost/storage/requests") as r:
        log = await r.json()
    ops = [e for e in log if e["table"] == f"{prefix}ops" and e["method"] == "POST"]
    assert [(e["status"], e.get("effect")) for e in ops[:2]] == [(500, "applyThen500"), (409, None)]
    assert all(e["table"] is None or e["table"].startswith(prefix) or e["operation"] == "createTable" for e in log)
    async with host.http.get(host.url + "/devhost/storage/faults") as r:
        assert await r.json() == {"faults": [], "chaos": None}


async def test_events_leave_through_the_service_bus_stand_in(new_host: Callable[..., Any]) -> None:
    host: Host = await new_host()
    async with host.http.post(host.url + "/devhost/servicebus/queues", json={"name": "caller-replies"}) as r:
        assert r.status == 201 and (await r.json())["name"] == "caller-replies"
    s, _ = await host.queue({"target": LINUX_VM}, messageId="m-wired", replyTo="caller-replies")
    assert s == 202
    [done] = await host.until_completed()
    # the same line the app's own EVENTS_FILE publisher writes for that event
    event = CloudEvent.model_validate(done)
    local = host.dh.state_dir / "file-publisher.jsonl"
    await FilePublisher(local).publish(event)
    assert json.loads(local.read_text()) == done
    async with host.http.get(host.url + "/devhost/servicebus/replies") as r:
        replies = await r.json()
    assert [(m["queue"], m["messageId"], m["correlationId"]) for m in replies] == [
        ("caller-replies", done["id"], "m-wired")]
    async with host.http.get(host.url + "/devhost/servicebus/sends") as r:
        sends = await r.json()
    assert {s["outcome"] for s in sends} == {"delivered"}
    async with host.http.get(host.url + "/devhost/servicebus/queues") as r:
        names = {q["name"] for q in await r.json()}
    assert {"reimage-events", "reimage-requests", "caller-replies", DEMO_REPLY_QUEUE} <= names


async def test_service_bus_faults_through_devhosts_route(new_host: Callable[..., Any]) -> None:
    host: Host = await new_host()
    async with host.http.post(host.url + "/devhost/servicebus/faults",
                              json={"entity": "reimage-events", "error": "ServerBusy", "times": 1}) as r:
        assert r.status == 201
    async with host.http.get(host.url + "/devhost/servicebus/faults") as r:
        assert [f["error"] for f in await r.json()] == ["ServerBusy"]
    async with host.http.post(host.url + "/devhost/servicebus/faults", json={"error": "Exploded"}) as r:
        assert r.status == 400


async def test_a_message_sent_to_the_requests_queue_reaches_its_trigger(new_host: Callable[..., Any]) -> None:
    host: Host = await new_host()
    assert host.dh.broker is not None
    async with StandInServiceBusClient(host.dh.broker) as client, client.get_queue_sender("reimage-requests") as s:
        await s.send_messages(ServiceBusMessage(json.dumps({"target": WINDOWS_VM}), message_id="m-sent"))
    [done] = await host.until_completed()
    assert (done["data"]["trigger"], done["data"]["requestId"]) == ("queue", "m-sent")


async def test_events_file_only_keeps_the_apps_local_mode(new_host: Callable[..., Any]) -> None:
    host: Host = await new_host(servicebus_stand_in=False)
    assert host.dh.runtime is not None
    assert type(host.dh.runtime._publisher.inner).__name__ == "FilePublisher"  # type: ignore[union-attr]
    await host.reimage({"target": LINUX_VM, "requestId": "file-1"})
    assert len(await host.until_completed()) == 1


def test_the_command_line_switches() -> None:
    options = hostile_options(parse_args(["--hostile", "timer_overlap", "--hostile", "late_activities",
                                          "--storage-chaos", "0.25:9", "--kind", "duplicate_events"]))
    assert options["timer_overlap"] is True and options["servicebus_stand_in"] is True
    assert options["durable_fidelity"].late_activities is True
    assert options["durable_fidelity"].duplicate_events is False
    assert (options["storage_chaos"].rate, options["storage_chaos"].seed) == (0.25, 9)
    plain = hostile_options(parse_args(["--events-file-only"]))
    assert plain["storage_chaos"] is None and plain["timer_overlap"] is False and not plain["servicebus_stand_in"]
    assert plain["durable_fidelity"].late_activities is False


async def test_a_second_host_shares_the_first_ones_arm_and_ledger(new_host: Callable[..., Any],
                                                                  azurite_storage: str) -> None:
    """Several app processes of one scaled-out app (bench/scale_out.py): a host given another's ARM simulator and
    identity endpoint (ExternalArm) serves neither itself, and with storage_proxy=False its ledger is the given
    AzureWebJobsStorage, not a proxy of its own. A request taken by the second is a request of the first's ledger,
    sent to the first's ARM: the same requestId asked of the first is answered with the same operation."""
    from devhost.host import ExternalArm

    first: Host = await new_host()
    assert first.dh.settings is not None and first.dh.storage is not None
    shared = ExternalArm(first.dh.arm_url, first.dh.identity_url, first.dh.issuer.header_secret)
    second: Host = await new_host(external_arm=shared, storage_proxy=False, seed=False, settings={
        "LEDGER_TABLE_PREFIX": first.dh.settings.ledger_table_prefix,
        "AzureWebJobsStorage": first.dh.settings.storage_connection_string.get_secret_value()})  # the first's proxy
    assert second.dh.arm_url == first.dh.arm_url and second.dh.storage is None and not second.dh.sim.resources
    posts = len(first.reimage_posts())
    status, body, _ = await second.reimage({"target": LINUX_VM, "requestId": "shared-1"})
    assert status == 202, body
    assert len(first.reimage_posts()) == posts + 1
    status, again, _ = await first.reimage({"target": LINUX_VM, "requestId": "shared-1"})
    assert status == 202 and again["operationId"] == body["operationId"] and again["duplicate"] is True
