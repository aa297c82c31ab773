"""fluxq's five Celery tasks and the function each one's work is in: what a test makes fail."""

from __future__ import annotations

from fluxq.config.celery import ENQUEUE, NOTIFY, POLL, SAVE, SUBMIT
from fluxq.config.celery import TASKS as SPECS

WORK = {
    SUBMIT: "submit_job",
    POLL: "poll_job",
    SAVE: "save_job",
    NOTIFY: "deliver_notification",
    ENQUEUE: "enqueue_message",
}
assert set(WORK) == set(SPECS), "a task of config/celery.py TASKS has no work function here"

TASKS = {spec.name: (spec.module, function) for spec, function in WORK.items()}
"""Celery task name → (module, the function holding its work)."""
