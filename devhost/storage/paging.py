"""Query pages as Azure may answer them and Azurite never does: empty, or cut short, with a continuation.

"It is possible for a query to return no results but to still return a continuation header", and a page is
cut short at the five-second or partition limits (Microsoft, "Query timeout and pagination"). Tokens are
opaque to clients, so the proxy issues its own: `NextPartitionKey` = `dh!` + base64 of where the upstream
query was (Azurite's own token, or none) and the last key already answered. A follow-up with such a token
is forwarded as the upstream query again, without what was already answered. A token is self-contained, so
it still works after a devhost restart."""

from __future__ import annotations

import base64
import json
from typing import Any

from multidict import MultiDict, MultiDictProxy

PREFIX = "dh!"
NEXT_PK, NEXT_RK = "NextPartitionKey", "NextRowKey"
KEYS = ("PartitionKey", "RowKey")


def token(upstream: list[str] | None, after: list[str] | None) -> dict[str, str]:
    raw = json.dumps({"u": upstream, "a": after}, separators=(",", ":")).encode()
    return {f"x-ms-continuation-{NEXT_PK}": PREFIX + base64.urlsafe_b64encode(raw).decode(),
            f"x-ms-continuation-{NEXT_RK}": PREFIX}


Query = MultiDictProxy[str] | MultiDict[str]


def upstream_query(query: Query, resumable: bool) -> tuple[MultiDict[str], list[str] | None, list[str] | None,
                                                          list[str]]:
    """The query to send upstream, where it resumes (Azurite's token or None), the last key already answered
    (None: nothing to skip), and the key properties added to `$select` (stripped again from the answer)."""
    out: MultiDict[str] = MultiDict(query)
    after: list[str] | None = None
    upstream = [query[NEXT_PK], query.get(NEXT_RK, "")] if NEXT_PK in query else None
    if query.get(NEXT_PK, "").startswith(PREFIX):
        state = json.loads(base64.urlsafe_b64decode(query[NEXT_PK][len(PREFIX):].encode()))
        if not isinstance(state, dict):
            raise ValueError("not a continuation token devhost issued")
        upstream, after = state.get("u"), state.get("a")
        out.popall(NEXT_PK, None)
        out.popall(NEXT_RK, None)
        if upstream:
            out[NEXT_PK], out[NEXT_RK] = upstream
    added: list[str] = []
    if (resumable or after) and "$select" in out:
        chosen = [s.strip() for s in out["$select"].split(",")]
        added = [k for k in KEYS if k not in chosen]
        out["$select"] = ",".join(chosen + added)
    return out, upstream, after, added


def _key(item: dict[str, Any]) -> list[str]:
    return [str(item.get("PartitionKey", "")), str(item.get("RowKey", ""))]


def reshape(doc: dict[str, Any], upstream_headers: dict[str, str], *, upstream: list[str] | None,
            after: list[str] | None, added: list[str], cut: str | None, keep: int | None
            ) -> tuple[dict[str, Any], dict[str, str]]:
    """The page to answer and its continuation headers: the upstream page without what a token already answered,
    then emptied (`cut="empty"`) or cut to `keep` items (default half, `cut="short"`)."""
    items = [i for i in doc.get("value", []) if not isinstance(i, dict) or after is None or _key(i) > after]
    more = {k: v for k, v in upstream_headers.items() if k.lower().startswith("x-ms-continuation-")}
    headers = dict(more)
    if cut == "empty" and (items or more):
        headers = token(upstream, after)
        items = []
    elif cut == "short" and items and (len(items) > 1 or more):
        kept = items[:keep if keep is not None else len(items) // 2]
        headers = token(upstream, _key(kept[-1]) if kept else after)
        items = kept
    for item in items:
        for k in added:
            item.pop(k, None)
    return {**doc, "value": items}, headers
