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
MAX_NAME_CHARS = 128
"""The longest file stem; job ids and batch names (``tasks/enqueue.py``) are no longer."""
ID_PATTERN = re.compile(rf"[A-Za-z0-9](?:[A-Za-z0-9._-]{{0,{MAX_NAME_CHARS - 2}}}[A-Za-z0-9-])?")
"""A job id or batch (used with fullmatch): exactly what ``safe_name`` keeps as it is, since the
id names the file of a job without a name and the batch its directory."""
ID_HINT = (
    f"use 1-{MAX_NAME_CHARS} characters from A-Z a-z 0-9 . _ -, starting with a letter or digit "
    "and ending with a letter, digit or -"
)
NAME_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_CHARS - 1}}}")
"""A job's name (used with fullmatch); stored as its ``safe_name`` (a trailing . or _ dropped)."""
NAME_HINT = (
    f"use 1-{MAX_NAME_CHARS} characters from A-Z a-z 0-9 . _ - (starting with a letter or digit)"
)
SECRET_FIELDS = ("webhook_secret",)
"""Request fields refused in jobs: fluxq signs its own webhooks, and a secret stored in Redis or
shown in Flower would leak."""

FORMAT_SUFFIXES = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png", "webp": "webp"}


def safe_name(text: str) -> str:
    """A file-system-safe name: no separators, no leading dots, bounded length.

    Idempotent (``safe_name(safe_name(x)) == safe_name(x)``): enqueue stores a job's name as its
    safe_name and refuses a second job of the batch with the same one, so that must be the file's.
    """
    cleaned = SAFE_NAME.sub("_", text).strip("._")[:MAX_NAME_CHARS].rstrip("._")
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


STALE_PART_AGE_S = 600.0
"""A temporary ``.part`` file untouched this long belongs to a save that died (the signed URL it
was reading lived 10 minutes): it is removed before the next save of the same file."""


def remove_stale_parts(final: Path, *, now_s: float, older_than_s: float = STALE_PART_AGE_S) -> int:
    """Remove the temporary files of earlier, dead attempts at ``final`` and its sidecar."""
    removed = 0
    if not final.parent.is_dir():
        return 0
    for name in (final.name, final.with_suffix(".json").name):
        for part in final.parent.glob(f".{glob_escape(name)}.*.part"):
            try:
                if now_s - part.stat().st_mtime >= older_than_s:
                    part.unlink()
                    removed += 1
            except FileNotFoundError:  # another attempt finished or removed it meanwhile
                continue
    return removed


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters made literal."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
