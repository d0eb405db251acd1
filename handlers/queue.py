"""Service Bus trigger on the requests queue (REQUESTS_QUEUE)."""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

bp = df.Blueprint()


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%REQUESTS_QUEUE%", connection="ServiceBusConnection")
@bp.durable_client_input(client_name="client")
async def reimage_queue(msg: func.ServiceBusMessage, client: df.DurableOrchestrationClient) -> None:
    from shared.surfaces import queue as messages  # lazily: cold start

    await messages.handle_message(msg.get_body(), message_id=msg.message_id, correlation_id=msg.correlation_id,
                                  reply_to=msg.reply_to, sequence_number=msg.sequence_number, client=client)
