"""Service Bus requests: the same JSON as POST /api/reimage, with message properties honoured.

Permanent failures complete the message and publish a `reimager.request.rejected` event (also to
ReplyTo), so nothing is lost silently. Transient failures raise, so Service Bus redelivers and
dead-letters after maxDeliveryCount.
"""

from __future__ import annotations

import logging
from typing import Any

from shared import runtime
from shared.api import answer, parse_json, submit_request
from shared.errors import ApiError, ReimagerError
from shared.events import REJECTED, EventData, build_event
from shared.targets import TargetError, parse_target

log = logging.getLogger("reimager.queue")


async def handle_message(body: bytes, *, message_id: str | None, correlation_id: str | None,
                         reply_to: str | None, client: Any) -> dict[str, Any]:
    data: Any = None
    try:
        data = parse_json(body)
        if isinstance(data, dict) and correlation_id and "correlationId" not in data:
            data = {**data, "correlationId": correlation_id}
        result = await submit_request(data, client, trigger="queue", default_key=message_id, reply_to=reply_to,
                                      reply_correlation_id=message_id)
        outcome = answer(result, "")
        return {"status": outcome.status, **outcome.body}
    except ReimagerError as exc:
        if exc.extra.get("completed"):
            # Accepted, then the submission failed: the operation's own terminal event says so.
            return {"status": exc.status, **exc.body()}
        if exc.transient:
            log.warning("transient failure for message %s, leaving it to Service Bus: %s", message_id, exc.code)
            raise
        await _reject(data, exc, message_id, correlation_id, reply_to)
        return {"status": exc.status, **exc.body()}


async def _reject(data: Any, exc: ReimagerError, message_id: str | None, correlation_id: str | None,
                  reply_to: str | None) -> None:
    fields = data if isinstance(data, dict) else {}

    def text(name: str) -> str | None:
        value = fields.get(name)
        return value[:256] if isinstance(value, str) else None

    target = None
    try:
        target = parse_target(str(fields.get("target"))).id if fields.get("target") else None
    except TargetError:
        target = None
    event = build_event(REJECTED, EventData(
        operation_id=None, request_id=text("requestId") or message_id, correlation_id=text("correlationId")
        or correlation_id, target=target, status="Rejected", error=ApiError.model_validate(exc.error.model_dump()),
        trigger="queue", requested_by=text("requestedBy"), reason=text("reason")), unique=f"msg:{message_id}")
    await runtime.get().publisher.publish(event, reply_to=reply_to, reply_correlation_id=message_id)
    log.info("rejected message %s: %s", message_id, exc.code)
