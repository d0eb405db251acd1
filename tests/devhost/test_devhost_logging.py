"""devhost's terminal: a monitor's end is logged once, and the detail (monitors, the app's own INFO lines,
the demo's requests) shows only with -v."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from devhost.__main__ import Detail, build_parser
from devhost.host import DevHost


def test_a_monitor_that_ends_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    host = DevHost(state_dir=tmp_path)
    caplog.set_level(logging.INFO, logger="devhost.monitor")
    for status in ("Running", "Running", "Completed", "Completed"):  # the engine reports an end twice
        host._on_change(SimpleNamespace(name="reimage_monitor", id="op-1", status=status, created=0.0))  # type: ignore[arg-type]
    lines = [r.getMessage().split(" after ")[0] for r in caplog.records if r.name == "devhost.monitor"]
    assert lines == ["op-1 monitor Running", "op-1 monitor Completed"]
    assert host._last_progress == {}


def record(name: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "x", None, None)


def test_detail_is_filtered_unless_verbose() -> None:
    serve = Detail(("devhost.monitor", "reimager"))
    assert not serve.filter(record("devhost.monitor")) and not serve.filter(record("reimager.events"))
    assert serve.filter(record("devhost.terminal")) and serve.filter(record("devhost.requests"))
    assert serve.filter(record("reimager.intake", logging.WARNING))  # warnings always show
    assert serve.filter(record("reimagerx"))  # a prefix of a name is not its parent
    assert build_parser().parse_args(["-v"]).verbose and not build_parser().parse_args([]).verbose
