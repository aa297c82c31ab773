"""Settings: environment parsing, validation that names every bad variable, masking, URL guard."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from fluxq.config.errors import ConfigError
from fluxq.config.settings import Settings, load_settings


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


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("bfl-key-0123456789\n", "newline or space"),
        ("bfl-key-0123456789 ", "newline or space"),
        (" bfl-key-0123456789", "newline or space"),
        ("bfl-key 0123456789", "newline or space"),
        ("bfl-key-0123456789\r\n", "newline or space"),
        ("bfl-key-\t0123456789", "newline or space"),
        ("bfl-key-\x000123456789", "control character"),
        ("bfl-key-\x7f0123456789", "control character"),
        ("bfl-key-0123456789é", "non-ASCII"),
    ],
)
def test_an_api_key_that_cannot_go_in_a_header_is_refused_without_showing_it(
    value: str, what: str
) -> None:
    # Given a key with a stray newline, space, control or non-ASCII character
    # When settings load, Then the error names BFL_API_KEY and what is wrong, never the key
    with pytest.raises(ConfigError) as caught:
        load_settings(bfl_api_key=value)
    message = str(caught.value)
    assert "  BFL_API_KEY: " in message
    assert "FLUXQ_BFL_API_KEY" not in message
    assert what in message
    assert "0123456789" not in message


def test_an_api_key_exported_with_a_trailing_newline_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given BFL_API_KEY="$(cat key.txt)" style exports that kept the file's newline
    monkeypatch.setenv("BFL_API_KEY", "bfl-key-0123456789\n")
    with pytest.raises(ConfigError, match=r"BFL_API_KEY: .*contains a newline or space") as caught:
        load_settings()
    assert "0123456789" not in str(caught.value)


def test_a_webhook_secret_that_cannot_go_in_a_header_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(webhook_secret="hook-secret-0123456789\n")
    message = str(caught.value)
    assert "FLUXQ_WEBHOOK_SECRET" in message
    assert "newline or space" in message
    assert "0123456789" not in message


def test_a_clean_key_and_secret_still_load() -> None:
    settings = load_settings(bfl_api_key="a1b2-C3D4_e5.f6~g7", webhook_secret="s3cr3t!#$%&*+/=?^")
    assert settings.bfl_api_key is not None
    assert settings.bfl_api_key.get_secret_value() == "a1b2-C3D4_e5.f6~g7"


NASTY_URLS: list[object] = [
    "http://[::1",
    "https://[::1",
    "https://[",
    "https://]",
    "https://host:99999/x",
    "https://api.bfl.ai:99999/x",
    "https://api.bfl.ai:-1/x",
    "https://api.bfl.ai:/x",
    "http://exa mple.com",
    "https://exa mple.bfl.ai/x",
    "https://api.bfl.ai\x00.evil.example/",
    "https://evil.example\\@api.bfl.ai/",
    "https://evil.example#@api.bfl.ai/",
    "https://user:pw@api.bfl.ai/",
    "https://evil.example%2f.bfl.ai/",
    "https://%61pi.bfl.ai/",
    "https://api.bfl.ai" + "/a" * 2500,
    "x" * 5000,
    "",
    "https://",
    "://",
    None,
    5,
    b"https://api.bfl.ai/",
    ["https://api.bfl.ai/"],
]


@pytest.mark.parametrize("url", NASTY_URLS, ids=lambda u: repr(u)[:40])
def test_url_allowed_answers_false_and_never_raises_for_nasty_input(url: object) -> None:
    assert Settings().url_allowed(url) is False  # type: ignore[arg-type]


@given(st.one_of(st.text(), st.text().map(lambda s: "https://" + s + ".bfl.ai/x")))
def test_url_allowed_never_raises_for_any_string(url: str) -> None:
    assert Settings().url_allowed(url) in (True, False)


def test_a_lease_shorter_than_one_http_call_is_refused_naming_the_sum() -> None:
    # Given the default timeouts (10 + 30 + 30 + 10 = 80 s), a 60 s lease cannot cover a POST
    with pytest.raises(ConfigError) as caught:
        load_settings(lease_ttl_s=60)
    message = str(caught.value)
    assert "FLUXQ_LEASE_TTL_S" in message
    assert "80" in message
    with pytest.raises(ConfigError, match="FLUXQ_LEASE_TTL_S"):
        load_settings(lease_ttl_s=80)


def test_a_short_lease_is_fine_with_short_timeouts_and_the_defaults_validate() -> None:
    assert load_settings().lease_ttl_s == 120
    settings = load_settings(
        lease_ttl_s=5,
        http_connect_timeout_s=1,
        http_read_timeout_s=1.5,
        http_write_timeout_s=1,
        http_pool_timeout_s=0.5,
    )
    assert settings.lease_ttl_s == 5
    with pytest.raises(ValidationError, match="FLUXQ_LEASE_TTL_S"):
        settings.with_overrides(http_read_timeout_s=30)


def test_download_limits_have_safe_defaults_and_read_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = load_settings()
    assert defaults.download_max_bytes == 64 * 1024 * 1024
    assert defaults.download_deadline_s == 60
    monkeypatch.setenv("FLUXQ_DOWNLOAD_MAX_BYTES", "1048576")
    monkeypatch.setenv("FLUXQ_DOWNLOAD_DEADLINE_S", "5")
    settings = load_settings()
    assert (settings.download_max_bytes, settings.download_deadline_s) == (1_048_576, 5)


def test_an_empty_secret_is_unset_never_a_token_an_empty_header_matches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given FLUXQ_API_TOKEN= and BFL_API_KEY= set but empty (a copied .env.example, say)
    monkeypatch.setenv("FLUXQ_API_TOKEN", "")
    monkeypatch.setenv("BFL_API_KEY", "")
    settings = load_settings()
    # Then both are unset: `fluxq api` stays on loopback, and no empty bearer token matches
    assert settings.api_token is None
    assert settings.bfl_api_key is None
    assert load_settings(api_token="").api_token is None


def test_webhook_mode_needs_a_long_secret_and_a_plain_base_url() -> None:
    with pytest.raises(ConfigError, match="FLUXQ_BFL_WEBHOOK_SECRET"):
        load_settings(bfl_webhook_base_url="https://fluxq.example.com")
    with pytest.raises(ConfigError, match="FLUXQ_BFL_WEBHOOK_SECRET"):
        load_settings(bfl_webhook_base_url="https://fluxq.example.com", bfl_webhook_secret="short")
    with pytest.raises(ConfigError, match="no user, password or query"):
        load_settings(bfl_webhook_base_url="https://u:p@x.example.com", bfl_webhook_secret="s" * 20)
    settings = load_settings(
        bfl_webhook_base_url="https://x.example.com/", bfl_webhook_secret="s" * 20
    )
    assert settings.bfl_webhook_mode
    assert settings.bfl_webhook_base_url == "https://x.example.com"
    assert not load_settings().bfl_webhook_mode
