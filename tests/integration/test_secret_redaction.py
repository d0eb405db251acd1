"""A secret of the request that ARM echoes back, while the POST is answered or while the operation is
polled, is redacted everywhere it could surface: answers, status, events, the ledger, durable state and logs.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest

from devhost.compute import Fault
from tests.helpers import SENTINEL_PASSWORD
from tests.integration.conftest import WINDOWS_VM, Host, NewHost

CUSTOM_TEXT = "#cloud-config\nrunner_token: tok-7f1e2d9c-SECRET\n"
CUSTOM_DATA = base64.b64encode(CUSTOM_TEXT.encode()).decode()


@pytest.mark.parametrize("async_header", [True, False], ids=["azure-asyncoperation", "location"])
async def test_a_secret_echoed_in_a_poll_error_is_redacted_everywhere(new_host: NewHost, async_header: bool,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    h: Host = await new_host()
    h.dh.sim.async_operation_header = async_header
    echoed = (f"OS provisioning failed: the password '{SENTINEL_PASSWORD}' was refused by the guest agent; "
              f"custom data line 'runner_token: tok-7f1e2d9c-SECRET' is invalid; raw {json.dumps(SENTINEL_PASSWORD)}")
    h.dh.sim.faults.append(Fault.model_validate({"match": "operations", "outcome": "Failed",
                                                 "code": "OSProvisioningClientError", "message": echoed}))
    s, accepted, _ = await h.reimage({"target": WINDOWS_VM, "osProfile": {"adminPassword": SENTINEL_PASSWORD,
                                                                          "customData": CUSTOM_DATA}})
    assert s == 202, accepted
    rt = h.dh.runtime
    assert rt is not None
    running = await rt.ledger.get(accepted["operationId"])
    assert running is not None and running.secret_fingerprint is not None  # what the poll recognises them by
    [event] = await h.until_completed()
    assert event["data"]["status"] == "Failed"
    error = event["data"]["error"]
    assert error["code"] == "OSProvisioningClientError" and "[REDACTED]" in error["message"], error
    assert "refused by the guest agent" in error["message"]  # the rest of ARM's text is kept
    s, status = await h.get(f"/api/reimage/{accepted['operationId']}")
    stored = await rt.ledger.get(accepted["operationId"])
    assert stored is not None and stored.secret_fingerprint is None  # deleted when the operation ended
    haystacks = {"status": json.dumps(status), "ledger": stored.to_json(), "events": json.dumps(h.dh.events()),
                 "events file": h.dh.events_file.read_text(), "durable": h.dh.engine.dump(),  # type: ignore[union-attr]
                 "logs": caplog.text}
    for name, text in haystacks.items():
        for secret in (SENTINEL_PASSWORD, "tok-7f1e2d9c-SECRET", CUSTOM_DATA):
            assert secret not in text, (name, secret)


async def test_a_custom_data_line_echoed_in_a_submit_error_is_redacted(host: Host,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    host.dh.sim.faults.append(Fault(match="reimage", status=400, code="InvalidParameter",
                                    message="customData line 'runner_token: tok-7f1e2d9c-SECRET' is not valid."))
    s, answer, _ = await host.reimage({"target": WINDOWS_VM, "osProfile": {"customData": CUSTOM_DATA}})
    assert s == 502 and answer["error"]["details"][0]["message"] == "customData line '[REDACTED]' is not valid."
    for text in (json.dumps(answer), json.dumps(host.dh.events()), caplog.text):
        assert "tok-7f1e2d9c-SECRET" not in text


# --- a secret echoed by ARM ----------------------------------------------------------------------------
async def test_a_password_echoed_in_an_arm_error_is_redacted(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    host.dh.sim.faults.append(Fault(match="reimage", status=400, code="InvalidParameter",
                                    message=f"The value '{SENTINEL_PASSWORD}' of parameter adminPassword is invalid."))
    s, answer, _ = await host.reimage({"target": WINDOWS_VM, "osProfile": {"adminPassword": SENTINEL_PASSWORD}})
    assert s == 502 and answer["error"]["details"][0]["code"] == "InvalidParameter", answer
    assert "[REDACTED]" in answer["error"]["details"][0]["message"]
    assert "operationId" not in answer and host.completed() == []  # refused by ARM: nothing was applied
    rt = host.dh.runtime
    assert rt is not None
    page = await rt.ledger.list_operations(top=500)
    haystacks = {"response": json.dumps(answer), "ledger": json.dumps([r.view() for r in page.items]),
                 "events": json.dumps(host.dh.events()),
                 "durable": host.dh.engine.dump(), "logs": caplog.text}  # type: ignore[union-attr]
    for name, text in haystacks.items():
        assert SENTINEL_PASSWORD not in text, name
