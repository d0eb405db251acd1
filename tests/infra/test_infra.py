"""Infrastructure as code: every Bicep file parses, the custom role is exactly least privilege,
app settings match shared/settings.py, and host.json matches docs/deploy.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from shared.settings import setting_names

ROOT = Path(__file__).resolve().parents[2]
BICEP = sorted((ROOT / "infra").rglob("*.bicep"))
ROLE_ACTIONS = {
    "Microsoft.Compute/virtualMachines/read",
    "Microsoft.Compute/virtualMachines/reimage/action",
    "Microsoft.Compute/virtualMachineScaleSets/read",
    "Microsoft.Compute/virtualMachineScaleSets/reimage/action",
    "Microsoft.Compute/virtualMachineScaleSets/reimageall/action",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimage/action",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimageall/action",
    "Microsoft.Compute/locations/operations/read",
}
# Platform settings the Functions host reads; everything else must be a reimager setting.
HOST_SETTINGS = {"AzureWebJobsStorage__accountName", "AzureWebJobsStorage__credential",
                 "AzureWebJobsStorage__clientId", "APPLICATIONINSIGHTS_CONNECTION_STRING",
                 "APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "ServiceBusConnection__credential",
                 "ServiceBusConnection__clientId"}


def parse(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = BicepParser().parse(file_path=path)
    return result


def test_there_is_infra() -> None:
    names = {p.relative_to(ROOT / "infra").as_posix() for p in BICEP}
    assert {"main.bicep", "app/api.bicep", "core/operator-role.bicep", "core/servicebus.bicep",
            "core/storage.bicep", "demo/vmss.bicep"} <= names


@pytest.mark.parametrize("path", BICEP, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_bicep_file_parses(path: Path) -> None:
    doc = parse(path)
    assert doc.get("resources") or doc.get("modules")


def test_a_broken_file_fails_to_parse(tmp_path: Path) -> None:
    broken = tmp_path / "broken.bicep"
    text = (ROOT / "infra/core/servicebus.bicep").read_text()
    broken.write_text(text.replace("parent: namespace\n  name: requestsQueue", "parent: namespace\n  name: = ", 1))
    with pytest.raises(Exception):  # noqa: B017 - any parse error is the point
        parse(broken)


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def test_custom_role_is_exactly_least_privilege() -> None:
    doc = parse(ROOT / "infra/core/operator-role.bicep")
    actions = doc["variables"]["actions"]["value"]
    found = set(_strings(actions))
    assert found == ROLE_ACTIONS
    role = doc["resources"]["role"]["config"]["properties"]
    assert _strings(role["permissions"]) == [] or set(_strings(role["permissions"])) <= ROLE_ACTIONS | {"actions"}
    text = (ROOT / "infra/core/operator-role.bicep").read_text()
    assert "*" not in re.sub(r"//.*", "", text)  # no wildcard actions anywhere


def _app_settings() -> set[str]:
    doc = parse(ROOT / "infra/main.bicep")
    api = doc["modules"]["api"]["config"]["params"]["appSettings"]
    return set(api)


def test_app_settings_are_real_settings_and_cover_them_all() -> None:
    aliases = set(setting_names())
    wired = _app_settings()
    assert wired - aliases - HOST_SETTINGS == set(), "app settings that shared/settings.py does not read"
    # Wired in infra in the next commit (Key Vault, table URI, azd mapping); EVENTS_FILE is local only.
    assert aliases - wired - HOST_SETTINGS == {
        "EVENTS_FILE", "AzureWebJobsStorage", "AzureWebJobsStorage__tableServiceUri", "LEDGER_TABLE_PREFIX",
        "HEALTH_GRACE_MINUTES", "MAX_BATCH_PERCENT", "FLEET_BUDGET_PERCENT", "FLEET_WINDOW_MINUTES",
        "GLOBAL_MAX_REIMAGES_PER_HOUR", "BREAKER_PERCENT", "BREAKER_FAILURES", "QUEUE_MAX_WAIT_MINUTES",
        "SWEEP_SCHEDULE", "APPROVAL_ABOVE_INSTANCES", "APPROVAL_TIMEOUT_MINUTES", "APPROVAL_ALLOW_UNVERIFIED",
        "EASY_AUTH_ENABLED", "SLACK_SIGNING_SECRET", "TEAMS_WEBHOOK_SECRET"}
    host = set(parse(ROOT / "infra/app/api.bicep")["variables"]["hostSettings"]["value"])
    assert host <= HOST_SETTINGS and {"AzureWebJobsStorage__accountName", "AzureWebJobsStorage__credential"} <= host


def test_service_bus_entities_are_safe_for_redelivery() -> None:
    res = parse(ROOT / "infra/core/servicebus.bicep")["resources"]
    queue = res["queue"]["config"]["properties"]
    assert queue["requiresDuplicateDetection"] is True and queue["maxDeliveryCount"] == 5
    assert queue["deadLetteringOnMessageExpiration"] is True
    assert res["namespace"]["config"]["properties"]["disableLocalAuth"] is True
    assert res["all"]["config"]["name"] == "all"


def test_storage_has_no_shared_keys() -> None:
    props = parse(ROOT / "infra/core/storage.bicep")["resources"]["storage"]["config"]["properties"]
    assert props["allowSharedKeyAccess"] is False


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def test_host_json_matches_the_deploy_doc() -> None:
    host = _flatten(json.loads((ROOT / "host.json").read_text()))
    tuned = {k: v for k, v in host.items() if not k.startswith(("version", "extensionBundle"))}
    doc = (ROOT / "docs/deploy.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \| .+\|$", doc, re.MULTILINE))
    assert set(rows) == set(tuned), "every tuned host.json value has a row with a reason, and only those"
    for key, value in tuned.items():
        assert rows[key] == (str(value).lower() if isinstance(value, bool) else str(value)), key
    assert json.loads((ROOT / "host.json").read_text())["extensionBundle"]["id"] == \
        "Microsoft.Azure.Functions.ExtensionBundle"
