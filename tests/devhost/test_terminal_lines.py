"""devhost's one-line event log: it names the machine once, whatever kind of target it is."""
import logging

import pytest

from devhost.terminal import TerminalPublisher, event_line
from shared.domain.events import CloudEvent, EventData, EventType, build_event

RG = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/demo/providers/Microsoft.Compute"


def line(target: str, instance_ids: list[str] | None) -> str:
    data = EventData(operation_id="op-1", target=target, instance_ids=instance_ids, status="Succeeded",
                     trigger="alert", health="Healthy")
    return event_line(build_event(EventType.COMPLETED, data))


def test_a_flexible_members_vm_name_is_not_repeated_as_its_instance() -> None:
    assert line(f"{RG}/virtualMachines/flex_0a1b", ["flex_0a1b"]) == "op-1 Succeeded flex_0a1b (alert) health=Healthy"


def test_a_uniform_set_lists_its_instances_and_a_lone_instance_is_named_by_its_path() -> None:
    assert line(f"{RG}/virtualMachineScaleSets/workers", ["0", "1"]).startswith("op-1 Succeeded workers[0,1] ")
    assert " workers/2 " in line(f"{RG}/virtualMachineScaleSets/workers/virtualMachines/2", ["2"])
    many = line(f"{RG}/virtualMachineScaleSets/workers", [str(i) for i in range(7)])
    assert " workers[0,1,2,3,4,...] " in many


async def test_an_event_sent_twice_is_printed_once_and_published_twice(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[str] = []

    class Inner:
        async def publish(self, event: CloudEvent) -> None:
            sent.append(event.id)

    publisher = TerminalPublisher(Inner())  # type: ignore[arg-type]
    data = EventData(operation_id="op-2", target=f"{RG}/virtualMachines/web", status="Queued", trigger="queue")
    caplog.set_level(logging.INFO, logger="devhost.terminal")
    for _ in range(2):  # a redelivered message publishes its state again, with the same id
        await publisher.publish(build_event(EventType.COMPLETED, data))
    await publisher.publish(build_event(EventType.COMPLETED, data.model_copy(update={"status": "Succeeded"})))
    assert len(sent) == 3  # the log dedupes, never the publish: at-least-once is the publisher's contract
    assert [r.getMessage() for r in caplog.records] == ["op-2 Queued web (queue)", "op-2 Succeeded web (queue)"]
