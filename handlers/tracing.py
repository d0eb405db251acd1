"""The span every durable activity runs in: its operation's, so ARM calls and logs made by the activity
carry the operation id, target and trigger (shared/adapters/telemetry.py says where spans come from)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def activity_span(fn: _F) -> _F:
    """Decorates a durable activity whose input names an `operationId`: it runs in that operation's span.

    The target and trigger are read from the ledger, and only while tracing is on: with telemetry off
    the activity costs nothing more. The payload itself never reaches the span (it is not a secret
    today; keeping it out keeps it that way).
    """

    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> Any:
        from shared.adapters.telemetry import SPAN_ACTIVITY, operation_span, tracing  # on first use: cold start

        payload = next((v for v in (*args, *kwargs.values()) if isinstance(v, dict)), {})
        operation_id = payload.get("operationId") if isinstance(payload.get("operationId"), str) else None
        if not tracing():
            return await fn(*args, **kwargs)
        target = trigger = None
        if operation_id:
            from shared import runtime  # on first use: the runtime loads settings, cold start does not

            try:
                record = await runtime.get().ledger.get(operation_id)
            except Exception:  # telemetry must never fail the activity
                record = None
            if record is not None:
                target, trigger = record.target, record.trigger
        with operation_span(operation_id, target, trigger, name=f"{SPAN_ACTIVITY} {fn.__name__}"):
            return await fn(*args, **kwargs)

    return run  # type: ignore[return-value]
