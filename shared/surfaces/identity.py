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
from collections.abc import Mapping
from typing import Any

from shared import runtime
from shared.domain.principal import MAX_NAME, Principal

log = logging.getLogger("reimager.identity")


_MAX_HEADER = 16 * 1024  # a principal header larger than this is not one App Service wrote
# Claim types that name a person uniquely (a sign-in name, not a display name that two people may share),
# in order of preference.
_NAME_CLAIMS = ("preferred_username", "upn", "email",
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn",
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress")
# Claim types that identify a caller without a person's name (service principals, managed identities).
_ID_CLAIMS = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid", "appid", "azp", "sub")


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


def _claims(encoded: str) -> tuple[dict[str, str], str | None]:
    """The claims of an X-MS-CLIENT-PRINCIPAL header ({type: first value}) and its name claim type."""
    if len(encoded) > _MAX_HEADER:
        return {}, None
    try:
        doc: Any = json.loads(base64.b64decode(encoded.strip() + "=" * (-len(encoded.strip()) % 4), validate=True))
    except (binascii.Error, ValueError):
        return {}, None
    if not isinstance(doc, dict) or not isinstance(doc.get("claims"), list):
        return {}, None
    claims: dict[str, str] = {}
    for claim in doc["claims"]:
        if isinstance(claim, dict) and isinstance(claim.get("typ"), str) and isinstance(claim.get("val"), str):
            claims.setdefault(claim["typ"], claim["val"])
    name_typ = doc.get("name_typ")
    return claims, name_typ if isinstance(name_typ, str) else None


def easy_auth_principal(headers: Mapping[str, str]) -> Principal | None:
    """The principal App Service authentication put in the headers, or None when it put none there.

    The caller decides whether to trust it (only with EASY_AUTH_ENABLED); see `from_headers`.
    """
    encoded = header(headers, "X-MS-CLIENT-PRINCIPAL")
    claims, name_typ = _claims(encoded) if encoded else ({}, None)
    # X-MS-CLIENT-PRINCIPAL-NAME is the platform's own pick ("such as email address or user principal
    # name"); then sign-in names among the claims; the name_typ claim (often a display name); then ids.
    candidates = [header(headers, "X-MS-CLIENT-PRINCIPAL-NAME"), *(claims.get(t) for t in _NAME_CLAIMS),
                  claims.get(name_typ) if name_typ else None, *(claims.get(t) for t in _ID_CLAIMS),
                  header(headers, "X-MS-CLIENT-PRINCIPAL-ID")]
    for candidate in candidates:
        name = _clip(candidate) if candidate else None
        if name:
            return Principal(name, "easyauth")
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
