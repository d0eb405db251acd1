"""Four eyes across every channel, through devhost's real HTTP: a principal is its identity (the Entra object id
from App Service authentication or Teams, Slack's team + user id), never its display name."""

from __future__ import annotations

import base64
import json
from typing import Any

from tests.integration.conftest import VMSS, Host
from tests.integration.test_chatops import (
    SETTINGS as CHAT_SECRETS,
)
from tests.integration.test_chatops import (
    activity,
    now,
    slack,
    slack_form,
    slack_headers,
    teams,
    teams_headers,
)

NewHost = Any
ALICE_OID = "0b2f7c1e-5a44-4e8e-9d0b-6f6c2a1d9e01"
BOB_OID = "7d1e3a90-2c44-4b6e-8f0a-1e2d3c4b5a60"
WIDE = {"BREAKER_PERCENT": "100", "FLEET_BUDGET_PERCENT": "100", "MAX_BATCH_PERCENT": "100"}
VERIFIED = {**WIDE, **CHAT_SECRETS, "EASY_AUTH_ENABLED": "true"}


def ran(h: Host) -> bool:
    """The approved whole-set request ran: a canary of one instance of `workers`, then the other three."""
    return [p["body"]["instanceIds"] for p in h.reimage_posts()] == [["0"], ["1", "2", "3"]]


def easy_auth(upn: str, oid: str | None, **claims: str) -> dict[str, str]:
    """What App Service authentication (Microsoft Entra) adds to a signed-in caller's request."""
    values = [{"typ": "name", "val": upn.split("@")[0].title()}, {"typ": "preferred_username", "val": upn},
              *({"typ": t, "val": v} for t, v in claims.items())]
    if oid:
        values.append({"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": oid})
    doc = {"auth_typ": "aad", "name_typ": "name", "role_typ": "roles", "claims": values}
    return {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps(doc).encode()).decode(),
            "X-MS-CLIENT-PRINCIPAL-NAME": upn, "X-MS-CLIENT-PRINCIPAL-IDP": "aad"}


