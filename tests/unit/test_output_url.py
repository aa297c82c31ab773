"""FLUXQ_OUTPUT_URL and FLUXQ_OUTPUT_OPTIONS checks, and the object store's whole-or-nothing
writes on a backend that is not known to publish uploads whole (fsspec's in-memory one)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import uuid
from pathlib import Path

import pytest

from fluxq.config.errors import ConfigError
from fluxq.config.settings import load_settings
from fluxq.workers.storage import StoreFailed, open_store


def refusal(**overrides: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, **overrides)
    return str(caught.value)


def test_unset_or_a_local_url_is_the_output_directory(tmp_path: Path) -> None:
    assert load_settings(_env_file=None).output_url is None
    plain = load_settings(_env_file=None, output_url=str(tmp_path / "a"))
    assert (plain.output_url, plain.output_dir) == (None, tmp_path / "a")
    as_file = load_settings(_env_file=None, output_url=f"file://{tmp_path}/b")
    assert (as_file.output_url, as_file.output_dir) == (None, tmp_path / "b")
    assert load_settings(_env_file=None, output_url="  ").output_url is None


def test_an_object_store_url_is_kept_without_its_trailing_slash() -> None:
    settings = load_settings(_env_file=None, output_url="s3://bucket/some/prefix/")
    assert settings.output_url == "s3://bucket/some/prefix"
    assert settings.masked()["output_url"] == "s3://bucket/some/prefix"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("s3://AKIAKEYID:hunter2-secret@bucket/x", "must hold no user or password"),
        ("s3://bucket/x?X-Amz-Signature=hunter2-secret", "must hold no ?query"),
        ("s3://", "names no bucket"),
        ("nosuchscheme://bucket/x", "fsspec does not know"),
        ("simplecache::s3://bucket/hunter2-secret", "chained"),
        ("s3://bucket/with space/hunter2-secret", "space or control character"),
    ],
)
def test_a_bad_url_is_one_line_naming_the_variable_never_repeating_it(url: str, words: str) -> None:
    message = refusal(output_url=url)
    lines = message.splitlines()
    assert len(lines) == 2  # "invalid settings:" and the one line about this variable
    assert lines[1].strip().startswith("FLUXQ_OUTPUT_URL:")
    assert words in lines[1]
    assert "hunter2" not in message
    assert "bucket/x" not in message


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_a_scheme_whose_backend_is_missing_names_the_extra_to_install() -> None:
    message = refusal(output_url="gs://bucket/prefix")
    assert "FLUXQ_OUTPUT_URL" in message
    assert "gs:// needs the gcsfs package: pip install 'fluxq[gcs]'" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"secret": "hunter2-secret"', "is not JSON"),
        ('["hunter2-secret"]', "must be a JSON object"),
    ],
)
def test_bad_storage_options_are_refused_without_repeating_them(text: str, words: str) -> None:
    message = refusal(output_url="s3://bucket/x", output_options=text)
    assert "FLUXQ_OUTPUT_OPTIONS:" in message
    assert words in message
    assert "hunter2" not in message


def test_storage_options_are_a_secret_masked_in_fluxq_config() -> None:
    settings = load_settings(
        _env_file=None, output_url="s3://bucket/x", output_options='{"secret": "hunter2-secret"}'
    )
    assert settings.masked()["output_options"] == "**********"
    assert "hunter2" not in repr(settings)


def test_a_store_without_whole_uploads_goes_through_a_temporary_key_and_checks_sha256(
    tmp_path: Path,
) -> None:
    # Given fsspec's in-memory store (not in ATOMIC_PUT_PROTOCOLS: temporary key, then a move)
    root = f"memory://fluxq-{uuid.uuid4().hex[:8]}/out"
    store = open_store(load_settings(_env_file=None, output_url=root))
    local = tmp_path / "image.jpeg"
    local.write_bytes(b"\xff\xd8 not really a jpeg" * 100)
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    url = store.url_of("night", "heron.jpeg")
    # When it is uploaded
    store.put_file(local, url, sha256=digest, size=local.stat().st_size)
    # Then the object is there whole, checked, and no temporary key is left
    assert store.sha256_of(url) == (digest, local.stat().st_size)
    assert [p.rsplit("/", 1)[1] for p in store.fs.find(root)] == ["heron.jpeg"]
    # And an upload that reads back wrong is refused and removed
    with pytest.raises(StoreFailed, match="read back as"):
        store.put_file(local, url, sha256="0" * 64, size=local.stat().st_size)
    assert store.size(url) is None
    # And the manifest is the per-job line objects, concatenated
    store.put_bytes(b'{"job_id": "b"}\n', store.manifest_url("night", "b"))
    store.put_bytes(b'{"job_id": "a"}\n', store.manifest_url("night", "a"))
    assert [e["job_id"] for e in store.manifest_entries("night")] == ["a", "b"]
    assert json.loads(store.fs.cat_file(store.fs._strip_protocol(store.manifest_url("night", "a"))))


def test_store_errors_are_redacted_of_every_option_value() -> None:
    settings = load_settings(
        _env_file=None,
        output_url=f"memory://fluxq-{uuid.uuid4().hex[:8]}/out",
        output_options="{}",
    )
    store = open_store(settings)
    store.secrets = ("hunter2-secret",)
    with pytest.raises(StoreFailed) as caught:
        store.put_file(
            Path("/nonexistent/hunter2-secret.jpeg"), store.url_of("x.jpeg"), sha256="", size=0
        )
    assert "hunter2" not in str(caught.value)
    assert "[redacted]" in str(caught.value)
