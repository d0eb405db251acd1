"""HTTP for operators: history (GET /api/reimage), cancel / approve / reject a waiting request, a target's state,
resume a suspended one, and the Slack and Teams commands.

`shared` is imported on first use to keep it out of cold start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import azure.durable_functions as df
import azure.functions as func

from handlers.http_api import base_url, to_response

if TYPE_CHECKING:
    from shared.surfaces.http import Outcome

bp = df.Blueprint()


async def _act(req: func.HttpRequest, action: str, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared.surfaces.http import guarded  # on first use: cold start
    from shared.surfaces.operators import read_action
    from shared.workflow import operators

    async def work() -> Outcome:
        body, who = read_action(req.get_body(), req.headers)
        act = getattr(operators, action)
        outcome: Outcome = await act(req.route_params.get("operationId", ""), who, body.get("reason"), client)
        return outcome

    return to_response(await guarded(work()))


@bp.route(route="reimage/{operationId}/cancel", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def reimage_cancel(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    return await _act(req, "cancel", client)


@bp.route(route="reimage/{operationId}/approve", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def reimage_approve(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    return await _act(req, "approve", client)


@bp.route(route="reimage/{operationId}/reject", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def reimage_reject(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    return await _act(req, "reject", client)


@bp.route(route="targets", methods=["GET"])
async def target_status(req: func.HttpRequest) -> func.HttpResponse:
    from shared.surfaces.operators import get_target  # on first use: cold start

    return to_response(await get_target(req.params.get("id")))


@bp.route(route="targets/resume", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def target_resume(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared.surfaces.http import guarded  # on first use: cold start
    from shared.surfaces.identity import principal_of
    from shared.surfaces.json_body import parse_json

    async def work() -> Any:
        body = parse_json(req.get_body())
        from shared.workflow.operators import resume

        return await resume(body, principal_of(req.headers), client)

    return to_response(await guarded(work()))


@bp.route(route="reimage", methods=["GET"])
async def reimage_history(req: func.HttpRequest) -> func.HttpResponse:
    from shared.surfaces import history

    return to_response(await history.get_history(dict(req.params), base_url(req)))


@bp.route(route="chatops/slack", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def chatops_slack(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared.surfaces import http as api
    from shared.surfaces.chat import endpoints as chatops_http

    return to_response(await api.guarded(chatops_http.post_slack(req.get_body(), dict(req.headers), client,
                                                                 base_url(req))))


@bp.route(route="chatops/teams", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def chatops_teams(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared.surfaces import http as api
    from shared.surfaces.chat import endpoints as chatops_http

    return to_response(await api.guarded(chatops_http.post_teams(req.get_body(), dict(req.headers), client,
                                                                 base_url(req))))
