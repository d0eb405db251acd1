"""GET /api/reimage?target=&status=&since=&top=&continuationToken=: the query string in, a page out.

The answer follows ARM's list convention: `{"value": [...], "nextLink": url}`; `nextLink` is absent
on the last page. Items are status documents (as GET /api/reimage/{id}), newest first. A page may
hold fewer than `top` items (a status filter is applied after the index read), so a client follows
`nextLink` until there is none, as it would with ARM.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from shared.domain.targets import TargetError, parse_target
from shared.surfaces.http import Outcome, guarded
from shared.workflow.history import DEFAULT_TOP, MAX_TOP, STATUSES, Query, _bad, _unwrap_token, list_page

PARAMETERS = ("target", "status", "since", "top", "continuationToken")
_IGNORED = {"code"}  # the function key, read by the host


def _since(value: str) -> datetime:
    # A '+' in an unencoded query string arrives as a space: "...T07:00:00 00:00" meant "+00:00".
    text = re.sub(r"(\d) (\d\d:?\d\d)$", r"\1+\2", value.strip())
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 shifted out of range by its offset
        raise _bad("since", "must be an ISO 8601 date or date-time, for example 2026-11-25T07:00:00Z") from None


def _top(value: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", value) or not 1 <= int(value) <= MAX_TOP:
        raise _bad("top", f"must be an integer from 1 to {MAX_TOP}")
    return int(value)


def parse_query(params: Mapping[str, str]) -> Query:
    """The query string as a Query; a bad parameter is a 400 that names it."""
    unknown = sorted(set(params) - set(PARAMETERS) - _IGNORED)
    if unknown:
        raise _bad(unknown[0], f"is not a parameter of this list; use {', '.join(PARAMETERS)}")
    target = None
    if params.get("target"):
        try:
            target = parse_target(params["target"])
        except TargetError as exc:
            raise _bad("target", str(exc).removeprefix("target ")) from None
    status = None
    if params.get("status"):
        status = next((s for s in STATUSES if s.lower() == params["status"].strip().lower()), None)
        if status is None:
            raise _bad("status", f"must be one of {', '.join(STATUSES)}")
    since = _since(params["since"]) if params.get("since") else None
    top = _top(params["top"]) if params.get("top") else DEFAULT_TOP
    query = Query(target, status, since, top)
    token = params.get("continuationToken")
    if token:
        query = Query(target, status, since, top, _unwrap_token(token, query.fingerprint))
    return query


def next_link(base_url: str, params: Mapping[str, str], token: str) -> str:
    """The same query with the next token. The function key (`code`) is left out: it is a secret, and the
    caller still has it (send it as the x-functions-key header, or append it)."""
    kept = {k: params[k] for k in PARAMETERS if k != "continuationToken" and params.get(k)}
    return f"{base_url}/api/reimage?{urlencode({**kept, 'continuationToken': token})}"


async def get_history(params: Mapping[str, str], base_url: str) -> Outcome:
    """GET /api/reimage as an Outcome (shared.surfaces.http shapes errors)."""
    async def work() -> Outcome:
        page = await list_page(parse_query(params))
        body: dict[str, Any] = {"value": [r.view() for r in page.items]}
        if page.continuation_token:
            body["nextLink"] = next_link(base_url, params, page.continuation_token)
        return Outcome(200, body)

    return await guarded(work())
