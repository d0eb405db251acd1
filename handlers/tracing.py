"""Telemetry: OpenTelemetry to Application Insights, and the one list of names reimager emits.

`configure(settings)` turns on the Azure Monitor OpenTelemetry distro only when
APPLICATIONINSIGHTS_CONNECTION_STRING is set, and imports it only then (it costs hundreds of
milliseconds of cold start, and local runs and tests do without it). `shared.runtime.get()`
calls it once per process, on first use rather than at import.

Where the spans come from:
- `shared.api.submit_request` (every HTTP, alert and queue request) runs inside
  `operation_span(name=SPAN_INTAKE, trigger=..., target=...)`; intake `bind`s the operation id as
  soon as it knows it, so the preflight GET and the reimage POST carry it too.
- `activity_span` wraps the durable activities (handlers/monitor.py): the poll's ARM GET carries
  the operation, whose target and trigger are read from the ledger (only when tracing is on).
- Inside any of them every span started (the ARM dependency spans that azure-core's
  DistributedTracingPolicy makes included) and every log record emitted carries
  `reimager.operation_id`, `reimager.target` and `reimager.trigger`. ARM's `x-ms-request-id`
  lands on each ARM dependency span as `az.service_request_id` (azure-core sets it; the distro
  routes azure-core tracing to OpenTelemetry).
- The trace continues across the durable hop: the durable client sends the current
  `traceparent` with `start_new`, the extension (distributed tracing V2, host.json) carries it
  to the activities, and the worker attaches it (PYTHON_ENABLE_OPENTELEMETRY); devhost does the same.

Custom events: every CloudEvent the app publishes is also recorded as a custom event of the
same name (`TrackedPublisher`, installed by the Runtime), and HTTP/alert refusals, which publish
no CloudEvent, as `reimager.request.rejected` (`refused`). Names and attribute keys must come
from the lists below: infra/app/workbook.json queries only those, and
tests/unit/test_telemetry_workbook.py checks that it does and that the app emits them.

Nothing here may carry a secret: the attribute keys are a closed list of non-secret facts,
and azure-core records no request bodies (so never an adminPassword or customData).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from shared.adapters.telemetry import SPAN_ACTIVITY, operation_span, tracing

if TYPE_CHECKING:
    pass


_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def activity_span(fn: _F) -> _F:
    """Decorates a durable activity whose input names an `operationId`: it runs in that operation's span.

    The target and trigger are read from the ledger, and only while tracing is on: with telemetry off
    the activity costs nothing more. The payload itself never reaches the span (it is not a secret
    today; keeping it out keeps it that way).
    """

    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> Any:
        payload = next((v for v in (*args, *kwargs.values()) if isinstance(v, dict)), {})
        operation_id = payload.get("operationId") if isinstance(payload.get("operationId"), str) else None
        if not tracing():
            return await fn(*args, **kwargs)
        target = trigger = None
        if operation_id:
            from shared import runtime

            try:
                record = await runtime.get().ledger.get(operation_id)
            except Exception:  # telemetry must never fail the activity
                record = None
            if record is not None:
                target, trigger = record.target, record.trigger
        with operation_span(operation_id, target, trigger, name=f"{SPAN_ACTIVITY} {fn.__name__}"):
            return await fn(*args, **kwargs)

    return run  # type: ignore[return-value]
