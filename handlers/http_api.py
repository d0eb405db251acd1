"""HTTP API for chatops bots: POST /api/reimage, GET /api/reimage/{operationId}.

`shared` is imported inside the functions: it pulls in pydantic-settings and azure-core, and
cold start on Consumption plans pays for every import made at module load.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import azure.durable_functions as df
import azure.functions as func

if TYPE_CHECKING:
    from shared.surfaces.http import Outcome

bp = df.Blueprint()


def to_response(outcome: Outcome) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(outcome.body), status_code=outcome.status, headers=outcome.headers,
                             mimetype="application/json")


def base_url(req: func.HttpRequest) -> str:
    """scheme://host of the request, for status URLs."""
    url: str = str(req.url)
    return url[: url.index("/api/")] if "/api/" in url else url.rstrip("/")


@bp.route(route="reimage", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def reimage_submit(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    from shared.surfaces import http  # on first use: cold start

    return to_response(await http.post_reimage(req.get_body(), client, base_url(req), dict(req.headers)))


@bp.route(route="reimage/{operationId}", methods=["GET"])
async def reimage_status(req: func.HttpRequest) -> func.HttpResponse:
    from shared.surfaces import http  # on first use: cold start

    return to_response(await http.get_reimage(req.route_params.get("operationId", "")))
