"""Durable bindings: the reimage monitor, the per-target lock and cooldown, and their activities."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from shared import monitor

bp = df.Blueprint()


@bp.orchestration_trigger(context_name="context", orchestration=monitor.MONITOR)
def reimage_monitor(context: df.DurableOrchestrationContext) -> Any:
    return monitor.monitor_orchestrator(context)


@bp.orchestration_trigger(context_name="context", orchestration=monitor.LOCK)
def reimage_lock(context: df.DurableOrchestrationContext) -> Any:
    return monitor.lock_orchestrator(context)


@bp.orchestration_trigger(context_name="context", orchestration=monitor.COOLDOWN)
def reimage_cooldown(context: df.DurableOrchestrationContext) -> Any:
    return monitor.cooldown_orchestrator(context)


@bp.activity_trigger(input_name="payload", activity=monitor.POLL_ACTIVITY)
async def poll_reimage_operation(payload: dict[str, Any]) -> dict[str, Any]:
    return await monitor.poll_operation(payload)


@bp.activity_trigger(input_name="payload", activity=monitor.PUBLISH_ACTIVITY)
async def publish_reimage_event(payload: dict[str, Any]) -> dict[str, Any]:
    return await monitor.publish_event(payload)


@bp.activity_trigger(input_name="payload", activity=monitor.RELEASE_ACTIVITY)
@bp.durable_client_input(client_name="client")
async def release_reimage_target(payload: dict[str, Any], client: df.DurableOrchestrationClient) -> dict[str, Any]:
    return await monitor.release_target(payload, client)
