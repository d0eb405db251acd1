"""What a Table Storage request is, read from its method, path and body: the table, the entity keys, the
operation, and for an entity group transaction (`POST $batch`, multipart/mixed with one changeset) each inner
operation. Nothing here keeps the Authorization header, a SAS query or any other credential."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesParser
from typing import Any
from urllib.parse import unquote, urlsplit

WRITES = ("POST", "PUT", "PATCH", "MERGE", "DELETE")
_RESOURCE = re.compile(r"^(?P<name>[^(/]+)(?:\((?P<args>.*)\))?$", re.DOTALL)
_KEYS = re.compile(r"^PartitionKey='(?P<pk>(?:[^']|'')*)',\s*RowKey='(?P<rk>(?:[^']|'')*)'$", re.DOTALL)


@dataclass
class TableRequest:
    method: str
    operation: str  # insert, update, merge, upsert, delete, query, read, batch, createTable, ...
    table: str | None = None
    partition_key: str | None = None
    row_key: str | None = None
    body: Any = None  # the JSON entity of a write
    inner: list[TableRequest] = field(default_factory=list)  # a batch's operations, in order
    boundaries: tuple[str, str] = ("", "")  # a batch's (batch, changeset) boundaries

    @property
    def is_query(self) -> bool:
        return self.operation == "query"

    @property
    def is_write(self) -> bool:
        return self.method in WRITES

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "operation": self.operation, "table": self.table,
                               "partitionKey": self.partition_key, "rowKey": self.row_key}
        if self.inner:
            out["operations"] = [{k: v for k, v in op.public().items() if k != "operations"} for op in self.inner]
        return out


def _unquote_key(text: str) -> str:
    return unquote(text).replace("''", "'")


def _operation(method: str, has_keys: bool, if_match: bool) -> str:
    if method == "POST":
        return "insert"
    if method == "DELETE":
        return "delete"
    if method == "GET":
        return "read" if has_keys else "query"
    if method == "PUT":
        return "update" if if_match else "upsert"
    return "merge" if if_match else "upsertMerge"  # PATCH / MERGE


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def parse(method: str, path: str, base_path: str, body: bytes, headers: dict[str, str]) -> TableRequest:
    """`path` is the raw URL path (no query); `base_path` the account's prefix (`/devstoreaccount1` on Azurite)."""
    method = method.upper()
    resource = unquote(path)[len(base_path):].strip("/") if path.startswith(base_path) else unquote(path).strip("/")
    if resource == "$batch":
        return _parse_batch(method, body, headers.get("Content-Type", ""), base_path)
    m = _RESOURCE.match(resource)
    name = m.group("name") if m else resource
    args = (m.group("args") or "") if m else ""
    if name == "Tables":
        table = args.strip("'") or (str((_json(body) or {}).get("TableName", "")) if method == "POST" else "")
        op = {"POST": "createTable", "DELETE": "deleteTable"}.get(method, "listTables")
        return TableRequest(method, op, table=table or None)
    keys = _KEYS.match(args)
    pk, rk = (_unquote_key(keys.group("pk")), _unquote_key(keys.group("rk"))) if keys else (None, None)
    if_match = any(k.lower() == "if-match" for k in headers)  # an update (etag or "*"); without it an upsert
    doc = _json(body) if method in ("POST", "PUT", "PATCH", "MERGE") else None
    if method == "POST" and isinstance(doc, dict):
        pk, rk = str(doc.get("PartitionKey", "")), str(doc.get("RowKey", ""))
    return TableRequest(method, _operation(method, keys is not None, if_match), table=name, partition_key=pk,
                        row_key=rk, body=doc)


def _parse_batch(method: str, body: bytes, content_type: str, base_path: str) -> TableRequest:
    outer = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    batch = TableRequest(method, "batch")
    changeset = ""
    for part in outer.walk():
        if part.get_content_type() == "multipart/mixed" and part is not outer:
            changeset = part.get_boundary() or ""
        if part.get_content_type() == "application/http":
            batch.inner.append(_inner(part, base_path))
    batch.boundaries = (outer.get_boundary() or "", changeset)
    batch.table = next((op.table for op in batch.inner), None)
    batch.partition_key = next((op.partition_key for op in batch.inner), None)
    return batch


def _inner(part: Message, base_path: str) -> TableRequest:
    raw = part.get_payload(decode=True)
    assert isinstance(raw, bytes)
    head, _, content = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    lines = head.decode("utf-8", errors="replace").split("\n")
    method, url = [*lines[0].split(" "), "", ""][:2]
    headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    return parse(method, urlsplit(url).path, base_path, content.strip(), headers)
