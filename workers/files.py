"""Output files: safe paths, atomic renames with fsync, the metadata sidecar and the batch manifest.

A file at its final path is always complete (invariant 4): data goes to a temporary name first.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_CHARS = 120
FORMAT_SUFFIXES = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png", "webp": "webp"}


def safe_name(text: str) -> str:
    """A file-system-safe name: no separators, no leading dots, bounded length."""
    cleaned = SAFE_NAME.sub("_", text).strip("._")[:MAX_NAME_CHARS]
    return cleaned or "unnamed"


def url_suffix(sample_url: str | None) -> str | None:
    """The image suffix a delivery URL's path ends with (it tells the real format), if any."""
    if not sample_url:
        return None
    suffix = Path(urlsplit(sample_url).path).suffix.lower().lstrip(".")
    return FORMAT_SUFFIXES.get(suffix)


def temp_path_for(final: Path) -> Path:
    """A hidden temporary path beside ``final`` (same file system, so rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.part")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(temp: Path, final: Path) -> None:
    """Rename a fully written, fsynced temporary file into place and persist the rename."""
    os.replace(temp, final)
    fsync_dir(final.parent)


def write_json_atomic(final: Path, data: dict[str, Any]) -> None:
    temp = temp_path_for(final)
    try:
        with temp.open("w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True, default=str)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        commit_file(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def append_manifest(manifest: Path, entry: dict[str, Any]) -> None:
    """Append one JSON line; a single O_APPEND write keeps concurrent writers' lines whole."""
    line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
