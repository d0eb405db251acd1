import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import Settings, SettingsError, load_settings, setting_names
from tests.helpers import SUB

# The exact environment variable names operators and infra/main.bicep use. Renaming one breaks
# every deployment that sets it, so this list is written out rather than derived.
EXPECTED_NAMES = [
    "ARM_ENDPOINT", "COMPUTE_API_VERSION", "ARM_TIMEOUT_SECONDS", "AZURE_CLIENT_ID", "PREFLIGHT_CACHE_SECONDS",
    "ARM_QUOTA_LOW_WATER", "DEFAULT_SUBSCRIPTION_ID",
    "ALLOWED_SCOPES", "PROTECT_TAG", "AUTOMATIC_REPAIRS", "MAX_INSTANCES_PER_REQUEST", "COOLDOWN_MINUTES",
    "POLL_MIN_SECONDS", "POLL_MAX_SECONDS", "POLL_DEFAULT_SECONDS", "OPERATION_TIMEOUT_MINUTES",
    "SUBMIT_TIMEOUT_SECONDS", "CLAIM_SECONDS", "POLLS_PER_GENERATION",
    "HEALTH_GRACE_MINUTES",
    "MAX_BATCH_PERCENT", "BATCH_GATHER_SECONDS", "FLEET_BUDGET_PERCENT", "FLEET_WINDOW_MINUTES",
    "GLOBAL_MAX_REIMAGES_PER_HOUR",
    "BREAKER_PERCENT", "BREAKER_FAILURES", "CANARY_INSTANCES", "QUEUE_MAX_WAIT_MINUTES", "SWEEP_SCHEDULE",
    "APPROVAL_ABOVE_INSTANCES", "APPROVAL_TIMEOUT_MINUTES", "APPROVAL_ALLOW_UNVERIFIED", "EASY_AUTH_ENABLED",
    "APPROVER_IDENTITY_MAP", "FREEZE_WINDOWS", "FREEZE_TAG", "MAX_TARGETS_PER_ALERT",
    "SLACK_SIGNING_SECRET", "TEAMS_WEBHOOK_SECRET",
    "AzureWebJobsStorage", "AzureWebJobsStorage__tableServiceUri", "LEDGER_TABLE_PREFIX",
    "EVIDENCE", "EVIDENCE_TIMEOUT_SECONDS", "EVIDENCE_RETENTION_DAYS", "AzureWebJobsStorage__blobServiceUri",
    "REQUESTS_QUEUE", "EVENTS_TOPIC", "ServiceBusConnection__fullyQualifiedNamespace", "EVENTS_FILE",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
]

DEFAULTS = {
    "max_batch_percent": 20, "fleet_budget_percent": 30, "fleet_window_minutes": 60,
    "global_max_reimages_per_hour": 100, "breaker_percent": 50, "breaker_failures": 3,
    "queue_max_wait_minutes": 240, "health_grace_minutes": 10, "approval_above_instances": 5,
    "approval_timeout_minutes": 60, "approval_allow_unverified": False, "easy_auth_enabled": False,
    "slack_signing_secret": None, "teams_webhook_secret": None, "sweep_schedule": "0 */1 * * * *",
    "storage_connection_string": None, "table_service_uri": None, "ledger_table_prefix": "reimager",
    "applicationinsights_connection_string": None, "submit_timeout_seconds": 300,
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)


def test_env_names_are_exactly_the_documented_ones() -> None:
    assert setting_names() == EXPECTED_NAMES


def test_defaults_allow_nothing() -> None:
    s = load_settings()
    assert s.allowed_scopes == ()
    assert s.arm_endpoint == "https://management.azure.com"
    assert s.protect_tag_name == "reimager-protect"


def test_defaults_of_the_fleet_and_approval_settings() -> None:
    s = load_settings()
    assert {name: getattr(s, name) for name in DEFAULTS} == DEFAULTS


