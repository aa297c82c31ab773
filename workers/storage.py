"""Object-store output through fsspec: FLUXQ_OUTPUT_URL = s3://bucket/prefix (or gs://, az://, ...).

The layout is the local one under the URL: ``{batch}/{name}.{ext}`` and its ``{name}.json``
sidecar. The manifest differs: an object store cannot append, so each job writes its own line as
one object, ``{batch}/manifest/{job_id}.jsonl``; the batch's manifest is those objects
concatenated (``manifest_entries``). A repeated save overwrites its own line, so there is no
duplicate to dedupe.

**No partial object at a final key.** The image is downloaded to a local, fsynced temporary file
first, then sent to its final key in one upload, which S3 (PutObject, or CompleteMultipartUpload
for a large file), GCS and Azure (block blob commit) make visible only whole: an upload cut off
midway leaves nothing at the key, and there is no temporary object to clean up after a killed
worker. (s3fs sends files under 100 MiB as one PutObject, and FLUXQ_DOWNLOAD_MAX_BYTES keeps
images under 64 MiB by default, so no multipart upload is ever left half done.) A temporary key
and a copy would cost two more requests per image and leave orphans on a crash, and S3 has no
rename. Backends not known to publish uploads whole get the temporary key and a move
(``ATOMIC_PUT_PROTOCOLS``). Each image is then read back and its sha256 and size checked against
the download's before the job can be marked done; a mismatch removes the object and the save is
retried.

Credentials come from the backend's usual environment (AWS_ACCESS_KEY_ID, ...) or from
FLUXQ_OUTPUT_OPTIONS; they live only in the file-system object, never in a job, sidecar,
manifest or message (errors are redacted of every option value).
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import fsspec  # type: ignore[import-untyped]

from fluxq.config.errors import RetryLater
from fluxq.config.output_url import parse_output_options
from fluxq.config.redact import redact
from fluxq.config.settings import Settings

ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})
"""Stores whose one upload of a file appears at its key whole or not at all."""

CONTENT_TYPE_ARGUMENT = {
    "s3": "ContentType",
    "s3a": "ContentType",
    "gs": "content_type",
    "gcs": "content_type",
}
"""How each backend's put_file/pipe_file is told an object's content type."""

MANIFEST_DIR = "manifest"
"""Where each job's manifest line lives, inside its batch: ``{batch}/manifest/{job_id}.jsonl``."""

READ_CHUNK = 1024 * 1024
"""Bytes read per request when an object is read back or streamed."""

SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
)
"""The backends' own credential variables: redacted from store errors as well."""


class StoreFailed(RetryLater):
    """Raised when an object could not be written, verified or read; it may work later."""


def is_url(path: str) -> bool:
    """True when a job's path is an object store URL rather than a local file."""
    return "://" in path


PUBLIC_OPTIONS = frozenset({"endpoint_url", "region_name", "region", "signature_version"})
"""Storage options known to hold no secret: left readable in error messages."""


def _secret_values(options: dict[str, object]) -> list[str]:
    """Every string inside the storage options but the public ones: any may be a key or token."""
    found: list[str] = []
    stack: list[object] = [options]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(v for k, v in item.items() if k not in PUBLIC_OPTIONS)
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, str) and len(item) >= 4:
            found.append(item)
    return found


