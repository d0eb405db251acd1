"""Thin Azure Functions bindings, one module per entry surface. `BLUEPRINTS` lists them all."""

from __future__ import annotations

import azure.durable_functions as df

BLUEPRINTS: list[df.Blueprint] = []
