"""Durable bindings: the reimage monitor orchestrator and its activities (poll, submit a batch, read health,
finish).

Function names are the names shared/workflow/orchestration.py calls them by (a test checks they agree);
`shared` is imported on first use to keep it out of cold start.
"""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from handlers.tracing import activity_span  # stdlib only at import: no cold-start cost

bp = df.Blueprint()


@bp.orchestration_trigger(context_name="context")
def reimage_monitor(context: df.DurableOrchestrationContext) -> Any:
    from shared.workflow.orchestrator import monitor_orchestrator  # on first use: cold start

    return monitor_orchestrator(context)


@bp.activity_trigger(input_name="payload")
@activity_span
async def poll_reimage_operation(payload: dict[str, Any]) -> dict[str, Any]:
    from shared import runtime  # on first use: cold start
    from shared.workflow import activities  # on first use: cold start

    return await activities.poll_operation(runtime.get(), payload)


@bp.activity_trigger(input_name="payload")
@bp.durable_client_input(client_name="client")
@activity_span
async def finish_reimage_operation(payload: dict[str, Any], client: df.DurableOrchestrationClient) -> dict[str, Any]:
    from shared import runtime  # on first use: cold start
    from shared.workflow import activities  # on first use: cold start

    # The client starts the next batch when this one hands its lease over.
    return await activities.finish_operation(runtime.get(), payload, client)


@bp.activity_trigger(input_name="payload")
@bp.durable_client_input(client_name="client")
@activity_span
async def submit_reimage_batch(payload: dict[str, Any], client: df.DurableOrchestrationClient) -> dict[str, Any]:
    from shared import runtime  # on first use: cold start
    from shared.workflow import activities  # on first use: cold start

    return await activities.submit_batch(runtime.get(), payload, client)


@bp.activity_trigger(input_name="payload")
@activity_span
async def read_reimage_health(payload: dict[str, Any]) -> dict[str, Any]:
    from shared import runtime  # on first use: cold start
    from shared.workflow import activities  # on first use: cold start

    return await activities.read_health(runtime.get(), payload)
