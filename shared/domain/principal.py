"""Who is asking, and how we know: a principal, how it was verified, and the identity behind its name."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

Verification = Literal["easyauth", "slack", "teams", "unverified"]
MAX_NAME = 256  # as requestedBy in the request contract
# An identity is "<system>:<id in that system>". Two identities can be compared only within one system:
# `entra` (an Entra object id, from App Service authentication or Teams' from.aadObjectId), `slack` (a team and a
# user id), `teams` (a Teams channel account id without an Entra object id) and `easyauth-<provider>` (another
# App Service authentication provider's user id).
_IDENTITY = re.compile(r"(entra|slack|teams|easyauth-[a-z0-9]{1,32}):[^\s]{1,200}")
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Principal:
    """A caller's name, how it was verified and, when a platform proves it, the identity behind the name.

    `name` is what is shown and recorded (requestedBy, approvedBy); `identity` is who the caller is: a principal
    is its identity, not its name (a renamed UPN is the same person, two people may share a display name).
    `unverified` names are whatever the caller typed and have no identity."""

    name: str
    verified: Verification
    identity: str | None = None

    @property
    def is_verified(self) -> bool:
        return self.verified != "unverified"


def as_verification(value: str | None) -> Verification:
    """A recorded verification, as the type (anything unknown is unverified)."""
    for known in ("easyauth", "slack", "teams"):
        if value == known:
            return known
    return "unverified"


def identity_system(identity: str) -> str:
    """The system an identity belongs to: `entra`, `slack`, `teams` or `easyauth-<provider>`."""
    return identity.split(":", 1)[0]


def entra(object_id: str) -> str | None:
    """The identity of an Entra object id (a GUID, compared in lower case), or None when it is not one."""
    oid = object_id.strip().lower()
    return f"entra:{oid}" if _GUID.fullmatch(oid) else None


def slack_principal(team: str, user: str) -> Principal:
    """A signed Slack command's user: a Slack user id is unique within its team (workspace), so both name it."""
    name = f"slack:{team}/{user}" if team else f"slack:{user}"
    return Principal(name[:MAX_NAME], "slack", name[:MAX_NAME])


def teams_principal(aad_object_id: str | None, channel_id: str) -> Principal:
    """A signed Teams activity's sender: its Entra object id when Teams gives one (the same identity App Service
    authentication proves), else its Teams channel account id, which only another Teams request can match."""
    if aad_object_id:
        identity = entra(aad_object_id) or f"teams:{aad_object_id.strip()}"
        return Principal(f"teams:{aad_object_id.strip()}"[:MAX_NAME], "teams", identity[:MAX_NAME])
    return Principal(f"teams:{channel_id.strip()}"[:MAX_NAME], "teams", f"teams:{channel_id.strip()}"[:MAX_NAME])


def check_identity(value: str) -> str:
    """An identity as written in APPROVER_IDENTITY_MAP (`entra:<object id>`, `slack:<team>/<user>`,
    `teams:<id>`), normalised; ValueError otherwise."""
    text = value.strip()
    if not _IDENTITY.fullmatch(text):
        raise ValueError(f"{value[:80]!r} is not an identity: entra:<object id>, slack:<team id>/<user id> or "
                         "teams:<id>")
    if identity_system(text) == "entra":
        normal = entra(text.split(":", 1)[1])
        if normal is None:
            raise ValueError(f"{value[:80]!r}: an Entra object id is a GUID")
        return normal
    return text


def parse_identity_map(text: str) -> dict[str, frozenset[str]]:
    """APPROVER_IDENTITY_MAP: a JSON object of identity -> identity pairs, each saying "these two are one person"
    (e.g. {"slack:T1/U1": "entra:<object id>"}). Returns every identity's aliases, both ways."""
    if not text.strip():
        return {}
    try:
        doc: Any = json.loads(text)
    except ValueError:
        raise ValueError('must be a JSON object such as {"slack:T0001/U0001": "entra:<object id>"}') from None
    if not isinstance(doc, dict) or len(doc) > 10000:
        raise ValueError('must be a JSON object (at most 10,000 entries) such as {"slack:T0001/U0001": '
                         '"entra:<object id>"}')
    aliases: dict[str, set[str]] = {}
    for key, value in doc.items():
        if not isinstance(value, str):
            raise ValueError(f"the value of {key[:80]!r} must be an identity string")
        one, other = check_identity(key), check_identity(value)
        if identity_system(one) == identity_system(other):
            raise ValueError(f"{key[:80]!r} and {value[:80]!r} are in the same system; the map says who is who "
                             "across systems")
        aliases.setdefault(one, set()).add(other)
        aliases.setdefault(other, set()).add(one)
    return {k: frozenset(v) for k, v in aliases.items()}
