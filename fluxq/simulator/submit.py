"""``POST /v1/<endpoint>``: authenticate, validate, bill, enforce the cap, create the task.

Order as BFL's FastAPI would do it: 403 before 422; then 402, then 429; the task's fate is set here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from fluxq.config.catalog import (
    CATALOG,
    EndpointSpec,
    input_megapixels,
    output_format,
    output_megapixels,
    output_size,
    validate_request,
)
from fluxq.config.endpoint_spec import IMAGE
from fluxq.config.errors import FieldError, InvalidRequest
from fluxq.config.requests import Flux3VideoInputs, VideoRequest
from fluxq.simulator.accounts import Account
from fluxq.simulator.config import SimConfig
from fluxq.simulator.engine import NOT_AUTHENTICATED, Reply, Simulator, detail
from fluxq.simulator.latency import latency_for, seeded_duration_s
from fluxq.simulator.pricing import price
from fluxq.simulator.tasks import Task, TaskStatus

MAX_SEED = 2**32 - 1
"""Largest seed the simulator picks when the request has none."""


def _error_type(msg: str) -> str:
    # FastAPI's "type" values for the messages clients most often branch on.
    if msg.startswith("Field required"):
        return "missing"
    if msg.startswith("Extra inputs are not permitted"):
        return "extra_forbidden"
    return "value_error"


def validation_reply(errors: tuple[FieldError, ...]) -> Reply:
    """BFL's 422: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``."""
    items = [{"loc": list(e.loc), "msg": e.msg, "type": _error_type(e.msg)} for e in errors]
    return Reply(422, {"detail": items})


def _validate(spec: EndpointSpec, body: object, cfg: SimConfig) -> BaseModel | Reply:
    # A video body is strict at BFL ("an unknown field returns 422"), whatever the knob says.
    strict = cfg.reject_unknown_fields or issubclass(spec.request_model, VideoRequest)
    if isinstance(body, Mapping) and not strict and not spec.open:
        fields = spec.request_model.model_fields
        known = set(fields) | {f.alias for f in fields.values() if f.alias}
        body = {k: v for k, v in body.items() if k in known}
    try:
        return validate_request(spec.endpoint, body)  # type: ignore[arg-type]
    except InvalidRequest as exc:
        return validation_reply(exc.errors)


def _matches(pattern: str | None, prompt: str) -> bool:
    return pattern is not None and re.search(pattern, prompt) is not None


def _fate(sim: Simulator, prompt: str) -> TaskStatus:
    """The status the task ends in: prompt triggers first (deterministic), then the dice."""
    cfg = sim.config
    if _matches(cfg.request_moderation_regex, prompt):
        return TaskStatus.REQUEST_MODERATED
    if _matches(cfg.error_regex, prompt):
        return TaskStatus.ERROR
    if _matches(cfg.content_moderation_regex, prompt):
        return TaskStatus.CONTENT_MODERATED
    if sim.roll(cfg.error_rate):
        return TaskStatus.ERROR
    if sim.roll(cfg.content_moderated_rate):
        return TaskStatus.CONTENT_MODERATED
    return TaskStatus.READY


def _cap_refusal(account: Account, spec: EndpointSpec, sim: Simulator, now: float) -> Reply | None:
    cfg = sim.config
    headers = {"Retry-After": str(cfg.retry_after_s)} if cfg.retry_after_s is not None else {}
    group_cap = cfg.group_caps.get(spec.cap_group) if spec.cap_group else None
    if sim.roll(cfg.phantom_429_rate):
        # Another client on the same key took the free slots: indistinguishable from the cap.
        account.phantom_429 += 1
        account.rate_limited_429 += 1
        return detail(429, f"You have reached the limit of {cfg.active_cap} active tasks", headers)
    if account.active(now) >= cfg.active_cap:
        account.rate_limited_429 += 1
        return detail(429, f"You have reached the limit of {cfg.active_cap} active tasks", headers)
    if (
        spec.cap_group
        and group_cap is not None
        and account.active_in(spec.cap_group, now) >= group_cap
    ):
        account.rate_limited_429 += 1
        text = f"You have reached the limit of {group_cap} active tasks for {spec.endpoint}"
        return detail(429, text, headers)
    return None


