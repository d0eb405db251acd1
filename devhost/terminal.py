"""What devhost prints while it serves: one line per request, one per operation state change.

Lines carry no secrets: a request line has the method, the path (never the query, where `?code=` is the
function key) and the answer; an operation line has the event's status and target name, never its body.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from reimager.names import short_target  # one way to name a target for operators (the CLI's too)

if TYPE_CHECKING:
    from shared.domain.events import CloudEvent, Publisher

log = logging.getLogger("devhost.terminal")
request_log = logging.getLogger("devhost.requests")  # its own logger: the demo shows these only with -v
_LOGGED_PREFIXES = ("/api/", "/admin/")
PRINTED_IDS = 10_000  # the event ids remembered so that a re-sent event is printed once
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_lines(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`POST /api/reimage 202 14ms` for the app's routes (devhost's own introspection routes stay quiet)."""
    if not request.path.startswith(_LOGGED_PREFIXES):
        return await handler(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed = (time.perf_counter() - started) * 1000
        request_log.info("%s %s %d %.0fms", request.method, request.path[:200], status, elapsed)


def event_line(event: CloudEvent) -> str:
    """`op-1a2b... Succeeded web-linux-01 (http) health=Healthy`: the operation's new state, nothing more."""
    data = event.data
    where = short_target(data.target)
    # a scale set instance's name already says which, and so does a Flexible member's own VM name
    if data.instance_ids and "/" not in where and data.instance_ids != [where]:
        where += "[" + ",".join(data.instance_ids[:5]) + (",..." if len(data.instance_ids) > 5 else "") + "]"
    parts = [data.operation_id or "(no operation)", str(data.status), where, f"({data.trigger})"]
    if data.health:
        parts.append(f"health={data.health}")
    if data.error is not None:
        parts.append(f"error={data.error.code}")
    return " ".join(parts)


class TerminalPublisher:
    """Publishes through `inner`, then prints the operation's new state as one line."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        # Events are sent at least once (a redelivered message or a retried request publishes its state again,
        # with the same id); a topic's duplicate detection drops the copy, and so does this log.
        self._printed: OrderedDict[str, None] = OrderedDict()

    async def reply(self, event: CloudEvent, queue: str, correlation_id: str | None) -> None:
        await self.inner.reply(event, queue, correlation_id)

    async def publish(self, event: CloudEvent) -> None:
        await self.inner.publish(event)
        if event.id in self._printed:
            return
        self._printed[event.id] = None
        if len(self._printed) > PRINTED_IDS:
            self._printed.popitem(last=False)
        try:
            log.info("%s", event_line(event))
        except Exception:  # a terminal line is never worth failing a publish for
            log.debug("could not describe event %s", getattr(event, "id", "?"), exc_info=True)

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # anything else the app reads from its publisher
        return getattr(self.inner, name)
