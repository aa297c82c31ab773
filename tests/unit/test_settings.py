"""Settings: environment parsing, validation that names every bad variable, masking, URL guard."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from config.errors import ConfigError
from config.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Given no FLUXQ_* variables and no .env from the developer's shell leak into a test
    import os

    for name in list(os.environ):
        if name.startswith("FLUXQ_") or name == "BFL_API_KEY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_match_the_documented_bfl_caps_and_host() -> None:
    settings = load_settings()
    assert settings.bfl_base_url == "https://api.bfl.ai"
    assert settings.active_cap == 24
    assert settings.cap_for("flux-kontext-max") == 6
    assert settings.cap_for("flux-pro-1.1") is None
    assert settings.redis_url is None
    assert settings.bfl_api_key is None


def test_the_api_key_is_read_from_bfl_api_key_and_is_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BFL_API_KEY", "key-123")
    settings = load_settings()
    assert isinstance(settings.bfl_api_key, SecretStr)
    assert settings.bfl_api_key.get_secret_value() == "key-123"
    assert "key-123" not in repr(settings)
    assert "key-123" not in str(settings.masked())


def test_fluxq_variables_and_a_dotenv_file_are_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("FLUXQ_ACTIVE_CAP=12\nFLUXQ_OUTPUT_DIR=/tmp/images\n")
    monkeypatch.setenv("FLUXQ_ENDPOINT_CAPS", "flux-kontext-max=3, flux-2-max=10")
    settings = load_settings()
    assert settings.active_cap == 12
    assert settings.output_dir == Path("/tmp/images")
    assert settings.endpoint_caps == {"flux-kontext-max": 3, "flux-2-max": 10}


def test_every_bad_variable_is_named_in_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given three bad variables
    monkeypatch.setenv("FLUXQ_ACTIVE_CAP", "0")
    monkeypatch.setenv("FLUXQ_BFL_BASE_URL", "ftp://example")
    monkeypatch.setenv("FLUXQ_ENDPOINT_CAPS", "flux-kontext-max")
    # When settings load, Then one ConfigError names all three
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    for name in ("FLUXQ_ACTIVE_CAP", "FLUXQ_BFL_BASE_URL", "FLUXQ_ENDPOINT_CAPS"):
        assert name in message


def test_a_malformed_allowed_url_pattern_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXQ_ALLOWED_URLS", "https://*.bfl.ai,bfl.ai")
    with pytest.raises(ConfigError, match="FLUXQ_ALLOWED_URLS"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.bfl.ai/v1/get_result?id=1", True),
        ("https://api.eu2.bfl.ai/v1/get_result?id=1", True),
        ("https://delivery-eu1.bfl.ai/results/x.jpeg?sig=1", True),
        ("https://delivery.us.bfl.ai/x.png", True),
        ("https://api.bfl.ml/v1/get_result?id=1", True),
        ("http://api.bfl.ai/v1/get_result?id=1", False),
        ("https://bfl.ai.evil.example/v1/get_result", False),
        ("https://evilbfl.ai/x", False),
        ("https://169.254.169.254/latest/meta-data", False),
        ("file:///etc/passwd", False),
        ("not a url", False),
    ],
)
def test_only_https_bfl_hosts_are_allowed_by_default(url: str, allowed: bool) -> None:
    assert Settings().url_allowed(url) is allowed


def test_the_base_url_host_is_always_allowed_and_patterns_may_name_ports() -> None:
    settings = Settings(bfl_base_url="http://127.0.0.1:8080", allowed_urls=["http://127.0.0.2:*"])
    assert settings.url_allowed("http://127.0.0.1:8080/v1/get_result?id=1")
    assert settings.url_allowed("http://127.0.0.2:9999/v1/get_result?id=1")
    assert not settings.url_allowed("http://127.0.0.1:8081/v1/get_result?id=1")
    assert not settings.url_allowed("https://127.0.0.2:9999/")
