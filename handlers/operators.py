"""HTTP for operators: history (GET /api/reimage), cancel / approve / reject a waiting request, a target's state,
resume a suspended one, and the Slack and Teams commands.

`shared` is imported on first use: it pulls in pydantic, azure-core and the Azure SDKs, and cold start on
Consumption plans pays for every import made at module load.
"""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from handlers.http_api import base_url, to_response

bp = df.Blueprint()


@bp.route(route="reimage/{operationId}/cancel", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def reimage_cancel(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared.surfaces import operators  # on first use: cold start

    return to_response(await operators.act("cancel", req.route_params.get("operationId", ""), req.get_body(),
                                           req.headers, client))


@bp.route(route="reimage/{operationId}/approve", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def reimage_approve(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared.surfaces import operators  # on first use: cold start

    return to_response(await operators.act("approve", req.route_params.get("operationId", ""), req.get_body(),
                                           req.headers, client))


@bp.route(route="reimage/{operationId}/reject", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def reimage_reject(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared.surfaces import operators  # on first use: cold start

    return to_response(await operators.act("reject", req.route_params.get("operationId", ""), req.get_body(),
                                           req.headers, client))


@bp.route(route="targets", methods=["GET"])
async def target_status(req: func.HttpRequest) -> func.HttpResponse:
    from shared.surfaces import operators  # on first use: cold start

    return to_response(await operators.get_target(req.params.get("id")))


@bp.route(route="targets/resume", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def target_resume(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared.surfaces import operators  # on first use: cold start

    return to_response(await operators.resume(req.get_body(), req.headers, client))


@bp.route(route="reimage", methods=["GET"])
async def reimage_history(req: func.HttpRequest) -> func.HttpResponse:
    from shared.surfaces import history  # on first use: cold start

    return to_response(await history.get_history(dict(req.params), base_url(req)))


@bp.route(route="chatops/slack", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def chatops_slack(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared.surfaces.chat import endpoints  # on first use: cold start

    return to_response(await endpoints.post_slack(req.get_body(), dict(req.headers), client, base_url(req)))


@bp.route(route="chatops/teams", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def chatops_teams(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared.surfaces.chat import endpoints  # on first use: cold start

    return to_response(await endpoints.post_teams(req.get_body(), dict(req.headers), client, base_url(req)))
