"""Timer trigger: the sweeper settles whatever a crash left half done (shared/workflow/sweeper.py)."""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

bp = df.Blueprint()


@bp.timer_trigger(arg_name="timer", schedule="%SWEEP_SCHEDULE%", run_on_startup=False, use_monitor=True)
@bp.durable_client_input(client_name="client")
async def reimage_sweeper(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    from shared import runtime  # on first use: cold start
    from shared.workflow import sweeper  # on first use: cold start

    await sweeper.sweep(runtime.get(), client)