def _new_task(
    sim: Simulator,
    account: Account,
    spec: EndpointSpec,
    request: BaseModel,
    raw: Mapping[str, Any],
    delivery_base: str,
) -> Task:
    cfg = sim.config
    now = sim.clock.now()
    prompt = str(getattr(request, "prompt", None) or "")
    requested_seed = getattr(request, "seed", None)
    seed = requested_seed if isinstance(requested_seed, int) else sim.rng.randint(0, MAX_SEED)
    outcome = _fate(sim, prompt)
    if outcome is TaskStatus.REQUEST_MODERATED:
        duration_s = 0.0
    elif cfg.latency_seed is not None:
        duration_s = cfg.scaled(
            seeded_duration_s(cfg.latency_seed, spec.endpoint, prompt, cfg.latency)
        )
    else:
        duration_s = cfg.scaled(latency_for(spec.endpoint, cfg.latency).sample(sim.rng))
    width, height = output_size(spec.endpoint, request)
    samples, draft, video_s = 1, False, 0.0
    if isinstance(request, Flux3VideoInputs):
        samples = request.batch if request.draft else 1
        draft, video_s = request.draft, _video_seconds(request)
    webhook_url = getattr(request, "webhook_url", None)
    secret = raw.get("webhook_secret")
    return Task(
        id=str(uuid.uuid4()),
        account=account,
        endpoint=spec.endpoint,
        cap_group=spec.cap_group,
        prompt=prompt,
        seed=seed,
        width=width,
        height=height,
        fmt=output_format(request) if spec.media == IMAGE else spec.media.rpartition("/")[2],
        created_at=now,
        visible_at=now + cfg.scaled(cfg.not_found_after_submit_s),
        ready_at=now + duration_s,
        duration_s=duration_s,
        outcome=outcome,
        cost=price(cfg, spec.endpoint, request),
        webhook_url=str(webhook_url) if webhook_url else None,
        webhook_secret=secret if isinstance(secret, str) and secret else None,
        delivery_base=delivery_base,
        samples=samples,
        draft=draft,
        video_s=video_s,
    )


def _video_seconds(request: Flux3VideoInputs) -> float:
    """The clip's length: its ``duration``, else (``auto``) the shortest BFL makes."""
    return float(request.duration) if isinstance(request.duration, int) else 5.0


def _video_refusal(sim: Simulator, spec: EndpointSpec, request: BaseModel) -> Reply | None:
    """A video POST's own refusals, after validation: a ``draft_cache`` that names no draft of
    ours (422, as a cache BFL cannot read would be), or no capacity (503, ``video_503_rate``)."""
    if not isinstance(request, Flux3VideoInputs):
        return None
    if request.draft_cache is not None:
        problem = sim.draft_cache_problem(request.draft_cache)
        if problem is not None:
            return validation_reply((FieldError(("body", "draft_cache"), problem),))
    if sim.roll(sim.config.video_503_rate):
        sim.count("fault_video_503")
        return detail(503, "Service temporarily unavailable: no capacity, retry with backoff")
    return None


def _accepted(task: Task, request: BaseModel, polling_base: str, cfg: SimConfig) -> dict[str, Any]:
    width, height = task.width, task.height
    body: dict[str, Any] = {"id": task.id}
    if task.webhook_url is not None:
        body.update(status=TaskStatus.PENDING.value, webhook_url=task.webhook_url)
    if task.webhook_url is None or cfg.webhook_response_polling_url:
        body["polling_url"] = f"{polling_base.rstrip('/')}/v1/get_result?id={task.id}"
    body.update(
        cost=task.cost,
        input_mp=round(input_megapixels(request), 2),
        output_mp=output_megapixels(width, height),
    )
    return body


def submit(
    sim: Simulator,
    key: str | None,
    endpoint: str,
    body: object,
    *,
    polling_base: str,
    delivery_base: str,
) -> Reply:
    """Handle one generation POST whose JSON body is already parsed."""
    if endpoint not in CATALOG:
        sim.count("not_found_404")
        return detail(404, "Not Found")
    account = sim.account_for(key)
    if account is None:
        return NOT_AUTHENTICATED
    spec = CATALOG[endpoint]
    cfg = sim.config
    validated = _validate(spec, body, cfg)
    if isinstance(validated, Reply):
        with sim.lock:
            account.invalid_422 += 1
        return validated
    refusal = _video_refusal(sim, spec, validated)
    if refusal is not None:
        if refusal.status_code == 422:
            with sim.lock:
                account.invalid_422 += 1
        return refusal
    raw: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
    with sim.lock:
        now = sim.clock.now()
        cost = price(sim.config, endpoint, validated)
        if account.credits < cost:
            account.payment_required_402 += 1
            return detail(402, "Insufficient credits")
        refusal = _cap_refusal(account, spec, sim, now)
        if refusal is not None:
            return refusal
        task = _new_task(sim, account, spec, validated, raw, delivery_base)
        account.record_submit(endpoint, task.prompt, getattr(validated, "seed", None), task.cost)
        account.outcomes[task.outcome.value] += 1
        account.start(task.id, task.ready_at, task.cap_group, now)
        sim.tasks.add(task)
        if task.webhook_url is not None and sim.on_task_created is not None:
            sim.on_task_created(task)
        lost = sim.roll(cfg.submit_lost_rate)
        if lost:
            account.lost_responses += 1
            sim.counters["fault_submit_lost"] += 1
    return Reply(200, _accepted(task, validated, polling_base, cfg), lost=lost)
