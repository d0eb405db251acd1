"""Dry runs through devhost's real HTTP paths: every check is reported (not only the first that fails),
nothing is read outside the scopes, no key is taken, and cooldown and suspension are shown."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from shared.domain.records import Cooldown
from shared.domain.targets import parse_target
from tests.helpers import SENTINEL_PASSWORD
from tests.integration.conftest import LINUX_VM, PROTECTED_VM, VMSS, WINDOWS_VM, Host, NewHost, checks, failed

GHOST_VM = LINUX_VM.replace("web-linux-01", "ghost")
OTHER_GROUP_VM = ("/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg/providers/Microsoft.Compute/"
                  "virtualMachines/elsewhere")


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