def test_platform_names_are_read_as_the_platform_spells_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("AzureWebJobsStorage__tableServiceUri", "https://acct.table.core.windows.net/")
    monkeypatch.setenv("ServiceBusConnection__fullyQualifiedNamespace", "sb.servicebus.windows.net")
    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555")
    monkeypatch.setenv("AZUREWEBJOBSSTORAGE", "ignored: names are case-sensitive")
    s = load_settings()
    assert s.storage_connection_string is not None
    assert s.storage_connection_string.get_secret_value() == "UseDevelopmentStorage=true"
    assert s.table_service_uri == "https://acct.table.core.windows.net"
    assert s.service_bus_namespace == "sb.servicebus.windows.net"
    assert s.azure_client_id == "11111111-2222-3333-4444-555555555555"


def test_every_setting_can_be_given_by_its_env_name_to_the_constructor() -> None:
    # devhost and tests build Settings(**{ENV_NAME: value}); an unknown keyword is ignored, so
    # a wrong name would silently keep the default: check a non-default value lands.
    s = Settings(**{"LEDGER_TABLE_PREFIX": "fleet2", "BREAKER_FAILURES": "7",  # type: ignore[arg-type]
                    "AzureWebJobsStorage__tableServiceUri": "http://127.0.0.1:10002/devstoreaccount1"})
    assert (s.ledger_table_prefix, s.breaker_failures) == ("fleet2", 7)
    assert s.table_service_uri == "http://127.0.0.1:10002/devstoreaccount1"


def test_scopes_are_split_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_SCOPES", f" /subscriptions/{SUB.upper()} ,, /subscriptions/{SUB}/resourcegroups/RG ")
    assert load_settings().allowed_scopes == (f"/subscriptions/{SUB}", f"/subscriptions/{SUB}/resourcegroups/rg")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ALLOWED_SCOPES", "/subscriptions/nope"),
        ("MAX_INSTANCES_PER_REQUEST", "0"),
        ("COOLDOWN_MINUTES", "soon"),
        ("ARM_ENDPOINT", "http://management.azure.com"),
        ("ARM_ENDPOINT", "https://management.azure.com/some/path"),
        ("MAX_BATCH_PERCENT", "0"),
        ("MAX_BATCH_PERCENT", "101"),
        ("FLEET_BUDGET_PERCENT", "0"),
        ("BREAKER_PERCENT", "150"),
        ("FLEET_WINDOW_MINUTES", "0"),
        ("GLOBAL_MAX_REIMAGES_PER_HOUR", "0"),
        ("BREAKER_FAILURES", "0"),
        ("QUEUE_MAX_WAIT_MINUTES", "0"),
        ("HEALTH_GRACE_MINUTES", "-1"),
        ("APPROVAL_ABOVE_INSTANCES", "-1"),
        ("APPROVAL_TIMEOUT_MINUTES", "0"),
        ("APPROVAL_ALLOW_UNVERIFIED", "maybe"),
        ("EASY_AUTH_ENABLED", "perhaps"),
        ("LEDGER_TABLE_PREFIX", "re-imager"),
        ("LEDGER_TABLE_PREFIX", "1reimager"),
        ("SWEEP_SCHEDULE", "*/5 * * * *"),  # five fields: Unix cron, not NCRONTAB
        ("SWEEP_SCHEDULE", "0 61 * * * *"),
        ("SWEEP_SCHEDULE", "0 */0 * * * *"),
        ("SWEEP_SCHEDULE", "0 Mon * * * *"),
        ("AzureWebJobsStorage__tableServiceUri", "http://acct.table.core.windows.net"),
        ("AzureWebJobsStorage__tableServiceUri", "https://acct.table.core.windows.net?sig=x"),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", "IngestionEndpoint=https://x"),
        ("SUBMIT_TIMEOUT_SECONDS", "0"),
        ("CLAIM_SECONDS", "4"),
    ],
)
def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


