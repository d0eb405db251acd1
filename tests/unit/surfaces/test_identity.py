"""shared/surfaces/identity.py: the Easy Auth principal headers count only when Easy Auth is on, and never raise."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.principal import Principal
from shared.surfaces.identity import easy_auth_principal, from_headers


def principal(claims: list[dict[str, str]], name_typ: str | None = None) -> str:
    doc = {"auth_typ": "aad", "claims": claims, "name_typ": name_typ, "role_typ": "roles"}
    return base64.b64encode(json.dumps(doc).encode()).decode()


def test_easy_auth_headers_count_only_when_enabled() -> None:
    headers = {"X-MS-CLIENT-PRINCIPAL-NAME": "alice@contoso.com"}
    assert from_headers(headers, easy_auth_enabled=False) is None
    assert from_headers(headers, easy_auth_enabled=True) == Principal("alice@contoso.com", "easyauth")
    assert from_headers({}, easy_auth_enabled=True) is None


@pytest.mark.parametrize(("headers", "name"), [
    ({"x-ms-client-principal": principal([{"typ": "name", "val": "Alice A"},
                                          {"typ": "preferred_username", "val": "alice@contoso.com"}], "name")},
     "alice@contoso.com"),
    ({"x-ms-client-principal": principal([{"typ": "name", "val": "Alice A"}], "name")}, "Alice A"),
    ({"x-ms-client-principal": principal([{"typ": "oid", "val": "0b2f"}])}, "0b2f"),
    ({"x-ms-client-principal": "not base64 !!", "x-ms-client-principal-id": "id-1"}, "id-1"),
    ({"x-ms-client-principal": base64.b64encode(b"[1,2]").decode()}, None),
])
def test_easy_auth_principal_names(headers: dict[str, str], name: str | None) -> None:
    found = easy_auth_principal(headers)
    assert (found.name if found else None) == name


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()))
def test_easy_auth_never_raises(value: str) -> None:
    easy_auth_principal({"X-MS-CLIENT-PRINCIPAL": value})
