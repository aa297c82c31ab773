"""FLUXQ_OUTPUT_URL and FLUXQ_OUTPUT_OPTIONS: where images go, checked before anything is paid for.

A local directory (a path or ``file://``) is ``output_dir`` by another name. Anything else is an
object store URL that fsspec serves (``s3://bucket/prefix``, ``gs://…``, ``az://…``): its scheme
must be one fsspec knows and its backend package must be installed, and it may hold no
credential, since the URL is written into every job record. Messages never repeat the URL.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

LOCAL_SCHEMES = frozenset({"file", "local"})
"""Schemes that name a directory on the worker's own disk."""

EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "adl": "azure",
}
"""The fluxq extra that installs each object store's fsspec backend."""

MAX_OUTPUT_URL_CHARS = 1024
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")
SHAPE = "use a directory or a URL such as s3://bucket/prefix"


def local_output_path(url: str) -> Path | None:
    """The directory a local FLUXQ_OUTPUT_URL names, or None for an object store URL."""
    text = url.strip()
    if "://" not in text:
        return Path(text)
    scheme, _, rest = text.partition("://")
    if scheme.lower() in LOCAL_SCHEMES:
        return Path(rest or "/")
    return None


def check_output_url(value: str | None) -> str | None:
    """The URL, normalised (no trailing slash), or ValueError with one line that never repeats it.

    Empty or unset means "use FLUXQ_OUTPUT_DIR".
    """
    url = (value or "").strip()
    if not url:
        return None
    if local_output_path(url) is not None:
        return url
    problem = _url_problem(url)
    if problem:
        raise ValueError(problem)
    return url.rstrip("/")


def _url_problem(url: str) -> str | None:
    if len(url) > MAX_OUTPUT_URL_CHARS or _BAD_CHARS.search(url):
        return f"is too long or holds a space or control character: {SHAPE}"
    if "::" in url:
        return f"chained fsspec URLs (a::b) are not supported: {SHAPE}"
    scheme = url.partition("://")[0].lower()
    if not _SCHEME.fullmatch(scheme):
        return f"has no valid scheme: {SHAPE}"
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return (
            "must hold no user or password (it is written into every job record): put "
            "credentials in the store's usual environment (AWS_ACCESS_KEY_ID, ...) or in "
            "FLUXQ_OUTPUT_OPTIONS"
        )
    if parts.query or parts.fragment:
        return (
            "must hold no ?query or #fragment (a signature or token would be written into every "
            "job record): put options in FLUXQ_OUTPUT_OPTIONS"
        )
    if not parts.netloc:
        return f"names no bucket or container: {SHAPE}"
    return backend_problem(scheme)


def backend_problem(scheme: str) -> str | None:
    """Why fsspec cannot serve ``scheme://`` here (unknown, or its package missing), else None."""
    try:
        found = importlib.import_module("fsspec.registry")  # loaded only for an object store
    except ImportError:
        return "needs fsspec: pip install 'fluxq[s3]' (or fsspec and the store's backend)"
    if scheme in found.registry:
        return None
    known = found.known_implementations.get(scheme)
    if known is None:
        return f"has a scheme fsspec does not know ({scheme}://): {SHAPE}"
    module = str(known["class"]).rsplit(".", 1)[0]
    if importlib.util.find_spec(module.split(".")[0]) is not None:
        return None
    package = module.split(".")[0]
    extra = EXTRAS.get(scheme)
    if extra:
        return f"{scheme}:// needs the {package} package: pip install 'fluxq[{extra}]'"
    return f"{scheme}:// needs the {package} package: pip install {package}"


def parse_output_options(text: str) -> dict[str, object]:
    """FLUXQ_OUTPUT_OPTIONS as a dict; ValueError (never repeating the text) when it is not one."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        # json's message gives a position, never the text itself.
        raise ValueError(f"is not JSON ({exc.args[0].split(':')[0]}): use a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object such as {"endpoint_url": "https://..."}')
    return value


def check_output_options(text: str) -> None:
    parse_output_options(text)
