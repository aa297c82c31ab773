"""The endpoint table as data: fluxq's own file is well-formed, a declared file is read into
``Settings.catalog``, and a bad one is refused naming the file, the entry and the field."""

from __future__ import annotations

import pickle
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from fluxq.config.catalog import (
    CATALOG,
    EndpointSpec,
    PerImage,
    PerMegapixel,
    Unpriced,
    catalog_with,
    estimate_credits,
    output_size,
    validate_request,
)
from fluxq.config.endpoint_spec import DEFAULT_CAP_CLASS, ENDPOINT_PATTERN
from fluxq.config.endpoints import (
    BUILTIN_FILE,
    FIELDS,
    REQUEST_MODELS,
    REQUIRED_BUILTIN,
    parse_endpoints,
)
from fluxq.config.errors import ConfigError
from fluxq.config.requests import OpenRequest
from fluxq.config.settings import DEFAULT_ENDPOINT_CAPS, Settings, load_settings
from fluxq.workers.state import keys
from tests.support.env import scrub_env

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {
    "flux-tools/outpainting-v1",
    "flux-tools/erase-v1",
    "flux-tools/deblur-v1",
    "flux-tools/vto-v1",
}
VIDEO = "flux-3-video"
LEGACY = {"flux-pro", "flux-pro-1.0-fill", "flux-pro-1.0-expand", "flux-pro-1.0-fill-finetuned"}
MINIMAL = """
[[endpoint]]
path = "acme/upscale-v2"
cap = "default"
media = "image"
price = { per_image = 3 }
"""
"""The smallest declared entry: path, cap class, media and price."""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scrub_env(monkeypatch, tmp_path)


def shipped_entries() -> list[dict[str, Any]]:
    """fluxq's own file as TOML, read the way the package reads it."""
    text = resources.files("fluxq.config").joinpath(BUILTIN_FILE).read_text(encoding="utf-8")
    entries: list[dict[str, Any]] = tomllib.loads(text)["endpoint"]
    return entries


def declared(text: str, source: str = "decl.toml") -> tuple[EndpointSpec, ...]:
    return parse_endpoints(text, source, builtin=CATALOG)


def refusal(text: str, source: str = "decl.toml") -> str:
    with pytest.raises(ConfigError) as caught:
        declared(text, source)
    return str(caught.value)


# --- fluxq's own file ------------------------------------------------------------------------


def test_the_shipped_file_is_the_catalog_entry_for_entry() -> None:
    entries = shipped_entries()

    assert [entry["path"] for entry in entries] == list(CATALOG)
    assert len(set(CATALOG)) == len(entries) == 22


@pytest.mark.parametrize("entry", shipped_entries(), ids=lambda e: e["path"])
def test_every_shipped_entry_states_every_field_and_each_is_valid(entry: dict[str, Any]) -> None:
    assert set(REQUIRED_BUILTIN) <= set(entry) <= set(FIELDS)
    assert ENDPOINT_PATTERN.fullmatch(entry["path"])
    assert entry["request"] == "open" or entry["request"] in REQUEST_MODELS
    assert entry["status"] in ("current", "legacy", "preview")
    assert entry["cap"] == DEFAULT_CAP_CLASS or entry["cap"] in DEFAULT_ENDPOINT_CAPS
    if entry["path"] == VIDEO:  # BFL: MP4 URLs expire after about 2 hours
        assert (entry["media"], entry["url_lifetime_s"]) == ("video/mp4", 7200)
    else:
        assert (entry["media"], entry["url_lifetime_s"]) == ("image", 600)
    assert entry["sizing"] in ("pixels", "aspect_ratio", "image")
    assert entry["typical_s"] > 0
    price = entry["price"]
    if price != "unpriced":
        assert set(price) in ({"per_image"}, {"first_mp", "extra_mp"})
        assert all(isinstance(v, float) and v > 0 for v in price.values())


def test_the_table_is_legacy_fill_and_expand_preview_tools_and_video_and_no_canny() -> None:
    by_status = {
        status: {e for e, spec in CATALOG.items() if spec.status == status}
        for status in ("current", "legacy", "preview", "declared")
    }

    assert by_status["legacy"] == LEGACY
    assert by_status["preview"] == TOOLS | {VIDEO}
    assert by_status["declared"] == set()
    assert not [e for e in CATALOG if "canny" in e or "depth" in e]
    assert [e for e, spec in CATALOG.items() if spec.media != "image"] == [VIDEO]
    assert CATALOG[VIDEO].media == "video/mp4"


def test_the_tools_take_any_object_with_no_price_and_size_as_their_input() -> None:
    for endpoint in TOOLS:
        spec = CATALOG[endpoint]
        assert spec.request_model is OpenRequest
        assert spec.price == Unpriced()
        request = validate_request(endpoint, {"image": "aGVsbG8=", "mask": "x", "left": "7"})
        assert estimate_credits(endpoint, request) == 0.0
        assert output_size(endpoint, request) == (1024, 1024)  # a margin that is text: ignored


