"""Four eyes, the pure rule (shared/rules/four_eyes.py) and the identities it compares (shared/domain/principal.py,
shared/surfaces/identity.py)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from shared.domain.errors import ErrorCode
from shared.domain.principal import Principal, parse_identity_map, slack_principal, teams_principal
from shared.rules.four_eyes import mixed_script, normal_name, second_person
from shared.settings import SettingsError, load_settings
from shared.surfaces.identity import easy_auth_principal

ALICE_OID = "0b2f7c1e-5a44-4e8e-9d0b-6f6c2a1d9e01"
BOB_OID = "7d1e3a90-2c44-4b6e-8f0a-1e2d3c4b5a60"


def claims_header(*claims: tuple[str, str], auth_typ: str = "aad") -> str:
    doc = {"auth_typ": auth_typ, "name_typ": "name", "role_typ": "roles",
           "claims": [{"typ": t, "val": v} for t, v in claims]}
    return base64.b64encode(json.dumps(doc).encode()).decode()


def easy(name: str, oid: str | None) -> Principal:
    claims = [("name", "Alice A"), ("preferred_username", name)]
    if oid:
        claims.append(("http://schemas.microsoft.com/identity/claims/objectidentifier", oid))
    found = easy_auth_principal({"X-MS-CLIENT-PRINCIPAL": claims_header(*claims)})
    assert found is not None
    return found


def refused(requester: Principal, approver: Principal, mapping: Any = None) -> str | None:
    refusal = second_person(requester, approver, mapping or {})
    return refusal.rule if refusal else None


# ---- identities ----------------------------------------------------------------------------------------------
def test_easy_auth_identity_is_the_entra_object_id_in_lower_case() -> None:
    alice = easy("alice@contoso.com", ALICE_OID.upper())
    assert alice == Principal("alice@contoso.com", "easyauth", f"entra:{ALICE_OID}")
    short = easy_auth_principal({"X-MS-CLIENT-PRINCIPAL": claims_header(("oid", ALICE_OID))})
    assert short is not None and short.identity == f"entra:{ALICE_OID}"


def test_another_provider_is_its_own_system_and_a_non_guid_oid_is_not_entra() -> None:
    github = easy_auth_principal({"X-MS-CLIENT-PRINCIPAL": claims_header(("name", "octo"), auth_typ="github"),
                                  "X-MS-CLIENT-PRINCIPAL-ID": "12345", "X-MS-CLIENT-PRINCIPAL-IDP": "github"})
    assert github is not None and github.identity == "easyauth-github:12345"
    odd = easy_auth_principal({"X-MS-CLIENT-PRINCIPAL": claims_header(("name", "x"), ("oid", "not-a-guid"))})
    assert odd is not None and odd.identity is None


@pytest.mark.parametrize("bad", [
    claims_header(("preferred_username", "alice\ud800@contoso.com")),  # a lone surrogate in a claim
    claims_header(("name", "ok"), ("oid", "\udfff")),
    claims_header(("preferred_username", "a\x00b")),  # a control character
    "not base64 !!", base64.b64encode(b"\xff\xfe{").decode(), "A" * (17 * 1024),
])
def test_a_malformed_principal_is_no_principal(bad: str) -> None:
    assert easy_auth_principal({"X-MS-CLIENT-PRINCIPAL": bad, "X-MS-CLIENT-PRINCIPAL-NAME": "alice@contoso.com"}) \
        is None


def test_a_principal_name_header_that_was_not_utf8_is_no_principal() -> None:
    assert easy_auth_principal({"X-MS-CLIENT-PRINCIPAL-NAME": "alice\udcff@contoso.com"}) is None


def test_chat_identities() -> None:
    assert slack_principal("T1", "U1") == Principal("slack:T1/U1", "slack", "slack:T1/U1")
    teams = teams_principal(ALICE_OID.upper(), "29:abc")
    assert teams == Principal(f"teams:{ALICE_OID.upper()}", "teams", f"entra:{ALICE_OID}")
    assert teams_principal(None, "29:abc").identity == "teams:29:abc"


# ---- the rule ------------------------------------------------------------------------------------------------
def test_the_same_entra_object_id_is_one_person_whatever_the_names() -> None:
    teams_alice = teams_principal(ALICE_OID, "29:x")
    assert refused(teams_alice, easy("alice@contoso.com", ALICE_OID)) == "sameIdentity"
    assert refused(easy("alice@contoso.com", ALICE_OID), teams_alice) == "sameIdentity"
    # renamed: a new UPN, the same object id
    assert refused(easy("alice@contoso.com", ALICE_OID), easy("alice.smith@fabrikam.com", ALICE_OID)) \
        == "sameIdentity"
    assert refused(teams_alice, easy("bob@contoso.com", BOB_OID)) is None


def test_slack_users_are_their_team_and_user_ids() -> None:
    assert refused(slack_principal("T1", "U1"), slack_principal("T1", "U1")) == "sameName"
    assert refused(Principal("display", "slack", "slack:T1/U1"), Principal("other", "slack", "slack:T1/U1")) \
        == "sameIdentity"
    assert refused(slack_principal("T1", "U1"), slack_principal("T1", "U2")) is None


def test_slack_and_entra_cannot_be_compared_without_a_mapping() -> None:
    alice, slack_bob = easy("alice@contoso.com", ALICE_OID), slack_principal("T1", "UBOB")
    refusal = second_person(alice, slack_bob, {})
    assert refusal is not None and refusal.code is ErrorCode.IDENTITIES_NOT_COMPARABLE
    assert refusal.rule == "notComparable" and "APPROVER_IDENTITY_MAP" in refusal.message
    mapping = parse_identity_map(json.dumps({"slack:T1/UBOB": f"entra:{BOB_OID}",
                                             "slack:T1/UALICE": f"entra:{ALICE_OID.upper()}"}))
    assert refused(alice, slack_bob, mapping) is None  # the map says UBOB is bob: a second person
    assert refused(alice, slack_principal("T1", "UALICE"), mapping) == "sameIdentity"  # the map says: alice
    assert refused(slack_principal("T1", "UALICE"), alice, mapping) == "sameIdentity"  # either way round
    assert refused(alice, slack_principal("T1", "UCAROL"), mapping) == "notComparable"  # not in the map
    # the approver must be known in the requester's system: an unmapped Entra user for a Slack requester is not
    assert refused(slack_principal("T1", "UALICE"), easy("carol@contoso.com", BOB_OID.replace("7", "8")),
                   mapping) == "notComparable"
    assert refused(slack_principal("T1", "UALICE"), easy("bob@contoso.com", BOB_OID), mapping) is None


def test_a_verified_name_without_an_identity_against_one_with_is_not_comparable() -> None:
    assert refused(easy("alice@contoso.com", ALICE_OID), Principal("bob@contoso.com", "easyauth")) \
        == "notComparable"
    assert refused(Principal("alice@contoso.com", "easyauth"), Principal("bob@contoso.com", "easyauth")) is None


FULLWIDTH_ALICE = "\uff41\uff4c\uff49\uff43\uff45"


@pytest.mark.parametrize("approver", ["alice", "Alice", "ALICE ", "  alice", FULLWIDTH_ALICE, "\uff21lice",
                                      "alice\u3000", "\u2000alice\t"])
def test_unverified_names_differing_only_by_case_spaces_or_compatibility_letters_are_one_person(
        approver: str) -> None:
    assert refused(Principal("alice", "unverified"), Principal(approver, "unverified")) == "sameName"


def test_unverified_names_mixing_latin_with_look_alikes_are_refused() -> None:
    cyrillic_a = "\u0430lice"
    assert mixed_script(cyrillic_a) and not mixed_script("José") and not mixed_script("Ολυμπία")
    assert refused(Principal("alice", "unverified"), Principal(cyrillic_a, "unverified")) == "mixedScript"
    assert refused(Principal("alice", "unverified"), Principal("bob", "unverified")) is None
    assert normal_name(" Bob  Smith ") == "bob smith"


@pytest.mark.parametrize("value", ['{"slack:T1/U1": "slack:T1/U2"}', '{"slack:T1/U1": "entra:not-a-guid"}',
                                   '{"nobody": "entra:' + ALICE_OID + '"}', "[]", "{", '{"slack:T1/U1": 3}'])
def test_a_bad_identity_map_stops_the_app_naming_the_setting(value: str) -> None:
    with pytest.raises(SettingsError, match="APPROVER_IDENTITY_MAP"):
        load_settings(APPROVER_IDENTITY_MAP=value)
