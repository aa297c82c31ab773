"""``fluxq endpoints`` as the real process: the table from settings alone (no Redis, no key),
declared endpoints after fluxq's own, and a broken file as one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

from fluxq.config.catalog import CATALOG
from tests.unit.test_cli_failures import one_line_failure, run_fluxq

DECLARED = """
[[endpoint]]
path = "acme/upscale-v2"
cap = "acme-gpu"
media = "image"
price = { first_mp = 2, extra_mp = 0.5 }

[[endpoint]]
path = "acme/clip"
cap = "default"
media = "video/mp4"
url_lifetime_s = 7200
price = "unpriced"
"""


def rows(stdout: str) -> dict[str, list[str]]:
    """Each line's cells (split on runs of 2+ spaces), by its first cell."""
    table: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
        table[cells[0]] = cells
    return table


def test_endpoints_lists_the_table_without_redis_or_a_key(tmp_path: Path) -> None:
    data = tmp_path / "data"

    done = run_fluxq(tmp_path, "endpoints", FLUXQ_DATA_DIR=str(data))

    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert table["path"] == ["path", "cap", "media", "price", "status"]
    assert list(table)[1:] == list(CATALOG)
    assert table["flux-pro-1.1"] == [
        "flux-pro-1.1",
        "default",
        "image",
        "4 credits/image",
        "current",
    ]
    assert table["flux-2-pro"][3] == "3 + 1.5/extra MP"
    assert table["flux-kontext-max"][1] == "flux-kontext-max"
    assert table["flux-pro-1.0-expand"][3:] == ["5 credits/image (estimate)", "legacy"]
    assert table["flux-pro-1.0-fill"][4] == "legacy"
    assert table["flux-tools/erase-v1"][3:] == ["unpriced", "preview"]
    assert not data.exists()  # no embedded Redis was started
    assert done.stderr == ""


def test_endpoints_json_gives_every_field(tmp_path: Path) -> None:
    done = run_fluxq(tmp_path, "endpoints", "--json")

    assert done.returncode == 0, done.stderr
    by_path = {item["path"]: item for item in json.loads(done.stdout)}
    assert list(by_path) == list(CATALOG)
    assert by_path["flux-2-klein-4b"]["price"] == {
        "kind": "per_megapixel", "first_mp": 1.4, "extra_mp": 0.1,
        "text": "1.4 + 0.1/extra MP", "listed": True,
    }  # fmt: skip
    tool = by_path["flux-tools/vto-v1"]
    assert (tool["request"], tool["status"], tool["price"]["kind"]) == (
        "open",
        "preview",
        "unpriced",
    )
    assert (tool["media"], tool["url_lifetime_s"], tool["sizing"]) == ("image", 600.0, "image")
    assert by_path["flux-dev"]["request"] == "FluxDevInputs"
    assert all(item["typical_s"] > 0 for item in by_path.values())


def test_declared_endpoints_follow_fluxqs_own_marked_declared(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(DECLARED, encoding="utf-8")

    table = run_fluxq(tmp_path, "endpoints", FLUXQ_ENDPOINTS_FILE=str(path))
    listed = run_fluxq(tmp_path, "endpoints", "--json", FLUXQ_ENDPOINTS_FILE=str(path))

    assert table.returncode == 0, table.stderr
    shown = rows(table.stdout)
    assert list(shown)[-2:] == ["acme/upscale-v2", "acme/clip"]
    assert shown["acme/upscale-v2"][1:] == ["acme-gpu", "image", "2 + 0.5/extra MP", "declared"]
    assert shown["acme/clip"][1:] == ["default", "video/mp4", "unpriced", "declared"]
    clip = json.loads(listed.stdout)[-1]
    assert (clip["path"], clip["url_lifetime_s"], clip["typical_s"]) == ("acme/clip", 7200.0, None)


def test_a_broken_endpoints_file_is_one_line_naming_the_file_entry_and_field(
    tmp_path: Path,
) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(DECLARED.replace("acme/clip", "flux-dev"), encoding="utf-8")
    not_toml = tmp_path / "broken.toml"
    not_toml.write_text("[[endpoint]\n", encoding="utf-8")

    line = one_line_failure(run_fluxq(tmp_path, "endpoints", FLUXQ_ENDPOINTS_FILE=str(path)))
    parse = one_line_failure(run_fluxq(tmp_path, "endpoints", FLUXQ_ENDPOINTS_FILE=str(not_toml)))

    assert line.startswith("fluxq: invalid settings: FLUXQ_ENDPOINTS_FILE: ")
    assert f"{path}: entry 2 (flux-dev): path: flux-dev is one of fluxq's own endpoints" in line
    assert f"{not_toml}: not TOML:" in parse
    assert "(at line 1, column 11)" in parse
