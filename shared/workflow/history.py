"""Operation history: one page of a target's (or every) operations, newest first.

Listing by target reads the index partition of that VM or scale set only (docs/ledger.md): no
table scan. Continuation tokens are bound to the query that issued them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared import runtime
from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.records import OperationRecord
from shared.domain.status import PUBLIC
from shared.domain.targets import Target, TargetKind

DEFAULT_TOP = 50
MAX_TOP = 500
STATUSES = PUBLIC


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
    return ReimagerError(ErrorCode.INVALID_REQUEST, f"{parameter}: {message}", target=parameter)


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