@pytest.mark.parametrize("value", ["0 */1 * * * *", "0 0 */6 * * *", "30 5 9-17 * Jan-Jun Mon-Fri", "0 0,30 * 1 * 0"])
def test_ncrontab_schedules_that_the_timer_trigger_accepts(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SWEEP_SCHEDULE", value)
    assert load_settings().sweep_schedule == value


def test_zero_means_off_only_where_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COOLDOWN_MINUTES", "0")
    monkeypatch.setenv("APPROVAL_ABOVE_INSTANCES", "0")
    s = load_settings()
    assert (s.cooldown_minutes, s.approval_above_instances) == (0, 0)


def test_secrets_stay_out_of_errors_and_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", "NotAKey=Hunter2Secret")
    with pytest.raises(SettingsError, match="AzureWebJobsStorage") as err:
        load_settings()
    assert "Hunter2Secret" not in str(err.value)
    monkeypatch.setenv("AzureWebJobsStorage", "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Hunter2Secret")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "slack-Hunter2Secret")
    monkeypatch.setenv("TEAMS_WEBHOOK_SECRET", "teams-Hunter2Secret")  # not base64, as Teams' token is
    with pytest.raises(SettingsError, match="TEAMS_WEBHOOK_SECRET") as err:
        load_settings()
    assert "Hunter2Secret" not in str(err.value)
    monkeypatch.setenv("TEAMS_WEBHOOK_SECRET", "teamsHunter2Secret==")
    s = load_settings()
    assert "Hunter2Secret" not in repr(s) and "Hunter2Secret" not in str(s.model_dump())
    assert s.slack_signing_secret is not None and s.slack_signing_secret.get_secret_value() == "slack-Hunter2Secret"


def test_empty_values_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # App Service / Bicep write '' for a secret or namespace that is not configured.
    for name in ("SLACK_SIGNING_SECRET", "ServiceBusConnection__fullyQualifiedNamespace",
                 "AzureWebJobsStorage", "APPLICATIONINSIGHTS_CONNECTION_STRING", "MAX_BATCH_PERCENT"):
        monkeypatch.setenv(name, "")
    s = load_settings()
    assert s.slack_signing_secret is None and s.service_bus_namespace is None
    assert s.storage_connection_string is None and s.applicationinsights_connection_string is None
    assert s.max_batch_percent == 20
    assert Settings(**{"TEAMS_WEBHOOK_SECRET": ""}).teams_webhook_secret is None  # type: ignore[arg-type]


def test_poll_bounds_must_be_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLL_MIN_SECONDS", "30")
    monkeypatch.setenv("POLL_DEFAULT_SECONDS", "10")
    with pytest.raises(SettingsError, match="POLL_MIN_SECONDS"):
        load_settings()


def test_http_allowed_only_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARM_ENDPOINT", "http://127.0.0.1:8080")
    s = load_settings()
    assert s.arm_endpoint == "http://127.0.0.1:8080"


def test_loading_settings_imports_nothing_heavy() -> None:
    # Cold start: settings are read on every worker start; telemetry and SDK clients load lazily.
    code = ("import sys, shared.settings; shared.settings.load_settings(); "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for heavy in ("opentelemetry", "azure", "aiohttp"):
        assert f"'{heavy}'" not in out


ROOT = Path(__file__).resolve().parents[2]


def _default_as_env(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def test_deploy_doc_lists_every_setting_with_its_default() -> None:
    doc = (ROOT / "docs/deploy.md").read_text()
    rows = re.findall(r"^\| `([A-Za-z_]+)` \| [^`|][^|]* \| ([^|]*) \| [^|]* \|$", doc, re.MULTILINE)
    assert [name for name, _ in rows] == EXPECTED_NAMES
    for (name, default), field in zip(rows, Settings.model_fields.values(), strict=True):
        shown = default.strip()
        expected = _default_as_env(field.default)
        assert shown == (f"`{expected}`" if expected else shown), name
        assert expected or not shown.startswith("`"), name


def test_local_settings_example_lists_every_setting_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    assert set(setting_names()) <= set(values)
    for name in setting_names():
        monkeypatch.setenv(name, values[name])
    s = load_settings()
    site_specific = {"ALLOWED_SCOPES", "DEFAULT_SUBSCRIPTION_ID", "AzureWebJobsStorage"}
    for field, name in zip(Settings.model_fields, setting_names(), strict=True):
        if name not in site_specific:
            assert getattr(s, field) == Settings.model_fields[field].default, name
