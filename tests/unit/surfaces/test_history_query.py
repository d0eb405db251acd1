"""shared/surfaces/history.py: the history query's parameters (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.surfaces.http import http_status


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-12:00", "2026-13-01", "now"])
def test_history_since_out_of_range_is_a_400_naming_it(since: str) -> None:
    from shared.domain.errors import ReimagerError
    from shared.surfaces.history import parse_query

    with pytest.raises(ReimagerError) as err:
        parse_query({"since": since})
    assert http_status(err.value) == 400 and err.value.error.target == "since"


def test_history_since_forms() -> None:
    from shared.surfaces.history import parse_query

    assert parse_query({"since": "2026-11-25"}).since == datetime(2026, 11, 25, tzinfo=UTC)
    # '+' of an unencoded offset arrives as a space
    assert parse_query({"since": "2026-11-25T08:00:00 01:00"}).since == datetime(2026, 11, 25, 7, tzinfo=UTC)
    assert parse_query({"status": "queued", "code": "key"}).status == "Queued"