@pytest.mark.parametrize("endpoint", sorted(CATALOG))
def test_every_entry_sizes_and_prices_a_minimal_request(endpoint: str) -> None:
    required = CATALOG[endpoint].request_model.model_json_schema().get("required", [])
    body = {"prompt": "p"} | {k: "f" for k in ("image", "finetune_id") if k in required}
    body |= {"mode": "t2v"} if "mode" in required else {}  # flux-3-video
    request = validate_request(endpoint, body)

    width, height = output_size(endpoint, request)

    assert width >= 64
    assert height >= 64
    assert estimate_credits(endpoint, request) >= 0


def test_the_default_cap_class_is_the_limiters_default_group() -> None:
    assert DEFAULT_CAP_CLASS == keys.DEFAULT_GROUP
    assert CATALOG["flux-kontext-max"].cap_class == "flux-kontext-max"
    assert CATALOG["flux-dev"].cap_class == DEFAULT_CAP_CLASS


def test_the_wheel_carries_the_file_as_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

    assert BUILTIN_FILE in pyproject["tool"]["setuptools"]["package-data"]["fluxq.config"]


def test_fluxqs_own_file_refuses_a_declared_status_and_needs_every_field() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_endpoints(MINIMAL.replace('media = "image"', 'status = "declared"'), "own")

    assert "entry 1 (acme/upscale-v2): media: missing" in str(caught.value)
    assert "typical_s: missing" in str(caught.value)
    assert "status: 'declared': one of current, legacy, preview" in str(caught.value)


# --- a declared file -------------------------------------------------------------------------


def test_a_minimal_declared_entry_takes_any_object_at_its_price() -> None:
    (spec,) = declared(MINIMAL)

    assert spec.endpoint == "acme/upscale-v2"
    assert (spec.status, spec.open, spec.cap_group, spec.media) == ("declared", True, None, "image")
    assert (spec.url_lifetime_s, spec.sizing, spec.typical_s) == (600.0, "image", None)
    assert spec.price == PerImage(3.0)
    assert spec.prompt_max_chars is not None  # a prompt is bounded on every endpoint


def test_a_declared_entry_may_name_a_model_a_cap_class_and_a_video_result() -> None:
    text = """
    [[endpoint]]
    path = "flux-2-pro-next"
    request = "Flux2Inputs"
    cap = "flux-2-next"
    media = "video/mp4"
    url_lifetime_s = 7200
    price = { first_mp = 3.0, extra_mp = 1.5 }
    sizing = "pixels"
    typical_s = 12.5
    status = "declared"
    """
    (spec,) = declared(text)
    catalog = {**CATALOG, spec.endpoint: spec}

    assert (spec.cap_class, spec.media, spec.url_lifetime_s) == ("flux-2-next", "video/mp4", 7200)
    assert spec.typical_s == 12.5
    assert spec.price == PerMegapixel(3.0, 1.5)
    request = validate_request("flux-2-pro-next", {"prompt": "p"}, catalog=catalog)
    assert estimate_credits("flux-2-pro-next", request, catalog=catalog) == 3.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            MINIMAL.replace("acme/upscale-v2", "flux-dev"),
            "entry 1 (flux-dev): path: flux-dev is one of fluxq's own endpoints (current); a "
            "declared endpoint may not redefine it",
            id="redefines-a-builtin",
        ),
        pytest.param(
            MINIMAL.replace("acme/upscale-v2", "flux-tools/erase-v1"),
            "entry 1 (flux-tools/erase-v1): path: flux-tools/erase-v1 is one of fluxq's own "
            "endpoints (preview)",
            id="redefines-a-tool",
        ),
        pytest.param(
            MINIMAL + MINIMAL, "entry 2 (acme/upscale-v2): path: also entry 1's", id="twice"
        ),
        pytest.param(
            MINIMAL.replace("acme/upscale-v2", "../credits"),
            "entry 1: path: '../credits' is not an endpoint path",
            id="traversal",
        ),
        pytest.param(
            MINIMAL.replace("acme/upscale-v2", "acme/./x"), "entry 1: path: 'acme/./x'", id="dot"
        ),
        pytest.param(
            MINIMAL.replace("acme/upscale-v2", "/v1/acme"),
            "entry 1: path: '/v1/acme': give the path after /v1/, such as flux-tools/erase-v1",
            id="with-slash-v1",
        ),
        pytest.param(
            MINIMAL.replace("acme/upscale-v2", "v1/acme"),
            "entry 1: path: 'v1/acme': give the path after /v1/",
            id="with-v1",
        ),
        pytest.param(MINIMAL.replace("acme/upscale-v2", "Acme/x?y=1"), "'Acme/x?y=1'", id="query"),
        pytest.param(MINIMAL + 'colour = "red"\n', "colour: unknown field", id="unknown-field"),
        pytest.param(
            MINIMAL.replace("price = { per_image = 3 }", ""), "price: missing", id="no-price"
        ),
        pytest.param(
            MINIMAL.replace("{ per_image = 3 }", "{ per_image = -1 }"),
            "price.per_image: -1: a number of credits, 0 or more",
            id="negative-price",
        ),
        pytest.param(
            MINIMAL.replace("{ per_image = 3 }", "{ first_mp = 3 }"),
            "price: {'first_mp': 3}: \"unpriced\", { per_image = C } or",
            id="half-a-formula",
        ),
        pytest.param(
            MINIMAL.replace("{ per_image = 3 }", '"free"'), "price: 'free':", id="price-word"
        ),
        pytest.param(
            MINIMAL + 'status = "current"\n',
            "status: 'current': a declared endpoint's status is \"declared\"",
            id="status",
        ),
        pytest.param(
            MINIMAL.replace('media = "image"', 'media = "video"'),
            "media: 'video': \"image\" or a media type",
            id="media",
        ),
        pytest.param(
            MINIMAL.replace('media = "image"', 'media = "video/mp4"'),
            "url_lifetime_s: missing: needed for video/mp4",
            id="video-without-lifetime",
        ),
        pytest.param(
            MINIMAL + 'request = "FluxNope"\n',
            "request: 'FluxNope' is no request model of fluxq's; known: open, ",
            id="model",
        ),
        pytest.param(
            MINIMAL + 'sizing = "pixels"\n',
            'sizing: an "open" request is sized as "image"',
            id="open-sizing",
        ),
        pytest.param(
            MINIMAL + 'request = "FluxDevInputs"\nsizing = "aspect_ratio"\n',
            "sizing: 'aspect_ratio' needs request fields aspect_ratio",
            id="model-sizing",
        ),
        pytest.param(MINIMAL.replace('cap = "default"', 'cap = "a:b"'), "cap: 'a:b':", id="cap"),
        pytest.param(
            MINIMAL.replace("[[endpoint]]", "[endpoint]"),
            "endpoint: write each entry as [[endpoint]]",
            id="table-not-array",
        ),
        pytest.param("version = 2\n" + MINIMAL, "version: unknown", id="top-level-key"),
        pytest.param(
            MINIMAL.replace("[[endpoint]]", "[[endpoint]"),
            "not TOML: Expected ']]' at the end of an array declaration (at line 2",
            id="not-toml",
        ),
    ],
)
def test_a_bad_declared_file_names_the_file_the_entry_and_the_field(
    text: str, expected: str
) -> None:
    message = refusal(text, "/etc/fluxq/endpoints.toml")

    assert message.startswith("/etc/fluxq/endpoints.toml: ")
    assert expected in message
    assert "\n" not in message


