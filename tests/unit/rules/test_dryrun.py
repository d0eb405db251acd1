"""shared/rules/dryrun.py: a dry run reports every check (it does not stop at the first), and agrees with the real path.

The real path runs check_scope, check_model and the ledger's admission in order and raises at the first
refusal; the dry run must report that same refusal among its failed checks, and report passed for all
of them exactly when the real path would go on to submit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.arm_call import TargetModel
from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.records import Cooldown, TargetRecord
from shared.domain.request import parse_request
from shared.rules import admission, dryrun, policy
from shared.settings import Settings
from tests.helpers import SENTINEL_PASSWORD

SUB = "00000000-0000-0000-0000-000000000001"
RG = f"/subscriptions/{SUB}/resourceGroups/rg1"
VM = f"{RG}/providers/Microsoft.Compute/virtualMachines/vm1"
VMSS = f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/ss1"
NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def make_settings(**kw: str) -> Settings:
    return Settings(**{"ALLOWED_SCOPES": RG, "MAX_INSTANCES_PER_REQUEST": "3", **kw})  # type: ignore[arg-type]


def model(*, protected: bool = False, ephemeral: bool = False, instances: tuple[str, ...] | None = None,
          target: str = VM) -> TargetModel:
    return TargetModel(id=target, os_type="Linux", ephemeral_os_disk=ephemeral,
                       tags={"reimager-protect": "true"} if protected else {}, instance_ids=instances)


def names(run: dryrun.DryRun, result: str) -> list[str]:
    return [c["name"] for c in run.checks if c["result"] == result]


def test_a_protected_vm_with_a_wrong_option_reports_both_failures_and_the_rest() -> None:
    request = parse_request({"target": VM, "tempDisk": True, "dryRun": True})
    run = dryrun.evaluate(request, make_settings(), model=model(protected=True), not_found=None,
                          record=TargetRecord(key="k"), now=NOW)
    assert [c["name"] for c in run.checks] == list(dryrun.CHECKS)
    assert names(run, "failed") == ["protectTag", "targetModel"]
    assert names(run, "passed") == ["scope", "targetExists", "instanceCount", "instanceProtection", "lock",
                                    "automaticRepairs", "suspension", "cooldown", "freeze"]
    assert not run.passed and run.plan is not None and run.plan["body"] == {"tempDisk": True}
    by = {c["name"]: c for c in run.checks}
    assert by["protectTag"]["code"] == "TargetProtected"
    assert by["targetModel"]["details"][0]["target"] == "tempDisk"


def test_every_scale_set_failure_at_once_with_cooldown_and_suspension() -> None:
    request = parse_request({"target": VMSS, "instanceIds": ["1", "2", "3", "99"], "dryRun": True,
                             "osProfile": {"adminPassword": SENTINEL_PASSWORD}})
    record = TargetRecord(key="k", suspended={"reason": "breaker"},
                          cooldowns={"2": Cooldown(until=NOW + timedelta(minutes=9), operation_id="op-earlier")})
    run = dryrun.evaluate(request, make_settings(), model=model(protected=True, ephemeral=True, target=VMSS,
                                                                  instances=("1", "2", "3")),
                          not_found=None, record=record, now=NOW)
    assert names(run, "failed") == ["targetExists", "protectTag", "instanceCount", "targetModel", "suspension",
                                    "cooldown"]
    by = {c["name"]: c for c in run.checks}
    assert "99" in by["targetExists"]["message"] and by["targetModel"]["details"][0]["target"] == "osProfile"
    assert by["cooldown"]["operationId"] == "op-earlier" and by["cooldown"]["until"] == (
        NOW + timedelta(minutes=9)).isoformat()
    assert run.plan is not None and run.plan["body"]["instanceIds"] == ["1", "2", "3", "99"]
    assert SENTINEL_PASSWORD not in repr(run)


def test_a_target_outside_the_scopes_is_not_read_and_the_rest_is_skipped() -> None:
    request = parse_request({"target": VM, "dryRun": True})
    s = make_settings(ALLOWED_SCOPES=f"/subscriptions/{SUB}/resourceGroups/other")
    assert not dryrun.in_scope(request, s)
    run = dryrun.evaluate(request, s, model=None, not_found=None, record=TargetRecord(key="k"), now=NOW)
    assert names(run, "failed") == ["scope"]
    assert names(run, "skipped") == ["targetExists", "protectTag", "instanceCount", "targetModel",
                                     "instanceProtection", "lock", "automaticRepairs", "freeze"]


def test_all_instances_of_a_set_that_was_not_read_has_no_plan() -> None:
    request = parse_request({"target": VMSS, "allInstances": True, "dryRun": True})
    missing = ReimagerError(ErrorCode.TARGET_NOT_FOUND, "no such set")
    run = dryrun.evaluate(request, make_settings(), model=None, not_found=missing, record=TargetRecord(key="k"),
                          now=NOW)
    assert run.plan is None and names(run, "failed") == ["targetExists"]
    assert names(run, "skipped") == ["protectTag", "instanceCount", "targetModel", "instanceProtection", "lock",
                                     "automaticRepairs", "cooldown", "freeze"]


def test_an_empty_set_fails_instance_count_and_still_checks_the_options() -> None:
    request = parse_request({"target": VMSS, "allInstances": True, "dryRun": True, "tempDisk": True})
    run = dryrun.evaluate(request, make_settings(), model=model(target=VMSS, instances=()), not_found=None,
                          record=TargetRecord(key="k"), now=NOW)
    assert names(run, "failed") == ["instanceCount", "targetModel"] and run.plan is None


# --- the dry run agrees with the real path ----------------------------------------------------------------
def real_path(body: dict[str, Any], s: Settings, m: TargetModel, record: TargetRecord) -> str | None:
    """The code the real request is refused with, in the real order, or None when it would be submitted."""
    request = parse_request(body)
    try:
        policy.check_scope(request.resolved_target, s)
        instances = policy.check_model(request, m, s)
    except ReimagerError as exc:
        return exc.code
    keys = policy.cooldown_keys(request.resolved_target, instances)
    _, decided = admission.admit_request(record.model_copy(deep=True), owner="op-new", keys=keys,
                                         options={"operation": "x"}, secret=False, capacity=len(m.instance_ids or ())
                                         or 1, target_id=record.key, now=NOW, until=NOW + timedelta(minutes=5),
                                         settings=s, symptom=False)  # the breaker's trip is not predicted
    return decided.error.code if decided.error is not None else None


@settings(max_examples=300, deadline=None, derandomize=True)
@given(protected=st.booleans(), ephemeral=st.booleans(), temp_disk=st.none() | st.booleans(),
       os_profile=st.booleans(), ids=st.lists(st.sampled_from(["0", "1", "2", "3", "7", "99"]), min_size=1,
                                              max_size=5, unique=True) | st.none(),
       present=st.lists(st.sampled_from(["0", "1", "2", "3"]), unique=True), suspended=st.booleans(),
       cooling=st.sampled_from([None, "", "1", "3"]), in_scope=st.booleans())
def test_the_first_failed_check_is_the_real_refusal(protected: bool, ephemeral: bool, temp_disk: bool | None,
                                                    os_profile: bool, ids: list[str] | None, present: list[str],
                                                    suspended: bool, cooling: str | None, in_scope: bool) -> None:
    scale_set = ids is not None or cooling not in (None, "")
    body: dict[str, Any] = {"target": VMSS if scale_set else VM}
    if scale_set:
        body.update({"instanceIds": ids} if ids else {"allInstances": True})
    if temp_disk is not None:
        body["tempDisk"] = temp_disk
    if os_profile:
        body["osProfile"] = {"adminPassword": SENTINEL_PASSWORD}
    m = model(protected=protected, ephemeral=ephemeral, target=body["target"],
              instances=tuple(present) if scale_set else None)
    s = make_settings() if in_scope else make_settings(ALLOWED_SCOPES=f"/subscriptions/{SUB}/resourceGroups/elsewhere")
    record = TargetRecord(key="k", suspended={"reason": "r"} if suspended else None)
    if cooling is not None:
        record.cooldowns[cooling] = Cooldown(until=NOW + timedelta(minutes=5), operation_id="op-old")
    expected = real_path(body, s, m, record)
    run = dryrun.evaluate(parse_request({**body, "dryRun": True}), s, model=m if in_scope else None,
                          not_found=None, record=record, now=NOW)
    failed = [c for c in run.checks if c["result"] == "failed"]
    assert run.passed is (expected is None), (expected, run.checks)
    if expected is not None:
        assert expected in [c["code"] for c in failed], (expected, run.checks)
