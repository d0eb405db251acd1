import pytest

from shared.settings import SettingsError, load_settings
from tests.helpers import SUB


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ALLOWED_SCOPES", "POLL_MIN_SECONDS", "POLL_MAX_SECONDS", "POLL_DEFAULT_SECONDS",
                 "ARM_ENDPOINT", "MAX_INSTANCES_PER_REQUEST", "COOLDOWN_MINUTES"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_allow_nothing() -> None:
    s = load_settings()
    assert s.allowed_scopes == ()
    assert s.arm_endpoint == "https://management.azure.com"
    assert s.protect_tag_name == "reimager-protect"


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
    ],
)
def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_poll_bounds_must_be_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLL_MIN_SECONDS", "30")
    monkeypatch.setenv("POLL_DEFAULT_SECONDS", "10")
    with pytest.raises(SettingsError, match="POLL_MIN_SECONDS"):
        load_settings()


def test_http_allowed_only_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARM_ENDPOINT", "http://127.0.0.1:8080")
    s = load_settings()
    assert s.arm_endpoint == "http://127.0.0.1:8080"
    assert s.arm_host == "127.0.0.1:8080"
