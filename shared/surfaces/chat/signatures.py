"""Signature checks for chat platforms' requests, exactly as each vendor documents them. Pure: the clock's
now is passed in.

Slack (https://api.slack.com/authentication/verifying-requests-from-slack): `X-Slack-Signature` is
`v0=` + hex(HMAC-SHA256(signing secret, "v0:" + X-Slack-Request-Timestamp + ":" + raw body)); a
timestamp more than five minutes from now is refused (replay).

Teams outgoing webhooks (https://learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/
how-to/add-outgoing-webhook): `Authorization: HMAC ` + base64(HMAC-SHA256(base64-decoded security
token, raw body)). Teams signs no timestamp header; the activity's own `timestamp` is inside the signed
body, and `check_fresh` holds it to the same five minutes.

Every comparison is constant-time (hmac.compare_digest) on bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import datetime

from shared.surfaces.identity import header

REPLAY_WINDOW_SECONDS = 300  # Slack: "more than five minutes from local time"
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class SignatureError(Exception):
    """The request is not provably from the platform. The message is for logs and the 401 answer; it never
    holds the secret or the expected signature."""


def _ascii(value: str) -> bytes | None:
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        return None


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Slack-Signature` value Slack sends for this timestamp and body."""
    base = b"v0:" + timestamp.encode("ascii") + b":" + body
    return "v0=" + hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()


def verify_slack(secret: str | None, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Raise SignatureError unless the request carries Slack's valid, fresh v0 signature."""
    if not secret:
        raise SignatureError("Slack is not configured here (SLACK_SIGNING_SECRET is not set)")
    timestamp = header(headers, "X-Slack-Request-Timestamp")
    signature = header(headers, "X-Slack-Signature")
    if not timestamp or not signature:
        raise SignatureError("X-Slack-Request-Timestamp and X-Slack-Signature are required")
    timestamp = timestamp.strip()
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("X-Slack-Request-Timestamp is not a Unix time")
    if abs(now - int(timestamp)) > REPLAY_WINDOW_SECONDS:
        raise SignatureError("X-Slack-Request-Timestamp is more than five minutes from now (a replay?)")
    given = _ascii(signature.strip())
    expected = slack_signature(secret, timestamp, body).encode("ascii")
    if given is None or not hmac.compare_digest(given, expected):
        raise SignatureError("X-Slack-Signature does not match the body")


def teams_key(secret: str) -> bytes:
    """The HMAC key: the security token Teams shows is base64; its decoded bytes are the key."""
    try:
        return base64.b64decode(secret.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("TEAMS_WEBHOOK_SECRET must be the base64 security token Teams showed") from None


def teams_signature(secret: str, body: bytes) -> str:
    """The `Authorization` value Teams sends for this body."""
    return "HMAC " + base64.b64encode(hmac.new(teams_key(secret), body, hashlib.sha256).digest()).decode("ascii")


def verify_teams(secret: str | None, headers: Mapping[str, str], body: bytes) -> None:
    """Raise SignatureError unless `Authorization: HMAC <base64>` is the body's HMAC under the webhook's token."""
    if not secret:
        raise SignatureError("Teams is not configured here (TEAMS_WEBHOOK_SECRET is not set)")
    authorization = header(headers, "Authorization")
    if not authorization:
        raise SignatureError("Authorization: HMAC <signature> is required")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.upper() != "HMAC" or not value.strip():
        raise SignatureError("Authorization must use the HMAC scheme")
    given = _ascii(value.strip())
    expected = teams_signature(secret, body).removeprefix("HMAC ").encode("ascii")
    if given is None or not hmac.compare_digest(given, expected):
        raise SignatureError("the HMAC signature does not match the body")


def check_fresh(timestamp: object, now: datetime) -> None:
    """Teams: the signed activity's `timestamp` (ISO 8601) must be within five minutes of now."""
    if not isinstance(timestamp, str) or len(timestamp) > 64:
        raise SignatureError("the activity has no timestamp, so a replay cannot be told from a new message")
    try:
        when = datetime.fromisoformat(timestamp)
    except ValueError:
        raise SignatureError("the activity's timestamp is not ISO 8601") from None
    if when.tzinfo is None:
        raise SignatureError("the activity's timestamp has no time zone")
    if abs((now - when).total_seconds()) > REPLAY_WINDOW_SECONDS:
        raise SignatureError("the activity's timestamp is more than five minutes from now (a replay?)")
