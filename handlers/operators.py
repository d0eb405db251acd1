"""Operators' HTTP routes: GET /api/reimage (history), POST /api/chatops/slack, POST /api/chatops/teams."""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from handlers.http_api import base_url, to_response

bp = df.Blueprint()


@bp.route(route="reimage", methods=["GET"])
async def reimage_history(req: func.HttpRequest) -> func.HttpResponse:
    from shared import history  # lazily: cold start

    return to_response(await history.get_history(dict(req.params), base_url(req)))


@bp.route(route="chatops/slack", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def chatops_slack(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared import api, chatops_http

    return to_response(await api.guarded(chatops_http.post_slack(req.get_body(), dict(req.headers), client,
                                                                 base_url(req))))


@bp.route(route="chatops/teams", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def chatops_teams(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared import api, chatops_http

    return to_response(await api.guarded(chatops_http.post_teams(req.get_body(), dict(req.headers), client,
                                                                 base_url(req))))
