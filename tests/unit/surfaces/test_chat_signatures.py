"""shared/surfaces/chat/signatures.py: the vendors' signature checks (Slack's five-minute window, Teams' HMAC
over the decoded token)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from shared.surfaces.chat.signatures import SignatureError, check_fresh, verify_slack, verify_teams

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = 1_767_225_600


def slack_headers(body: bytes, ts: int, secret: str = SLACK_SECRET) -> dict[str, str]:
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"x-slack-request-timestamp": str(ts), "x-slack-signature": sig}


def test_slack_signature_window_is_five_minutes_either_way() -> None:
    body = b"text=help&user_id=U1"
    for skew in (0, 300, -300):
        verify_slack(SLACK_SECRET, slack_headers(body, NOW + skew), body, NOW)
    for skew in (301, -301):
        with pytest.raises(SignatureError, match="five minutes"):
            verify_slack(SLACK_SECRET, slack_headers(body, NOW + skew), body, NOW)
    with pytest.raises(SignatureError):
        verify_slack(SLACK_SECRET, {**slack_headers(body, NOW), "x-slack-signature": "v0=é"}, body, NOW)
    with pytest.raises(SignatureError, match="not configured"):
        verify_slack(None, slack_headers(body, NOW), body, NOW)


def test_teams_signature_uses_the_decoded_token() -> None:
    token = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    body = b'{"type":"message"}'
    good = base64.b64encode(hmac.new(base64.b64decode(token), body, hashlib.sha256).digest()).decode()
    verify_teams(token, {"authorization": f"HMAC {good}"}, body)
    undecoded = base64.b64encode(hmac.new(token.encode(), body, hashlib.sha256).digest()).decode()
    with pytest.raises(SignatureError):  # keyed with the token's text instead of its bytes: not Teams' algorithm
        verify_teams(token, {"authorization": f"HMAC {undecoded}"}, body)
    with pytest.raises(SignatureError):
        verify_teams(token, {"authorization": f"HMAC {good}x"}, body)


def test_teams_activity_timestamp_must_be_fresh() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    check_fresh("2026-01-01T00:04:59.4371234Z", now)
    for bad in ("2025-12-31T23:54:59Z", "2026-01-01T00:05:01Z", "2026-01-01T00:00:00", "soon", None, 3):
        with pytest.raises(SignatureError):
            check_fresh(bad, now)
    check_fresh((now - timedelta(minutes=4)).isoformat(), now)
