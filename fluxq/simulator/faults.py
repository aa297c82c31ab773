"""Injected faults: the CLI parser for fault rates and the ASGI response that drops its connection.

Each fault is a rate in SimConfig; the simulator rolls its own seeded dice against it per request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

FAULT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "submit_500": ("submit_500_rate",),
    "submit_503": ("submit_503_rate",),
    "video_503": ("video_503_rate",),
    "poll_500": ("poll_500_rate",),
    "poll_503": ("poll_503_rate",),
    "500": ("submit_500_rate", "poll_500_rate"),
    "503": ("submit_503_rate", "poll_503_rate"),
    "submit_drop": ("submit_drop_rate",),
    "poll_drop": ("poll_drop_rate",),
    "download_drop": ("download_drop_rate",),
    "download_403": ("download_403_rate",),
    "drop": ("submit_drop_rate", "poll_drop_rate"),
    "lost": ("submit_lost_rate",),
    "submit_lost": ("submit_lost_rate",),
    "slow": ("slow_rate",),
    "submit_slow": ("submit_slow_rate",),
    "error": ("error_rate",),
    "content_moderated": ("content_moderated_rate",),
    "moderated": ("content_moderated_rate",),
    "phantom_429": ("phantom_429_rate",),
}
"""CLI fault names and the SimConfig rates each one sets; ``drop``, ``500``, ``503`` set both."""

SECONDS_FIELDS = {"slow_delay_s": "slow_delay_s"}
"""CLI names taking seconds rather than a rate."""


def _value(item: str, text: str, *, is_rate: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{item!r}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (is_rate and value > 1):
        limits = "between 0 and 1" if is_rate else "a finite number >= 0"
        raise ValueError(f"{item!r}: {text!r} must be {limits}")
    return value


def parse_faults(text: str) -> dict[str, float]:
    """Parse ``"submit_503=0.05,poll_500=0.01,drop=0.01"`` into SimConfig field values.

    Raises ValueError naming the bad item; the known names are those of FAULT_FIELDS plus
    ``slow_delay_s``. Later items win when two set the same field.
    """
    fields: dict[str, float] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, number = (part.strip() for part in item.partition("="))
        if not sep or not number:
            raise ValueError(f"{item!r} is not 'fault=rate' (e.g. 'submit_503=0.05')")
        if name in SECONDS_FIELDS:
            fields[SECONDS_FIELDS[name]] = _value(item, number, is_rate=False)
        elif name in FAULT_FIELDS:
            rate = _value(item, number, is_rate=True)
            fields.update(dict.fromkeys(FAULT_FIELDS[name], rate))
        else:
            known = ", ".join(sorted([*FAULT_FIELDS, *SECONDS_FIELDS]))
            raise ValueError(f"{item!r}: unknown fault {name!r}; known: {known}")
    return fields


class DroppedResponse(Response):
    """A response that sends its status line, headers and part of the body, then stops.

    The server closes the connection because the body is shorter than its Content-Length, so the
    client sees a transport error after its request was delivered: exactly a lost response.
    """

    def __init__(
        self,
        *,
        partial_body: bytes = b'{"id":"',
        media_type: str = "application/json",
    ) -> None:
        super().__init__(status_code=200, media_type=media_type)
        self.partial_body = partial_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = str(len(self.partial_body) + 512).encode()
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": [
                    (b"content-type", (self.media_type or "").encode()),
                    (b"content-length", length),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.partial_body, "more_body": True})
        # Returning here without the rest of the body makes uvicorn close the socket.
