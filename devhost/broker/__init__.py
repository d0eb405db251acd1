"""Service Bus output as hostile as Azure, at the SDK boundary: the broker (entities, duplicate detection,
refusals) and a `ServiceBusClient` whose senders are the SDK's own on a devhost link."""

from devhost.broker.broker import Broker
from devhost.broker.client import StandInServiceBusClient
from devhost.broker.entities import Delivered, SendFault

__all__ = ["Broker", "Delivered", "SendFault", "StandInServiceBusClient"]
