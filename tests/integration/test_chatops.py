"""Slack slash commands and Teams outgoing webhooks through devhost's real HTTP, signed with the vendors' real
algorithms computed here from the secrets (not with the app's own helpers)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as h_settings
from hypothesis import strategies as st

from devhost.clock import VirtualClock
from devhost.compute import Fault
from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.ids import operation_id
from shared.domain.principal import Principal
from shared.domain.records import OperationRecord
from shared.surfaces.chat import endpoints as chatops_http
from shared.workflow.operators import Acted
from tests.conftest import ledger_settings
from tests.integration.conftest import LINUX_VM, PROTECTED_VM, Host
from tests.integration.live import LiveHost, live_host

NewHost = Callable[..., Any]
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # the shape of a Slack signing secret
TEAMS_TOKEN = base64.b64encode(b"teams-outgoing-webhook-security-token-32b").decode()
SETTINGS = {"SLACK_SIGNING_SECRET": SLACK_SECRET, "TEAMS_WEBHOOK_SECRET": TEAMS_TOKEN}


@pytest.fixture
async def chat(new_host: NewHost) -> Host:
    host: Host = await new_host(settings=SETTINGS)
    return host


def now(host: Host) -> datetime:
    return host.dh.clock.utcnow()


# ---- Slack ------------------------------------------------------------------------------------------------
def slack_form(text: str, user: str = "U2147483697", trigger: str | None = None) -> bytes:
    fields = {"token": "gIkuvaNzQIHg97ATvDxqgjtO", "team_id": "T0001", "team_domain": "example",
              "channel_id": "C2147483705", "channel_name": "ops", "user_id": user, "user_name": "steve",
              "command": "/reimager", "text": text, "api_app_id": "A123456",
              "response_url": "https://hooks.slack.com/commands/1234/5678",
              "trigger_id": trigger or f"13345224609.738474920.{abs(hash((text, user))) % 10**12:x}"}
    return urlencode(fields).encode()


def slack_headers(body: bytes, timestamp: int, secret: str = SLACK_SECRET) -> dict[str, str]:
    """https://api.slack.com/authentication/verifying-requests-from-slack, step by step."""
    base = f"v0:{timestamp}:".encode() + body
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded"}