def test_every_problem_of_every_entry_is_named_at_once() -> None:
    bad = MINIMAL.replace("acme/upscale-v2", "acme/a").replace("{ per_image = 3 }", '"x"')
    worse = MINIMAL.replace("acme/upscale-v2", "acme/b").replace('"image"', '"sound"')

    message = refusal(bad + worse)

    assert "entry 1 (acme/a): price:" in message
    assert "entry 2 (acme/b): media:" in message


def test_catalog_with_adds_the_declared_after_fluxqs_own_and_changes_no_other(
    tmp_path: Path,
) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(MINIMAL, encoding="utf-8")

    catalog = catalog_with(path)

    assert list(catalog) == [*CATALOG, "acme/upscale-v2"]
    assert "acme/upscale-v2" not in CATALOG
    assert catalog_with(None) is CATALOG


def test_a_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot be read: No such file"):
        catalog_with(tmp_path / "nope.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(MINIMAL.replace("acme", "caf\xe9").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.toml: not UTF-8 text"):
        catalog_with(latin)


# --- FLUXQ_ENDPOINTS_FILE --------------------------------------------------------------------


def test_the_setting_puts_the_declared_endpoints_in_the_settings_catalog(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    monkeypatch.setenv("FLUXQ_ENDPOINTS_FILE", str(path))

    settings = load_settings()

    assert settings.endpoints_file == path
    assert settings.catalog["acme/upscale-v2"].status == "declared"
    assert set(settings.catalog) - set(CATALOG) == {"acme/upscale-v2"}
    assert "acme/upscale-v2" in settings.with_overrides(active_cap=3).catalog
    assert "acme/upscale-v2" in pickle.loads(pickle.dumps(settings)).catalog  # settings travel
    assert load_settings(endpoints_file=None).catalog is CATALOG
    assert Settings().masked()["endpoints_file"] == str(path)


def test_a_bad_file_is_a_config_error_naming_the_variable_and_every_other_bad_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(MINIMAL.replace("acme/upscale-v2", "flux-dev"), encoding="utf-8")
    monkeypatch.setenv("FLUXQ_ENDPOINTS_FILE", str(path))
    monkeypatch.setenv("FLUXQ_ACTIVE_CAP", "zero")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert f"FLUXQ_ENDPOINTS_FILE: Value error, {path}: entry 1 (flux-dev): path:" in message
    assert "FLUXQ_ACTIVE_CAP" in message
