"""Thin Azure Functions bindings, one module per entry surface. `BLUEPRINTS` lists them all."""

from __future__ import annotations

import azure.durable_functions as df

from handlers import alerts, http_api, monitor, operators, queue, sweeper

BLUEPRINTS: list[df.Blueprint] = [http_api.bp, alerts.bp, queue.bp, monitor.bp, sweeper.bp, operators.bp]