async def slack(host: Host, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with host.http.post(host.url + "/api/chatops/slack", data=body, headers={**host.key, **headers}) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


async def slack_command(host: Host, text: str, **kw: Any) -> dict[str, Any]:
    body = slack_form(text, **kw)
    status, reply = await slack(host, body, slack_headers(body, int(now(host).timestamp())))
    assert status == 200, reply
    assert_slack_message(reply)
    return reply  # type: ignore[no-any-return]


def assert_slack_message(reply: Any) -> None:
    """A slash-command response Slack accepts: response_type, text, and section blocks with mrkdwn text."""
    assert isinstance(reply, dict) and set(reply) <= {"response_type", "text", "blocks"}
    assert reply["response_type"] in ("ephemeral", "in_channel")
    assert isinstance(reply["text"], str) and 0 < len(reply["text"]) <= 3000
    assert isinstance(reply["blocks"], list) and 1 <= len(reply["blocks"]) <= 50
    for block in reply["blocks"]:
        assert block["type"] == "section" and block["text"]["type"] == "mrkdwn"
        assert 0 < len(block["text"]["text"]) <= 3000


async def test_slack_reimage_end_to_end_records_the_slack_user_verified(chat: Host) -> None:
    reply = await slack_command(chat, "reimage reimager-demo/web-linux-01 -- stuck after patching")
    assert reply["response_type"] == "in_channel" and "Reimage requested" in reply["text"]
    posts = chat.reimage_posts()
    assert len(posts) == 1 and posts[0]["path"].endswith("/virtualMachines/web-linux-01/reimage")
    events = await chat.until_completed()
    data = events[0]["data"]
    assert data["status"] == "Succeeded" and data["trigger"] == "chatops"
    assert (data["requestedBy"], data["requestedByVerified"]) == ("slack:T0001/U2147483697", "slack")
    assert data["reason"] == "stuck after patching"
    status = await slack_command(chat, f"status {data['operationId']}")
    assert "Succeeded" in status["text"] and status["response_type"] == "ephemeral"
    listed = await slack_command(chat, "list reimager-demo/web-linux-01")
    assert data["operationId"] in listed["text"]


async def test_a_slow_reimage_is_answered_within_slacks_three_seconds_and_still_happens(chat: Host) -> None:
    chat.dh.sim.faults.append(Fault(match="web-linux-01", method="GET", delaySeconds=4))  # a slow preflight GET
    body = slack_form("reimage reimager-demo/web-linux-01", trigger="slow.trigger.1")
    started = time.monotonic()
    status, reply = await slack(chat, body, slack_headers(body, int(now(chat).timestamp())))
    elapsed = time.monotonic() - started
    assert status == 200 and elapsed < 3.0, elapsed
    assert_slack_message(reply)
    expected = operation_id("slack:slow.trigger.1")
    assert "Still submitting" in reply["text"] and expected in reply["text"]
    for _ in range(300):  # the submission goes on after the reply, in real time (a slow GET)
        if chat.reimage_posts():
            break
        await asyncio.sleep(0.1)
    events = await chat.until_completed()
    assert events[0]["data"]["operationId"] == expected and len(chat.reimage_posts()) == 1


def _arm_and_ledger(host: Host) -> tuple[int, int]:
    return len(host.dh.sim.requests), len(host.dh.events())


@pytest.mark.parametrize("case", ["wrong-signature", "wrong-secret", "stale", "future", "missing-signature",
                                  "missing-timestamp", "not-a-number", "body-changed"])
async def test_slack_bad_signatures_are_401_and_nothing_runs(chat: Host, case: str) -> None:
    before = _arm_and_ledger(chat)
    body = slack_form("reimage reimager-demo/web-linux-01")
    ts = int(now(chat).timestamp())
    headers = slack_headers(body, ts)
    if case == "wrong-signature":
        headers["X-Slack-Signature"] = "v0=" + "0" * 64
    elif case == "wrong-secret":
        headers = slack_headers(body, ts, secret="another-apps-secret")
    elif case == "stale":
        headers = slack_headers(body, ts - 301)
    elif case == "future":
        headers = slack_headers(body, ts + 301)
    elif case == "missing-signature":
        del headers["X-Slack-Signature"]
    elif case == "missing-timestamp":
        del headers["X-Slack-Request-Timestamp"]
    elif case == "not-a-number":
        headers["X-Slack-Request-Timestamp"] = "soon"
    elif case == "body-changed":
        body = slack_form("reimage reimager-demo/app-win-01")
    status, reply = await slack(chat, body, headers)
    assert status == 401 and reply["error"]["code"] == "SignatureInvalid"
    assert SLACK_SECRET not in json.dumps(reply)
    assert _arm_and_ledger(chat) == before and chat.reimage_posts() == []
    _, listed = await chat.get("/api/reimage")
    assert listed == {"value": []}


async def test_slack_replay_within_the_window_does_nothing_twice_and_after_it_is_refused(chat: Host) -> None:
    body = slack_form("reimage reimager-demo/web-linux-01")
    headers = slack_headers(body, int(now(chat).timestamp()))
    status, first = await slack(chat, body, headers)
    assert status == 200 and "Reimage requested" in first["text"]
    status, again = await slack(chat, body, headers)  # the same request (same trigger_id) again: no second POST
    assert status == 200 and len(chat.reimage_posts()) == 1
    assert "Already requested" in again["text"] and first["text"].split("`")[1] == again["text"].split("`")[1]
    assert isinstance(chat.dh.clock, VirtualClock)
    chat.dh.clock.advance(301)  # five minutes and a second later, the captured request is replayed
    status, reply = await slack(chat, body, headers)
    assert status == 401 and len(chat.reimage_posts()) == 1


async def test_slack_without_a_secret_refuses_everything(host: Host) -> None:
    body = slack_form("help")
    status, reply = await slack(host, body, slack_headers(body, int(now(host).timestamp())))
    assert status == 401 and "SLACK_SIGNING_SECRET" in reply["error"]["message"]


@pytest.mark.parametrize("text", [
    "", "help", "HELP", "list", "list reimager-demo/workers", "list /subscriptions/x", "status op-" + "0" * 32,
    "status nope", "reimage", "reimage reimager-demo/db-linux-01", "reimage reimager-demo/workers",
    "reimage reimager-demo/ghost -- typo", "approve op-" + "1" * 32, "reject op-" + "2" * 32 + " -- no",
    "cancel op-" + "3" * 32, "frobnicate the servers", "reimage <@U123|bob> & stuff", "-- only a reason",
    "reimage reimager-demo/workers 0 0",
])
async def test_every_slack_reply_is_a_valid_slack_message(chat: Host, text: str) -> None:
    reply = await slack_command(chat, text)
    assert "<@U123" not in reply["text"]  # user text is escaped, never a live mention
    assert chat.reimage_posts() == []  # none of these may reach ARM


async def test_slack_refusals_are_said_in_the_reply(chat: Host) -> None:
    reply = await slack_command(chat, "reimage reimager-demo/db-linux-01")
    assert "TargetProtected" in reply["text"] and reply["response_type"] == "ephemeral"
    reply = await slack_command(chat, f"reimage {PROTECTED_VM.replace('db-linux-01', 'web-linux-01')}")
    assert "Reimage requested" in reply["text"]  # a full ARM id works as well
    reply = await slack_command(chat, "reimage reimager-demo/ghost")
    assert "TargetNotFound" in reply["text"]
    assert len(chat.reimage_posts()) == 1


# ---- Teams ------------------------------------------------------------------------------------------------
def activity(text: str, when: datetime, sender: str = "29:1FnsLSOdx", aad: str | None = "aad-object-1",
             activity_id: str = "1485983408511") -> bytes:
    doc: dict[str, Any] = {
        "type": "message", "id": activity_id, "timestamp": when.isoformat().replace("+00:00", "Z"),
        "localTimestamp": when.isoformat(), "serviceUrl": "https://smba.trafficmanager.net/amer/",
        "channelId": "msteams", "from": {"id": sender, "name": "Tim Jones"},
        "conversation": {"isGroup": True, "id": "19:abc@thread.skype;messageid=1485983408511", "name": None},
        "recipient": None, "textFormat": "plain", "attachmentLayout": None, "membersAdded": [], "membersRemoved": [],
        "topicName": None, "historyDisclosed": None, "locale": "en-US", "text": f"<at>reimager</at> {text}\n",
        "speak": None, "inputHint": None, "summary": None, "suggestedActions": None, "attachments": [
            {"contentType": "text/html",
             "content": f"<div><span itemscope=\"\"><at>reimager</at></span> {text}</div>"}],
        "entities": [], "channelData": {"teamsChannelId": "19:abc@thread.skype", "teamsTeamId": "19:abc@thread.skype",
                                        "channel": {"id": "19:abc@thread.skype"}, "team": {"id": "19:abc@thread.skype"},
                                        "tenant": {"id": "72f988bf-86f1-41af-91ab-2d7cd011db47"}},
        "action": None, "replyToId": None, "value": None, "name": None, "relatesTo": None, "code": None}
    if aad:
        doc["from"]["aadObjectId"] = aad
    return json.dumps(doc).encode()


def teams_headers(body: bytes, token: str = TEAMS_TOKEN) -> dict[str, str]:
    """Microsoft's outgoing-webhook check: HMAC-SHA256 keyed with the base64-decoded token, base64 of the digest."""
    digest = hmac.new(base64.b64decode(token), body, hashlib.sha256).digest()
    return {"Authorization": "HMAC " + base64.b64encode(digest).decode(), "Content-Type": "application/json"}


async def teams(host: Host, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with host.http.post(host.url + "/api/chatops/teams", data=body, headers={**host.key, **headers}) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


def assert_teams_message(reply: Any) -> None:
    assert isinstance(reply, dict) and reply["type"] == "message"
    assert isinstance(reply["text"], str) and reply["text"]
    assert set(reply) == {"type", "text"}


async def teams_command(host: Host, text: str, **kw: Any) -> dict[str, Any]:
    body = activity(text, now(host), **kw)
    status, reply = await teams(host, body, teams_headers(body))
    assert status == 200, reply
    assert_teams_message(reply)
    return reply  # type: ignore[no-any-return]


async def test_teams_reimage_end_to_end_records_the_teams_user_verified(chat: Host) -> None:
    reply = await teams_command(chat, "reimage reimager-demo/workers/2 -- unhealthy")
    assert "Reimage requested" in reply["text"]
    events = await chat.until_completed()  # a scale set instance may wait for its batch to gather first
    posts = chat.reimage_posts()
    assert len(posts) == 1 and posts[0]["body"]["instanceIds"] == ["2"]
    data = events[0]["data"]
    assert (data["requestedBy"], data["requestedByVerified"], data["trigger"]) == \
        ("teams:aad-object-1", "teams", "chatops")
    reply = await teams_command(chat, f"status {data['operationId']}", activity_id="2")
    assert "Succeeded" in reply["text"]


@pytest.mark.parametrize("case", ["wrong-signature", "wrong-token", "stale", "no-timestamp", "missing",
                                  "bearer", "body-changed"])
async def test_teams_bad_signatures_are_401_and_nothing_runs(chat: Host, case: str) -> None:
    before = _arm_and_ledger(chat)
    body = activity("reimage reimager-demo/web-linux-01", now(chat))
    headers = teams_headers(body)
    if case == "wrong-signature":
        headers["Authorization"] = "HMAC " + base64.b64encode(b"x" * 32).decode()
    elif case == "wrong-token":
        headers = teams_headers(body, base64.b64encode(b"another webhook").decode())
    elif case == "stale":
        body = activity("reimage reimager-demo/web-linux-01", now(chat) - timedelta(minutes=5, seconds=1))
        headers = teams_headers(body)
    elif case == "no-timestamp":
        doc = json.loads(activity("reimage reimager-demo/web-linux-01", now(chat)))
        del doc["timestamp"]
        body = json.dumps(doc).encode()
        headers = teams_headers(body)
    elif case == "missing":
        del headers["Authorization"]
    elif case == "bearer":
        headers["Authorization"] = headers["Authorization"].replace("HMAC", "Bearer")
    elif case == "body-changed":
        body = activity("reimage reimager-demo/app-win-01", now(chat))
    status, reply = await teams(chat, body, headers)
    assert status == 401 and reply["error"]["code"] == "SignatureInvalid"
    assert _arm_and_ledger(chat) == before and chat.reimage_posts() == []


async def test_teams_replay_after_five_minutes_is_refused(chat: Host) -> None:
    body = activity("reimage reimager-demo/web-linux-01", now(chat))
    headers = teams_headers(body)
    status, reply = await teams(chat, body, headers)
    assert status == 200 and "Reimage requested" in reply["text"]
    chat.dh.clock.advance(301)  # type: ignore[attr-defined]
    status, reply = await teams(chat, body, headers)
    assert status == 401 and len(chat.reimage_posts()) == 1


@pytest.mark.parametrize("text", ["", "help", "list", "status op-" + "0" * 32, "approve op-" + "1" * 32,
                                  "reject op-" + "2" * 32 + " -- no", "cancel op-" + "3" * 32, "what?",
                                  "reimage reimager-demo/db-linux-01", "reimage &lt;b&gt;x"])
async def test_every_teams_reply_is_a_message_activity(chat: Host, text: str) -> None:
    reply = await teams_command(chat, text)
    assert "<b>" not in reply["text"]
    assert chat.reimage_posts() == []


async def test_teams_sender_without_aad_object_id_uses_the_channel_id(chat: Host) -> None:
    await teams_command(chat, "reimage reimager-demo/web-linux-01", aad=None)
    events = await chat.until_completed()
    assert events[0]["data"]["requestedBy"] == "teams:29:1FnsLSOdx"


# ---- approve / reject / cancel: parse and dispatch (the actions themselves are the operator module's) -----
class RecordingActions:
    def __init__(self, result: Acted | ReimagerError) -> None:
        self.calls: list[tuple[str, str, Principal, str | None]] = []
        self.result = result

    async def _record(self, action: str, operation_id: str, principal: Principal, reason: str | None) -> Acted:
        self.calls.append((action, operation_id, principal, reason))
        if isinstance(self.result, ReimagerError):
            raise self.result
        return self.result

    async def cancel(self, operation_id: str, principal: Principal, reason: str | None) -> Acted:
        return await self._record("cancel", operation_id, principal, reason)

    async def approve(self, operation_id: str, principal: Principal, reason: str | None) -> Acted:
        return await self._record("approve", operation_id, principal, reason)

    async def reject(self, operation_id: str, principal: Principal, reason: str | None) -> Acted:
        return await self._record("reject", operation_id, principal, reason)


OP = "op-" + "ab" * 16
DOC = {"operationId": OP, "status": "Canceled", "target": LINUX_VM, "requestedBy": "slack:T0001/U1",
       "requestedByVerified": "slack"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)
RECORD = OperationRecord(operation_id=OP, request_id="r", target=LINUX_VM, lease_key="k", trigger="chatops",
                         status="Canceled", requested_by="slack:T0001/U1", requested_by_verified="slack",
                         created_time=T0, last_updated_time=T0)
DONE = Acted(RECORD, ended=True)


@pytest.mark.parametrize(("text", "call"), [
    (f"approve {OP}", ("approve", OP, None)),
    (f"approve {OP.upper().replace('OP-', 'op-')} -- looks right", ("approve", OP, "looks right")),
    (f"reject {OP} -- not during the release", ("reject", OP, "not during the release")),
    (f"cancel {OP} --   wrong   set ", ("cancel", OP, "wrong set")),
])
async def test_slack_actions_are_dispatched_with_the_verified_principal(chat: Host, text: str,
                                                                        call: tuple[str, str, str | None]) -> None:
    actions = RecordingActions(DONE)
    body = slack_form(text, user="U0BOB")
    outcome = await chatops_http.post_slack(body, slack_headers(body, int(now(chat).timestamp())), None,
                                            chat.url, actions=actions)
    assert outcome.status == 200
    assert_slack_message(outcome.body)
    assert actions.calls == [(call[0], call[1], Principal("slack:T0001/U0BOB", "slack"), call[2])]
    assert OP in outcome.body["text"] and outcome.body["response_type"] == "in_channel"


async def test_teams_actions_are_dispatched_and_refusals_are_replied(chat: Host) -> None:
    refusal = ReimagerError(ErrorCode.SELF_APPROVAL_NOT_ALLOWED, "Another person must approve.")
    actions = RecordingActions(refusal)
    body = activity(f"approve {OP}", now(chat), aad="aad-alice")
    outcome = await chatops_http.post_teams(body, teams_headers(body), None, chat.url, actions=actions)
    assert outcome.status == 200
    assert_teams_message(outcome.body)
    assert actions.calls == [("approve", OP, Principal("teams:aad-alice", "teams"), None)]
    assert "SelfApprovalNotAllowed" in outcome.body["text"]


async def test_a_bad_signature_never_reaches_the_actions(chat: Host) -> None:
    actions = RecordingActions(DONE)
    body = slack_form(f"cancel {OP}")
    headers = slack_headers(body, int(now(chat).timestamp()), secret="wrong")
    outcome = await chatops_http.post_slack(body, headers, None, chat.url, actions=actions)
    assert outcome.status == 401 and actions.calls == []
    body = activity(f"cancel {OP}", now(chat))
    outcome = await chatops_http.post_teams(body, {"Authorization": "HMAC AAAA"}, None, chat.url, actions=actions)
    assert outcome.status == 401 and actions.calls == []


async def test_the_production_actions_are_the_operator_use_cases(chat: Host) -> None:
    """Production wiring: with no actions given, a chat action runs shared/workflow/operators.py (here: no such
    operation, as the HTTP route would answer)."""
    body = slack_form(f"cancel {OP}", user="U0BOB")
    outcome = await chatops_http.post_slack(body, slack_headers(body, int(now(chat).timestamp())), None, chat.url)
    assert outcome.status == 200 and "OperationNotFound" in outcome.body["text"]
    assert outcome.body["response_type"] == "ephemeral"


# ---- fuzz: signed requests with any text never answer anything but a 200 reply in the platform's format --
chat_words = st.sampled_from(["reimage", "status", "list", "approve", "reject", "cancel", "help", "--", "all",
                              "reimager-demo/web-linux-01", "reimager-demo/workers", "reimager-demo/workers/1", "0",
                              "07", OP, LINUX_VM, "/", "`", "<at>x</at>", "&amp;", "\u00a0", "<@U1|x>"])
chat_texts = st.lists(chat_words | st.text(max_size=15), max_size=7).map(" ".join) | st.text(max_size=200)


@pytest.fixture(scope="module")
def live_chat(tmp_path_factory: pytest.TempPathFactory, azurite_storage: str) -> Iterator[LiveHost]:
    settings = {**ledger_settings(azurite_storage), **SETTINGS, "COOLDOWN_MINUTES": "0"}
    with live_host(tmp_path_factory.mktemp("chatfuzz"), settings) as host:
        yield host


@h_settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(text=chat_texts, teams_side=st.booleans())
def test_signed_commands_with_any_text_never_500(live_chat: LiveHost, text: str, teams_side: bool) -> None:
    key = {"x-functions-key": live_chat.dh.function_key}
    if teams_side:
        body = activity(text, datetime.now(UTC))
        r = requests.post(live_chat.dh.functions_url + "/api/chatops/teams", data=body,
                          headers={**key, **teams_headers(body)}, timeout=30)
        assert r.status_code == 200, r.text
        assert_teams_message(r.json())
    else:
        body = slack_form(text)
        r = requests.post(live_chat.dh.functions_url + "/api/chatops/slack", data=body,
                          headers={**key, **slack_headers(body, int(time.time()))}, timeout=30)
        assert r.status_code == 200, r.text
        assert_slack_message(r.json())
