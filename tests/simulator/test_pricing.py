"""``POST /v1/pricing``: the simulator quotes FLUX.2 shapes as BFL's SDK asks, and fluxq's client
reads the quote (or a 404 where the deployment has no pricing endpoint)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from fluxq.config.catalog import PriceShape
from fluxq.config.errors import InvalidRequest, NotAuthorised
from fluxq.config.requests import Flux2Inputs
from fluxq.simulator import SimulatorServer
from fluxq.workers.bfl.client import BFLClient
from tests.support.env import KEY


@pytest.mark.parametrize(
    ("width", "height", "inputs", "credits"),
    [
        (1024, 1024, [], 3.0),  # the first megapixel
        (1440, 1440, [], 4.5),  # 1.98 MP: BFL's own example
        (1024, 1024, [(1024, 1024)], 4.5),  # an input megapixel costs as an output one
        (2048, 2048, [(1024, 1024), (512, 512)], 10.5),  # 4 MP out (3 extra), 1.25 MP in (2)
    ],
)
def test_flux2_shapes_are_quoted_by_the_megapixel(
    client_for: Callable[..., BFLClient],
    width: int,
    height: int,
    inputs: list[tuple[int, int]],
    credits: float,
) -> None:
    assert client_for().quote("flux-2-pro", width, height, inputs) == credits


def test_a_quote_agrees_with_the_table_and_follows_the_price_the_submit_charges(
    sim: SimulatorServer, client_for: Callable[..., BFLClient]
) -> None:
    client = client_for()
    shape = PriceShape("flux-2-flex", 1536, 1024, 1)
    side = 1024
    # Given BFL's prices equal to fluxq's table, the quote is the table's price
    assert client.quote(shape.endpoint, shape.width, shape.height, [(side, side)]) == (
        shape.table_credits()
    )
    # When BFL's prices rise by half, Then the quote and a submit's cost both say so
    sim.configure(price_factor=1.5)
    quoted = client.quote("flux-2-pro", 1024, 1024)
    submitted = client.submit("flux-2-pro", Flux2Inputs(prompt="a heron", width=1024, height=1024))
    assert quoted == submitted.cost == 4.5


def test_a_deployment_without_pricing_answers_404_and_the_client_says_none(
    sim: SimulatorServer, client_for: Callable[..., BFLClient]
) -> None:
    sim.configure(pricing_available=False)
    assert client_for().quote("flux-2-pro", 1024, 1024) is None


def test_only_flux2_models_are_quoted_and_a_bad_body_names_its_fields(
    sim: SimulatorServer, client_for: Callable[..., BFLClient]
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        client_for().quote("flux-pro-1.1", 1024, 1024)
    assert [e.loc for e in refused.value.errors] == [("body", "model")]
    url = sim.settings_overrides()["bfl_base_url"] + "/v1/pricing"
    body = {"model": "flux-2-pro", "width": "1024", "input_images": [{"width": 5}]}
    answer = httpx.post(url, json=body, headers={"x-key": KEY}, timeout=10)
    assert answer.status_code == 422
    assert [e["loc"] for e in answer.json()["detail"]] == [
        ["body", "width"], ["body", "height"], ["body", "input_images", 0],
    ]  # fmt: skip


def test_a_quote_without_a_key_is_refused(client_for: Callable[..., BFLClient]) -> None:
    with pytest.raises(NotAuthorised):
        client_for(bfl_api_key=None).quote("flux-2-pro", 1024, 1024)
