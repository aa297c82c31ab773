"""The simulator's ASGI app: BFL's routes for one listener role, plus ``/sim/*`` on the API role.

``create_app(config)`` serves every role at once, for in-process use with httpx.ASGITransport.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fluxq.simulator.config import SimConfig
from fluxq.simulator.delivery import parse_sample
from fluxq.simulator.engine import Reply, Simulator, detail
from fluxq.simulator.faults import DroppedResponse
from fluxq.simulator.images import CONTENT_TYPES
from fluxq.simulator.pricing import quote
from fluxq.simulator.submit import submit
from fluxq.simulator.videos import render_mp4
from fluxq.simulator.webhooks import WebhookDispatcher

Role = Literal["all", "api", "polling", "delivery"]
"""Which listener an app serves: API host, polling "cluster" host, delivery, or all three."""

_FAULT_REPLIES = {
    "500": detail(500, "Internal Server Error"),
    "503": detail(503, "Service temporarily unavailable"),
}


def _respond(reply: Reply) -> Response:
    return JSONResponse(reply.body, status_code=reply.status_code, headers=dict(reply.headers))


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _fault_response(sim: Simulator, phase: Literal["submit", "poll"]) -> Response | None:
    delay_s = sim.slow_delay_s(phase)
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    fault = sim.pick_fault(phase)
    if fault == "drop":
        return DroppedResponse()
    if fault is not None:
        return _respond(_FAULT_REPLIES[fault])
    return None


async def _json_body(request: Request) -> object | Reply:
    raw = await request.body()
    if not raw:
        return Reply(
            422, {"detail": [{"loc": ["body"], "msg": "Field required", "type": "missing"}]}
        )
    try:
        parsed: object = json.loads(raw)
    except ValueError as exc:
        error = {"loc": ["body", 0], "msg": f"JSON decode error: {exc}", "type": "json_invalid"}
        return Reply(422, {"detail": [error]})
    return parsed


class _Handlers:
    """Route handlers bound to one Simulator and one role."""

    def __init__(self, sim: Simulator, role: Role) -> None:
        self.sim = sim
        self.role = role

    def _bases(self, request: Request) -> tuple[str, str]:
        urls = self.sim.urls
        if urls is None:
            return _base_url(request), _base_url(request)
        return urls.polling, urls.delivery

    async def generate(self, request: Request) -> Response:
        # The body is read first, as a server does before its handler runs (slowly or not).
        body = await _json_body(request)
        faulty = await _fault_response(self.sim, "submit")
        if faulty is not None:
            return faulty
        if isinstance(body, Reply):
            return _respond(body)
        polling_base, delivery_base = self._bases(request)
        endpoint = request.path_params["endpoint"]
        key = request.headers.get("x-key")
        reply = submit(
            self.sim, key, endpoint, body, polling_base=polling_base, delivery_base=delivery_base
        )
        if reply.lost:
            # Created and billed; the client only sees its connection break.
            return DroppedResponse(partial_body=b'{"id":"')
        return _respond(reply)

    async def get_result(self, request: Request) -> Response:
        faulty = await _fault_response(self.sim, "poll")
        if faulty is not None:
            return faulty
        reply = self.sim.get_result(
            request.query_params.get("id"),
            request.headers.get("x-key"),
            on_api_host=self.role == "api",
        )
        return _respond(reply)

    async def credits(self, request: Request) -> Response:
        return _respond(self.sim.credits(request.headers.get("x-key")))

    async def pricing(self, request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Reply):
            return _respond(body)
        return _respond(quote(self.sim, request.headers.get("x-key"), body))

    async def my_finetunes(self, request: Request) -> Response:
        if self.sim.account_for(request.headers.get("x-key")) is None:
            return _respond(detail(403, "Not authenticated"))
        return JSONResponse({"finetunes": []})

    async def finetune_details(self, request: Request) -> Response:
        if self.sim.account_for(request.headers.get("x-key")) is None:
            return _respond(detail(403, "Not authenticated"))
        finetune_id = request.query_params.get("finetune_id")
        if not finetune_id:
            error = {"loc": ["query", "finetune_id"], "msg": "Field required", "type": "missing"}
            return JSONResponse({"detail": [error]}, status_code=422)
        return _respond(detail(404, "Finetune not found"))

    async def delete_finetune(self, request: Request) -> Response:
        if self.sim.account_for(request.headers.get("x-key")) is None:
            return _respond(detail(403, "Not authenticated"))
        body = await _json_body(request)
        if isinstance(body, Reply):
            return _respond(body)
        if not isinstance(body, dict) or not isinstance(body.get("finetune_id"), str):
            error = {"loc": ["body", "finetune_id"], "msg": "Field required", "type": "missing"}
            return JSONResponse({"detail": [error]}, status_code=422)
        return _respond(detail(404, "Finetune not found"))

    async def sample(self, request: Request) -> Response:
        ref = parse_sample(
            request.path_params["name"],
            request.query_params.get("exp"),
            request.query_params.get("sig"),
        )
        if ref is None:
            return _respond(detail(404, "The specified blob does not exist"))
        grant = self.sim.authorise_sample(ref)
        if isinstance(grant, Reply):
            return _respond(grant)
        fault = self.sim.pick_fault("download")
        if fault == "403":
            # A valid URL refused: nothing is rendered, as when the delivery host is in trouble.
            return _respond(detail(403, "Server failed to authenticate the request"))
        if grant.fmt == "mp4":  # a few kB built from bytes: no thread needed
            data = render_mp4(grant.prompt, grant.seed, grant.index, grant.video_s)
        else:
            # Encoding takes milliseconds: keep it off the loop that also answers polls.
            data = await run_in_threadpool(
                self.sim.images.get, grant.prompt, grant.seed, grant.width, grant.height, grant.fmt
            )
        if fault == "drop":
            return DroppedResponse(
                partial_body=data[: len(data) // 2], media_type=CONTENT_TYPES[grant.fmt]
            )
        return Response(data, media_type=CONTENT_TYPES[grant.fmt])

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.sim.stats(request.query_params.get("account")))

    async def timeline(self, request: Request) -> Response:
        return JSONResponse(self.sim.timeline(request.query_params.get("account")))

    async def reset(self, request: Request) -> Response:
        self.sim.reset()
        return JSONResponse({"reset": True})

    async def config(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(self.sim.config.public())
        body = await _json_body(request)
        if isinstance(body, Reply):
            return _respond(body)
        if not isinstance(body, dict):
            return _respond(detail(422, "expected a JSON object of SimConfig fields"))
        try:
            new = self.sim.configure(body)
        except ValidationError as exc:
            errors = [
                {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
            ]
            return JSONResponse({"detail": errors}, status_code=422)
        return JSONResponse(new.public())

    async def set_credits(self, request: Request) -> Response:
        key = request.headers.get("x-key")
        body = await _json_body(request)
        credits = body.get("credits") if isinstance(body, dict) else None
        if not key or isinstance(credits, bool) or not isinstance(credits, int | float):
            return _respond(detail(422, "send x-key and a JSON body {'credits': number}"))
        self.sim.set_credits(key, float(credits))
        return JSONResponse({"credits": float(credits)})

    async def advance_clock(self, request: Request) -> Response:
        body = await _json_body(request)
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            return _respond(detail(422, "send a JSON body {'seconds': number >= 0}"))
        self.sim.clock.advance(float(seconds))
        return JSONResponse({"clock_offset_s": self.sim.clock.offset_s})

    def routes(self) -> list[Route]:
        api = [
            Route("/v1/credits", self.credits, methods=["GET"]),
            Route("/v1/pricing", self.pricing, methods=["POST"]),
            Route("/v1/my_finetunes", self.my_finetunes, methods=["GET"]),
            Route("/v1/finetune_details", self.finetune_details, methods=["GET"]),
            Route("/v1/delete_finetune", self.delete_finetune, methods=["POST"]),
            # :path, as BFL's nested endpoints (flux-tools/erase-v1) are one endpoint each.
            Route("/v1/{endpoint:path}", self.generate, methods=["POST"]),
            Route("/sim/stats", self.stats, methods=["GET"]),
            Route("/sim/timeline", self.timeline, methods=["GET"]),
            Route("/sim/reset", self.reset, methods=["POST"]),
            Route("/sim/config", self.config, methods=["GET", "POST"]),
            Route("/sim/credits", self.set_credits, methods=["POST"]),
            Route("/sim/clock", self.advance_clock, methods=["POST"]),
        ]
        polling = [Route("/v1/get_result", self.get_result, methods=["GET"])]
        delivery = [Route("/sample/{name}", self.sample, methods=["GET"])]
        by_role: dict[Role, list[Route]] = {
            "all": polling + api + delivery,
            "api": polling + api,
            "polling": polling,
            "delivery": delivery,
        }
        return by_role[self.role]


async def _http_error(request: Request, exc: Exception) -> Response:
    # FastAPI's shape for routing errors too: {"detail": "Not Found"}.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(
    config: SimConfig | None = None, *, simulator: Simulator | None = None, role: Role = "all"
) -> Starlette:
    """An ASGI app for ``role``, on a new Simulator built from ``config`` or on ``simulator``.

    Webhooks are delivered by the app serving the API role, from its lifespan: in-process users
    must run the lifespan (uvicorn does) for webhooks to be sent.
    """
    if config is not None and simulator is not None:
        raise ValueError("pass config or simulator, not both")
    sim = simulator if simulator is not None else Simulator(config)
    handlers = _Handlers(sim, role)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dispatcher = WebhookDispatcher(sim)
        await dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.stop()

    app = Starlette(
        routes=handlers.routes(),
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan if role in ("all", "api") else None,
    )
    app.state.simulator = sim
    return app
