"""shared/domain/redaction.py: the request's secrets never survive in anything ARM sent back."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from shared.domain.redaction import REDACTED, known_secrets, redact, redact_response_body, secrets_of_body
from tests.helpers import SENTINEL_PASSWORD

CLOUD_INIT = "#cloud-config\nruncmd:\n  - echo hunter2-token-7f3a > /etc/app-token\n"
CUSTOM_DATA = base64.b64encode(CLOUD_INIT.encode()).decode()


def secrets() -> tuple[str, ...]:
    return known_secrets(admin_password=SENTINEL_PASSWORD, custom_data=CUSTOM_DATA)


def test_a_password_in_an_arm_message_is_replaced() -> None:
    out = redact(f"The password '{SENTINEL_PASSWORD}' does not meet the requirements.", secrets())
    assert out == f"The password '{REDACTED}' does not meet the requirements."


def test_custom_data_and_its_decoded_text_are_replaced() -> None:
    for text in (f"customData {CUSTOM_DATA} is invalid", f"script: {CLOUD_INIT}", f"script: {CLOUD_INIT.strip()}."):
        out = redact(text, secrets())
        assert CUSTOM_DATA not in out and CLOUD_INIT.strip() not in out and REDACTED in out


def test_nested_structures_keys_included_other_types_untouched() -> None:
    doc = {"error": {"code": "InvalidParameter", "message": f"bad {SENTINEL_PASSWORD}", "target": None,
                     "details": [{"message": SENTINEL_PASSWORD, "n": 3, "ok": True, "f": 1.5}],
                     SENTINEL_PASSWORD: "as a key"}, "list": (SENTINEL_PASSWORD, 1)}
    out = redact(doc, secrets())
    assert SENTINEL_PASSWORD not in json.dumps(out)
    assert out["error"]["details"][0] == {"message": REDACTED, "n": 3, "ok": True, "f": 1.5}
    assert out["error"]["code"] == "InvalidParameter" and out["error"]["target"] is None
    assert out["list"] == (REDACTED, 1)
    assert doc["error"]["message"] == f"bad {SENTINEL_PASSWORD}"  # the input is not modified


def test_json_escaped_forms_are_replaced() -> None:
    pw = 'Qu"ote\\Back-1\u00e9'
    s = known_secrets(admin_password=pw)
    for text in (json.dumps({"adminPassword": pw}), json.dumps({"adminPassword": pw}, ensure_ascii=False),
                 f"echoed: {pw}"):
        out = redact(text, s)
        assert pw not in out and json.dumps(pw)[1:-1] not in out and REDACTED in out


def test_overlapping_and_adjacent_occurrences() -> None:
    s = known_secrets(admin_password="abAB12ab")
    out = redact("xabAB12abAB12aby abAB12ababAB12ab", s)
    assert "abAB12ab" not in out
    assert out == f"x{REDACTED}y {REDACTED}"


def test_nothing_to_redact_leaves_everything_as_is() -> None:
    doc = {"error": {"code": "X", "message": "fine"}}
    assert redact(doc, ()) == doc
    assert redact_response_body(b'{"a": 1}', ()) == b'{"a": 1}'
    assert known_secrets() == ()
    assert known_secrets(admin_password="", custom_data="") == ()


def test_secrets_are_found_in_an_arm_call_body() -> None:
    body = {"instanceIds": ["1"], "osProfile": {"adminPassword": SecretStr(SENTINEL_PASSWORD),
                                                "customData": SecretStr(CUSTOM_DATA)}}
    found = secrets_of_body(body)
    assert SENTINEL_PASSWORD in found and CUSTOM_DATA in found and CLOUD_INIT.strip() in found
    assert secrets_of_body(None) == () and secrets_of_body({"tempDisk": True}) == ()


def test_response_bodies_json_and_not() -> None:
    raw = json.dumps({"error": {"code": "InvalidParameter", "message": f"pw {SENTINEL_PASSWORD} no"}}).encode()
    out = redact_response_body(raw, secrets())
    assert SENTINEL_PASSWORD.encode() not in out
    assert json.loads(out)["error"] == {"code": "InvalidParameter", "message": f"pw {REDACTED} no"}
    text = f"<html>{SENTINEL_PASSWORD}</html>".encode()
    assert SENTINEL_PASSWORD.encode() not in redact_response_body(text, secrets())
    # A JSON escape that hides the secret from a byte search is undone before redacting.
    hidden = b'{"message": "' + SENTINEL_PASSWORD[:3].encode() + b"\\u00" + \
        f"{ord(SENTINEL_PASSWORD[3]):02x}".encode() + SENTINEL_PASSWORD[4:].encode() + b'"}'
    assert json.loads(hidden)["message"] == SENTINEL_PASSWORD
    assert SENTINEL_PASSWORD not in json.loads(redact_response_body(hidden, secrets()))["message"]


@pytest.mark.parametrize("secret", ["E", "RED", "[REDACTED]", "D]", "*", "#", "A]x"])
def test_secrets_that_look_like_the_marker_never_survive(secret: str) -> None:
    s = known_secrets(admin_password=secret)
    for text in (f"a{secret}b", secret * 3, f"[REDACTED] {secret}", "[REDACTED]x"):
        assert secret not in redact(text, s)


# --- properties -----------------------------------------------------------------------------------
passwords = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)
noise = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)


@settings(max_examples=500, deadline=None)
@given(passwords, st.binary(min_size=1, max_size=60), st.lists(st.tuples(noise, st.integers(0, 4)), max_size=5),
       st.booleans())
def test_no_secret_survives_anywhere_in_arm_text(pw: str, data: bytes, parts: list[tuple[str, int]],
                                                  escape: bool) -> None:
    custom = base64.b64encode(data).decode()
    s = known_secrets(admin_password=pw, custom_data=custom)
    decoded = data.decode("utf-8", errors="ignore") if _utf8(data) else None
    plain = [pw, custom] + ([decoded] if decoded else [])
    text = ""
    for junk, which in parts:  # the secrets embedded anywhere, whole, in pieces or JSON-escaped
        secret = plain[which % len(plain)]
        piece = json.dumps(secret)[1:-1] if escape else secret
        text += junk[: len(junk) // 2] + piece + junk[len(junk) // 2:]
    out = redact(text, s)
    for secret in plain:
        assert secret not in out
    out_doc = redact({"error": {"message": text, "details": [{"message": text, text: 1}]}}, s)
    for secret in plain:
        assert all(secret not in piece for piece in _strings(out_doc))


def _strings(value: Any) -> list[str]:
    """Every string in a JSON-like value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _strings(k) + _strings(v)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _strings(v)]
    return []


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(passwords, st.recursive(st.none() | st.booleans() | st.integers() | noise,
                               lambda inner: st.lists(inner, max_size=3) | st.dictionaries(noise, inner, max_size=3),
                               max_leaves=10), st.booleans())
def test_no_secret_survives_in_a_json_response_body(pw: str, doc: Any, ascii_only: bool) -> None:
    s = known_secrets(admin_password=pw)
    body = {"error": {"code": "InvalidParameter", "message": f"x{pw}y", "details": [doc, pw, {pw: doc}]}}
    raw = json.dumps(body, ensure_ascii=ascii_only).encode()
    out = redact_response_body(raw, s)
    assert all(pw not in piece for piece in _strings(json.loads(out)))
