"""fluxq's pipeline: admission, submit, poll, save, notify, the sweep and enqueue.

Each Celery task is a thin wrapper over a plain function; ``lifecycle`` owns every state change.
Users and services enqueue through ``fluxq`` (or the ``fluxq.enqueue`` task by name), not here.
"""