@dataclass
class ObjectStore:
    """One fsspec file system under a root URL. Failures are StoreFailed, never a backend's own
    error (which could quote a header or option); a missing object is FileNotFoundError from
    ``open_read`` and None from ``size``."""

    url: str
    fs: Any
    protocol: str
    secrets: tuple[str, ...] = field(repr=False)

    def url_of(self, *parts: str) -> str:
        """The URL of a key under the root: ``url_of("night-42", "heron.jpeg")``."""
        return "/".join([self.url, *parts])

    def _path(self, url: str) -> str:
        return str(self.fs._strip_protocol(url))

    def _failed(self, doing: str, url: str, exc: BaseException) -> StoreFailed:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return StoreFailed(f"{doing} {url} failed: {redact(text, self.secrets, max_chars=300)}")

    def put_file(self, local: Path, url: str, *, sha256: str, size: int) -> None:
        """Upload a complete local file to ``url`` (whole or not at all), then read it back and
        check its size and sha256."""
        try:
            kwargs = self._type_kwargs(url)
            self._publish(url, lambda target: self.fs.put_file(str(local), target, **kwargs))
        except Exception as exc:
            raise self._failed("uploading", url, exc) from None
        got_sha, got_size = self.sha256_of(url)
        if (got_sha, got_size) != (sha256, size):
            self.remove(url)
            raise StoreFailed(
                f"{url} read back as {got_size} bytes with sha256 {got_sha[:12]}…, not the "
                f"{size} bytes with sha256 {sha256[:12]}… uploaded; removed it"
            )

    def put_bytes(self, data: bytes, url: str) -> None:
        """Write a small object (a sidecar, a manifest line) whole."""
        try:
            kwargs = self._type_kwargs(url)
            self._publish(url, lambda target: self.fs.pipe_file(target, data, **kwargs))
        except Exception as exc:
            raise self._failed("writing", url, exc) from None

    def _type_kwargs(self, url: str) -> dict[str, str]:
        """The object's content type, from its final name, as the backend takes it (the upload
        itself is read from a temporary file whose name says nothing)."""
        content_type = mimetypes.guess_type(url.rpartition("/")[2])[0]
        argument = CONTENT_TYPE_ARGUMENT.get(self.protocol)
        return {argument: content_type} if content_type and argument else {}

    def _publish(self, url: str, write: Callable[[str], object]) -> None:
        """Run ``write(path)`` so that the object at ``url`` appears whole or not at all."""
        final = self._path(url)
        if self.protocol in ATOMIC_PUT_PROTOCOLS:
            write(final)
        else:
            head, _, name = final.rpartition("/")
            temp = f"{head}/.{name}.{uuid.uuid4().hex[:8]}.part"
            try:
                write(temp)
                self.fs.mv(temp, final)
            finally:
                if self.fs.exists(temp):
                    self.fs.rm_file(temp)
        self.fs.invalidate_cache(final)

    def sha256_of(self, url: str) -> tuple[str, int]:
        """The sha256 and size of the object as the store serves it now."""
        digest = hashlib.sha256()
        size = 0
        try:
            with self.open_read(url) as source:
                while chunk := source.read(READ_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except StoreFailed:
            raise
        except Exception as exc:
            raise self._failed("reading back", url, exc) from None
        return digest.hexdigest(), size

    def open_read(self, url: str) -> IO[bytes]:
        """The object, opened for streamed reading (read-through, no read-ahead cache)."""
        try:
            self.fs.invalidate_cache(self._path(url))
            handle: IO[bytes] = self.fs.open(
                self._path(url), "rb", block_size=READ_CHUNK, cache_type="none"
            )
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self._failed("opening", url, exc) from None
        return handle

    def size(self, url: str) -> int | None:
        """The object's size, or None when there is no object at ``url``."""
        try:
            self.fs.invalidate_cache(self._path(url))
            info = self.fs.info(self._path(url))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._failed("looking up", url, exc) from None
        return int(info["size"])

    def remove(self, url: str) -> None:
        try:
            self.fs.rm_file(self._path(url))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._failed("removing", url, exc) from None

    def manifest_url(self, batch_dir: str, job_id: str) -> str:
        return self.url_of(batch_dir, MANIFEST_DIR, f"{job_id}.jsonl")

    def manifest_entries(self, batch_dir: str) -> Iterator[dict[str, Any]]:
        """The batch's manifest: every job's line object, in key order."""
        folder = self._path(self.url_of(batch_dir, MANIFEST_DIR))
        try:
            self.fs.invalidate_cache(folder)
            names = sorted(self.fs.find(folder))
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self._failed("listing", self.url_of(batch_dir, MANIFEST_DIR), exc) from None
        for name in names:
            if name.endswith(".jsonl"):
                data = self.fs.cat_file(name)
                for line in data.decode("utf-8").splitlines():
                    if line.strip():
                        yield json.loads(line)


_stores: dict[tuple[str, str], ObjectStore] = {}
_stores_lock = threading.Lock()


def open_store(settings: Settings, url: str | None = None) -> ObjectStore:
    """The store of ``url`` (default FLUXQ_OUTPUT_URL) with FLUXQ_OUTPUT_OPTIONS, built once per
    process. StoreFailed when the backend cannot be set up (its package missing, bad options)."""
    root = url or settings.output_url
    if root is None:
        raise StoreFailed("FLUXQ_OUTPUT_URL is not set: images are written to FLUXQ_OUTPUT_DIR")
    text = settings.output_options.get_secret_value() if settings.output_options else ""
    key = (root, hashlib.sha256(text.encode()).hexdigest())
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _build(root, text)
            _stores[key] = store
    return store


def _build(root: str, options_text: str) -> ObjectStore:
    options = parse_output_options(options_text)
    env_secrets = [os.environ.get(name, "") for name in SECRET_ENV]
    secrets = tuple(v for v in [*_secret_values(options), *env_secrets] if v)
    protocol = root.partition("://")[0].lower()
    try:
        fs = fsspec.filesystem(protocol, **options)
    except ImportError as exc:
        raise StoreFailed(
            f"FLUXQ_OUTPUT_URL: {protocol}:// cannot be served here: "
            f"{redact(str(exc), secrets, max_chars=200)}"
        ) from None
    except Exception as exc:
        raise StoreFailed(
            f"FLUXQ_OUTPUT_OPTIONS were refused by the {protocol}:// backend: "
            f"{type(exc).__name__}: {redact(str(exc), secrets, max_chars=200)}"
        ) from None
    return ObjectStore(url=root.rstrip("/"), fs=fs, protocol=protocol, secrets=secrets)


def store_of_path(settings: Settings, path: str) -> ObjectStore:
    """The store to read a job's saved URL from: FLUXQ_OUTPUT_URL's when the path is under it
    (with FLUXQ_OUTPUT_OPTIONS), else its own scheme's root with the backend's environment."""
    configured = settings.output_url
    if configured is not None and path.startswith(configured.rstrip("/") + "/"):
        return open_store(settings)
    protocol = path.partition("://")[0].lower()
    key = (f"{protocol}://", "")
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _build(f"{protocol}://", "")
            _stores[key] = store
    return store


def json_bytes(data: dict[str, Any]) -> bytes:
    """A sidecar's bytes, exactly as ``workers.files.write_json_atomic`` writes them locally."""
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def manifest_line(entry: dict[str, Any]) -> bytes:
    """A manifest line's bytes, exactly as ``workers.files.append_manifest`` appends them."""
    return (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
