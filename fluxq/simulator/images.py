"""Cheap, deterministic sample images: a two-colour gradient chosen by hashing prompt and seed.

Real image bytes in the requested format and size, encoded by Pillow and kept in a small LRU.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from typing import Any

from PIL import Image

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "mp4": "video/mp4"}
"""Content-Type of each output format (and of a video's MP4)."""

_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
# Fast settings: these images exist to be downloaded and checked, not looked at.
_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "jpeg": {"quality": 85},
    "png": {"compress_level": 1},
    "webp": {"quality": 80, "method": 0},
}


def render_image(prompt: str, seed: int, width: int, height: int, fmt: str) -> bytes:
    """Encode a ``width`` x ``height`` image in ``fmt``; equal inputs give equal bytes."""
    if fmt not in _PIL_FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; use one of {', '.join(_PIL_FORMATS)}")
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    start = (digest[0], digest[1], digest[2])
    end = (digest[3], digest[4], digest[5])
    # linear_gradient is a 256x256 ramp; resizing it is far cheaper than drawing per pixel.
    mask = Image.linear_gradient("L")
    if digest[6] % 2:
        mask = mask.transpose(Image.Transpose.ROTATE_90)
    mask = mask.resize((width, height), Image.Resampling.BILINEAR)
    image = Image.composite(
        Image.new("RGB", (width, height), end), Image.new("RGB", (width, height), start), mask
    )
    buffer = io.BytesIO()
    image.save(buffer, format=_PIL_FORMATS[fmt], **_SAVE_OPTIONS[fmt])
    return buffer.getvalue()


class ImageCache:
    """An LRU of encoded images keyed by (prompt, seed, width, height, format); thread-safe."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, int, int, int, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, prompt: str, seed: int, width: int, height: int, fmt: str) -> bytes:
        """The encoded image, rendered on a miss (outside the lock: it takes milliseconds)."""
        key = (prompt, seed, width, height, fmt)
        with self._lock:
            cached = self._items.get(key)
            if cached is not None:
                self._items.move_to_end(key)
                return cached
        data = render_image(prompt, seed, width, height, fmt)
        with self._lock:
            if self.max_items > 0:
                self._items[key] = data
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
        return data

    def resize(self, max_items: int) -> None:
        """Change the capacity (0 disables caching), evicting the oldest entries."""
        with self._lock:
            self.max_items = max_items
            while len(self._items) > max(max_items, 0):
                self._items.popitem(last=False)
