"""A request in wire form, from any entry surface, into intake: validated, traced, submitted."""

from __future__ import annotations

from typing import Any

from shared import runtime
from shared.adapters.telemetry import SPAN_INTAKE, bind, operation_span, refused
from shared.domain.errors import ReimagerError
from shared.domain.events import Trigger
from shared.domain.principal import Principal
from shared.domain.request import parse_request
from shared.workflow.intake import Intake, Result


async def submit_request(data: Any, client: Any, *, trigger: Trigger = "http", default_key: str | None = None,
                         reply_to: str | None = None, reply_correlation_id: str | None = None,
                         principal: Principal | None = None) -> Result:
    rt = runtime.get()
    # One span per request; intake binds the operation id to it once the key is known.
    with operation_span(trigger=trigger, name=SPAN_INTAKE):
        try:
            request = parse_request(data, default_subscription_id=rt.settings.default_subscription_id,
                                    max_instances=rt.settings.max_instances_per_request)
            bind(target=request.resolved_target.id)
            return await Intake(rt, client).submit(request, trigger=trigger, default_key=default_key,
                                                   reply_to=reply_to, reply_correlation_id=reply_correlation_id,
                                                   principal=principal)
        except ReimagerError as exc:
            if trigger != "queue":  # a refused queue message publishes a Rejected event, recorded with it
                refused(exc, trigger)
            raise
