"""What a failed POST proves, in one table, and how long a doubtful slot is held.

BFL has no idempotency key: a POST that created a task and lost its answer cannot be asked about,
and a second POST creates (and bills) a second task. So every failed submit is read for one fact,
whether a task may exist now:

    what came back                          proves                fluxq does
    429                                     refused: cap full     head of backlog; AIMD cut, or
                                                                  pause for Retry-After
    503                                     refused: BFL busy     the job keeps its slot and
                                                                  retries after 1 s, doubling
                                                                  to 8 s, or Retry-After
    error before the first byte was sent    refused: not sent     the same as 503
      (connect, pool, proxy, TLS setup,
      an illegal header, a bad URL)
    402                                     refused: no credits   head of backlog; key paused
                                                                  until credits return
    401 / 403                               refused: key refused  head of backlog; key paused
                                                                  until `fluxq resume`
    400 / 422, other 4xx, a body that       rejected              the job fails, naming the
      cannot be encoded                                           field; slot freed
    500 / 502 / 504 and other 5xx           unknown               uncertain (or, with
                                                                  FLUXQ_SUBMIT_RETRY_5XX, resent)
    no answer after sending (read or        unknown               uncertain
      write timeout, reset, dropped)
    2xx that cannot be read                 unknown               uncertain
    the worker died during the POST         unknown               uncertain (the sweep)

Sources: BFL's API reference for FLUX 3 video ("503 means temporary service capacity; retry with
backoff"); BFL's newer SDK resends a POST only after connect and pool errors, never after a 5xx
or a read or write timeout ("the server may already have created and billed the job").
"""

from __future__ import annotations

from enum import StrEnum

from fluxq.config.errors import (
    FluxqError,
    InvalidRequest,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    ServerError,
    StopAndAlert,
    UnexpectedResponse,
)
from fluxq.workers.poll_schedule import LogNormal

UNAVAILABLE_STATUS = 503
"""The one 5xx that says nothing was created: BFL's "temporary service capacity"."""


class PostOutcome(StrEnum):
    """What a failed POST proves about the task it may have created."""

    RATE_LIMITED = "rate_limited"
    """429: the cap is full; nothing was created."""
    UNAVAILABLE = "unavailable"
    """503, or the request never left this machine: nothing was created."""
    STOPPED = "stopped"
    """402 or 401/403: nothing was created, and the key must stop until fixed."""
    REJECTED = "rejected"
    """The request itself was refused (4xx) or cannot be sent: the job fails."""
    UNKNOWN = "unknown"
    """A task may exist and be billed: the job is uncertain."""


def post_outcome(exc: FluxqError) -> PostOutcome:
    """The row of the table above that ``exc``, raised by a submit, falls in."""
    if isinstance(exc, RateLimited):
        return PostOutcome.RATE_LIMITED
    if isinstance(exc, NotSent):
        return PostOutcome.UNAVAILABLE
    if isinstance(exc, ServerError):
        if exc.status_code == UNAVAILABLE_STATUS:
            return PostOutcome.UNAVAILABLE
        return PostOutcome.UNKNOWN
    if isinstance(exc, StopAndAlert):
        return PostOutcome.STOPPED
    if isinstance(exc, InvalidRequest | UnexpectedResponse):
        return PostOutcome.REJECTED
    if isinstance(exc, OutcomeUnknown):
        return PostOutcome.UNKNOWN
    # Anything else raised by the client is a fluxq error about the request (a refused URL):
    # a submit raises nothing else before sending, and every error after sending is above.
    return PostOutcome.REJECTED


HOLD_QUANTILE = 0.99
"""The generation time a doubtful hold covers: 99 tasks in 100 of the endpoint end before it."""


def doubt_hold_s(model: LogNormal, *, factor: float, floor_s: float, ceiling_s: float) -> float:
    """How long a slot stays held after a POST whose outcome is unknown ended.

    A task that BFL did create runs about as long as the endpoint's others, so after
    ``factor`` times its 99th percentile it has ended and no longer counts against the cap. The
    hold starts when the POST ended (the task was created before that, if at all), so the POST's
    own time is covered. ``floor_s`` covers BFL's queue when the learned times are short, and
    ``ceiling_s`` (the poll deadline) is the longest fluxq waits for any task.

    The price of each side: a hold that ends while the task still runs costs one 429 (the job
    goes back to its backlog, no credit spent, and the AIMD cut leaves holds out); a hold that
    lasts too long keeps a slot idle, and a fleet of them froze admission for 15 minutes when
    the hold was the poll deadline.
    """
    return min(ceiling_s, max(floor_s, factor * model.quantile(HOLD_QUANTILE)))
