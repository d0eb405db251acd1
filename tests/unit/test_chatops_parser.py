"""The chat command grammar (pure), the vendors' signature checks, and the Easy Auth principal header."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.principal import Principal
from shared.domain.targets import TargetKind
from shared.surfaces.chat.commands import (
    Act,
    CommandError,
    Help,
    ListOperations,
    Reimage,
    Status,
    clean_text,
    parse_command,
)
from shared.surfaces.chat.replies import Reply, slack_message, teams_message
from shared.surfaces.chat.signatures import SignatureError, check_fresh, verify_slack, verify_teams
from shared.surfaces.http import http_status
from shared.surfaces.identity import easy_auth_principal, from_headers

SUB = "7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2910"
BASE = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute"
OP = "op-" + "0123456789abcdef" * 2


@pytest.mark.parametrize(("text", "kind", "instances", "everything", "reason"), [
    ("reimage rg/web-01", TargetKind.VM, None, False, None),
    ("reimage rg/web-01 -- kernel panic loop", TargetKind.VM, None, False, "kernel panic loop"),
    ("reimage rg/workers 0 3", TargetKind.VMSS, ("0", "3"), False, None),
    ("reimage rg/workers all -- bad image", TargetKind.VMSS, None, True, "bad image"),
    ("reimage rg/workers/7", TargetKind.VMSS_INSTANCE, None, False, None),
    (f"Reimage {BASE}/virtualMachineScaleSets/workers 1 2", TargetKind.VMSS, ("1", "2"), False, None),
    (f"reimage {BASE}/virtualMachineScaleSets/workers/virtualMachines/4", TargetKind.VMSS_INSTANCE, None, False,
     None),
    (f"reimage `{BASE}/virtualMachines/web-01`", TargetKind.VM, None, False, None),
])
def test_reimage_targets(text: str, kind: TargetKind, instances: tuple[str, ...] | None, everything: bool,
                         reason: str | None) -> None:
    command = parse_command(text, SUB)
    assert isinstance(command, Reimage)
    assert command.target.kind is kind and command.target.subscription_id == SUB
    assert (command.instance_ids, command.all_instances, command.reason) == (instances, everything, reason)


def test_reimage_builds_the_request_contract() -> None:
    command = parse_command("reimage rg/workers 0 3 -- why", SUB)
    assert isinstance(command, Reimage)
    assert command.request("slack:T1/U1") == {"target": f"{BASE}/virtualMachineScaleSets/workers",
                                              "instanceIds": ["0", "3"], "reason": "why",
                                              "requestedBy": "slack:T1/U1"}
    command = parse_command("reimage rg/workers all", SUB)
    assert isinstance(command, Reimage) and command.request("x")["allInstances"] is True


@pytest.mark.parametrize(("text", "expected"), [
    ("", Help()), ("help", Help()), ("  HELP  ", Help()),
    (f"status {OP}", Status(OP)), (f"status {OP.upper().replace('OP-', 'op-')}", Status(OP)),
    (f"approve {OP}", Act("approve", OP)), (f"reject {OP} -- not now", Act("reject", OP, "not now")),
    (f"cancel {OP} --", Act("cancel", OP)), ("list", ListOperations()),
])
def test_other_commands(text: str, expected: object) -> None:
    assert parse_command(text, SUB) == expected


def test_list_of_two_parts_names_the_vm_and_the_scale_set() -> None:
    command = parse_command("list rg/web-01", SUB)
    assert isinstance(command, ListOperations)
    assert [t.kind for t in command.targets] == [TargetKind.VM, TargetKind.VMSS]
    command = parse_command("list rg/workers/3", SUB)
    assert isinstance(command, ListOperations) and command.targets[0].kind is TargetKind.VMSS_INSTANCE


@pytest.mark.parametrize(("text", "says"), [
    ("reimage", "needs a target"), (f"reimage {BASE}/virtualMachineScaleSets/workers", "needs instance ids"),
    ("reimage rg/web-01/x", "instance id"), ("reimage rg/workers 01", "not an instance id"),
    ("reimage rg/workers 1 1", "twice"), ("reimage rg/workers/2 3", "instance ids go after a scale set"),
    (f"reimage {BASE}/virtualMachines/web-01 3", "names a VM"), ("reimage just-a-name", "not a target"),
    ("reimage /subscriptions/nope", "target"), ("status", "one operation id"), ("status op-123", "not an operation"),
    ("approve", "one operation id"), (f"status {OP} -- why", "no reason"), ("list a b", "at most one"),
    ("dance", "unknown command"), ("reimage rg/vm -- " + "x" * 300, "longer than 256"), ("x" * 5000, "longer"),
])
def test_refusals_say_why(text: str, says: str) -> None:
    with pytest.raises(CommandError, match=says):
        parse_command(text, SUB)


def test_short_targets_need_a_default_subscription() -> None:
    with pytest.raises(CommandError, match="DEFAULT_SUBSCRIPTION_ID"):
        parse_command("reimage rg/web-01", None)
    assert isinstance(parse_command(f"reimage {BASE}/virtualMachines/web-01", None), Reimage)


def test_clean_text_removes_mentions_and_markup() -> None:
    assert clean_text("<at>reimager</at>&nbsp;reimage rg/vm\n") == "reimage rg/vm"
    assert clean_text("reimage rg/vm -- a &amp; b") == "reimage rg/vm -- a & b"


words = st.sampled_from(["reimage", "status", "list", "approve", "reject", "cancel", "help", "--", "all", "rg/vm",
                         "rg/ss/3", "rg/ss", "0", "07", OP, f"{BASE}/virtualMachines/v", "/", "`", "<at>x</at>"])
texts = st.lists(words | st.text(max_size=20), max_size=8).map(" ".join) | st.text(max_size=300)


@settings(max_examples=600, deadline=None)
@given(text=texts, sub=st.sampled_from([SUB, None]))
def test_parsing_never_raises_anything_but_a_command_error(text: str, sub: str | None) -> None:
    try:
        command = parse_command(clean_text(text), sub)
    except CommandError as exc:
        assert str(exc)
        return
    assert isinstance(command, Reimage | Status | ListOperations | Act | Help)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=4000), public=st.booleans())
def test_replies_are_always_well_formed(text: str, public: bool) -> None:
    slack = slack_message(Reply(text or "x", public))
    assert slack["response_type"] in ("ephemeral", "in_channel") and len(slack["text"]) <= 3000
    assert all(0 < len(b["text"]["text"]) <= 3000 for b in slack["blocks"]) and len(slack["blocks"]) <= 50
    assert "<" not in slack["text"] and "<" not in teams_message(Reply(text)).get("text", "")
    json.dumps(slack)


# ---- signatures --------------------------------------------------------------------------------------------
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


# ---- Easy Auth ---------------------------------------------------------------------------------------------
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
    # a malformed principal header names nobody, whatever else is there (it is not one App Service wrote)
    ({"x-ms-client-principal": "not base64 !!", "x-ms-client-principal-id": "id-1"}, None),
    ({"x-ms-client-principal": base64.b64encode(b"[1,2]").decode()}, None),
])
def test_easy_auth_principal_names(headers: dict[str, str], name: str | None) -> None:
    found = easy_auth_principal(headers)
    assert (found.name if found else None) == name


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()))
def test_easy_auth_never_raises(value: str) -> None:
    easy_auth_principal({"X-MS-CLIENT-PRINCIPAL": value})


# ---- history query (pure) -----------------------------------------------------------------------------------
@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-12:00", "2026-13-01", "now"])
def test_history_since_out_of_range_is_a_400_naming_it(since: str) -> None:
    from shared.domain.errors import ReimagerError
    from shared.surfaces.history import parse_query

    with pytest.raises(ReimagerError) as err:
        parse_query({"since": since})
    assert http_status(err.value) == 400 and err.value.error.target == "since"


def test_history_since_forms() -> None:
    from shared.surfaces.history import parse_query

    assert parse_query({"since": "2026-11-25"}).since == datetime(2026, 11, 25, tzinfo=UTC)
    # '+' of an unencoded offset arrives as a space
    assert parse_query({"since": "2026-11-25T08:00:00 01:00"}).since == datetime(2026, 11, 25, 7, tzinfo=UTC)
    assert parse_query({"status": "queued", "code": "key"}).status == "Queued"
