"""Redacting a request's secrets from anything ARM sent back.

ARM may echo what it was sent (a password in an "invalid value" message, a line of custom data).
The secrets are known, so they are found by value: adminPassword, customData, and customData's
decoded text, each also in its JSON-escaped forms. Every occurrence, overlapping ones included,
is replaced by REDACTED; the result never contains a secret, whatever the secrets look like.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets as secrets_module
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import SecretStr

REDACTED = "[REDACTED]"
_FALLBACK_MARKERS = (REDACTED, "***", "#", "")  # "" can never contain a secret
_MAX_PASSES = 8
_MIN_LINE, _MAX_LINES = 8, 1000  # custom data lines redacted on their own: long enough, and the first 1,000
T = TypeVar("T")


def _variants(secret: str) -> list[str]:
    """The secret and the forms it takes inside JSON text (escaped quotes, backslashes, \\uXXXX)."""
    return [secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]]


def known_secrets(*, admin_password: str | None = None, custom_data: str | None = None) -> tuple[str, ...]:
    """Every string to redact for a request with these secrets; empty strings are never secrets."""
    found: list[str] = []
    if admin_password:
        found += _variants(admin_password)
    if custom_data:
        found += _variants(custom_data)
        try:
            decoded = base64.b64decode(custom_data, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            decoded = ""  # not text: ARM cannot show it as text either
        # ARM quotes custom data a line at a time too ("line 3 'token: ...' is invalid"): each line long enough
        # to carry a secret is one (short ones, like "}" or "---", would only blank ARM's own words).
        lines = [line.strip() for line in decoded.splitlines() if len(line.strip()) >= _MIN_LINE]
        for text in (decoded, decoded.strip(), *lines[:_MAX_LINES]):
            if text:
                found += _variants(text)
    return tuple(dict.fromkeys(s for s in found if s))


def secrets_of_body(body: Any) -> tuple[str, ...]:
    """The secrets in an ARM request body built by the models (osProfile's SecretStr values)."""
    profile = body.get("osProfile") if isinstance(body, dict) else None
    if not isinstance(profile, dict):
        return ()

    def reveal(value: Any) -> str | None:
        return value.get_secret_value() if isinstance(value, SecretStr) else value if isinstance(value, str) else None

    return known_secrets(admin_password=reveal(profile.get("adminPassword")),
                         custom_data=reveal(profile.get("customData")))


def _redact_text(text: str, secrets: tuple[str, ...]) -> str:
    # Mark every character inside any occurrence of any secret, then replace each marked run once:
    # overlapping and adjacent occurrences become a single marker.
    covered = bytearray(len(text))
    for secret in secrets:
        start = text.find(secret)
        while start != -1:
            covered[start:start + len(secret)] = b"\x01" * len(secret)
            start = text.find(secret, start + 1)
    if not any(covered):
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append(REDACTED)
        else:
            j = i
            while j < len(text) and not covered[j]:
                j += 1
            out.append(text[i:j])
            i = j
    return "".join(out)


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """text with every secret replaced. A marker that itself forms a secret with its neighbours is redacted
    again; if that never settles (a secret made of marker characters), the whole text is replaced."""
    wanted = tuple(s for s in secrets if s)
    if not wanted:
        return text
    for _ in range(_MAX_PASSES):
        if not any(s in text for s in wanted):
            return text
        text = _redact_text(text, wanted)
    if not any(s in text for s in wanted):
        return text
    return next(m for m in _FALLBACK_MARKERS if not any(s in m for s in wanted))


def redact(value: T, secrets: Iterable[str]) -> T:
    """A copy of a str / dict / list / tuple (nested, keys included) with every secret replaced."""
    wanted = tuple(s for s in secrets if s)
    if not wanted:
        return value
    return _walk(value, wanted)  # type: ignore[no-any-return]


def _walk(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {_walk(k, secrets): _walk(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(_walk(v, secrets) for v in value)
    return value


def redact_response_body(raw: bytes, secrets: Iterable[str]) -> bytes:
    """An HTTP response body with every secret replaced: JSON is parsed first (an escape such as \\u0041
    can hide a secret from a byte search), anything else is redacted as text."""
    wanted = tuple(s for s in secrets if s)
    if not wanted or not raw:
        return raw
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return redact_text(raw.decode("utf-8", errors="replace"), wanted).encode("utf-8")
    return json.dumps(_walk(doc, wanted)).encode("utf-8")


# The poll activity runs long after the request, and the secrets are never stored, so it cannot search for
# them by value. At acceptance the ledger record keeps a fingerprint instead: for each secret form, its
# length and a keyed hash under a random salt of the record's own. A poll then hashes every substring of
# ARM's text of each such length and redacts the ones that match. The trade-off (a ledger reader could test
# guesses offline while the operation runs) is in docs/operations.md, "Secrets".
_MARK_BYTES = 16
_POLL_TEXT = ("errorCode", "errorMessage")


def _mark(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()[:_MARK_BYTES].hex()


def fingerprint(secrets: Iterable[str]) -> dict[str, Any] | None:
    """What a record keeps to recognise these secrets later without holding them (None: no secrets)."""
    wanted = tuple(dict.fromkeys(s for s in secrets if s))
    if not wanted:
        return None
    salt = secrets_module.token_bytes(16)
    return {"salt": base64.b64encode(salt).decode(), "marks": sorted([len(s), _mark(salt, s)] for s in wanted)}


def find_fingerprinted(text: str, fp: dict[str, Any]) -> set[str]:
    """The substrings of text whose fingerprint is in fp: the secrets, found again."""
    salt = base64.b64decode(fp["salt"])
    by_length: dict[int, set[str]] = {}
    for length, mark in fp["marks"]:
        by_length.setdefault(int(length), set()).add(mark)
    found: set[str] = set()
    for length, marks in by_length.items():
        for i in range(len(text) - length + 1):
            window = text[i:i + length]
            if _mark(salt, window) in marks:
                found.add(window)
    return found


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def redact_fingerprinted(value: T, fp: dict[str, Any] | None) -> T:
    """value (str / dict / list, nested) with every substring matching fp redacted."""
    if not fp:
        return value
    found: set[str] = set()
    for text in _strings(value):
        found |= find_fingerprinted(text, fp)
    return redact(value, found)


def scrub_poll(result: dict[str, Any], fp: dict[str, Any] | None, *, settled: bool) -> dict[str, Any]:
    """A poll's result, safe to store: secrets recognised by the record's fingerprint are redacted. Once the
    operation is settled (the fingerprint is gone) or its record is missing, ARM's text is dropped: the
    orchestration no longer uses it, and nothing is left to recognise a secret by."""
    if settled:
        return {**result, "errorMessage": None}
    # Only ARM's free text: the state and the keys must stay readable to the orchestrator, whatever the secrets.
    texts = {k: redact_fingerprinted(result[k], fp) for k in _POLL_TEXT if isinstance(result.get(k), str)}
    return {**result, **texts}
