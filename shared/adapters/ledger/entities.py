"""How ledger records become Table Storage entities, and what Table Storage's answers mean.

Azure counts an entity's size as 4 bytes, plus the keys in UTF-16, plus per property 8 bytes, its name in UTF-16
and its value (a string: 2 bytes a character + 4); at most 1 MiB, 255 properties, 64 KiB a string property
(learn.microsoft.com "Understanding the Table service data model"; docs/fidelity.md). A record's JSON is split
across `doc0..docN` string properties well inside those limits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared.domain.records import OperationRecord

CHUNK = 30_000  # characters a string property holds here: 60,000 bytes in UTF-16, under 64 KiB
CHUNKS = 16  # 480,000 characters: 960,000 bytes in UTF-16 plus overhead, under Azure's 1 MiB
ENTITY_MAX_BYTES = 1_048_576
_MAX_TIME_MS = 10**15  # inverted timestamps sort newest first as fixed-width strings
WRITE = "w"  # the property holding the token of the write that produced the entity


@dataclass(frozen=True)
class Page:
    items: list[OperationRecord]
    continuation_token: str | None


def new_token() -> str:
    return uuid.uuid4().hex


def split(text: str) -> dict[str, str]:
    parts = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
    if len(parts) > CHUNKS:
        raise ValueError(f"ledger document too large: {len(text)} characters, at most {CHUNK * CHUNKS}")
    return {f"doc{i}": part for i, part in enumerate(parts)}


def join(entity: Any) -> str:
    return "".join(entity[f"doc{i}"] for i in range(CHUNKS) if f"doc{i}" in entity)


def etag_of(entity: Any) -> str | None:
    meta = getattr(entity, "metadata", None) or {}
    return meta.get("etag")


def inverted(ts: datetime) -> str:
    return f"{_MAX_TIME_MS - int(ts.timestamp() * 1000):016d}"


def target_partition(lease_key: str) -> str:
    # Row and partition keys may not hold '/', '\\', '#', '?'; a hash keeps them short and safe.
    return "t-" + hashlib.sha256(lease_key.encode()).hexdigest()[:40]


def encode_token(token: Any) -> str | None:
    if not token:
        return None
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode()


def decode_token(token: str | None) -> Any:
    if not token:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error):
        raise ValueError("continuationToken is not one this API issued") from None
    if not isinstance(value, dict):
        raise ValueError("continuationToken is not one this API issued")
    return value


def is_conflict(exc: BaseException) -> bool:
    """The store refused the write's condition: 412 on an ETag, 409 on an insert (or inside a transaction)."""
    if isinstance(exc, ResourceModifiedError | ResourceExistsError):
        return True
    return isinstance(exc, HttpResponseError) and exc.status_code in (409, 412)


def may_have_landed(exc: BaseException) -> bool:
    """The write may have been applied although it raised: Table Storage answers 500 OperationTimedOut or 503
    ServerBusy after applying a write, or the connection drops after it was sent, and azure-core then retries
    the same write and gets 412/409 for its own change (docs/fidelity.md, storage rows). Only a read tells."""
    if is_conflict(exc) or isinstance(exc, ServiceRequestError | ServiceResponseError):
        return True
    return isinstance(exc, HttpResponseError) and (exc.status_code or 0) in (408, 429, 500, 502, 503, 504)


def entity_bytes(entity: dict[str, Any]) -> int:
    """Azure's size of an entity (strings in UTF-16), to refuse what Azure would before sending it."""
    size = 4 + 2 * (len(str(entity.get("PartitionKey", ""))) + len(str(entity.get("RowKey", ""))))
    for name, value in entity.items():
        if name in ("PartitionKey", "RowKey"):
            continue
        size += 8 + 2 * len(name) + (2 * len(value) + 4 if isinstance(value, str) else 8)
    return size
