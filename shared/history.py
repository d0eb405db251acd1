"""Operation history: GET /api/reimage?target=&status=&since=&top=&continuationToken=.

The answer follows ARM's list convention: `{"value": [...], "nextLink": url}`; `nextLink` is absent
on the last page. Items are status documents (as GET /api/reimage/{id}), newest first. A page may
hold fewer than `top` items (a status filter is applied after the index read), so a client follows
`nextLink` until there is none, as it would with ARM. Listing by target reads the index partition
of that VM or scale set only (docs/ledger.md): no table scan.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from shared import runtime
from shared.errors import ReimagerError
from shared.ledger import OperationRecord
from shared.targets import Target, TargetError, TargetKind, parse_target

if TYPE_CHECKING:
    from shared.api import Outcome

DEFAULT_TOP = 50
MAX_TOP = 500
STATUSES = ("Queued", "AwaitingApproval", "Accepted", "Running", "Verifying", "Succeeded", "Failed", "Canceled",
            "TimedOut")
PARAMETERS = ("target", "status", "since", "top", "continuationToken")
_IGNORED = {"code"}  # the function key, read by the host
_MAX_TOKEN = 2048
# Table Storage's NextPartitionKey/NextRowKey (for example "1!12!dC1hYmM-"): they go back as header values,
# so printable ASCII without spaces only.
_TOKEN_PART = re.compile(r"^[\x21-\x7e]{1,512}$")
_MAX_EMPTY_PAGES = 10  # with a filter, read on past empty index pages up to this many before answering


@dataclass(frozen=True)
class Query:
    target: Target | None = None
    status: str | None = None
    since: datetime | None = None
    top: int = DEFAULT_TOP
    continuation_token: str | None = None  # the ledger's, unwrapped

    @property
    def fingerprint(self) -> str:
        """What a continuation token is bound to: another query's token would page a different list."""
        text = json.dumps([self.target.lock_key if self.target else None,
                           self.target.instance_id if self.target else None, self.status,
                           self.since.isoformat() if self.since else None])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def keeps(self, record: OperationRecord) -> bool:
        if self.status is not None and record.public_status != self.status:
            return False
        if self.target is not None and self.target.kind is TargetKind.VMSS_INSTANCE:
            # The index is per scale set: keep what names this instance (or the whole set).
            ids = record.instance_ids
            return ids is None or self.target.instance_id in ids
        return True


def _bad(parameter: str, message: str) -> ReimagerError:
    return ReimagerError(400, "InvalidRequest", f"{parameter}: {message}", target=parameter)


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


def _unwrap_token(value: str, fingerprint: str) -> str:
    """Our token: base64url JSON {q: query fingerprint, l: the ledger's token}. Checked before the ledger sees it,
    so a forged one cannot reach Table Storage as a malformed NextPartitionKey/NextRowKey header."""
    problem = "is not one this API issued for this query; start again without it"
    if len(value) > _MAX_TOKEN:
        raise _bad("continuationToken", problem)
    try:
        outer: Any = json.loads(base64.urlsafe_b64decode(value.encode("ascii") + b"=" * (-len(value) % 4)))
        inner: Any = json.loads(base64.urlsafe_b64decode(outer["l"].encode("ascii")))
    except (ValueError, binascii.Error, KeyError, TypeError, AttributeError):
        raise _bad("continuationToken", problem) from None
    if not isinstance(outer, dict) or outer.get("q") != fingerprint or not isinstance(inner, dict) \
            or not inner or set(inner) - {"PartitionKey", "RowKey"} \
            or not all(v is None or (isinstance(v, str) and _TOKEN_PART.fullmatch(v)) for v in inner.values()):
        raise _bad("continuationToken", problem)
    return str(outer["l"])


def _wrap_token(ledger_token: str, fingerprint: str) -> str:
    doc = json.dumps({"q": fingerprint, "l": ledger_token}, separators=(",", ":"))
    return base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")


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


@dataclass(frozen=True)
class HistoryPage:
    items: list[OperationRecord]
    continuation_token: str | None  # ours (wrapped), for the next page


async def list_page(query: Query) -> HistoryPage:
    """One page, newest first. With a filter, empty index pages are read past (a bounded number of them)."""
    ledger = runtime.get().ledger
    token = query.continuation_token
    items: list[OperationRecord] = []
    for _ in range(_MAX_EMPTY_PAGES):
        page = await ledger.list_operations(lease_key=query.target.lock_key if query.target else None,
                                            since=query.since, top=query.top, continuation_token=token)
        items = [r for r in page.items if query.keeps(r)]
        token = page.continuation_token
        if items or token is None:
            break
    return HistoryPage(items, _wrap_token(token, query.fingerprint) if token else None)


def next_link(base_url: str, params: Mapping[str, str], token: str) -> str:
    """The same query with the next token. The function key (`code`) is left out: it is a secret, and the
    caller still has it (send it as the x-functions-key header, or append it)."""
    kept = {k: params[k] for k in PARAMETERS if k != "continuationToken" and params.get(k)}
    return f"{base_url}/api/reimage?{urlencode({**kept, 'continuationToken': token})}"


async def get_history(params: Mapping[str, str], base_url: str) -> Outcome:
    """GET /api/reimage as an Outcome (shared.api shapes errors)."""
    from shared.api import Outcome, guarded

    async def work() -> Outcome:
        page = await list_page(parse_query(params))
        body: dict[str, Any] = {"value": [r.view() for r in page.items]}
        if page.continuation_token:
            body["nextLink"] = next_link(base_url, params, page.continuation_token)
        return Outcome(200, body)

    return await guarded(work())
