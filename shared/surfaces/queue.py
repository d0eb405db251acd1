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
        if reply_to is not None and (why := reply_queue(reply_to, runtime.get().settings)) is not None:
            raise ReimagerError(ErrorCode.INVALID_REQUEST, why, target="replyTo")
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
    publisher = runtime.get().publisher
    await publisher.publish(event)
    log.info("rejected message %s: %s", key, exc.code)
    if reply_to is not None and reply_queue(reply_to, runtime.get().settings) is None:
        try:  # the topic has it; the ReplyTo copy is a courtesy that cannot be retried (no operation holds it)
            await publisher.reply(event, reply_to, safe_text(message_id))
        except Exception as send_error:
            log.warning("could not deliver the rejection of message %s to its ReplyTo queue: %s", key,
                        type(send_error).__name__)


# Service Bus entity names: letters, digits, '.', '-', '_' and '/', starting and ending with a letter or digit.
_QUEUE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,258}[A-Za-z0-9])?")


def reply_queue(reply_to: str, settings: Any) -> str | None:
    """Why a message's ReplyTo is not a queue of this namespace that reimager may answer to, or None when it is.
    A name, or `sb://<this namespace>/<name>`; never the requests queue itself (an answer would come back in as a
    request)."""
    name = reply_to
    if "://" in reply_to:
        scheme, _, rest = reply_to.partition("://")
        host, _, name = rest.partition("/")
        namespace = (settings.service_bus_namespace or "").lower()
        if scheme.lower() != "sb" or not namespace or host.lower() != namespace:
            return "ReplyTo names another Service Bus namespace; reimager answers only to queues of its own"
    if not _QUEUE_NAME.fullmatch(name):
        return ("ReplyTo is not a queue name: 1-260 letters, digits, '.', '-', '_' or '/', starting and ending "
                "with a letter or digit")
    if name.lower() == settings.requests_queue.lower():
        return "ReplyTo is the requests queue itself: a completion event would come back in as a request"
    return None
