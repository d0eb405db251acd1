"""A secret never shows up in repr, str, dumps, error messages or the dry-run plan."""

import base64
import logging

import pytest

from shared.domain.errors import ReimagerError
from shared.domain.request import parse_request
from tests.helpers import SENTINEL_PASSWORD, VM_ID, VMSS_ID

CUSTOM = "Q1VTVE9NLVNFTlRJTkVMLTc3"  # base64 of CUSTOM-SENTINEL-77


def test_secrets_absent_from_every_rendering(caplog: pytest.LogCaptureFixture) -> None:
    assert base64.b64decode(CUSTOM) == b"CUSTOM-SENTINEL-77"
    r = parse_request({"target": VM_ID, "osProfile": {"adminPassword": SENTINEL_PASSWORD, "customData": CUSTOM}})
    call = r.arm_call("2024-07-01")
    logging.getLogger("t").warning("request %r %s", r, r)
    renderings = [
        repr(r), str(r), str(r.model_dump()), r.model_dump_json(),
        str(call.plan()), str(call.redacted_body()), repr(call), caplog.text,
    ]
    for text in renderings:
        assert SENTINEL_PASSWORD not in text
        assert CUSTOM not in text
    # ...and the one place they must be: the body sent to ARM.
    assert call.wire_body() == {"osProfile": {"adminPassword": SENTINEL_PASSWORD, "customData": CUSTOM}}


@pytest.mark.parametrize("data", [
    {"target": VM_ID, "osProfile": {"adminPassword": SENTINEL_PASSWORD, "customData": "%%%"}},
    {"target": VM_ID, "osProfile": {"adminPassword": SENTINEL_PASSWORD}, "tempdisk": True},
    {"target": VMSS_ID, "osProfile": {"adminPassword": SENTINEL_PASSWORD}},
    {"target": VM_ID, "osProfile": {"adminPassword": "x" + SENTINEL_PASSWORD * 9}},
    {"target": VM_ID, "osProfile": {"adminPassword": 12345, "customData": SENTINEL_PASSWORD}},
])
def test_secrets_absent_from_errors(data: dict) -> None:
    with pytest.raises(ReimagerError) as info:
        parse_request(data)
    err = info.value
    for text in (str(err), repr(err), str(err.body()), repr(err.__cause__), repr(err.__context__)):
        assert SENTINEL_PASSWORD not in text


def test_os_specific_error_has_no_secret() -> None:
    r = parse_request({"target": VM_ID, "osProfile": {"adminPassword": "Sent-l7"}})
    with pytest.raises(ReimagerError) as info:
        r.check_against("Windows", False)
    assert "Sent-l7" not in str(info.value.body())
