"""Durable bindings: the reimage monitor, the per-target lock and cooldown, and their activities.

Function names are the names shared/monitor.py calls them by (a test checks they agree);
`shared` is imported on first use to keep it out of cold start.
"""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

bp = df.Blueprint()


@bp.orchestration_trigger(context_name="context")
def reimage_monitor(context: df.DurableOrchestrationContext) -> Any:
    from shared import monitor

    return monitor.monitor_orchestrator(context)


@bp.orchestration_trigger(context_name="context")
def reimage_lock(context: df.DurableOrchestrationContext) -> Any:
    from shared import monitor

    return monitor.lock_orchestrator(context)


@bp.orchestration_trigger(context_name="context")
def reimage_cooldown(context: df.DurableOrchestrationContext) -> Any:
    from shared import monitor

    return monitor.cooldown_orchestrator(context)


@bp.activity_trigger(input_name="payload")
async def poll_reimage_operation(payload: dict[str, Any]) -> dict[str, Any]:
    from shared import monitor

    return await monitor.poll_operation(payload)


@bp.activity_trigger(input_name="payload")
async def publish_reimage_event(payload: dict[str, Any]) -> dict[str, Any]:
    from shared import monitor

    return await monitor.publish_event(payload)


@bp.activity_trigger(input_name="payload")
@bp.durable_client_input(client_name="client")
async def release_reimage_target(payload: dict[str, Any], client: df.DurableOrchestrationClient) -> dict[str, Any]:
    from shared import monitor

    return await monitor.release_target(payload, client)