async def post(h: Host, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    async with h.http.post(h.url + path, json=body, headers={**h.key, **headers}) as r:
        return r.status, await r.json()


async def teams_say(h: Host, text: str, aad: str, activity_id: str) -> str:
    body = activity(text, now(h), aad=aad, activity_id=activity_id)
    status, reply = await teams(h, body, teams_headers(body))
    assert status == 200, reply
    return str(reply["text"])


async def slack_say(h: Host, text: str, user: str, trigger: str, **fields: str) -> str:
    body = slack_form(text, user=user, trigger=trigger)
    if fields:  # the same user, other fields (a renamed workspace): re-encode the form
        from urllib.parse import parse_qsl, urlencode
        body = urlencode({**dict(parse_qsl(body.decode())), **fields}).encode()
    status, reply = await slack(h, body, slack_headers(body, int(now(h).timestamp())))
    assert status == 200, reply
    return str(reply["text"])


def op_in(text: str) -> str:
    return next(word.strip("`") for word in text.split() if word.strip("`").startswith("op-"))


async def test_teams_request_cannot_be_approved_over_easy_auth_by_the_same_object_id(new_host: NewHost) -> None:
    h: Host = await new_host(settings=VERIFIED)
    text = await teams_say(h, "reimage reimager-demo/workers all", ALICE_OID, "t-1")
    op = op_in(text)
    _, waiting = await h.get(f"/api/reimage/{op}")
    assert waiting["status"] == "AwaitingApproval" and waiting["requestedByIdentity"] == f"entra:{ALICE_OID}"
    for upn in ("alice@contoso.com", "alice.renamed@fabrikam.com"):  # her UPN, and after a rename
        s, refused = await post(h, f"/api/reimage/{op}/approve", {}, easy_auth(upn, ALICE_OID.upper()))
        assert s == 403 and refused["error"]["code"] == "SelfApprovalNotAllowed", refused
        assert refused["rule"] == "sameIdentity"
    assert h.reimage_posts() == []
    s, approved = await post(h, f"/api/reimage/{op}/approve", {}, easy_auth("bob@contoso.com", BOB_OID))
    assert s == 202 and approved["approvedBy"] == "bob@contoso.com"
    assert approved["approvedByIdentity"] == f"entra:{BOB_OID}" and approved["approvedByVerified"] == "easyauth"
    [event] = await h.until_completed(1)
    assert event["data"]["approvedByIdentity"] == f"entra:{BOB_OID}"
    assert event["data"]["requestedByIdentity"] == f"entra:{ALICE_OID}" and ran(h)


async def test_easy_auth_request_cannot_be_approved_from_teams_by_the_same_object_id(new_host: NewHost) -> None:
    h: Host = await new_host(settings=VERIFIED)
    s, asked = await post(h, "/api/reimage", {"target": VMSS, "allInstances": True},
                          easy_auth("alice@contoso.com", ALICE_OID))
    assert s == 202 and asked["status"] == "AwaitingApproval", asked
    op = asked["operationId"]
    text = await teams_say(h, f"approve {op}", ALICE_OID, "t-2")
    assert "SelfApprovalNotAllowed" in text and h.reimage_posts() == []
    text = await teams_say(h, f"approve {op} -- looks right", BOB_OID, "t-3")
    assert "Approved" in text, text
    [event] = await h.until_completed(1)
    assert event["data"]["approvedBy"] == f"teams:{BOB_OID}" and ran(h)


async def test_slack_user_is_team_and_user_id_and_a_second_user_approves(new_host: NewHost) -> None:
    h: Host = await new_host(settings=VERIFIED)
    op = op_in(await slack_say(h, "reimage reimager-demo/workers all", "UALICE", "tr.1"))
    # the same team and user, another workspace name and user name: still her
    text = await slack_say(h, f"approve {op}", "UALICE", "tr.2", team_domain="renamed", user_name="a2")
    assert "SelfApprovalNotAllowed" in text and h.reimage_posts() == []
    text = await slack_say(h, f"approve {op}", "UBOB", "tr.3")
    assert "Approved" in text
    [event] = await h.until_completed(1)
    assert event["data"]["approvedByIdentity"] == "slack:T0001/UBOB" and ran(h)


async def test_slack_approver_for_an_entra_requester_needs_the_identity_map(new_host: NewHost) -> None:
    asked_by = easy_auth("alice@contoso.com", ALICE_OID)
    h: Host = await new_host(settings=VERIFIED)
    s, asked = await post(h, "/api/reimage", {"target": VMSS, "allInstances": True}, asked_by)
    text = await slack_say(h, f"approve {asked['operationId']}", "UBOB", "tr.4")
    assert "IdentitiesNotComparable" in text and "APPROVER_IDENTITY_MAP" in text and h.reimage_posts() == []
    mapped = {**VERIFIED, "APPROVER_IDENTITY_MAP": json.dumps({"slack:T0001/UBOB": f"entra:{BOB_OID}",
                                                               "slack:T0001/UALICE": f"entra:{ALICE_OID}"})}
    h2: Host = await new_host(settings=mapped)
    s, asked = await post(h2, "/api/reimage", {"target": VMSS, "allInstances": True}, asked_by)
    text = await slack_say(h2, f"approve {asked['operationId']}", "UALICE", "tr.5")  # the map: that is alice
    assert "SelfApprovalNotAllowed" in text and h2.reimage_posts() == []
    text = await slack_say(h2, f"approve {asked['operationId']}", "UBOB", "tr.6")
    assert "Approved" in text
    await h2.until_completed(1)
    assert ran(h2)


async def test_unverified_names_are_compared_normalised(new_host: NewHost) -> None:
    h: Host = await new_host(settings={**WIDE, "APPROVAL_ALLOW_UNVERIFIED": "true"})
    s, asked, _ = await h.reimage({"target": VMSS, "allInstances": True, "requestedBy": "Alice"})
    op = asked["operationId"]
    # case, spaces, full-width letters, an ideographic space, a Cyrillic a
    for same in ("alice ", " ALICE", "\uff41\uff4c\uff49\uff43\uff45", "Alice\u3000", "\u0430lice"):
        s, refused, _ = await h.post(f"/api/reimage/{op}/approve", {"by": same})
        assert s == 403 and refused["error"]["code"] in ("SelfApprovalNotAllowed", "ApproverNotVerified"), same
    assert h.reimage_posts() == []
    s, approved, _ = await h.post(f"/api/reimage/{op}/approve", {"by": "bob"})
    assert s == 202 and approved["approvedBy"] == "bob"
    await h.until_completed(1)
    assert ran(h)


async def test_a_malformed_principal_is_no_principal_never_a_500(new_host: NewHost) -> None:
    h: Host = await new_host(settings=VERIFIED)
    s, asked = await post(h, "/api/reimage", {"target": VMSS, "allInstances": True, "requestedBy": "alice"},
                          easy_auth("alice@contoso.com", ALICE_OID))
    op = asked["operationId"]
    lone = easy_auth("bob@contoso.com", BOB_OID, preferred_username="bob\ud800@contoso.com")
    lone["X-MS-CLIENT-PRINCIPAL"] = base64.b64encode(json.dumps({"auth_typ": "aad", "claims": [
        {"typ": "preferred_username", "val": "bob\ud800@contoso.com"}]}).encode()).decode()
    for headers in (lone, {"X-MS-CLIENT-PRINCIPAL": "%%% not base64", "X-MS-CLIENT-PRINCIPAL-NAME": "bob"},
                    {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(b'{"claims": 1}').decode()}):
        s, refused = await post(h, f"/api/reimage/{op}/approve", {}, headers)
        assert s == 403 and refused["error"]["code"] == "ApproverNotVerified", refused
        s, reimaged = await post(h, "/api/reimage", {"target": VMSS, "instanceIds": ["1"], "dryRun": True}, headers)
        assert s == 200, reimaged
    s, asked2 = await post(h, "/api/reimage", {"target": VMSS, "allInstances": True, "requestId": "m-1"}, lone)
    assert s == 202 and asked2["requestedByVerified"] == "unverified"  # no principal: the request is unverified
    assert h.reimage_posts() == []


async def test_reject_and_cancel_record_the_verified_identity(new_host: NewHost) -> None:
    h: Host = await new_host(settings=VERIFIED)
    asked_by = easy_auth("alice@contoso.com", ALICE_OID)
    s, first = await post(h, "/api/reimage", {"target": VMSS, "allInstances": True, "requestId": "r-1"}, asked_by)
    s, second = await post(h, "/api/reimage", {"target": VMSS, "allInstances": True, "requestId": "r-2"}, asked_by)
    s, rejected = await post(h, f"/api/reimage/{first['operationId']}/reject", {"reason": "no"},
                             easy_auth("bob@contoso.com", BOB_OID))
    assert s == 200 and rejected["cancelledBy"] == "bob@contoso.com"
    assert (rejected["cancelledByVerified"], rejected["cancelledByIdentity"]) == ("easyauth", f"entra:{BOB_OID}")
    text = await slack_say(h, f"cancel {second['operationId']}", "UCAROL", "tr.9")
    assert "Canceled" in text
    events = await h.until_completed(2)
    by_op = {e["data"]["operationId"]: e["data"] for e in events}
    assert by_op[first["operationId"]]["cancelledByIdentity"] == f"entra:{BOB_OID}"
    assert by_op[second["operationId"]]["cancelledByIdentity"] == "slack:T0001/UCAROL"
    assert by_op[second["operationId"]]["cancelledByVerified"] == "slack"
