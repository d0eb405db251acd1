"""History timestamps, read fast: the durable SDK parses every history event's timestamp with dateutil on every
replay (azure-functions-durable 1.x, `HistoryEvent.__init__`), about a third of a poll's CPU in the worker
(docs/performance.md, In flight). The Durable extension writes ISO 8601 (`2026-01-01T00:00:00.1234567Z`), which
`datetime.fromisoformat` reads (Python 3.11+) at a small fraction of the cost and to the same instant; anything it
cannot read still goes to the SDK's own parser, so no history the SDK could read before is read differently now."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

_MODULE = "azure.durable_functions.models.history.HistoryEvent"


def fast(original: Callable[[Any], datetime]) -> Callable[[Any], datetime]:
    """`original` (the SDK's dateutil parse), with ISO 8601 read by `datetime.fromisoformat` first."""
    def parse_timestamp(text: Any) -> datetime:
        try:
            return datetime.fromisoformat(text)
        except (TypeError, ValueError):
            return original(text)

    parse_timestamp.original = original  # type: ignore[attr-defined]
    return parse_timestamp


def install() -> None:
    """Read history timestamps with `fast(...)` (the SDK's module-level name for its parser is `dt_parse`)."""
    module = importlib.import_module(_MODULE)
    current = getattr(module, "dt_parse")  # noqa: B009 - the SDK module has no stubs for it
    if not hasattr(current, "original"):  # once: a second install keeps the first
        setattr(module, "dt_parse", fast(current))  # noqa: B010
