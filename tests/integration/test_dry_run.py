"""Issue 15, through devhost's real HTTP paths: the defects not covered by the other hardening tests.

Numbers are the issue's. Each test fails on the code before its fix (the report lists which did).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from datetime import timedelta
from typing import Any

import pytest

from devhost.compute import Fault
from shared.domain.records import Cooldown
from shared.domain.targets import parse_target
from tests.helpers import SENTINEL_PASSWORD
from tests.integration.conftest import LINUX_VM, PROTECTED_VM, VMSS, WINDOWS_VM, Host
from tests.integration.test_hardening_http import NewHost

GHOST_VM = LINUX_VM.replace("web-linux-01", "ghost")
OTHER_GROUP_VM = ("/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg/providers/Microsoft.Compute/"
                  "virtualMachines/elsewhere")


def checks(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in answer["checks"]}


def failed(answer: dict[str, Any]) -> list[str]:
    return [c["name"] for c in answer["checks"] if c["result"] == "failed"]


# --- 12. dry runs report every check ----------------------------------------------------------------------
async def test_a_dry_run_lists_every_failed_check_instead_of_refusing_at_the_first(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"MAX_INSTANCES_PER_REQUEST": "1"})
    s, answer, _ = await h.reimage({"target": PROTECTED_VM, "dryRun": True, "tempDisk": True})
    assert s == 200 and answer["passed"] is False, answer
    assert failed(answer) == ["protectTag", "targetModel"]
    assert answer["plan"]["body"] == {"tempDisk": True}
    s, answer, _ = await h.reimage({"target": VMSS, "instanceIds": ["9"], "dryRun": True,
                                    "osProfile": {"adminPassword": SENTINEL_PASSWORD}})
    assert s == 200 and failed(answer) == ["targetExists", "targetModel"], answer
    assert checks(answer)["targetExists"]["code"] == "TargetNotFound" and "9" in checks(answer)["targetExists"][
        "message"]
    assert SENTINEL_PASSWORD not in json.dumps(answer)
    s, answer, _ = await h.reimage({"target": VMSS, "allInstances": True, "dryRun": True, "tempDisk": False})
    assert s == 200 and failed(answer) == ["instanceCount"], answer
    assert checks(answer)["instanceCount"]["details"][0]["code"] == "TooManyInstances"
    assert SENTINEL_PASSWORD not in json.dumps(answer)
    assert h.reimage_posts() == [] and h.dh.engine.instances == {}  # type: ignore[union-attr]


async def test_a_dry_run_on_a_missing_target_is_a_200_with_target_exists_failed(host: Host) -> None:
    s, answer, _ = await host.reimage({"target": GHOST_VM, "dryRun": True})
    assert s == 200 and answer["passed"] is False, answer
    assert checks(answer)["targetExists"]["result"] == "failed"
    assert checks(answer)["targetExists"]["code"] == "TargetNotFound"
    assert {checks(answer)[n]["result"] for n in ("protectTag", "instanceCount", "targetModel")} == {"skipped"}
    s, answer, _ = await host.reimage({"target": GHOST_VM})  # the real request still answers 404
    assert s == 404 and answer["error"]["code"] == "TargetNotFound"


async def test_a_dry_run_outside_the_scopes_reads_nothing_from_arm(host: Host) -> None:
    host.dh.sim.upsert(OTHER_GROUP_VM, {"location": "westus",
                                        "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}})
    before = len(host.dh.sim.requests)
    s, answer, _ = await host.reimage({"target": OTHER_GROUP_VM, "dryRun": True})
    assert s == 200 and failed(answer) == ["scope"], answer
    assert checks(answer)["targetExists"]["result"] == "skipped"
    assert len(host.dh.sim.requests) == before


async def test_a_dry_run_never_answers_with_the_operation_of_a_reused_request_id(host: Host) -> None:
    s, real, _ = await host.reimage({"target": LINUX_VM, "requestId": "same-key"})
    assert s == 202
    s, answer, _ = await host.reimage({"target": LINUX_VM, "requestId": "same-key", "dryRun": True})
    assert s == 200 and answer["dryRun"] is True and "operationId" not in answer, answer
    # ... and a dry run does not take a key: the real request with its key is then accepted.
    s, answer, _ = await host.reimage({"target": WINDOWS_VM, "requestId": "dry-first", "dryRun": True})
    assert s == 200
    s, answer, _ = await host.reimage({"target": WINDOWS_VM, "requestId": "dry-first"})
    assert s == 202 and answer["operationId"] != real["operationId"]
    assert len(host.reimage_posts()) == 2


async def test_a_dry_run_on_a_cooling_down_target_shows_the_plan_and_the_failed_cooldown(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"COOLDOWN_MINUTES": "30"})
    s, first, _ = await h.reimage({"target": LINUX_VM})
    await h.until_completed()
    s, answer, _ = await h.reimage({"target": LINUX_VM, "dryRun": True})
    assert s == 200 and failed(answer) == ["cooldown"], answer
    cooldown = checks(answer)["cooldown"]
    assert cooldown["code"] == "CooldownActive" and cooldown["operationId"] == first["operationId"]
    assert cooldown["until"] and 1700 < cooldown["retryAfter"] <= 1800
    assert answer["plan"]["path"].endswith("/web-linux-01/reimage")


async def test_a_dry_run_on_a_suspended_target_says_so(host: Host) -> None:
    rt = host.dh.runtime
    assert rt is not None

    def suspend(record: Any) -> tuple[Any, None]:
        record.suspended = {"reason": "three failures in a row", "by": "breaker"}
        record.cooldowns["x"] = Cooldown(until=rt.now() - timedelta(minutes=1), operation_id="op-old")
        return record, None

    await rt.ledger.change_target(parse_target(LINUX_VM).lock_key, suspend)
    s, answer, _ = await host.reimage({"target": LINUX_VM, "dryRun": True})
    assert s == 200 and failed(answer) == ["suspension"], answer
    assert checks(answer)["suspension"]["code"] == "TargetSuspended"


# --- 3. a secret echoed by ARM while the operation is polled ------------------------------------------------
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


# --- 11. errors a person can act on -------------------------------------------------------------------------
async def test_a_cooldown_refusal_names_the_operation_and_when_it_ends(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"COOLDOWN_MINUTES": "30"})
    s, first, _ = await h.reimage({"target": LINUX_VM})
    await h.until_completed()
    s, answer, headers = await h.reimage({"target": LINUX_VM})
    assert s == 429 and answer["error"]["code"] == "CooldownActive"
    message = answer["error"]["message"]
    assert first["operationId"] in message and answer["cooldown"]["operationId"] == first["operationId"]
    assert answer["cooldown"]["until"] in message and int(headers["Retry-After"]) > 1700


async def test_an_arm_failure_keeps_arms_code_in_details_in_status_and_events(host: Host) -> None:
    host.dh.sim.faults.append(Fault.model_validate({"match": "operations", "outcome": "Failed",
                                                    "code": "VMAgentStatusCommunicationError",
                                                    "message": "The VM agent did not report."}))
    s, accepted, _ = await host.reimage({"target": LINUX_VM})
    [event] = await host.until_completed()
    s, status = await host.get(f"/api/reimage/{accepted['operationId']}")
    for error in (event["data"]["error"], status["error"]):
        assert error["code"] == "VMAgentStatusCommunicationError", error
        assert error["message"] == "The VM agent did not report."
    # a refused POST: 502 ComputeError with ARM's code in details[0]
    host.dh.sim.faults.append(Fault(match="reimage", status=400, code="OperationNotAllowed", message="busy"))
    s, answer, _ = await host.reimage({"target": WINDOWS_VM})
    assert s == 502 and answer["error"]["code"] == "ComputeError"
    assert answer["error"]["details"][0] == {"code": "OperationNotAllowed", "message": "busy"}


# --- 13. Retry-After on a 202 is the app's real next poll ---------------------------------------------------
@pytest.mark.parametrize(("arm_retry_after", "settings", "expected"), [
    (None, {"POLL_DEFAULT_SECONDS": "25"}, 25),
    (1, {"POLL_MIN_SECONDS": "15"}, 15),
    (600, {"POLL_MAX_SECONDS": "20"}, 20),
    (10, {}, 10),
])
async def test_retry_after_on_a_202_is_the_next_poll_and_duplicates_say_the_same(
        new_host: NewHost, arm_retry_after: int | None, settings: dict[str, str], expected: int) -> None:
    h: Host = await new_host(retry_after=arm_retry_after, settings=settings)
    s, first, headers = await h.reimage({"target": LINUX_VM, "requestId": "ra-1"})
    assert s == 202 and int(headers["Retry-After"]) == expected, headers
    s, again, headers = await h.reimage({"target": LINUX_VM, "requestId": "ra-1"})
    assert s == 202 and again["duplicate"] is True and int(headers["Retry-After"]) == expected, headers
    # the orchestration really polls at that pace
    await h.settle(lambda: any("/operations/" in r["path"] for r in h.dh.sim.requests), max_virtual_seconds=600)
    polls = [r for r in h.dh.sim.requests if "/operations/" in r["path"]]
    assert polls


# --- 1. allInstances never reimages wider than checked ------------------------------------------------------
async def test_all_instances_on_a_set_that_grows_after_preflight_posts_only_the_checked_ids(
        new_host: NewHost, monkeypatch: pytest.MonkeyPatch) -> None:
    h: Host = await new_host(settings={"MAX_INSTANCES_PER_REQUEST": "10", "APPROVAL_ALLOW_UNVERIFIED": "true"})
    rt = h.dh.runtime
    assert rt is not None
    compute = rt.compute
    real_submit = compute.submit
    grown = h.dh.sim.seed_scale_set(VMSS.replace("workers", "growing"), 4)

    async def grow_then_submit(call: Any) -> Any:
        doc = {**grown, "sku": {**grown["sku"], "capacity": 40}}
        h.dh.sim.upsert(grown["id"], {k: v for k, v in doc.items() if k in ("location", "sku", "properties")})
        return await real_submit(call)

    monkeypatch.setattr(compute, "submit", grow_then_submit)
    s, answer, _ = await h.reimage({"target": grown["id"], "allInstances": True, "requestedBy": "alice"})
    assert s == 202 and answer["status"] == "AwaitingApproval", answer
    s, approved, _ = await h.post(f"/api/reimage/{answer['operationId']}/approve", {"by": "bob"})
    assert s == 202, approved
    await h.settle(lambda: len(h.reimage_posts()) >= 1)
    [post] = h.reimage_posts()
    assert post["body"] == {"instanceIds": ["0", "1", "2", "3"]} == {"instanceIds": answer["instanceIds"]}
    s, doc = await h.get(f"/api/reimage/{answer['operationId']}")
    assert doc["instanceIds"] == ["0", "1", "2", "3"]


# --- 8. a missing scale-set instance ----------------------------------------------------------------------
@pytest.mark.parametrize("body", [{"target": VMSS + "/virtualMachines/77"},
                                  {"target": VMSS, "instanceIds": ["0", "77"]}])
async def test_a_missing_instance_is_a_404_with_no_operation_and_no_event(host: Host, body: dict[str, Any]) -> None:
    s, answer, _ = await host.reimage(body)
    assert s == 404 and answer["error"]["code"] == "TargetNotFound" and "77" in answer["error"]["message"], answer
    assert "operationId" not in answer and host.events() == [] and host.reimage_posts() == []
    rt = host.dh.runtime
    assert rt is not None and (await rt.ledger.list_operations(top=10)).items == []
    s, answer, _ = await host.reimage({**body, "dryRun": True})
    assert s == 200 and checks(answer)["targetExists"]["result"] == "failed"


# --- 10. one requestId on two targets at once --------------------------------------------------------------
async def test_one_request_id_on_two_targets_concurrently_gives_409_not_503(host: Host) -> None:
    bodies = [{"target": t, "requestId": "shared-key"} for t in (LINUX_VM, WINDOWS_VM) * 10]
    results = await asyncio.gather(*(host.reimage(b) for b in bodies))
    codes = sorted({(s, json.dumps(a)[:300]) for s, a, _ in results})
    assert {s for s, _, _ in results} <= {202, 409}, codes
    winners = {a["target"] for s, a, _ in results if s == 202}
    assert len(winners) == 1, codes
    assert {a["error"]["code"] for s, a, _ in results if s == 409} == {"RequestIdConflict"}
    assert len(host.reimage_posts()) == 1


async def test_a_compute_error_after_the_claim_keeps_arms_code_in_details_in_status_and_events(host: Host) -> None:
    """A 5xx on the POST may have been applied: the operation ends Failed, and ARM's code stays in details[0]."""
    host.dh.sim.faults.append(Fault(match="reimage", status=500, code="InternalExecutionError",
                                    message="An internal execution error occurred."))
    s, answer, _ = await host.reimage({"target": LINUX_VM, "requestId": "five-hundred"})
    assert s in (502, 503) and answer["error"]["details"][0]["code"] == "InternalExecutionError", answer
    [event] = host.completed()
    s, status = await host.get(f"/api/reimage/{answer['operationId']}")
    for error in (event["data"]["error"], status["error"], answer["error"]):
        detail = error["details"][0]
        assert (detail["code"], detail["message"]) == ("InternalExecutionError",
                                                       "An internal execution error occurred."), error


async def test_a_custom_data_line_echoed_in_a_submit_error_is_redacted(host: Host,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    host.dh.sim.faults.append(Fault(match="reimage", status=400, code="InvalidParameter",
                                    message="customData line 'runner_token: tok-7f1e2d9c-SECRET' is not valid."))
    s, answer, _ = await host.reimage({"target": WINDOWS_VM, "osProfile": {"customData": CUSTOM_DATA}})
    assert s == 502 and answer["error"]["details"][0]["message"] == "customData line '[REDACTED]' is not valid."
    for text in (json.dumps(answer), json.dumps(host.dh.events()), caplog.text):
        assert "tok-7f1e2d9c-SECRET" not in text
