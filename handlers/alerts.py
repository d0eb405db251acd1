"""Azure Monitor action group webhook (common alert schema): POST /api/alerts."""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from handlers.http_api import base_url, to_response

bp = df.Blueprint()


@bp.route(route="alerts", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def reimage_alert(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared.surfaces.alerts import post_alert  # on first use: cold start

    return to_response(await post_alert(req.get_body(), client, base_url(req)))
