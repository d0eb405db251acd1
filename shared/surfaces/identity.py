"""Who is asking, and how we know: a verified principal from App Service authentication or a signed chat request.

App Service authentication ("Easy Auth") injects `X-MS-CLIENT-PRINCIPAL` (base64 JSON:
`{"auth_typ", "claims": [{"typ", "val"}], "name_typ", "role_typ"}`), `X-MS-CLIENT-PRINCIPAL-NAME`
and `X-MS-CLIENT-PRINCIPAL-ID`, and strips those headers from what clients send
(learn.microsoft.com/azure/app-service/configure-authentication-user-identities). That stripping is
the only reason to believe them, so they count only when `EASY_AUTH_ENABLED=true` says the platform
is doing it; otherwise a client could name anyone, and the headers are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from shared import runtime
from shared.domain.principal import MAX_NAME, Principal, entra

log = logging.getLogger("reimager.identity")


_MAX_HEADER = 16 * 1024  # a principal header larger than this is not one App Service wrote
# Claim types that name a person uniquely (a sign-in name, not a display name that two people may share),
# in order of preference.
_NAME_CLAIMS = ("preferred_username", "upn", "email",
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn",
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress")
# Claim types that identify a caller without a person's name (service principals, managed identities).
_OID_CLAIMS = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
_ID_CLAIMS = (*_OID_CLAIMS, "appid", "azp", "sub")


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup ignoring case (frameworks present these headers in different casings)."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _clip(name: str) -> str | None:
    name = name.strip()
    return name[:MAX_NAME] if name else None


def clean(value: str) -> bool:
    """Text a platform could have written: no lone surrogates (they cannot be stored or sent as UTF-8; a header
    that was not UTF-8 arrives with them) and no control characters."""
    return not any(0xD800 <= ord(c) <= 0xDFFF or unicodedata.category(c) == "Cc" for c in value)


class Malformed(ValueError):
    """An X-MS-CLIENT-PRINCIPAL that App Service did not write: it names nobody."""


def _claims(encoded: str) -> tuple[dict[str, str], str | None, str | None]:
    """The claims of an X-MS-CLIENT-PRINCIPAL header ({type: first value}), its name claim type and auth_typ.
    Malformed (oversize, not base64, not the document, a claim that is not clean text) raises Malformed."""
    text = encoded.strip()
    if len(text) > _MAX_HEADER:
        raise Malformed("oversize")
    try:
        doc: Any = json.loads(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
    except (binascii.Error, ValueError):
        raise Malformed("not base64 JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("claims"), list):
        raise Malformed("no claims")
    claims: dict[str, str] = {}
    for claim in doc["claims"]:
        if isinstance(claim, dict) and isinstance(claim.get("typ"), str) and isinstance(claim.get("val"), str):
            if not (clean(claim["typ"]) and clean(claim["val"])):
                raise Malformed("a claim that is not text")
            claims.setdefault(claim["typ"], claim["val"])
    name_typ, auth_typ = doc.get("name_typ"), doc.get("auth_typ")
    return (claims, name_typ if isinstance(name_typ, str) else None,
            auth_typ.lower() if isinstance(auth_typ, str) and clean(auth_typ) else None)


def _identity(claims: dict[str, str], auth_typ: str | None, headers: Mapping[str, str]) -> str | None:
    """Who the caller is: the Entra object id for Microsoft Entra sign-ins, else the provider's own user id
    (comparable only with the same provider's)."""
    oid = claims.get(_OID_CLAIMS[0]) or claims.get(_OID_CLAIMS[1])
    if oid and auth_typ in (None, "aad") and (found := entra(oid)) is not None:
        return found
    provider = re.sub(r"[^a-z0-9]", "", (header(headers, "X-MS-CLIENT-PRINCIPAL-IDP") or auth_typ or "").lower())
    user = header(headers, "X-MS-CLIENT-PRINCIPAL-ID") or claims.get("sub")
    if provider and user and user.strip() and not any(c.isspace() for c in user.strip()):
        return f"easyauth-{provider[:32]}:{user.strip()[:200]}"
    return None


def easy_auth_principal(headers: Mapping[str, str]) -> Principal | None:
    """The principal App Service authentication put in the headers, or None when it put none there (or what is
    there is malformed: then it names nobody, never a 500).

    The caller decides whether to trust it (only with EASY_AUTH_ENABLED); see `from_headers`.
    """
    encoded = header(headers, "X-MS-CLIENT-PRINCIPAL")
    try:
        claims, name_typ, auth_typ = _claims(encoded) if encoded else ({}, None, None)
    except Malformed as exc:
        log.warning("ignored a malformed X-MS-CLIENT-PRINCIPAL header: %s", exc)
        return None
    plain = [header(headers, h) for h in ("X-MS-CLIENT-PRINCIPAL-NAME", "X-MS-CLIENT-PRINCIPAL-ID",
                                           "X-MS-CLIENT-PRINCIPAL-IDP")]
    if any(value is not None and not clean(value) for value in plain):
        log.warning("ignored X-MS-CLIENT-PRINCIPAL headers that are not text")
        return None
    # X-MS-CLIENT-PRINCIPAL-NAME is the platform's own pick ("such as email address or user principal
    # name"); then sign-in names among the claims; the name_typ claim (often a display name); then ids.
    candidates = [plain[0], *(claims.get(t) for t in _NAME_CLAIMS),
                  claims.get(name_typ) if name_typ else None, *(claims.get(t) for t in _ID_CLAIMS), plain[1]]
    for candidate in candidates:
        name = _clip(candidate) if candidate else None
        if name:
            return Principal(name, "easyauth", _identity(claims, auth_typ, headers))
    return None


def from_headers(headers: Mapping[str, str], *, easy_auth_enabled: bool) -> Principal | None:
    """The verified caller of an HTTP request, or None (then a body-supplied requestedBy stays unverified)."""
    if not easy_auth_enabled:
        if header(headers, "X-MS-CLIENT-PRINCIPAL") or header(headers, "X-MS-CLIENT-PRINCIPAL-NAME"):
            # Not from the platform (it is off): a client wrote it. Ignored, and said so.
            log.warning("ignored X-MS-CLIENT-PRINCIPAL headers: EASY_AUTH_ENABLED is false")
        return None
    return easy_auth_principal(headers)


def principal_of(headers: Mapping[str, str]) -> Principal | None:
    """The verified caller, when App Service authentication vouches for one (see shared/surfaces/identity.py)."""
    return from_headers(headers, easy_auth_enabled=runtime.get().settings.easy_auth_enabled)
