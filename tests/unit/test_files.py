"""Output file helpers: URL suffixes, safe names, atomic JSON, whole manifest lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.files import append_manifest, safe_name, url_suffix, write_json_atomic


@pytest.mark.parametrize(
    ("url", "suffix"),
    [
        ("https://delivery-eu1.bfl.ai/results/abc/sample.jpeg?se=1&sig=x", "jpeg"),
        ("https://delivery.us.bfl.ai/x/sample.JPG", "jpeg"),
        ("https://delivery.bfl.ai/x/sample.png", "png"),
        ("http://127.0.0.3:8082/sample/id.webp?exp=1&sig=2", "webp"),
        ("https://delivery.bfl.ai/x/sample", None),
        ("https://delivery.bfl.ai/x/sample.gif", None),
        (None, None),
    ],
)
def test_the_delivery_urls_suffix_tells_the_format(url: str | None, suffix: str | None) -> None:
    assert url_suffix(url) == suffix


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("fox-01", "fox-01"),
        ("../../etc/passwd", "etc_passwd"),
        (".hidden", "hidden"),
        ("", "unnamed"),
    ],
)
def test_names_cannot_escape_the_batch_directory(name: str, safe: str) -> None:
    assert safe_name(name) == safe


def test_json_is_written_whole_and_no_temporary_file_remains(tmp_path: Path) -> None:
    target = tmp_path / "b" / "x.json"
    target.parent.mkdir()
    write_json_atomic(target, {"sha256": "ab", "n": 1})
    assert json.loads(target.read_text()) == {"n": 1, "sha256": "ab"}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_manifest_lines_append_one_json_object_each(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    append_manifest(manifest, {"job_id": "a"})
    append_manifest(manifest, {"job_id": "b"})
    assert [json.loads(line)["job_id"] for line in manifest.read_text().splitlines()] == ["a", "b"]
