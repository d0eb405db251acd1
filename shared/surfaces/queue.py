"""Service Bus requests: the same JSON as POST /api/reimage, with message properties honoured.

Permanent failures complete the message and publish a `reimager.request.rejected` event (also to
ReplyTo), so nothing is lost silently. Transient failures raise, so Service Bus redelivers and
dead-letters after maxDeliveryCount.

The idempotency key is the body's `requestId`, else the MessageId, else the broker's SequenceNumber
(`sb-seq:{n}`): all three are the same on every redelivery of one message. A message with none of
them is refused, because a key made up per delivery would let each redelivery reimage again.

The Rejected path must not fail on what the message holds: nesting is bounded before parsing
(checked without recursion), and the event's text fields drop lone surrogates, which cannot be
encoded as UTF-8.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

from shared import runtime
from shared.domain.errors import ApiError, ErrorCode, ReimagerError
from shared.domain.events import EventData, EventType, build_event
from shared.domain.status import EventStatus
from shared.domain.targets import TargetError, parse_target
from shared.surfaces.json_body import parse_json
from shared.surfaces.requests import submit_request
from shared.workflow.intake import Planned

log = logging.getLogger("reimager.queue")

TEXT_LIMIT = 256
_SURROGATE = re.compile("[\ud800-\udfff]")


def safe_text(value: Any, limit: int = TEXT_LIMIT) -> str | None:
    """A string fit for an event: at most `limit` characters, lone surrogates replaced by U+FFFD."""
    if not isinstance(value, str):
        return None
    return _SURROGATE.sub("\ufffd", value[:limit])


def idempotency_default(message_id: str | None, sequence_number: int | None) -> str | None:
    """The key when the body has no requestId: MessageId, else the broker's SequenceNumber."""
    if message_id:
        return message_id
    if sequence_number is not None:
        return f"sb-seq:{sequence_number}"
    return None


@dataclass(frozen=True)
class Handled:
    """What became of a message that is to be completed (a transient failure raises instead, so the trigger
    abandons it and Service Bus redelivers it)."""

    outcome: Literal["accepted", "duplicate", "ended", "rejected"]  # ended: accepted, then failed (its own event)
    operation_id: str | None = None
    status: str | None = None  # the operation's status, when there is one
    error: ApiError | None = None


async def handle_message(body: bytes, *, message_id: str | None, correlation_id: str | None,
                         reply_to: str | None, client: Any, sequence_number: int | None = None) -> Handled:
    data: Any = None
    default_key = idempotency_default(message_id, sequence_number)
    try:
        data = parse_json(body)  # bounds the nesting before parsing: no RecursionError, ever
        if isinstance(data, dict) and correlation_id and "correlationId" not in data:
            data = {**data, "correlationId": correlation_id}
        if default_key is None and not (isinstance(data, dict) and data.get("requestId")):
            raise ReimagerError(ErrorCode.MISSING_IDEMPOTENCY_KEY,
                                "The message has no requestId, no MessageId and no SequenceNumber: without a key "
                                "that is stable across redeliveries it could be reimaged more than once.",
                                target="requestId")
        result = await submit_request(data, client, trigger="queue", default_key=default_key, reply_to=reply_to,
                                      reply_correlation_id=message_id)
    except ReimagerError as exc:
        if exc.extra.get("completed"):
            # Accepted, then the submission failed: the operation's own terminal event says so.
            return Handled("ended", exc.extra.get("operationId"), error=exc.error)
        if exc.transient:
            log.warning("transient failure for message %s, leaving it to Service Bus: %s", default_key, exc.code)
            raise
        await _reject(data, exc, message_id, default_key, correlation_id, reply_to)
        return Handled("rejected", error=exc.error)
    if isinstance(result, Planned):  # a dry run: nothing to follow
        return Handled("accepted")
    record = result.record
    return Handled("duplicate" if result.duplicate else "accepted", record.operation_id, record.public_status)


def _scrubbed_error(error: ApiError) -> ApiError:
    """The error with every text field made encodable (a detail's target can echo a key from the body)."""
    doc = error.model_dump()
    for item in [doc, *doc.get("details", [])]:
        for name in ("code", "message", "target"):
            if isinstance(item.get(name), str):
                item[name] = _SURROGATE.sub("\ufffd", item[name])
    return ApiError.model_validate(doc)


async def _reject(data: Any, exc: ReimagerError, message_id: str | None, key: str | None,
                  correlation_id: str | None, reply_to: str | None) -> None:
    fields = data if isinstance(data, dict) else {}
    target = None
    try:
        if isinstance(fields.get("target"), str):
            target = safe_text(parse_target(fields["target"]).id, 2048)
    except TargetError:
        target = None
    event = build_event(EventType.REJECTED, EventData(
        operation_id=None, request_id=safe_text(fields.get("requestId")) or safe_text(key),
        correlation_id=safe_text(fields.get("correlationId")) or safe_text(correlation_id), target=target,
        status=EventStatus.REJECTED, error=_scrubbed_error(exc.error), trigger="queue",
        requested_by=safe_text(fields.get("requestedBy")), reason=safe_text(fields.get("reason"))),
        unique=f"msg:{key}" if key else None)
    await runtime.get().publisher.publish(event, reply_to=safe_text(reply_to, 260),
                                      reply_correlation_id=safe_text(message_id))
    log.info("rejected message %s: %s", key, exc.code)
