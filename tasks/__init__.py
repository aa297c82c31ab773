"""fluxq's Celery tasks and the producer API: ``tasks.enqueue(endpoint, request, ...)``.

Other services may instead send the ``fluxq.enqueue`` task by name; see the README.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def enqueue(endpoint: str, request: Mapping[str, Any], **options: Any) -> str:
    """Validate and enqueue one job from Python; returns its id.

    Options: ``job_id`` (re-enqueueing an id is a no-op), ``batch``, ``name``, ``priority`` (0..9,
    higher first), ``callback`` (a Celery signature run with ``fluxq_job=<outcome>``) and
    ``webhook_url``. Raises ``config.errors.InvalidRequest`` naming every bad field, before any
    credit is spent. Settings come from the environment (``FLUXQ_REDIS_URL`` must be set).
    """
    from tasks.producer import enqueue as enqueue_with
    from workers.runtime import get_runtime

    return enqueue_with(get_runtime(), endpoint, request, **options)


__all__ = ["enqueue"]
