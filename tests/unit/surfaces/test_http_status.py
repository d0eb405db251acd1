"""shared/surfaces/http.py: the one table from an error code to an HTTP status is total."""

from __future__ import annotations

from shared.domain.errors import ErrorCode, ReimagerError
from shared.surfaces.http import HTTP_STATUS, http_status


def test_every_error_code_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)
    for code in ErrorCode:
        assert 200 <= http_status(ReimagerError(code, "x")) < 600
