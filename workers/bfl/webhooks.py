"""BFL's webhooks to fluxq: each job's URL, each key's secret, and checking what arrives.

In webhook mode (``FLUXQ_BFL_WEBHOOK_BASE_URL``) every submit carries a ``webhook_url`` of its own
job and the ``webhook_secret`` of its API key; BFL POSTs the finished task there. Both are derived
from ``FLUXQ_BFL_WEBHOOK_SECRET`` by HMAC, so nothing is stored and workers and ``fluxq api`` agree:

- the URL ends in ``/v1/bfl/webhooks/<job id>/<token>``, the token an HMAC of the job id: without
  the secret no one can name a job's URL, and a wrong token is a forgery, known before any lookup;
- the key's secret is an HMAC of the key's label, so a leaked one speaks for one key only.

What BFL sends back is UNCONFIRMED (the API notes, section 6), and two forms are accepted: the
secret verbatim in ``X-Webhook-Secret`` (BFL's own SDK) or ``X-BFL-Signature: sha256=<hex
HMAC-SHA256(secret, raw body)>`` (BFL's agent guide). Both are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from urllib.parse import quote

from pydantic import SecretStr

from fluxq.config.errors import UnexpectedResponse
from fluxq.config.redact import Secrets
from fluxq.workers.bfl.responses import Result, parse_result

WEBHOOK_PATH = "/v1/bfl/webhooks"
"""Where ``fluxq api`` receives BFL's webhooks: ``{WEBHOOK_PATH}/{job_id}/{token}``."""

TOKEN_HEX_CHARS = 32
"""A job URL's token: 128 bits of an HMAC-SHA256."""

SECRET_HEADER = "x-webhook-secret"  # noqa: S105 - a header name, not a secret
SIGNATURE_HEADER = "x-bfl-signature"
SIGNATURE_PREFIX = "sha256="

MAX_WEBHOOK_BYTES = 64 * 1024
"""A webhook body larger than this is not BFL's (a result is a few hundred bytes)."""


def _mac(secret: SecretStr, purpose: str, value: str) -> str:
    message = f"fluxq-bfl-webhook\0{purpose}\0{value}".encode()
    return hmac.new(secret.get_secret_value().encode(), message, hashlib.sha256).hexdigest()


def key_secret(secret: SecretStr, key_label: str) -> str:
    """The ``webhook_secret`` sent with every submit of one API key (identified by its label)."""
    return _mac(secret, "key", key_label)


def job_token(secret: SecretStr, job_id: str) -> str:
    """The unguessable last part of a job's webhook URL."""
    return _mac(secret, "job", job_id)[:TOKEN_HEX_CHARS]


def webhook_url(base_url: str, secret: SecretStr, job_id: str) -> str:
    """The URL BFL posts ``job_id``'s finished task to."""
    return (
        f"{base_url.rstrip('/')}{WEBHOOK_PATH}/{quote(job_id, safe='')}/{job_token(secret, job_id)}"
    )


def token_matches(secret: SecretStr, job_id: str, token: str) -> bool:
    """True when ``token`` is ``job_id``'s (constant time)."""
    return hmac.compare_digest(job_token(secret, job_id).encode(), token.encode("utf-8", "replace"))


def signature(secret: str, raw: bytes) -> str:
    """The ``X-BFL-Signature`` value for ``raw`` under ``secret``."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def authentic(headers: Mapping[str, str], raw: bytes, secret: str) -> bool:
    """True when either accepted header proves the sender knows the key's ``secret``.

    ``headers`` must be case-insensitive (Starlette's and httpx's are).
    """
    given = headers.get(SECRET_HEADER)
    if given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), secret.encode()):
        return True
    signed = headers.get(SIGNATURE_HEADER)
    return signed is not None and hmac.compare_digest(
        signed.strip().lower().encode("utf-8", "replace"), signature(secret, raw).encode()
    )


def parse_delivery(raw: bytes, *, secrets: Secrets = ()) -> Result:
    """The task a webhook reports, in either known shape.

    The agent guide's ``{id, status, result: {sample, prompt, seed}, timestamp}`` and a copy of
    ``get_result``'s answer share the fields that matter, so ``parse_result`` reads both.
    Raises UnexpectedResponse for a body that is not a JSON object with a task id.
    """
    try:
        body = json.loads(raw)
    except ValueError:
        raise UnexpectedResponse("the webhook's body is not JSON") from None
    result = parse_result(body, secrets=secrets)
    if not result.id:
        raise UnexpectedResponse("the webhook names no task id")
    return result
