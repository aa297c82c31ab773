"""SimConfig: every knob of the BFL simulator, with its unit and whether time_scale applies.

Frozen and validated; ``POST /sim/config`` swaps in a patched copy while the simulator runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from fluxq.simulator.latency import Latency, check_latency_keys

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
"""A probability per request, 0 (never) to 1 (always)."""

DEFAULT_GROUP_CAPS = {"flux-kontext-max": 6, "flux-3-video": 5}
"""Nested caps inside ``active_cap``, keyed by the catalog's ``cap_group`` (help centre, 2025; FLUX
3 video's reference: 5 active generations, counted inside the 24 here: UNCONFIRMED)."""


class SimConfig(BaseModel):
    """The simulator's behaviour. Model seconds (``*_s`` marked "scaled") are multiplied by
    ``time_scale``; wall-clock seconds are not, because clients measure them with real clocks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Accounts and billing.
    allowed_keys: tuple[SecretStr, ...] | None = Field(
        default=None, description="When set, only these x-key values are accepted; others get 403."
    )
    initial_credits: float = Field(
        default=1_000_000.0, ge=0, description="Balance of each new account, in credits."
    )
    reject_unknown_fields: bool = Field(
        default=False, description="422 on unknown body fields (BFL probably ignores them)."
    )

    # The active-task cap.
    active_cap: int = Field(
        default=24, ge=1, description="Active (non-terminal) tasks per account."
    )
    group_caps: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_GROUP_CAPS),
        description="Nested caps per catalog cap_group, counted inside active_cap.",
    )
    retry_after_s: int | None = Field(
        default=None, ge=0, description="Retry-After header on 429s (wall-clock); None: no header."
    )
    phantom_429_rate: Rate = Field(
        default=0.0,
        description="429s despite free capacity, as when another client shares the key.",
    )

    # Timing.
    time_scale: float = Field(
        default=1.0,
        gt=0,
        description="Multiplies every model duration: 0.01 runs a 5 s model in 50 ms.",
    )
    latency: dict[str, Latency] = Field(
        default_factory=dict,
        description="Per-endpoint latency (model seconds, scaled); key 'default' for the rest.",
    )
    latency_seed: int | None = Field(
        default=None,
        description="When set, a task's duration depends only on (seed, endpoint, prompt): "
        "benchmarks give every client the same per-job latencies. None: drawn from rng_seed.",
    )
    not_found_after_submit_s: float = Field(
        default=0.0, ge=0, description="'Task not found' for this long after submit (scaled)."
    )
    retention_s: float = Field(
        default=1800.0,
        gt=0,
        description="Results stay pollable this long after they are ready (wall-clock), then "
        "'Task not found' (BFL's SDK caches polling URLs for 30 min).",
    )
    report_progress: bool = Field(default=True, description="Pending answers carry progress 0..1.")

    # Outcomes, decided at submit.
    error_rate: Rate = Field(default=0.0, description="Share of tasks that end in 'Error'.")
    content_moderated_rate: Rate = Field(
        default=0.0, description="Share of tasks that end in 'Content Moderated'."
    )
    request_moderation_regex: str | None = Field(
        default=r"\[request-moderated\]", description="Prompts matching it are 'Request Moderated'."
    )
    content_moderation_regex: str | None = Field(
        default=r"\[content-moderated\]", description="Prompts matching it end 'Content Moderated'."
    )
    error_regex: str | None = Field(
        default=r"\[error\]", description="Prompts matching it end in 'Error'."
    )
    request_moderation_reasons: tuple[str, ...] = ("Derivative Works Filter",)
    content_moderation_reasons: tuple[str, ...] = ("NSFW",)

    # Hosts and responses.
    strict_polling_host: bool = Field(
        default=True, description="The API host answers 'Task not found' for polling-host tasks."
    )
    get_result_requires_key: bool = Field(
        default=False, description="403 on get_result without x-key (the spec has no security)."
    )
    webhook_response_polling_url: bool = Field(
        default=True, description="Webhook submits still get polling_url (shape UNCONFIRMED)."
    )
    pricing_available: bool = Field(
        default=True,
        description="POST /v1/pricing quotes; false: it answers 404, as BFL's SDK "
        "says some deployments do.",
    )
    price_factor: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="BFL's prices (quotes and the submit's cost) as a multiple of fluxq's table.",
    )

    # Delivery.
    sample_url_ttl_s: float = Field(
        default=600.0,
        gt=0,
        description="Signed sample URLs expire this long after ready (wall-clock).",
    )
    resign_sample_on_poll: bool = Field(
        default=False, description="Each poll signs a fresh sample URL (else: once, when ready)."
    )
    expired_download_status: Literal[403, 404] = Field(
        default=403, description="Status of an expired sample URL (403 or 404: UNCONFIRMED)."
    )
    video_url_ttl_s: float = Field(
        default=7200.0,
        gt=0,
        description="A video's sample and draft cache URLs expire this long after ready "
        "(wall-clock; BFL: about 2 hours).",
    )
    image_cache_size: int = Field(default=128, ge=0, description="Encoded images kept; 0: none.")

    # Faults.
    submit_500_rate: Rate = 0.0
    submit_503_rate: Rate = 0.0
    video_503_rate: Rate = Field(
        default=0.0,
        description="Share of valid video POSTs (flux-3-video) refused 503 for capacity (BFL: "
        "'temporary service capacity; retry with backoff'); no task is made.",
    )
    poll_500_rate: Rate = 0.0
    poll_503_rate: Rate = 0.0
    submit_drop_rate: Rate = Field(
        default=0.0, description="Submit connection dropped mid-response before any task exists."
    )
    poll_drop_rate: Rate = Field(default=0.0, description="Poll connection dropped mid-response.")
    download_drop_rate: Rate = Field(default=0.0, description="Download dropped mid-body.")
    download_403_rate: Rate = Field(
        default=0.0,
        description="Download of a valid, unexpired sample URL refused with 403, as a delivery "
        "host in trouble might; nothing is served.",
    )
    submit_lost_rate: Rate = Field(
        default=0.0, description="Task created and billed, then the response is lost."
    )
    slow_rate: Rate = Field(default=0.0, description="Share of submits and polls answered slowly.")
    submit_slow_rate: Rate = Field(
        default=0.0,
        description="Share of submits (only) answered slowly; polls keep their speed. The task is "
        "created after the delay, as if BFL took that long to accept the POST.",
    )
    slow_delay_s: float = Field(
        default=2.0, ge=0, description="Delay of a slow answer (wall-clock)."
    )

    # Webhooks.
    webhook_auth: Literal["secret", "hmac"] = Field(
        default="secret",
        description="secret: the webhook_secret verbatim in X-Webhook-Secret (BFL's SDK); hmac: "
        "sha256=<hex HMAC-SHA256(secret, raw body)> in webhook_signature_header (agent guide).",
    )
    webhook_signature_header: str = Field(
        default="X-BFL-Signature", description="The header of the hmac form."
    )
    webhook_payload: Literal["agent_guide", "result_response"] = Field(
        default="agent_guide",
        description="agent_guide: {id, status, result, timestamp}; result_response: "
        "get_result's body.",
    )
    webhook_retry_delays_s: tuple[float, ...] = Field(
        default=(1.0, 5.0, 30.0), description="Waits before each retry (scaled)."
    )
    webhook_timeout_s: float = Field(default=30.0, gt=0, description="Per attempt (wall-clock).")
    webhook_allow_non_loopback: bool = Field(
        default=False,
        description="Deliver to non-loopback hosts; off so tests never leave the box.",
    )
    webhook_max_pending: int = Field(default=10_000, ge=1, description="Queued deliveries at most.")

    rng_seed: int | None = Field(default=None, description="Seed for reproducible fault sequences.")

    @field_validator("request_moderation_regex", "content_moderation_regex", "error_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("latency")
    @classmethod
    def _known_endpoints(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_latency_keys(value)
        return value

    @field_validator("group_caps")
    @classmethod
    def _positive_caps(cls, value: dict[str, int]) -> dict[str, int]:
        bad = sorted(name for name, cap in value.items() if cap < 1)
        if bad:
            raise ValueError(f"caps must be at least 1: {', '.join(bad)}")
        return value

    def scaled(self, model_s: float) -> float:
        """Wall-clock seconds of a model duration."""
        return model_s * self.time_scale

    def key_allowed(self, key: str) -> bool:
        """True when ``key`` may use the simulator."""
        if self.allowed_keys is None:
            return True
        return any(key == allowed.get_secret_value() for allowed in self.allowed_keys)

    def patched(self, patch: Mapping[str, Any]) -> SimConfig:
        """A validated copy with ``patch`` applied; unknown names raise ValidationError."""
        return SimConfig.model_validate({**dict(self), **dict(patch)})

    def public(self) -> dict[str, Any]:
        """The config as JSON, allowed keys masked: what ``GET /sim/config`` shows."""
        shown = self.model_dump(mode="json")
        if self.allowed_keys is not None:
            shown["allowed_keys"] = ["**********"] * len(self.allowed_keys)
        return shown
