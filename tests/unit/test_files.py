"""Output file helpers: URL suffixes, safe names, atomic JSON, whole manifest lines."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxq.workers.files import (
    MAX_NAME_CHARS,
    append_manifest,
    remove_stale_parts,
    safe_name,
    url_suffix,
    write_json_atomic,
)


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


@given(text=st.text() | st.from_regex(r"[a-z]{1,130}[._]{1,3}[a-z]{0,5}", fullmatch=True))
def test_a_safe_name_is_its_own_safe_name_and_stays_in_its_directory(text: str) -> None:
    # Enqueue stores safe_name(name) as the job's file stem and the save path applies safe_name
    # again: both must give one name, or the uniqueness checked at enqueue would not hold on disk
    name = safe_name(text)
    assert safe_name(name) == name
    assert 0 < len(name) <= MAX_NAME_CHARS
    assert "/" not in name
    assert not name.startswith((".", "_"))
    assert not name.endswith((".", "_"))


def test_a_name_cut_to_length_loses_a_trailing_dot_too() -> None:
    assert safe_name("a" * (MAX_NAME_CHARS - 1) + ".b") == "a" * (MAX_NAME_CHARS - 1)


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


def test_stale_part_files_of_a_dead_save_are_removed_and_fresh_ones_kept(tmp_path: Path) -> None:
    # Given a dead attempt's temporary files (old) and a live attempt's (just written)
    final = tmp_path / "night" / "heron.jpeg"
    final.parent.mkdir()
    dead_image = final.parent / ".heron.jpeg.dead0001.part"
    dead_sidecar = final.parent / ".heron.json.dead0002.part"
    live = final.parent / ".heron.jpeg.live0003.part"
    other = final.parent / ".heron2.jpeg.other004.part"
    for path in (dead_image, dead_sidecar, live, other):
        path.write_bytes(b"x")
    old_s = time.time() - 3600
    for path in (dead_image, dead_sidecar, other):
        os.utime(path, (old_s, old_s))
    # When the next save of the same file clears stale parts
    removed = remove_stale_parts(final, now_s=time.time(), older_than_s=60)
    # Then only this file's dead parts are gone
    assert removed == 2
    assert not dead_image.exists()
    assert not dead_sidecar.exists()
    assert live.exists()
    assert other.exists()
