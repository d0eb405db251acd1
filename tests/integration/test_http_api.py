"""HTTP API end to end through devhost: real HTTP, real simulator, real durable replay, virtual clock."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from devhost.compute import Fault
from devhost.host import DEMO_SUBSCRIPTION
from shared.domain.targets import parse_target
from tests.helpers import SENTINEL_PASSWORD
from tests.integration.conftest import LINUX_VM, PROTECTED_VM, VMSS, WINDOWS_VM, Host

NewHost = Callable[..., Any]


@pytest.mark.parametrize(("body", "suffix", "instances"), [
    ({"target": LINUX_VM}, "/virtualMachines/web-linux-01/reimage", None),
    ({"target": WINDOWS_VM, "osProfile": {"adminPassword": "Str0ng-Passw0rd"}}, "/app-win-01/reimage", None),
    ({"target": VMSS, "instanceIds": ["0", "3"]}, "/virtualMachineScaleSets/workers/reimage", ["0", "3"]),
    ({"target": VMSS + "/virtualMachines/2", "tempDisk": True}, "/virtualMachineScaleSets/workers/reimage", ["2"]),
    ({"resourceGroupName": "reimager-demo", "vmName": "web-linux-01"}, "/web-linux-01/reimage", None),
])
async def test_reimage_end_to_end(host: Host, body: dict[str, Any], suffix: str, instances: list[str] | None) -> None:
    s, accepted, headers = await host.reimage(body)
    assert s == 202, accepted
    # A scale set's request waits for its batch (a storm rides one POST); a VM's is submitted at once.
    assert accepted["status"] == ("Queued" if instances else "Accepted") and accepted["instanceIds"] == instances
    assert headers["Location"].endswith(f"/api/reimage/{accepted['operationId']}")
    s, view = await host.get(f"/api/reimage/{accepted['operationId']}")
    assert s == 200 and view["status"] in ("Queued", "Accepted", "Running") and view["trigger"] == "http"
    events = await host.until_completed()
    assert [e["data"]["status"] for e in events] == ["Succeeded"]
    assert events[0]["subject"] == accepted["target"]
    s, view = await host.get(f"/api/reimage/{accepted['operationId']}")
    assert view["status"] == "Succeeded" and view["polls"] == 6 and view["error"] is None
    posts = host.reimage_posts()
    assert all(p["path"].endswith(suffix) for p in posts)
    # a scale set's request for more instances than CANARY_INSTANCES: its first instance goes alone, as the set's
    # canary, and the rest once it came back healthy
    sent = [instances[:1], instances[1:]] if instances and len(instances) > 1 else [instances]
    assert [p["body"]["instanceIds"] if instances else None for p in posts] == sent
    accepted_events = host.events("reimager.operation.accepted")
    # informational, with one id per operation: a second POST's is the same event (Service Bus drops the re-send
    # within its duplicate-detection window)
    assert 1 <= len(accepted_events) <= len(sent)
    assert {e["data"]["operationId"] for e in accepted_events} == {accepted["operationId"]}


async def test_400_names_each_field(host: Host) -> None:
    s, body, _ = await host.reimage({"target": VMSS, "tempdisk": True, "exactVersion": "latest"})
    assert s == 400 and body["error"]["code"] == "InvalidRequest"
    targets = {d["target"] for d in body["error"]["details"]}
    assert targets == {"tempdisk", "exactVersion"}
    s, body, _ = await host.post("/api/reimage", None, raw=b"{not json")
    assert s == 400 and body["error"]["code"] == "InvalidRequest"
    assert host.reimage_posts() == []


async def test_403_outside_allowed_scopes(host: Host) -> None:
    other = "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg/providers/Microsoft.Compute/" \
            "virtualMachines/elsewhere"
    host.dh.sim.upsert(other, {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}})
    s, body, _ = await host.reimage({"target": other})
    assert s == 403 and body["error"]["code"] == "ScopeNotAllowed"
    assert [r for r in host.dh.sim.requests if "elsewhere" in r["path"]] == []  # refused before any ARM call


async def test_default_deny_with_no_scopes(new_host: NewHost) -> None:
    h = await new_host(settings={"ALLOWED_SCOPES": ""})
    s, body, _ = await h.reimage({"target": LINUX_VM})
    assert s == 403 and body["error"]["code"] == "ScopeNotAllowed"


async def test_403_protected(host: Host) -> None:
    s, body, _ = await host.reimage({"target": PROTECTED_VM})
    assert s == 403 and body["error"]["code"] == "TargetProtected"
    assert host.reimage_posts() == []


async def test_404_target_not_found(host: Host) -> None:
    s, body, _ = await host.reimage({"target": LINUX_VM.replace("web-linux-01", "ghost")})
    assert s == 404 and body["error"]["code"] == "TargetNotFound"
    assert body["error"]["details"][0]["code"] == "ResourceNotFound"


async def test_two_requests_on_one_scale_set_ride_one_post(new_host: NewHost) -> None:
    # The demo set is small: by default its batch cap (20%) and fleet budget (30%) are one instance. The canary,
    # which would send the first alone and the second after it (tests/integration/test_canary.py), is off.
    host = await new_host(settings={"MAX_BATCH_PERCENT": "50", "FLEET_BUDGET_PERCENT": "100", "CANARY_INSTANCES": "0"})
    s1, first, _ = await host.reimage({"target": VMSS, "instanceIds": ["0"]})
    s2, second, _ = await host.reimage({"target": VMSS + "/virtualMachines/1"})
    assert (s1, s2) == (202, 202) and first["status"] == second["status"] == "Queued"
    events = await host.until_completed(2)
    [post] = host.reimage_posts()
    assert post["body"] == {"instanceIds": ["0", "1"]}
    [batch] = {e["data"]["batchId"] for e in events}
    assert batch.startswith("b-")
    assert {e["data"]["operationId"] for e in events} == {first["operationId"], second["operationId"]}


async def test_a_request_with_secrets_for_a_busy_target_is_409(host: Host) -> None:
    s1, first, _ = await host.reimage({"target": WINDOWS_VM})
    s2, second, _ = await host.reimage({"target": WINDOWS_VM, "osProfile": {"adminPassword": SENTINEL_PASSWORD}})
    assert (s1, s2) == (202, 409) and second["error"]["code"] == "OperationInProgress"
    assert "secrets are never stored" in second["error"]["message"]
    assert SENTINEL_PASSWORD not in json.dumps(second)
    record = await host.dh.runtime.ledger.get_target(parse_target(first["target"]).lock_key)  # type: ignore[union-attr]
    assert record.queue == []  # nothing of it was stored
    assert len(host.reimage_posts()) == 1


async def test_429_cooldown_then_allowed(new_host: NewHost) -> None:
    h = await new_host(settings={"COOLDOWN_MINUTES": "30"})
    await h.reimage({"target": LINUX_VM})
    await h.until_completed()
    s, body, headers = await h.reimage({"target": LINUX_VM})
    assert s == 429 and body["error"]["code"] == "CooldownActive"
    assert 1700 < int(headers["Retry-After"]) <= 1800
    # Another target is not affected; after the cooldown the target is allowed again.
    s, _, _ = await h.reimage({"target": WINDOWS_VM})
    assert s == 202
    h.dh.clock.advance(int(headers["Retry-After"]) + 1)  # type: ignore[attr-defined]
    s, _, _ = await h.reimage({"target": LINUX_VM})
    assert s == 202


async def test_scale_set_cooldown_is_per_instance(host: Host) -> None:
    await host.reimage({"target": VMSS, "instanceIds": ["0"]})
    await host.until_completed()
    s, body, _ = await host.reimage({"target": VMSS + "/virtualMachines/0"})
    assert s == 429
    s, _, _ = await host.reimage({"target": VMSS + "/virtualMachines/1"})
    assert s == 202


async def test_502_carries_arm_code(host: Host) -> None:
    host.dh.sim.faults.append(Fault(match="reimage", status=400, code="OperationNotAllowed",
                                    message="The operation is not allowed in the current state."))
    s, body, _ = await host.reimage({"target": LINUX_VM})
    assert s == 502 and body["error"]["code"] == "ComputeError"
    assert body["error"]["details"][0] == {"code": "OperationNotAllowed",
                                           "message": "The operation is not allowed in the current state."}
    # ARM refused it, so nothing was applied: no operation, no event, and the key is free for a retry.
    assert "operationId" not in body and host.completed() == []
    s, body, _ = await host.reimage({"target": LINUX_VM})
    assert s == 202


async def test_503_when_arm_is_unavailable(host: Host) -> None:
    host.dh.sim.faults.append(Fault(match="get", status=503, times=10))
    s, body, headers = await host.reimage({"target": LINUX_VM})
    assert s == 503 and body["error"]["code"] == "ComputeUnavailable"
    assert host.reimage_posts() == [] and host.completed() == []  # not accepted: nothing to complete


async def test_password_rules_follow_the_os(host: Host) -> None:
    seven = "Ab1-xyz"
    s, body, _ = await host.reimage({"target": WINDOWS_VM, "osProfile": {"adminPassword": seven}})
    assert s == 400 and body["error"]["target"] == "osProfile.adminPassword"
    s, body, _ = await host.reimage({"target": LINUX_VM, "osProfile": {"adminPassword": seven}})
    assert s == 202
    assert len(host.reimage_posts()) == 1


async def test_dry_run_plans_without_posting(host: Host) -> None:
    s, body, _ = await host.reimage({"target": VMSS, "instanceIds": ["1"], "dryRun": True, "tempDisk": True})
    assert s == 200 and body["dryRun"] is True
    assert body["plan"]["method"] == "POST" and body["plan"]["path"].endswith("/workers/reimage")
    assert body["plan"]["body"] == {"instanceIds": ["1"], "tempDisk": True}
    assert {c["name"] for c in body["checks"]} >= {"scope", "protectTag", "cooldown"}
    # osProfile is for a non-ephemeral OS disk (the scale set's is ephemeral): a VM's dry run shows it redacted.
    s, body, _ = await host.reimage({"target": LINUX_VM, "dryRun": True,
                                     "osProfile": {"adminPassword": SENTINEL_PASSWORD}})
    assert s == 200 and body["plan"]["body"] == {"osProfile": {"adminPassword": "***"}}
    assert SENTINEL_PASSWORD not in json.dumps(body)
    assert host.reimage_posts() == [] and host.dh.engine.instances == {}  # type: ignore[union-attr]
    s, body, _ = await host.reimage({"target": PROTECTED_VM, "dryRun": True})
    assert s == 200 and body["passed"] is False  # a dry run applies policy too, and reports it as a check
    assert [c["name"] for c in body["checks"] if c["result"] == "failed"] == ["protectTag"]


async def test_same_request_id_twenty_times_concurrently(host: Host) -> None:
    body = {"target": VMSS, "instanceIds": ["2"], "requestId": "chatops-777"}
    results = await asyncio.gather(*(host.reimage(body) for _ in range(20)))
    assert {r[0] for r in results} == {202}
    assert len({r[1]["operationId"] for r in results}) == 1
    events = await host.until_completed()
    assert len(host.reimage_posts()) == 1
    assert len(events) == 1
    s, again, _ = await host.reimage(body)
    assert s == 200 and again["status"] == "Succeeded" and again["duplicate"] is True
    assert len(host.reimage_posts()) == 1


async def test_request_id_reused_for_another_target(host: Host) -> None:
    await host.reimage({"target": LINUX_VM, "requestId": "dup-1"})
    s, body, _ = await host.reimage({"target": WINDOWS_VM, "requestId": "dup-1"})
    assert s == 409 and body["error"]["code"] == "RequestIdConflict"


async def test_function_key_required(host: Host) -> None:
    async with host.http.post(host.url + "/api/reimage", json={"target": LINUX_VM}) as r:
        assert r.status == 401
    async with host.http.post(host.url + "/api/reimage?code=wrong", json={"target": LINUX_VM}) as r:
        assert r.status == 401
    async with host.http.get(host.url + f"/api/reimage/op-x?code={host.dh.function_key}") as r:
        assert r.status == 404
    assert host.reimage_posts() == []


async def test_unknown_operation_is_404(host: Host) -> None:
    s, body = await host.get("/api/reimage/op-0000")
    assert s == 404 and body["error"]["code"] == "OperationNotFound"


async def test_secret_sentinel_only_in_the_arm_post(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    responses = []
    for body in ({"target": LINUX_VM, "osProfile": {"adminPassword": SENTINEL_PASSWORD}},
                 {"target": WINDOWS_VM, "osProfile": {"adminPassword": SENTINEL_PASSWORD[:7]}},
                 {"target": LINUX_VM, "osProfile": {"adminPassword": SENTINEL_PASSWORD}, "x": 1},
                 {"target": LINUX_VM, "dryRun": True, "osProfile": {"adminPassword": SENTINEL_PASSWORD}}):
        responses.append(await host.reimage(body))
    await host.until_completed()
    s, view = await host.get(f"/api/reimage/{responses[0][1]['operationId']}")
    haystacks = {"responses": json.dumps([r[1] for r in responses]) + json.dumps(view), "logs": caplog.text,
                 "events": json.dumps(host.dh.events()), "durable": host.dh.engine.dump()}  # type: ignore[union-attr]
    for name, text in haystacks.items():
        assert SENTINEL_PASSWORD not in text, name
        assert SENTINEL_PASSWORD[:7] not in text, name
    posts = [r for r in host.dh.sim.requests if SENTINEL_PASSWORD in json.dumps(r)]
    assert len(posts) == 1 and posts[0]["method"] == "POST"
    assert DEMO_SUBSCRIPTION in haystacks["durable"]  # the scan saw real stored content
