"""Settings: defaults, REFINERY_* environment, and init values (flags) winning over both."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REFINERY_PORT", "REFINERY_API_KEYS", "REFINERY_CACHE", "REFINERY_HOST",
                 "REFINERY_DRAIN_TIMEOUT", "REFINERY_SERVED_MODEL_NAME", "REFINERY_MODEL"):
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = Settings()
    assert settings.port == 8000
    assert settings.api_keys == []
    assert settings.drain_timeout == 30
    assert settings.cache_dir == Path.home() / ".cache" / "refinery"
    assert settings.model is None


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFINERY_PORT", "9001")
    monkeypatch.setenv("REFINERY_API_KEYS", " a , b,")
    monkeypatch.setenv("REFINERY_CACHE", "/tmp/somewhere")
    monkeypatch.setenv("REFINERY_DRAIN_TIMEOUT", "5")
    settings = Settings()
    assert settings.port == 9001
    assert settings.api_keys == ["a", "b"]
    assert settings.cache_dir == Path("/tmp/somewhere")
    assert settings.drain_timeout == 5


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFINERY_PORT", "9001")
    monkeypatch.setenv("REFINERY_API_KEYS", "env")
    settings = Settings(port=9002, api_keys=["flag"], cache_dir="/x")
    assert settings.port == 9002
    assert settings.api_keys == ["flag"]
    assert settings.cache_dir == Path("/x")


@pytest.mark.parametrize(("name", "value"), [("REFINERY_PORT", "0"), ("REFINERY_PORT", "70000"),
                                             ("REFINERY_DRAIN_TIMEOUT", "-1")])
def test_out_of_range_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(("name", "value"), [
    ("REFINERY_MAX_OUTSTANDING_SEQUENCES", "0"), ("REFINERY_QUEUE_FACTOR", "0"),
    ("REFINERY_MAX_STRATEGY_TOKENS", "0"), ("REFINERY_REQUEST_TIMEOUT", "0"),
    ("REFINERY_MAX_BODY_BYTES", "100"), ("REFINERY_MAX_MESSAGES", "0"),
])
def test_admission_and_cap_settings_refuse_out_of_range_values(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_admission_and_cap_defaults() -> None:
    settings = Settings()
    assert settings.max_outstanding_sequences is None  # derived from the engine's max_num_seqs
    assert settings.queue_factor == 2.0
    assert settings.request_timeout == 600
    assert settings.max_body_bytes == 32 * 2**20
    assert settings.max_messages == 2048
    assert settings.max_strategy_tokens == 2**20
    assert settings.metrics_auth is False and settings.api_keys_file is None
