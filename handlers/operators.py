"""HTTP for operators: cancel, approve or reject a waiting request; see a target; resume a suspended one.

`shared` is imported on first use to keep it out of cold start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import azure.durable_functions as df
import azure.functions as func

from handlers.http_api import to_response

if TYPE_CHECKING:
    from shared.api import Outcome

bp = df.Blueprint()


async def _act(req: func.HttpRequest, action: str, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared import operator_actions
    from shared.api import guarded

    async def work() -> Outcome:
        body, who = operator_actions.read_action(req.get_body(), req.headers)
        act = getattr(operator_actions, action)
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
    from shared import operator_actions

    return to_response(await operator_actions.get_target(req.params.get("id")))


@bp.route(route="targets/resume", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def target_resume(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared import operator_actions
    from shared.api import guarded, parse_json

    async def work() -> Any:
        body = parse_json(req.get_body())
        _, who = operator_actions.read_action(b"{}", req.headers)
        return await operator_actions.resume(body, who, client)

    return to_response(await guarded(work()))
