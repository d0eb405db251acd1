"""App configuration from environment variables (pydantic-settings).

Defaults are safe: an empty ALLOWED_SCOPES allows nothing. A bad value fails at start-up
with a message naming the setting.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.targets import TargetError, parse_scope


class SettingsError(RuntimeError):
    """A setting has a value the app cannot run with. The message names the setting."""


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    arm_endpoint: str = Field("https://management.azure.com", validation_alias=_env("ARM_ENDPOINT"))
    compute_api_version: str = Field(
        "2024-07-01", validation_alias=_env("COMPUTE_API_VERSION"), pattern=r"^\d{4}-\d{2}-\d{2}(-preview)?$"
    )
    allowed_scopes: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=_env("ALLOWED_SCOPES")
    )
    protect_tag: str = Field("reimager-protect=true", validation_alias=_env("PROTECT_TAG"), min_length=1)
    max_instances_per_request: int = Field(
        10, validation_alias=_env("MAX_INSTANCES_PER_REQUEST"), ge=1, le=1000
    )
    cooldown_minutes: int = Field(30, validation_alias=_env("COOLDOWN_MINUTES"), ge=0, le=10080)
    poll_min_seconds: int = Field(5, validation_alias=_env("POLL_MIN_SECONDS"), ge=1)
    poll_max_seconds: int = Field(120, validation_alias=_env("POLL_MAX_SECONDS"), ge=1)
    poll_default_seconds: int = Field(15, validation_alias=_env("POLL_DEFAULT_SECONDS"), ge=1)
    operation_timeout_minutes: int = Field(
        120, validation_alias=_env("OPERATION_TIMEOUT_MINUTES"), ge=1, le=10080
    )
    submit_timeout_seconds: int = Field(
        300, validation_alias=_env("SUBMIT_TIMEOUT_SECONDS"), ge=1, le=3600
    )
    polls_per_generation: int = Field(
        50, validation_alias=_env("POLLS_PER_GENERATION"), ge=2, le=1000
    )
    arm_timeout_seconds: float = Field(30, validation_alias=_env("ARM_TIMEOUT_SECONDS"), gt=0, le=300)
    requests_queue: str = Field("reimage-requests", validation_alias=_env("REQUESTS_QUEUE"), min_length=1)
    events_topic: str = Field("reimage-events", validation_alias=_env("EVENTS_TOPIC"), min_length=1)
    service_bus_namespace: str | None = Field(
        None, validation_alias=_env("ServiceBusConnection__fullyQualifiedNamespace")
    )
    azure_client_id: str | None = Field(None, validation_alias=_env("AZURE_CLIENT_ID"))
    events_file: Path = Field(Path("events.jsonl"), validation_alias=_env("EVENTS_FILE"))
    default_subscription_id: str | None = Field(
        None,
        validation_alias=_env("DEFAULT_SUBSCRIPTION_ID"),
        pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$",
    )

    @field_validator("arm_endpoint")
    @classmethod
    def _https_origin(cls, value: str) -> str:
        parts = urlsplit(value)
        local = parts.hostname in {"127.0.0.1", "localhost", "::1"}
        if parts.scheme != "https" and not (parts.scheme == "http" and local):
            raise ValueError("must be an https URL (http only for loopback stand-ins)")
        if not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ValueError("must be a bare origin such as https://management.azure.com")
        return f"{parts.scheme}://{parts.netloc}"

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

    @model_validator(mode="after")
    def _poll_bounds(self) -> Settings:
        if not self.poll_min_seconds <= self.poll_default_seconds <= self.poll_max_seconds:
            raise ValueError(
                "POLL_MIN_SECONDS <= POLL_DEFAULT_SECONDS <= POLL_MAX_SECONDS must hold"
            )
        return self

    @property
    def arm_host(self) -> str:
        return urlsplit(self.arm_endpoint).netloc.lower()

    @property
    def protect_tag_name(self) -> str:
        return self.protect_tag.split("=", 1)[0]

    @property
    def protect_tag_value(self) -> str:
        return self.protect_tag.split("=", 1)[1] if "=" in self.protect_tag else "true"


def load_settings() -> Settings:
    """Read settings from the environment; a bad value raises SettingsError naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid app settings: " + "; ".join(problems)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings for this process, read once. Tests and devhost call cache_clear()."""
    return load_settings()
