"""Notifying the user of a terminal job: their Celery signature, and an HMAC-signed HTTP POST.

The POST goes to the job's ``webhook_url`` (the user's name for it); BFL's own callbacks to fluxq
are the webhooks of ``workers.bfl.webhooks``.

(The third channel, a Redis pub/sub event per state change, is published by the store's Lua.)

A webhook goes only to a public address unless ``webhook_allow_private`` is set
(FLUXQ_WEBHOOK_ALLOW_PRIVATE): its host is resolved, every address checked, and the POST sent to
a checked address (so a second lookup cannot answer differently), without following redirects.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import httpx
from celery import Task, shared_task

from fluxq.config.celery import NOTIFY
from fluxq.config.errors import WebhookRefused
from fluxq.workers.backoff import backoff_s
from fluxq.workers.dispatch import runtime_of
from fluxq.workers.redacted_task import RedactedTask
from fluxq.workers.runtime import Runtime, flower_options
from fluxq.workers.state.jobs import Job, JobField

log = logging.getLogger("fluxq.notify")

SIGNATURE_HEADER = "X-Fluxq-Signature"
WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_BACKOFF_CAP_S = 300.0
MAX_WEBHOOK_URL_CHARS = 2083
ALLOW_PRIVATE_ENV = "FLUXQ_WEBHOOK_ALLOW_PRIVATE"
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
"""IPv6 addresses that carry an IPv4 one in their last 32 bits (RFC 6052)."""


def webhook_url_problem(url: object) -> str | None:
    """What is wrong with a webhook URL (never repeating it: it may carry a token), or None.

    An absolute http(s) URL with a host and a valid port, no user info, at most 2083 characters,
    parsed as httpx (which sends it) parses it. Where it points is decided when it is delivered.
    """
    if not isinstance(url, str):
        return f"must be a string, not {type(url).__name__}"
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        return f"must be at most {MAX_WEBHOOK_URL_CHARS} characters"
    if any(char.isspace() or not char.isprintable() for char in url):
        return "must not contain spaces or control characters"
    try:
        parsed = httpx.URL(url)
        scheme, host, userinfo, port = parsed.scheme, parsed.host, parsed.userinfo, parsed.port
    except (httpx.InvalidURL, ValueError):  # IDNA errors (ValueErrors) surface on .host
        return "is not a valid URL"
    if scheme not in ("http", "https"):
        return "must be an absolute http:// or https:// URL"
    if not host:
        return "must name a host"
    if userinfo:
        return "must not carry a user name or password"
    if port is not None and not 0 < port < 65536:
        return "has a port outside 1-65535"
    return None


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order (a literal is itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: mapped, 6to4 or NAT64; else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal_reason(address: str) -> str | None:
    """Why a webhook must not be sent to ``address`` (an IP literal), or None when it is public.

    Decided from the address alone: loopback, link-local, private, multicast, reserved,
    unspecified, or anything else not globally routable (such as 100.64/10), including IPv6
    forms of such an IPv4 address.
    """
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
    except ValueError:
        return f"{address} (not an IP address)"
    inner = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    inner_reason = None if inner is None else refusal_reason(str(inner))
    if inner_reason is not None:
        return f"{address} (carries {inner_reason})"
    kinds = {
        "loopback": ip.is_loopback,
        "link-local": ip.is_link_local,
        "multicast": ip.is_multicast,
        "unspecified": ip.is_unspecified,
        "reserved": ip.is_reserved,
        "private": ip.is_private,
        "not globally routable": not ip.is_global,
    }
    found = next((kind for kind, flag in kinds.items() if flag), None)
    return None if found is None else f"{address} ({found})"


def webhook_destination(
    url: str, *, allow_private: bool
) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """Where to POST ``url``: (URL to connect to, extra headers, request extensions).

    Refuses (WebhookRefused) a bad URL, and unless ``allow_private`` a host any of whose
    addresses is internal; then the URL is pinned to the first checked address, with the
    original Host header and TLS server name. A failed lookup raises OSError (worth a retry).
    """
    problem = webhook_url_problem(url)
    if problem is not None:
        raise WebhookRefused(f"webhook_url {problem}")
    parsed = httpx.URL(url)
    if allow_private:
        return parsed, {}, {}
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = resolve_host(host, port)
    if not addresses:
        raise OSError(f"{host} resolved to no address")
    for address in addresses:
        reason = refusal_reason(address)
        if reason is not None:
            raise WebhookRefused(
                f"{host} resolves to {reason}: not a public address; set "
                f"{ALLOW_PRIVATE_ENV}=1 to allow private destinations"
            )
    pinned = parsed.copy_with(host=addresses[0])
    headers = {"host": parsed.netloc.decode("ascii")}
    extensions: dict[str, Any] = {"sni_hostname": host} if parsed.scheme == "https" else {}
    return pinned, headers, extensions


def post_webhook(
    url: httpx.URL, *, body: bytes, headers: dict[str, str], extensions: dict[str, Any]
) -> httpx.Response:
    """POST once, never following a redirect (it could point anywhere, inside included)."""
    with httpx.Client(timeout=WEBHOOK_TIMEOUT_S, follow_redirects=False) as client:
        return client.post(url, content=body, headers=headers, extensions=extensions)


def job_payload(job: Job) -> dict[str, Any]:
    """What callbacks receive: the outcome and where the file is; no secrets."""
    return {
        "job_id": job.job_id,
        "batch": job.batch,
        "name": job.name,
        "state": job.state.value,
        "reason": job.reason,
        "endpoint": job.endpoint,
        "path": job.path,
        "sha256": job.sha256,
        "seed": job.seed,
        "bfl_id": job.bfl_id,
        "cost_credits": job.cost,
        "times": job.times,
    }


def full_signature(callback: Mapping[str, Any]) -> dict[str, Any]:
    """A Celery signature's dict with ``args``, ``kwargs`` and ``options`` (empty when not given).

    Celery takes a signature's dict as it is (``signature(d)`` is ``Signature(d)``, a dict with
    no defaults filled in), and sending one without ``options`` or ``kwargs`` fails with a
    TypeError; ``{"task": "myapp.on_image"}`` means "that task, nothing more".
    """
    return {
        **callback,
        "args": list(callback.get("args") or ()),
        "kwargs": dict(callback.get("kwargs") or {}),
        "options": dict(callback.get("options") or {}),
    }


def sign(secret: bytes, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, body)>``, the same scheme BFL uses for its webhooks."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def notify_terminal(rt: Runtime, before: Job) -> None:
    """Fire the job's callbacks once it reached done, failed or cancelled.

    ``before`` is the job as the caller last read it: callbacks are fixed at enqueue, so a job
    without any costs no second read (the common case on the hot path).
    """
    if not before.callback_json and not before.webhook_url:
        return
    job_id = before.job_id
    job = rt.store.get(job_id)
    if job is None or not job.state.terminal:
        return
    if job.callback_json:
        try:
            # Stored whole at enqueue; a job enqueued before that may lack options or kwargs.
            full = json.dumps(full_signature(json.loads(job.callback_json)))
            rt.dispatch.callback(replace(job, callback_json=full), job_payload(job))
        except Exception:  # a broken user signature must not break the pipeline
            log.exception("callback signature failed job=%s", job_id)
    if job.webhook_url:
        rt.dispatch.notify(job)


def deliver_notification(rt: Runtime, job_id: str, *, attempt: int) -> float | None:
    """POST the job's outcome to its webhook URL. Returns a countdown to retry, else None."""
    job = rt.store.get(job_id)
    if job is None or not job.webhook_url:
        return None
    body = json.dumps(job_payload(job), sort_keys=True).encode()
    headers = {"content-type": "application/json", "user-agent": "fluxq-webhook"}
    if rt.settings.webhook_secret is not None:
        headers[SIGNATURE_HEADER] = sign(
            rt.settings.webhook_secret.get_secret_value().encode(), body
        )
    allow_private = rt.settings.webhook_allow_private
    try:
        url, pin_headers, extensions = webhook_destination(
            job.webhook_url, allow_private=allow_private
        )
        response = post_webhook(
            url, body=body, headers={**headers, **pin_headers}, extensions=extensions
        )
        ok = 200 <= response.status_code < 300
        detail = f"HTTP {response.status_code}"
    except WebhookRefused as exc:
        # Refused is final: the same URL would be refused again, so it is never retried.
        log.warning("webhook refused job=%s: %s", job_id, exc)
        rt.store.update(job_id, {JobField.WEBHOOK_FAILED: f"refused: {exc}"})
        return None
    except OSError as exc:  # the lookup failed (socket.gaierror): maybe DNS is down for now
        ok, detail = False, f"lookup failed: {type(exc).__name__}"
    except httpx.HTTPError as exc:
        ok, detail = False, f"{type(exc).__name__}"
    if ok:
        rt.store.update(job_id, {JobField.WEBHOOK_DELIVERED: 1})
        return None
    if attempt >= rt.settings.webhook_max_attempts:
        log.error("webhook gave up job=%s attempts=%d last=%s", job_id, attempt, detail)
        rt.store.update(job_id, {JobField.WEBHOOK_FAILED: detail})
        return None
    return backoff_s(
        attempt, base_s=2 * rt.settings.retry_backoff_base_s, cap_s=WEBHOOK_BACKOFF_CAP_S
    )


@shared_task(name=NOTIFY.name, base=RedactedTask, bind=True, max_retries=None, acks_late=True)
def notify(self: Task, job_id: str, batch: str = "") -> None:
    """Celery task: POST the job's outcome to its webhook URL, retried with backoff."""
    countdown = deliver_notification(runtime_of(self.app), job_id, attempt=self.request.retries + 1)
    if countdown is not None:
        raise self.retry(countdown=countdown, **flower_options(self))
