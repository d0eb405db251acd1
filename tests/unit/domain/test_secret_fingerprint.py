"""shared/domain/redaction.py, poll errors: secrets are recognised in ARM's poll text by a fingerprint, never by
holding them."""

from __future__ import annotations

import base64
import json

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.domain.redaction import (
    REDACTED,
    find_fingerprinted,
    fingerprint,
    known_secrets,
    redact_fingerprinted,
    scrub_poll,
)
from tests.helpers import SENTINEL_PASSWORD

CLOUD_INIT = "#cloud-config\nrunner_token: tok-7f1e2d9c-SECRET\n"
CUSTOM_DATA = base64.b64encode(CLOUD_INIT.encode()).decode()


def fp_of(pw: str | None = SENTINEL_PASSWORD, custom: str | None = CUSTOM_DATA) -> dict[str, object]:
    fp = fingerprint(known_secrets(admin_password=pw, custom_data=custom))
    assert fp is not None
    return fp


def test_the_fingerprint_holds_no_secret_and_is_salted_per_record() -> None:
    a, b = fp_of(), fp_of()
    text = json.dumps(a)
    for secret in (SENTINEL_PASSWORD, CUSTOM_DATA, "tok-7f1e2d9c-SECRET", CLOUD_INIT):
        assert secret not in text
    assert a["salt"] != b["salt"] and a["marks"] != b["marks"]  # the same password looks different per record
    assert fingerprint(()) is None and fingerprint(known_secrets()) is None


def test_a_password_and_a_custom_data_line_in_poll_text_are_redacted() -> None:
    result = {"state": "Failed", "errorCode": "OSProvisioningClientError",
              "errorMessage": f"password '{SENTINEL_PASSWORD}' refused; line 'runner_token: tok-7f1e2d9c-SECRET' bad"}
    out = scrub_poll(result, fp_of(), settled=False)
    assert out["errorMessage"] == f"password '{REDACTED}' refused; line '{REDACTED}' bad"
    assert out["errorCode"] == "OSProvisioningClientError" and out["state"] == "Failed"


def test_text_without_the_secrets_is_untouched_and_no_fingerprint_changes_nothing() -> None:
    result = {"state": "Failed", "errorMessage": "Sentinel-Pa55-9f3 is close but not the password"}
    assert scrub_poll(result, fp_of(), settled=False) == result
    assert scrub_poll(result, None, settled=False) == result


def test_a_secret_that_spells_a_state_leaves_the_state_alone() -> None:
    custom = base64.b64encode(b"Succeeded").decode()
    result = {"state": "Succeeded", "errorCode": None, "errorMessage": "Succeeded"}
    out = scrub_poll(result, fp_of(None, custom), settled=False)
    assert out == {"state": "Succeeded", "errorCode": None, "errorMessage": REDACTED}


def test_once_settled_the_text_is_dropped() -> None:
    result = {"state": "Failed", "errorCode": "X", "errorMessage": f"'{SENTINEL_PASSWORD}'"}
    assert scrub_poll(result, None, settled=True) == {"state": "Failed", "errorCode": "X", "errorMessage": None}


@settings(max_examples=300, deadline=None)
@given(pw=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30),
       parts=st.lists(st.text(max_size=40), min_size=1, max_size=4), escape=st.booleans())
def test_no_password_survives_in_poll_text(pw: str, parts: list[str], escape: bool) -> None:
    assume(pw not in "errorMessage details")  # keys are redacted too: keep them readable for the check
    piece = json.dumps(pw)[1:-1] if escape else pw
    text = piece.join(parts) + piece
    fp = fp_of(pw, None)
    assert pw in find_fingerprinted(text, fp) or (escape and piece in find_fingerprinted(text, fp))
    out = redact_fingerprinted({"errorMessage": text, "details": [text]}, fp)
    assert pw not in out["errorMessage"] and all(pw not in d for d in out["details"])
