"""Azure Table Storage's entity limits, which Azurite 3.37 does not enforce as Azure does (it checks no size on
insert, counts UTF-8 JSON bytes on update, and has no property-count or name-length check).

- An entity is at most 1 MiB by Azure's own accounting, where every string counts 2 bytes a UTF-16 code unit:
  4 + 2 * len(PartitionKey + RowKey) + sum over properties of (8 + 2 * len(name) + size of the value), with a
  string 4 + 2 * units, binary 4 + bytes, Int32 4, Int64 / Double / DateTime 8, Guid 16, Boolean 1. A probe
  against Azure accepted a computed 1,048,488 bytes and refused 1,048,489, so that is the limit used here.
- At most 252 custom properties (255 with PartitionKey, RowKey and Timestamp); names up to 255 characters.
- A string value up to 64 KiB (32K UTF-16 units); a binary value up to 64 KiB.

Sources in docs/fidelity.md (rows L8-L11)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

MAX_ENTITY_BYTES = 1_048_488
MAX_CUSTOM_PROPERTIES = 252
MAX_NAME_LENGTH = 255
MAX_VALUE_BYTES = 64 * 1024
SYSTEM = ("PartitionKey", "RowKey", "Timestamp")
_FIXED = {"Edm.Int32": 4, "Edm.Int64": 8, "Edm.Double": 8, "Edm.DateTime": 8, "Edm.Guid": 16, "Edm.Boolean": 1}


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _edm(name: str, value: Any, doc: dict[str, Any]) -> str:
    """The property's EDM type: its `@odata.type` annotation, else what the JSON value implies."""
    annotated = doc.get(f"{name}@odata.type")
    if isinstance(annotated, str):
        return annotated
    if isinstance(value, bool):
        return "Edm.Boolean"
    if isinstance(value, int):
        return "Edm.Int32"
    if isinstance(value, float):
        return "Edm.Double"
    return "Edm.String"


def _binary_bytes(value: Any) -> int:
    try:
        return len(base64.b64decode(str(value), validate=False))
    except (binascii.Error, ValueError):
        return len(str(value))


def value_bytes(edm: str, value: Any) -> int:
    """What one value counts, and for strings and binary how big the value itself is."""
    if edm == "Edm.String":
        return 4 + 2 * utf16_units(str(value))
    if edm == "Edm.Binary":
        return 4 + _binary_bytes(value)
    return _FIXED.get(edm, 8)


def properties(doc: dict[str, Any]) -> dict[str, Any]:
    """The custom properties of an entity body (no keys, Timestamp, annotations or nulls)."""
    return {k: v for k, v in doc.items()
            if k not in SYSTEM and "@odata." not in k and not k.startswith("odata.") and v is not None}


def refusal(doc: Any, partition_key: str | None = None, row_key: str | None = None) -> str | None:
    """The error code Azure answers for this insert/update/merge body, or None when it fits.

    Checked in the order a parser meets them: the count of properties, each name, each value, then the whole."""
    if not isinstance(doc, dict):
        return None
    props = properties(doc)
    if len(props) > MAX_CUSTOM_PROPERTIES:
        return "TooManyProperties"
    for name, value in props.items():
        if len(name) > MAX_NAME_LENGTH:
            return "PropertyNameTooLong"
        edm = _edm(name, value, doc)
        if edm in ("Edm.String", "Edm.Binary") and value_bytes(edm, value) - 4 > MAX_VALUE_BYTES:
            return "PropertyValueTooLarge"
    return "EntityTooLarge" if entity_bytes(doc, partition_key, row_key) > MAX_ENTITY_BYTES else None


def entity_bytes(doc: dict[str, Any], partition_key: str | None = None, row_key: str | None = None) -> int:
    """Azure's size of an entity body; the keys from the URL when given (an update names them there)."""
    pk = partition_key if partition_key is not None else str(doc.get("PartitionKey", ""))
    rk = row_key if row_key is not None else str(doc.get("RowKey", ""))
    total = 4 + 2 * utf16_units(pk + rk)
    return total + sum(8 + 2 * utf16_units(n) + value_bytes(_edm(n, v, doc), v) for n, v in properties(doc).items())
