"""Request validation with the catalog's models: BFL's 422 shape, unknown fields, odd endpoints.

Raw httpx is used only where fluxq's client hides the body (422 shape, 404).
"""

from __future__ import annotations

import httpx
import pytest

from fluxq.config.catalog import CATALOG
from fluxq.config.errors import InvalidRequest, UnexpectedResponse
from fluxq.simulator import SimulatorServer
from fluxq.workers.bfl.client import BFLClient
from tests.support.env import KEY


def test_an_invalid_body_gets_422_naming_every_bad_field(client: BFLClient) -> None:
    # Given a flux-pro-1.1 body with two bad sides
    body = {"prompt": "x", "width": 100, "height": 7}
    # When submitted without local validation
    with pytest.raises(InvalidRequest) as caught:
        client.submit_json("flux-pro-1.1", body)
    # Then fluxq's error names both fields
    assert set(caught.value.fields) == {"width", "height"}


def test_the_422_body_has_bfl_detail_shape(sim: SimulatorServer, raw: httpx.Client) -> None:
    # Given a Kontext body without its required prompt
    # When POSTed
    response = raw.post(f"{sim.base_url}/v1/flux-kontext-pro", json={}, headers={"x-key": KEY})
    # Then the body is {"detail": [{"loc", "msg", "type"}]} with loc starting at "body"
    assert response.status_code == 422
    [item] = response.json()["detail"]
    assert set(item) == {"loc", "msg", "type"}
    assert item["loc"] == ["body", "prompt"]
    assert item["type"] == "missing"
    assert sim.stats(KEY)["invalid_422"] == 1


def test_unknown_fields_are_ignored_by_default(sim: SimulatorServer, client: BFLClient) -> None:
    # Given a body with a field no schema has
    body = {"prompt": "x", "widht": 512, "favourite_colour": "blue"}
    # When submitted, Then BFL (FastAPI) ignores it and accepts the task
    assert client.submit_json("flux-pro-1.1", body).id
    assert sim.stats(KEY)["submits"] == 1


def test_unknown_fields_get_422_when_reject_unknown_fields_is_on(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given the switch on
    sim.configure(reject_unknown_fields=True)
    # When a body with a typo is submitted, Then the typo is the named field
    with pytest.raises(InvalidRequest) as caught:
        client.submit_json("flux-pro-1.1", {"prompt": "x", "widht": 512})
    assert caught.value.fields == ("widht",)


def test_every_catalog_endpoint_accepts_a_minimal_valid_body(client: BFLClient) -> None:
    # Given the smallest body each endpoint's schema accepts
    extras = {"image": "aGVsbG8=", "finetune_id": "my-finetune", "mode": "t2v"}
    for endpoint, spec in CATALOG.items():
        fields = spec.request_model.model_fields
        body = {"prompt": "a cat"} | {k: v for k, v in extras.items() if k in fields}
        # When submitted, Then a task is created
        assert client.submit_json(endpoint, body).id, endpoint


def test_an_unknown_endpoint_is_404(
    sim: SimulatorServer, raw: httpx.Client, client: BFLClient
) -> None:
    # Given an endpoint that is not in the catalog
    # When POSTed, Then FastAPI's 404 body comes back (fluxq: an unexpected answer)
    response = raw.post(f"{sim.base_url}/v1/flux-9000", json={}, headers={"x-key": KEY})
    assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
    with pytest.raises(UnexpectedResponse):
        client.submit_json("flux-9000", {"prompt": "x"})


def test_a_body_that_is_not_json_gets_422(sim: SimulatorServer, raw: httpx.Client) -> None:
    # Given a broken and an empty body
    for content in (b"{not json", b""):
        # When POSTed, Then 422 with a detail list
        response = raw.post(
            f"{sim.base_url}/v1/flux-pro-1.1", content=content, headers={"x-key": KEY}
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][0] == "body"


def test_get_result_without_an_id_is_422(sim: SimulatorServer, raw: httpx.Client) -> None:
    # Given the polling host
    polling = sim.settings_overrides()["allowed_urls"][0]
    # When get_result is called without id, Then 422 names query.id
    response = raw.get(f"{polling}/v1/get_result")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "id"]


def test_finetune_utility_endpoints_answer_minimally(
    sim: SimulatorServer, raw: httpx.Client
) -> None:
    # Given an authenticated caller
    headers = {"x-key": KEY}
    # When the finetune utilities are called
    listed = raw.get(f"{sim.base_url}/v1/my_finetunes", headers=headers)
    details = raw.get(
        f"{sim.base_url}/v1/finetune_details", params={"finetune_id": "nope"}, headers=headers
    )
    no_id = raw.get(f"{sim.base_url}/v1/finetune_details", headers=headers)
    deleted = raw.post(
        f"{sim.base_url}/v1/delete_finetune", json={"finetune_id": "nope"}, headers=headers
    )
    keyless = raw.get(f"{sim.base_url}/v1/my_finetunes")
    # Then: an empty list, 404 for unknown ids, 422 without an id, 403 without a key
    assert (listed.status_code, listed.json()) == (200, {"finetunes": []})
    assert details.status_code == 404
    assert no_id.status_code == 422
    assert deleted.status_code == 404
    assert keyless.status_code == 403
