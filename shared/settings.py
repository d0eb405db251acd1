"""App configuration from environment variables (pydantic-settings).

Each field's environment variable is its name in upper case (``cooldown_minutes`` reads
``COOLDOWN_MINUTES``); the few platform-defined names are in ``_PLATFORM_NAMES``. Defaults
are safe: an empty ALLOWED_SCOPES allows nothing. A bad value fails at start-up with a
message naming the variable. An empty variable counts as unset (App Service and Bicep write
'' for a setting that has no value).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasGenerator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.domain.freeze import Window, parse_windows
from shared.domain.principal import parse_identity_map
from shared.domain.targets import TargetError, parse_scope


class SettingsError(RuntimeError):
    """A setting has a value the app cannot run with. The message names the setting."""


# Names the Functions platform defines (or that azure-identity reads), so they cannot follow
# the upper-snake rule. Everything else is the field name in upper case.
_PLATFORM_NAMES = {
    "storage_connection_string": "AzureWebJobsStorage",
    "table_service_uri": "AzureWebJobsStorage__tableServiceUri",
    "blob_service_uri": "AzureWebJobsStorage__blobServiceUri",
    "service_bus_namespace": "ServiceBusConnection__fullyQualifiedNamespace",
}


def env_name(field: str) -> str:
    """The environment variable a Settings field reads."""
    return _PLATFORM_NAMES.get(field, field.upper())


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# NCRONTAB fields: second, minute, hour, day, month, day of week (names allowed for the last two).
_CRON_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_CRON_FIELD = re.compile(r"^(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?$")


def _check_url(value: str, *, allow_path: bool) -> str:
    parts = urlsplit(value)
    local = parts.hostname in _LOOPBACK
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        raise ValueError("must be an https URL (http only for loopback stand-ins)")
    if not parts.hostname or parts.query or parts.fragment or (not allow_path and parts.path not in ("", "/")):
        raise ValueError("must be a bare origin such as https://management.azure.com")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/') if allow_path else ''}"


def _check_ncrontab(value: str) -> str:
    fields = value.split()
    if len(fields) != 6:
        raise ValueError("must be an NCRONTAB expression with six fields: "
                         "second minute hour day month day-of-week, e.g. '0 */1 * * * *'")
    for index, (text, (low, high)) in enumerate(zip(fields, _CRON_RANGES, strict=True)):
        for item in text.split(","):
            match = _CRON_FIELD.match(item)
            if not match or (index < 4 and re.search(r"[A-Za-z]", item)):
                raise ValueError(f"NCRONTAB field {text!r} is not valid")
            for number in re.findall(r"\d+", match.group(1)):
                if not low <= int(number) <= high:
                    raise ValueError(f"NCRONTAB field {text!r}: {number} is outside {low}-{high}")
            if match.group(3) and int(match.group(3)[1:]) == 0:
                raise ValueError(f"NCRONTAB field {text!r}: a step of 0")
    return " ".join(fields)


def _pairs(value: str) -> dict[str, str]:
    """A `key=value;key=value` connection string as a dict with lower-case keys."""
    out = {}
    for part in value.split(";"):
        if part.strip():
            key, sep, val = part.partition("=")
            if not sep or not key.strip():
                raise ValueError("must be a connection string of key=value pairs separated by ';'")
            out[key.strip().lower()] = val.strip()
    return out


Percent = Annotated[int, Field(ge=1, le=100)]
Minutes = Annotated[int, Field(ge=1, le=10080)]  # up to a week


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        case_sensitive=True,
        extra="ignore",
        frozen=True,
        env_ignore_empty=True,
        alias_generator=AliasGenerator(validation_alias=env_name),
    )

    # ARM
    arm_endpoint: str = "https://management.azure.com"
    compute_api_version: str = Field("2024-07-01", pattern=r"^\d{4}-\d{2}-\d{2}(-preview)?$")
    arm_timeout_seconds: float = Field(30, gt=0, le=300)
    azure_client_id: str | None = None
    # A target's model and instance list are read once per this many seconds, shared by every request that
    # needs them (shared/adapters/arm/reads.py); 0: concurrent reads are still shared, nothing is kept.
    preflight_cache_seconds: int = Field(5, ge=0, le=60)
    # Self-throttling: a poll or health read waits while a bucket it draws on has this many requests left or fewer
    # (ARM's read bucket: ten times this). shared/adapters/arm/quota.py
    arm_quota_low_water: int = Field(3, ge=0, le=100)
    default_subscription_id: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"
    )

    # Static policy
    allowed_scopes: Annotated[tuple[str, ...], NoDecode] = ()
    protect_tag: str = Field("reimager-protect=true", min_length=1)
    # A scale set whose automatic instance repairs are running: "refuse" (409 AutomaticRepairsActive; suspend them
    # first) or "allow" (reimage beside them). docs/operations.md "Automatic repairs"
    automatic_repairs: Literal["refuse", "allow"] = "refuse"
    max_instances_per_request: int = Field(10, ge=1, le=1000)
    cooldown_minutes: int = Field(30, ge=0, le=10080)  # 0: no cooldown

    # The durable timer loop
    poll_min_seconds: int = Field(1, ge=1)  # guards against an absurd Retry-After; ARM's own is followed
    poll_max_seconds: int = Field(120, ge=1)
    poll_default_seconds: int = Field(15, ge=1)
    operation_timeout_minutes: Minutes = 120
    submit_timeout_seconds: int = Field(300, ge=1, le=3600)
    # A claim's owner moves it to Submitting within this; after it, a same-key request may take the key over.
    claim_seconds: int = Field(30, ge=5, le=3600)
    polls_per_generation: int = Field(10, ge=2, le=1000)  # short histories: replay parses every event
    health_grace_minutes: int = Field(10, ge=0, le=10080)  # 0: no health verification

    # Coalescing, budgets, breaker, queue expiry
    max_batch_percent: Percent = 20
    batch_gather_seconds: int = Field(5, ge=0, le=300)  # a new batch waits this long for its storm to arrive
    fleet_budget_percent: Percent = 30
    fleet_window_minutes: Minutes = 60
    global_max_reimages_per_hour: int = Field(100, ge=1, le=100000)
    breaker_percent: Percent = 50
    breaker_failures: int = Field(3, ge=1, le=100)
    # The first batch of a storm on a scale set (and of an approved request) reimages this many instances and waits
    # for them to come back healthy before the rest go (shared/rules/canary.py); 0: no canary.
    canary_instances: int = Field(1, ge=0, le=1000)
    queue_max_wait_minutes: Minutes = 240
    sweep_schedule: str = "0 */1 * * * *"

    # Approvals and caller identity
    approval_above_instances: int = Field(5, ge=0, le=1000)  # 0: every request needs approval
    approval_timeout_minutes: Minutes = 60
    approval_allow_unverified: bool = False
    easy_auth_enabled: bool = False
    # JSON {"slack:<team>/<user>": "entra:<object id>"}: who is who across identity systems (shared/rules/four_eyes.py)
    approver_identity_map: str = ""

    # Freezes (shared/rules/freeze.py): windows in UTC, and the tag that freezes one target until a time
    freeze_windows: str = ""
    freeze_tag: str = Field("reimager-freeze", min_length=1)

    # Alerts: more machines than this in one alert are held for approval as one decision
    max_targets_per_alert: int = Field(10, ge=1, le=1000)
    slack_signing_secret: SecretStr | None = None
    teams_webhook_secret: SecretStr | None = None

    # Ledger (Table Storage): a connection string locally, the identity + table URI in Azure
    storage_connection_string: SecretStr | None = None
    table_service_uri: str | None = None
    ledger_table_prefix: str = Field("reimager", pattern=r"^[A-Za-z][A-Za-z0-9]{0,39}$")

    # Evidence before the wipe (shared/workflow/evidence.py): off, the serial console log and instance view
    # (bootdiagnostics), or those and an incremental snapshot of a managed OS disk (snapshot). Per request:
    # captureEvidence. Never delays the POST by more than EVIDENCE_TIMEOUT_SECONDS; kept EVIDENCE_RETENTION_DAYS.
    evidence: str = Field("bootdiagnostics", pattern=r"^(off|bootdiagnostics|snapshot)$")
    evidence_timeout_seconds: int = Field(60, ge=1, le=600)
    evidence_retention_days: int = Field(30, ge=1, le=3650)
    # Where evidence blobs go in Azure (the identity's); locally AzureWebJobsStorage's BlobEndpoint.
    blob_service_uri: str | None = None

    # Events
    requests_queue: str = Field("reimage-requests", min_length=1)
    events_topic: str = Field("reimage-events", min_length=1)
    service_bus_namespace: str | None = None
    events_file: Path = Path("events.jsonl")

    # Telemetry: OpenTelemetry to Application Insights only when this is set
    applicationinsights_connection_string: str | None = None

    @field_validator("arm_endpoint")
    @classmethod
    def _https_origin(cls, value: str) -> str:
        return _check_url(value, allow_path=False)

    @field_validator("table_service_uri", "blob_service_uri")
    @classmethod
    def _table_uri(cls, value: str | None) -> str | None:
        # Azurite's table endpoint carries the account in the path: http://127.0.0.1:10002/devstoreaccount1
        return None if value is None else _check_url(value, allow_path=True)

    @field_validator("allowed_scopes", mode="before")
    @classmethod
    def _split_scopes(cls, value: object) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        scopes = []
        for item in items:
            if str(item).strip():
                try:
                    scopes.append(parse_scope(str(item)))
                except TargetError as exc:
                    raise ValueError(str(exc)) from None
        return tuple(dict.fromkeys(scopes))

    @field_validator("protect_tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        if not re.match(r"^[^=<>%&\\?/]{1,512}(=[^=]{0,256})?$", value):
            raise ValueError("must be a tag name, or name=value")
        return value

    @field_validator("freeze_tag")
    @classmethod
    def _freeze_tag(cls, value: str) -> str:
        if not re.match(r"^[^=<>%&\\?/]{1,512}$", value):
            raise ValueError("must be a tag name")
        return value

    @field_validator("freeze_windows")
    @classmethod
    def _freeze_windows(cls, value: str) -> str:
        parse_windows(value)
        return value

    @field_validator("approver_identity_map")
    @classmethod
    def _identity_map(cls, value: str) -> str:
        parse_identity_map(value)
        return value

    @field_validator("sweep_schedule")
    @classmethod
    def _ncrontab(cls, value: str) -> str:
        return _check_ncrontab(value)

    @field_validator("storage_connection_string")
    @classmethod
    def _storage_connection(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never echoes the value: it holds an account key.
        if value is not None:
            pairs = _pairs(value.get_secret_value())
            if pairs.get("usedevelopmentstorage") != "true" and not (
                {"accountname", "tableendpoint"} & pairs.keys()
            ):
                raise ValueError("must be UseDevelopmentStorage=true or a storage connection string "
                                 "with AccountName or TableEndpoint")
        return value

    @field_validator("applicationinsights_connection_string")
    @classmethod
    def _appinsights(cls, value: str | None) -> str | None:
        if value is not None and not _pairs(value).get("instrumentationkey"):
            raise ValueError("must be an Application Insights connection string (InstrumentationKey=...)")
        return value

    @field_validator("slack_signing_secret", "teams_webhook_secret", "azure_client_id",
                     "service_bus_namespace", "default_subscription_id", "table_service_uri", "blob_service_uri",
                     "storage_connection_string", "applicationinsights_connection_string", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Settings(KEY="") from devhost overrides behaves like an empty environment variable.
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value

    @field_validator("teams_webhook_secret")
    @classmethod
    def _teams_token(cls, value: SecretStr | None) -> SecretStr | None:
        # Teams shows the outgoing webhook's security token in base64; its decoded bytes are the HMAC key.
        # The message never echoes the value.
        if value is not None:
            import base64
            import binascii

            try:
                base64.b64decode(value.get_secret_value().strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("must be the base64 security token Teams showed when the outgoing webhook "
                                 "was created") from None
        return value

    @model_validator(mode="after")
    def _poll_bounds(self) -> Settings:
        if not self.poll_min_seconds <= self.poll_default_seconds <= self.poll_max_seconds:
            raise ValueError(
                "POLL_MIN_SECONDS <= POLL_DEFAULT_SECONDS <= POLL_MAX_SECONDS must hold"
            )
        return self

    @property
    def freeze_schedule(self) -> tuple[Window, ...]:
        return parse_windows(self.freeze_windows)

    @property
    def approver_aliases(self) -> dict[str, frozenset[str]]:
        return parse_identity_map(self.approver_identity_map)

    @property
    def protect_tag_name(self) -> str:
        return self.protect_tag.split("=", 1)[0]

    @property
    def protect_tag_value(self) -> str:
        return self.protect_tag.split("=", 1)[1] if "=" in self.protect_tag else "true"


def setting_names() -> list[str]:
    """Every environment variable the app reads, in declaration order (derived from the model)."""
    return [env_name(name) for name in Settings.model_fields]


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (and `overrides`, by env name, which win); a bad value raises
    SettingsError naming it, and so does an override that names no setting."""
    unknown = sorted(set(overrides) - set(setting_names()))
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid app settings: " + "; ".join(problems)) from None
