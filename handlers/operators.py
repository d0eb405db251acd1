"""HTTP for operators: cancel a waiting request, see a target, resume a suspended one.

`shared` is imported on first use to keep it out of cold start.
"""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from handlers.http_api import to_response

bp = df.Blueprint()


def _json(req: func.HttpRequest) -> object:
    from shared.api import parse_json

    return parse_json(req.get_body())


@bp.route(route="reimage/{operationId}/cancel", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def reimage_cancel(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared import operator_actions
    from shared.api import Outcome, guarded, principal_of

    async def work() -> Outcome:
        body = _json(req) or {}
        reason = body.get("reason") if isinstance(body, dict) else None
        return await operator_actions.cancel(req.route_params.get("operationId", ""), principal_of(req.headers),
                                             reason if isinstance(reason, str) else None, client)

    return to_response(await guarded(work()))


@bp.route(route="targets", methods=["GET"])
async def target_status(req: func.HttpRequest) -> func.HttpResponse:
    from shared import operator_actions

    return to_response(await operator_actions.get_target(req.params.get("id")))


@bp.route(route="targets/resume", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def target_resume(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared import operator_actions
    from shared.api import Outcome, guarded, principal_of

    async def work() -> Outcome:
        return await operator_actions.resume(_json(req), principal_of(req.headers), client)

    return to_response(await guarded(work()))
