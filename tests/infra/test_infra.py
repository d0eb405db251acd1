"""Infrastructure as code: every Bicep file parses, the custom role is exactly least privilege,
app settings match shared/settings.py and are mapped from azd environment variables, secrets
live in Key Vault, the identities get exactly the data-plane roles they need, and host.json
matches docs/deploy.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

from shared.domain.evidence import CONTAINER
from shared.settings import Settings, env_name, setting_names

ROOT = Path(__file__).resolve().parents[2]
BICEP = sorted((ROOT / "infra").rglob("*.bicep"))
# Names checked against the Azure RBAC provider operations list
# (learn.microsoft.com/azure/role-based-access-control/permissions/compute, Microsoft.Compute).
# The instance-view reads are health verification's (ComputeClient.instance_health):
# integration/adapters/test_instance_health.py::
#   test_every_health_read_is_granted_by_the_role_and_every_view_action_is_used
# runs those reads against the simulator and checks that they need exactly these. The set's instance view (its
# automatic repairs) and the lock list are the preflight's fleet checks (shared/adapters/arm/fleet.py):
# integration/adapters/test_fleet_reads.py::test_the_role_grants_exactly_the_reads_the_checks_make.
ROLE_ACTIONS = {
    "Microsoft.Authorization/locks/read",
    "Microsoft.Compute/virtualMachineScaleSets/instanceView/read",
    "Microsoft.Compute/virtualMachines/read",
    "Microsoft.Compute/virtualMachines/instanceView/read",
    "Microsoft.Compute/virtualMachines/reimage/action",
    "Microsoft.Compute/virtualMachineScaleSets/read",
    "Microsoft.Compute/virtualMachineScaleSets/reimage/action",
    "Microsoft.Compute/virtualMachineScaleSets/reimageall/action",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/instanceView/read",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimage/action",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimageall/action",
    "Microsoft.Compute/locations/operations/read",
    # Evidence before the wipe (shared/adapters/arm/evidence.py; research notes arm.md C10-C12): boot diagnostics
    # of a VM and of a scale-set instance; an incremental snapshot, the linked read of its source disk (which of the
    # two Compute checks for an instance's disk is not documented: both), and its Disk RP operation.
    "Microsoft.Compute/virtualMachines/retrieveBootDiagnosticsData/action",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/retrieveBootDiagnosticsData/action",
    "Microsoft.Compute/snapshots/write",
    "Microsoft.Compute/snapshots/read",
    "Microsoft.Compute/disks/beginGetAccess/action",
    "Microsoft.Compute/virtualMachineScaleSets/disks/beginGetAccess/action",
    "Microsoft.Compute/locations/diskOperations/read",
}
# Platform settings the Functions host reads; everything else must be a reimager setting.
HOST_SETTINGS = {"AzureWebJobsStorage__accountName", "AzureWebJobsStorage__credential",
                 "AzureWebJobsStorage__clientId", "APPLICATIONINSIGHTS_CONNECTION_STRING",
                 "APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "ServiceBusConnection__credential",
                 "ServiceBusConnection__clientId", "PYTHON_ENABLE_OPENTELEMETRY"}


def parse(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = BicepParser().parse(file_path=path)
    return result


def test_there_is_infra() -> None:
    names = {p.relative_to(ROOT / "infra").as_posix() for p in BICEP}
    assert {"main.bicep", "app/api.bicep", "app/rbac.bicep", "core/operator-role.bicep", "core/servicebus.bicep",
            "core/storage.bicep", "core/keyvault.bicep", "app/workbook.bicep", "demo/vmss.bicep"} <= names


@pytest.mark.parametrize("path", BICEP, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_bicep_file_parses(path: Path) -> None:
    doc = parse(path)
    assert doc.get("resources") or doc.get("modules") or doc.get("outputs")


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


MAIN = ROOT / "infra/main.bicep"
# App settings whose value names a resource this template creates rather than a tunable.
FROM_RESOURCES = {"AZURE_CLIENT_ID", "AzureWebJobsStorage__tableServiceUri", "AzureWebJobsStorage__blobServiceUri",
                  "ServiceBusConnection__fullyQualifiedNamespace", "APPLICATIONINSIGHTS_CONNECTION_STRING"}
# Never set in Azure: the local events file, and the connection string Azurite needs (in Azure
# the host and the ledger use the identity; the host sets APPLICATIONINSIGHTS_CONNECTION_STRING).
LOCAL_ONLY = {"EVENTS_FILE", "AzureWebJobsStorage"}
# Secret settings: the value is a Key Vault reference that core/keyvault.bicep outputs.
SECRETS = {"SLACK_SIGNING_SECRET": "slackSigningSecretSetting", "TEAMS_WEBHOOK_SECRET": "teamsWebhookSecretSetting"}
# Parameters whose empty default means "derive it from the deployment" (this cloud, this subscription).
DERIVED_WHEN_EMPTY = {"armEndpoint", "defaultSubscriptionId"}
AZD_VARIABLE = re.compile(r"^\$\{([A-Z][A-Z0-9_]*)(?:=(.*))?\}$", re.DOTALL)
# Built-in role definition ids (learn.microsoft.com/azure/role-based-access-control/built-in-roles).
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
SERVICE_BUS_DATA_RECEIVER = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"
SERVICE_BUS_DATA_SENDER = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"


def _app_settings() -> dict[str, Any]:
    settings: dict[str, Any] = parse(MAIN)["modules"]["api"]["config"]["params"]["appSettings"]
    return settings


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.title() for part in rest)


def _ref(node: Any) -> str:
    """A property-access chain as Bicep text: identity.outputs.principalId."""
    if isinstance(node, str):
        return node
    operands = node["operator"]["operands"]
    assert node["operator"]["type"] == "property_accessor", node
    return f"{_ref(operands['operand_1'])}.{_ref(operands['operand_2'])}"


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def test_app_settings_are_real_settings_and_cover_them_all() -> None:
    names = set(setting_names())
    wired = set(_app_settings())
    host = set(parse(ROOT / "infra/app/api.bicep")["variables"]["hostSettings"]["value"])
    assert wired - names - HOST_SETTINGS == set(), "app settings that shared/settings.py does not read"
    assert names - wired - host == LOCAL_ONLY
    assert host <= HOST_SETTINGS and {"AzureWebJobsStorage__accountName", "AzureWebJobsStorage__credential",
                                      "APPLICATIONINSIGHTS_CONNECTION_STRING"} <= host


def test_every_tunable_setting_is_a_parameter_mapped_from_an_azd_variable() -> None:
    params = parse(MAIN)["parameters"]
    azd = json.loads((ROOT / "infra/main.parameters.json").read_text())["parameters"]
    settings = _app_settings()
    mapped = set()
    for field, info in Settings.model_fields.items():
        name = env_name(field)
        if name in LOCAL_ONLY | FROM_RESOURCES:
            continue
        param = _camel(field)
        assert param in params, f"{name}: main.bicep has no parameter {param}"
        match = AZD_VARIABLE.match(azd[param]["value"])
        assert match and match.group(1) == f"REIMAGER_{name}", f"{param} is not mapped from REIMAGER_{name}"
        default = params[param].get("default")
        assert match.group(2) == _as_text(default), f"{param}: the azd default differs from main.bicep's"
        if name in SECRETS:
            assert parse(MAIN)["modules"]["keyVault"]["config"]["params"][param] == param
            assert {"secure"} <= {d["type"] for d in params[param]["decorators"]}
        else:
            assert param in _strings(settings[name]), f"app setting {name} does not use parameter {param}"
        if param not in DERIVED_WHEN_EMPTY | {_camel(f) for f in ("slack_signing_secret", "teams_webhook_secret")}:
            expected = info.default
            assert (tuple(default) if isinstance(default, list) else default) == expected, name
        mapped.add(param)
    # Nothing else in the parameters file, and only the deployer's id is left to its default; the evidence
    # readers are who may read the evidence container (not an app setting).
    assert set(azd) - mapped == {"environmentName", "location", "principalId", "grantDeployerAccess",
                                 "evidenceReaderIds"}
    assert AZD_VARIABLE.match(azd["evidenceReaderIds"]["value"]).group(1) == "REIMAGER_EVIDENCE_READER_IDS"  # type: ignore[union-attr]
    assert set(params) == set(azd)


def test_parameter_bounds_match_the_settings() -> None:
    params = parse(MAIN)["parameters"]
    checked = 0
    for field, info in Settings.model_fields.items():
        param = params.get(_camel(field))
        if not param or param["type"] != "int" or info.annotation is not int:
            continue
        bounds = {d["type"]: d["argument"] for d in param["decorators"] if d["type"] in ("min_value", "max_value")}
        ge = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
        le = next((m.le for m in info.metadata if hasattr(m, "le")), None)
        assert (bounds.get("min_value"), bounds.get("max_value")) == (ge, le), field
        checked += 1
    assert checked == 26  # every integer setting


def test_chatops_secrets_are_key_vault_references() -> None:
    kv = parse(ROOT / "infra/core/keyvault.bicep")
    props = kv["resources"]["vault"]["config"]["properties"]
    assert props["enableRbacAuthorization"] is True and props["enablePurgeProtection"] is True
    assert props["enableSoftDelete"] is True and "accessPolicies" not in props
    for setting, output in SECRETS.items():
        value = _strings(kv["outputs"][output]["value"])
        assert any(v.startswith("@Microsoft.KeyVault(SecretUri=${") for v in value), output
        assert {"keyVault", output} <= set(_strings(_app_settings()[setting])), setting
    for param in ("slackSigningSecret", "teamsWebhookSecret"):
        assert {"secure"} <= {d["type"] for d in kv["parameters"][param]["decorators"]}
    # The platform resolves the references with the app's user-assigned identity.
    site = parse(ROOT / "infra/app/api.bicep")["resources"]["app"]["config"]["properties"]
    assert site["keyVaultReferenceIdentity"] == "identityId"


def _rbac() -> tuple[dict[str, Any], dict[str, Any]]:
    rbac = parse(ROOT / "infra/app/rbac.bicep")
    return rbac, {name: var["value"] for name, var in rbac["variables"].items()}


def _roles(rbac: dict[str, Any], variables: dict[str, Any], resource: str) -> tuple[set[str], str, str]:
    """(role ids, scope, principal) of one role-assignment resource or loop in rbac.bicep."""
    config = rbac["resources"][resource]["config"]
    if "loop_type" in config:
        source = config["loop_type"]["detail"]["array_name"]
        names = [s for s in _strings(source) if s in variables]
        roles = {variables[r] for name in names for r in variables[name]}
        body = config["config"]
    else:
        roles = {variables[s] for s in _strings(config["properties"]["roleDefinitionId"]) if s in variables}
        body = config
    return roles, body["scope"], body["properties"]["principalId"]


def test_identity_has_exactly_the_data_roles_it_needs() -> None:
    rbac, variables = _rbac()
    assert _roles(rbac, variables, "identityStorage") == (
        {STORAGE_BLOB_DATA_OWNER, STORAGE_QUEUE_DATA_CONTRIBUTOR, STORAGE_TABLE_DATA_CONTRIBUTOR},
        "storage", "identityPrincipalId")
    assert _roles(rbac, variables, "identityServiceBus") == (
        {SERVICE_BUS_DATA_RECEIVER, SERVICE_BUS_DATA_SENDER}, "namespace", "identityPrincipalId")
    assert _roles(rbac, variables, "identitySecrets") == ({KEY_VAULT_SECRETS_USER}, "vault", "identityPrincipalId")
    params = parse(MAIN)["modules"]["rbac"]["config"]["params"]
    assert _ref(params["identityPrincipalId"]) == "identity.outputs.principalId"


def test_the_ledger_table_endpoint_is_set_and_the_identity_may_write_tables() -> None:
    assert _ref(_app_settings()["AzureWebJobsStorage__tableServiceUri"]) == "storage.outputs.tableEndpoint"
    out = parse(ROOT / "infra/core/storage.bicep")["outputs"]["tableEndpoint"]["value"]
    assert _ref(out) == "storage.properties.primaryEndpoints.table"
    rbac, variables = _rbac()
    assert STORAGE_TABLE_DATA_CONTRIBUTOR in _roles(rbac, variables, "identityStorage")[0]


def test_the_evidence_container_its_retention_and_who_may_write_and_read_it() -> None:
    storage = parse(ROOT / "infra/core/storage.bicep")
    container = storage["resources"]["evidence"]["config"]
    assert storage["variables"]["evidenceContainer"]["value"] == "reimager-evidence" == CONTAINER
    assert container["name"] == "evidenceContainer" and container["properties"]["publicAccess"] == "None"
    [rule] = storage["resources"]["retention"]["config"]["properties"]["policy"]["rules"]
    assert rule["definition"]["actions"]["baseBlob"]["delete"]["daysAfterCreationGreaterThan"] == \
        "evidenceRetentionDays"
    assert parse(MAIN)["modules"]["storage"]["config"]["params"]["evidenceRetentionDays"] == "evidenceRetentionDays"
    assert _ref(_app_settings()["AzureWebJobsStorage__blobServiceUri"]) == "storage.outputs.blobEndpoint"
    assert _ref(storage["outputs"]["blobEndpoint"]["value"]) == "storage.properties.primaryEndpoints.blob"
    rbac, variables = _rbac()
    assert _roles(rbac, variables, "identityEvidence") == (
        {STORAGE_BLOB_DATA_CONTRIBUTOR}, "evidenceContainer", "identityPrincipalId")
    readers = rbac["resources"]["evidenceReaders"]["config"]
    assert "evidenceReaderIds" in _strings(readers["loop_type"])
    body = readers["config"]
    assert body["scope"] == "evidenceContainer" and body["properties"]["principalId"] == "reader"
    assert {variables[v] for v in _strings(body["properties"]["roleDefinitionId"]) if v in variables} == {
        STORAGE_BLOB_DATA_READER}
    assert rbac["resources"]["evidenceContainer"]["config"]["name"] == \
        "${storageAccountName}/default/${evidenceContainerName}"
    params = parse(MAIN)["modules"]["rbac"]["config"]["params"]
    assert _ref(params["evidenceContainerName"]) == "storage.outputs.evidenceContainer"


def _functions(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["function"]["type"]] if isinstance(node.get("function"), dict) else []
        return own + [f for v in node.values() for f in _functions(v)]
    if isinstance(node, list):
        return [f for v in node for f in _functions(v)]
    return []


def test_the_deploying_developer_gets_data_access_to_run_locally() -> None:
    main = parse(MAIN)
    assert main["parameters"]["principalId"]["default"] == ""
    # grantDeployerAccess ? (empty(principalId) ? deployingPrincipal.outputs.objectId : principalId) : ''
    user = main["modules"]["rbac"]["config"]["params"]["userPrincipalId"]["operator"]
    assert user["type"] == "conditional" and user["operands"]["condition"] == "grantDeployerAccess"
    assert user["operands"]["false_value"] == ""
    chosen = user["operands"]["true_value"]["operator"]["operands"]
    assert _ref(chosen["true_value"]) == "deployingPrincipal.outputs.objectId"
    assert chosen["false_value"] == "principalId"
    assert main["modules"]["deployingPrincipal"]["detail"]["path"] == "app/deployer.bicep"
    output = parse(ROOT / "infra/app/deployer.bicep")["outputs"]["objectId"]["value"]
    assert output["operator"]["operands"]["operand_1"]["function"]["type"] == "deployer"
    assert output["operator"]["operands"]["operand_2"] == "objectId"
    rbac, variables = _rbac()
    assert _roles(rbac, variables, "userStorage") == (
        {STORAGE_BLOB_DATA_CONTRIBUTOR, STORAGE_QUEUE_DATA_CONTRIBUTOR, STORAGE_TABLE_DATA_CONTRIBUTOR},
        "storage", "userPrincipalId")
    assert _roles(rbac, variables, "userServiceBus") == (
        {SERVICE_BUS_DATA_RECEIVER, SERVICE_BUS_DATA_SENDER}, "namespace", "userPrincipalId")


def test_checkov_skips_only_the_file_it_cannot_parse() -> None:
    # checkov's pinned parser cannot read deployer(); the one file that calls it declares nothing
    # else, and it is the only file infra/.checkov.yaml keeps out of the lint.
    callers = {p.relative_to(ROOT / "infra").as_posix() for p in BICEP if "deployer" in _functions(parse(p))}
    assert callers == {"app/deployer.bicep"}
    assert set(parse(ROOT / "infra/app/deployer.bicep")) & {"resources", "modules"} == set()
    config = yaml.safe_load((ROOT / "infra/.checkov.yaml").read_text())
    assert config == {"skip-path": ["app/deployer.bicep"]}


def test_no_role_assignments_outside_rbac_bicep_except_the_operator_role() -> None:
    for path in BICEP:
        rel = path.relative_to(ROOT / "infra").as_posix()
        if rel in {"app/rbac.bicep", "core/role-assignment-group.bicep", "core/role-assignment-subscription.bicep"}:
            continue
        types = {r["type"] for r in parse(path).get("resources", {}).values()}
        assert "Microsoft.Authorization/roleAssignments" not in types, rel


def test_outputs_follow_the_azd_convention() -> None:
    outputs = set(parse(MAIN)["outputs"])
    assert {"AZURE_LOCATION", "AZURE_TENANT_ID", "AZURE_RESOURCE_GROUP", "SERVICE_API_NAME", "SERVICE_API_URI",
            "AZURE_FUNCTION_NAME", "AZURE_KEY_VAULT_NAME", "AZURE_KEY_VAULT_ENDPOINT"} <= outputs
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", name) for name in outputs)
    # Never AZURE_CLIENT_ID: azd exports outputs to the shell, where azure-identity would pick it up.
    assert "AZURE_CLIENT_ID" not in outputs


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


def test_host_exports_opentelemetry_with_durable_distributed_tracing() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"
    assert host["extensions"]["durableTask"]["tracing"] == {"distributedTracingEnabled": True, "version": "V2"}
    settings = parse(ROOT / "infra/app/api.bicep")["variables"]["hostSettings"]["value"]
    assert settings["PYTHON_ENABLE_OPENTELEMETRY"] == "true"
    assert "Authorization=AAD" in settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]


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
