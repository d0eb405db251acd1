"""shared/adapters/durable_time.py: the durable SDK's history timestamps read without dateutil, to the same instant."""

import importlib
from datetime import UTC, datetime

from dateutil.parser import parse as dateutil_parse

from shared.adapters import durable_time

HISTORY = importlib.import_module("azure.durable_functions.models.history.HistoryEvent")


def test_the_sdk_reads_history_timestamps_with_the_fast_parser_once_installed() -> None:
    durable_time.install()
    durable_time.install()  # idempotent: the original stays the fallback
    assert HISTORY.dt_parse.original is dateutil_parse
    event = HISTORY.HistoryEvent(EventType=0, EventId=-1, IsPlayed=False, Timestamp="2026-01-01T00:00:05.1234567Z")
    assert event.timestamp == datetime(2026, 1, 1, 0, 0, 5, 123456, tzinfo=UTC)


def test_same_instant_as_dateutil_for_what_the_extension_writes() -> None:
    parse = durable_time.fast(dateutil_parse)
    for text in ("2026-01-01T00:00:05.1234567Z", "2026-01-01T00:00:05Z", "2026-01-01T00:00:05.123+00:00",
                 "2026-01-01T00:00:05.5"):
        assert parse(text) == dateutil_parse(text), text


def test_what_iso_cannot_read_still_goes_to_the_original() -> None:
    seen: list[str] = []

    def original(text: str) -> datetime:
        seen.append(text)
        return datetime(2000, 1, 1, tzinfo=UTC)

    parse = durable_time.fast(original)
    assert parse("Thu, 01 Jan 2026 00:00:05 GMT") == datetime(2000, 1, 1, tzinfo=UTC)
    assert seen == ["Thu, 01 Jan 2026 00:00:05 GMT"]
    assert parse("2026-01-01T00:00:05Z") == datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC) and len(seen) == 1
