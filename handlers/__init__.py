"""Thin Azure Functions bindings, one module per entry surface. `BLUEPRINTS` lists them all."""

from __future__ import annotations

import azure.durable_functions as df

from handlers import http_api, monitor

BLUEPRINTS: list[df.Blueprint] = [http_api.bp, monitor.bp]
