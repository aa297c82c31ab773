"""Signed delivery URLs: real images in the requested format and size; signature, expiry, CORS.

Images are opened with Pillow; expiry is reached by advancing the simulator's clock.
"""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from fluxq.config.errors import DownloadFailed
from fluxq.config.requests import FluxKontextProInputs, FluxPro11Inputs
from fluxq.simulator import SimulatorServer
from fluxq.simulator.images import ImageCache, render_image
from fluxq.workers.bfl.client import BFLClient, Status
from tests.support.env import KEY
from tests.support.simulator import wait_terminal


def _sample_url(
    client: BFLClient, endpoint: str, request: FluxPro11Inputs | FluxKontextProInputs
) -> str:
    result = wait_terminal(client, client.submit(endpoint, request).polling_url)
    assert result.status is Status.READY
    assert result.sample_url is not None
    return result.sample_url


@pytest.mark.parametrize(
    ("fmt", "pil_format"), [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
)
def test_the_sample_is_an_image_in_the_requested_format_and_size(
    client: BFLClient, tmp_path: Path, fmt: str, pil_format: str
) -> None:
    # Given a 512x384 request in ``fmt``
    request = FluxPro11Inputs(prompt="a bird", width=512, height=384, output_format=fmt)
    url = _sample_url(client, "flux-pro-1.1", request)
    # When fluxq downloads the sample
    downloaded = client.download(url, tmp_path / f"out.{fmt}")
    # Then the path ends with the format, and Pillow reads that format at that size
    assert urlsplit(url).path.endswith(f".{fmt}")
    assert downloaded.content_type == f"image/{fmt}"
    with Image.open(downloaded.path) as image:
        assert (image.format, image.size) == (pil_format, (512, 384))


def test_kontext_samples_default_to_png_at_the_aspect_ratio_size(client: BFLClient) -> None:
    # Given a Kontext request with no output_format and a 16:9 ratio
    url = _sample_url(
        client, "flux-kontext-pro", FluxKontextProInputs(prompt="x", aspect_ratio="16:9")
    )
    # When fetched, Then it is a PNG of about 1 MP in 16:9
    data = httpx.get(url).content
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.size == (1376, 768)


def test_images_are_deterministic_in_prompt_and_seed(client: BFLClient, tmp_path: Path) -> None:
    # Given two tasks with the same prompt and seed, and one with another seed
    same = FluxPro11Inputs(prompt="a boat", seed=7)
    other = FluxPro11Inputs(prompt="a boat", seed=8)
    urls = [_sample_url(client, "flux-pro-1.1", r) for r in (same, same, other)]
    # When all three are downloaded
    digests = [client.download(u, tmp_path / f"{i}.jpeg").sha256 for i, u in enumerate(urls)]
    # Then equal inputs give equal bytes, and another seed gives other bytes
    assert digests[0] == digests[1] != digests[2]


def test_a_tampered_signature_gets_403(sim: SimulatorServer, client: BFLClient) -> None:
    # Given a valid sample URL whose signature is altered
    url = _sample_url(client, "flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    forged_sig = ("0" if query["sig"][0][0] != "0" else "1") + query["sig"][0][1:]
    later = int(query["exp"][0]) + 3600
    # When fetched with the bad signature, or a longer expiry under the old signature
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    bad_sig = httpx.get(base, params={"exp": query["exp"][0], "sig": forged_sig})
    bad_exp = httpx.get(base, params={"exp": later, "sig": query["sig"][0]})
    # Then both are 403, and the genuine URL still works
    assert bad_sig.status_code == bad_exp.status_code == 403
    assert httpx.get(url).status_code == 200
    assert sim.stats()["counters"]["bad_signature_downloads"] == 2


def test_an_expired_sample_url_gets_403_and_is_counted(
    sim: SimulatorServer, client: BFLClient, tmp_path: Path
) -> None:
    # Given a Ready task's sample URL (valid 600 s after ready)
    url = _sample_url(client, "flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    # When 601 s pass and fluxq downloads it
    sim.advance_clock(601)
    with pytest.raises(DownloadFailed) as caught:
        client.download(url, tmp_path / "late.jpeg")
    # Then 403, the file is not left behind, and stats count an expired download
    assert caught.value.status_code == 403
    assert caught.value.expired
    assert not (tmp_path / "late.jpeg").exists()
    assert sim.stats(KEY)["expired_downloads"] == 1


def test_the_url_lifetime_and_expired_status_are_configurable(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given URLs valid 1 s (wall-clock, not time-scaled) that answer 404 once expired
    sim.configure(sample_url_ttl_s=1, expired_download_status=404)
    url = _sample_url(client, "flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    assert httpx.get(url).status_code == 200
    # When 2 s pass, Then 404
    sim.advance_clock(2)
    assert httpx.get(url).status_code == 404


def test_the_sample_url_is_signed_once_unless_resigning_is_on(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given a Ready task
    polling_url = client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x")).polling_url
    first = wait_terminal(client, polling_url).sample_url
    sim.advance_clock(5)
    # When polled again later, Then the same URL comes back (signed when the task became ready)
    assert client.get_result(polling_url).sample_url == first
    # And with resign_sample_on_poll, each poll signs a fresh expiry
    sim.configure(resign_sample_on_poll=True)
    sim.advance_clock(5)
    assert client.get_result(polling_url).sample_url != first


def test_delivery_sends_no_cors_headers(client: BFLClient) -> None:
    # Given a sample URL
    url = _sample_url(client, "flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    # When a browser-like GET and a CORS preflight arrive
    response = httpx.get(url, headers={"Origin": "https://example.org"})
    preflight = httpx.options(
        url, headers={"Origin": "https://example.org", "Access-Control-Request-Method": "GET"}
    )
    # Then no Access-Control-* header is sent
    assert response.status_code == 200
    for answer in (response, preflight):
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")]
    assert preflight.status_code == 405


def test_the_image_cache_returns_the_same_bytes_and_can_be_disabled() -> None:
    # Given a cache of one entry and a disabled cache
    cache, uncached = ImageCache(1), ImageCache(0)
    # When the same image is asked for twice from each
    first = cache.get("p", 1, 64, 48, "png")
    # Then both return what render_image makes
    assert cache.get("p", 1, 64, 48, "png") is first
    assert uncached.get("p", 1, 64, 48, "png") == first == render_image("p", 1, 64, 48, "png")
    with pytest.raises(ValueError, match="format"):
        render_image("p", 1, 64, 48, "gif")
