"""``fluxq api`` (no token, loopback) against a real browser tab: a page of another origin and a
rebound name try to enqueue and read, and are refused.

A headless Chromium (Debian's ``chromium``) is driven over its DevTools pipe, as
``scripts/flower_screenshot.py`` does; everything listens on 127.0.0.0/8 and every process is
stopped by its pid. Outside CI the test is skipped when no Chromium is found; in CI (``CI`` set)
that is a failure: ``.ci/run`` installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fluxq.workers.state import keys
from scripts.flower_screenshot import WIRING, DevTools, _group, _high
from tests.support.api import ApiServer
from tests.support.net import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BROWSER_WAIT_S = 30.0
REBOUND = "rebind.test"
"""A name Chromium resolves to 127.0.0.1 (``--host-resolver-rules``), as DNS rebinding would."""


def chromium_binary() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    if os.environ.get("CI"):
        pytest.fail("no Chromium in CI: .ci/run installs it (apt-get install -y chromium)")
    pytest.skip("no Chromium (apt-get install -y chromium, or CHROMIUM=/path/to/chrome)")


@contextlib.contextmanager
def chromium(binary: str) -> Iterator[DevTools]:
    """A headless Chromium with a fresh profile, its DevTools pipe on fds 3 and 4."""
    commands_r, commands_w, answers_r, answers_w = (_high(fd) for fd in (*os.pipe(), *os.pipe()))
    with tempfile.TemporaryDirectory(prefix="fluxq-chromium-") as profile:
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-default-browser-check", "--disable-extensions", "--no-proxy-server",
            "--disable-dev-shm-usage", "--remote-debugging-pipe", f"--user-data-dir={profile}",
            f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1",
        ]  # fmt: skip
        argv = [
            sys.executable, "-c", WIRING, str(commands_r), str(answers_w), binary, *flags,
            "about:blank",
        ]  # fmt: skip
        browser = subprocess.Popen(
            argv, pass_fds=(commands_r, answers_w), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        os.close(commands_r)
        os.close(answers_w)
        tools = DevTools(commands_w, answers_r)
        try:
            yield tools
        finally:
            with contextlib.suppress(RuntimeError, OSError):
                tools.call("Browser.close")
            try:
                browser.wait(timeout=10)
            except subprocess.TimeoutExpired:
                browser.kill()
                browser.wait(timeout=5)
            for pid in _group(browser.pid):  # a renderer its browser did not reap: by pid
                if pid != browser.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            os.close(commands_w)
            os.close(answers_r)


def attack_page(api: str) -> bytes:
    """A page of another origin: three POSTs a browser sends with no CORS preflight (text/plain,
    a Blob with no type, an NDJSON batch as text/plain) and a text/plain form whose body is JSON."""
    job = {"endpoint": "flux-dev", "request": {"prompt": "a heron"}}
    # The form sends name=value: {"endpoint": …, "request": {"prompt": "a heron="}}, valid JSON
    form_name = '{"endpoint": "flux-dev", "job_id": "csrf-form", "request": {"prompt": "a heron'
    script = f"""
const api = {json.dumps(api)};
const job = (id) => JSON.stringify({{...{json.dumps(job)}, job_id: id}});
const opaque = (p) => p.then((r) => r.type, (e) => "error: " + e);
window.sent = Promise.all([
  opaque(fetch(api + "/v1/jobs", {{method: "POST", mode: "no-cors",
    headers: {{"Content-Type": "text/plain"}}, body: job("csrf-text")}})),
  opaque(fetch(api + "/v1/jobs", {{method: "POST", mode: "no-cors",
    body: new Blob([job("csrf-blob")])}})),
  opaque(fetch(api + "/v1/batches?name=csrf&endpoint=flux-dev", {{method: "POST",
    mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
    body: '{{"id": "l1", "prompt": "a heron"}}\\n'}})),
]);
"""
    page = f"""<!doctype html><html><head><title>cute herons</title></head><body>
<form id="form" method="POST" enctype="text/plain" action="{api}/v1/jobs">
<input type="hidden" name='{form_name}' value='"}}}}'></form>
<script>{script}</script></body></html>"""
    return page.encode()


@contextlib.contextmanager
def serving(page: bytes, host: str) -> Iterator[str]:
    """``page`` at http://host:port/ until the block ends."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class Tab:
    """One page target, and the responses its network saw (status by method and URL)."""

    def __init__(self, tools: DevTools) -> None:
        self.tools = tools
        target = tools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = tools.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        tools.call("Network.enable", session=self.session)
        tools.call("Page.enable", session=self.session)
        self.methods: dict[str, tuple[str, str]] = {}
        self.answers: list[tuple[str, str, int]] = []

    def open(self, url: str) -> None:
        self.tools.call("Page.navigate", {"url": url}, session=self.session)
        self.tools.wait_event("Page.loadEventFired", timeout_s=BROWSER_WAIT_S)

    def evaluate(self, expression: str) -> Any:
        result = self.tools.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
        )
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_answers(self, count: int, prefix: str) -> list[tuple[str, str, int]]:
        """The first ``count`` responses to requests whose URL starts with ``prefix``."""
        deadline = time.monotonic() + BROWSER_WAIT_S
        while True:
            for event in self.tools._events:
                params = event.get("params", {})
                if event.get("method") == "Network.requestWillBeSent":
                    request = params["request"]
                    self.methods[params["requestId"]] = (request["method"], request["url"])
                elif event.get("method") == "Network.responseReceived":
                    method, url = self.methods.get(params["requestId"], ("?", "?"))
                    self.answers.append((method, url, params["response"]["status"]))
            self.tools._events.clear()
            # Chromium asks for /favicon.ico on its own, sometimes: not one of the page's requests
            found = [
                a
                for a in self.answers
                if a[1].startswith(prefix) and not a[1].endswith("/favicon.ico")
            ]
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            assert left > 0, f"saw only {self.answers}"
            self.tools._events.append(self.tools._read(time.monotonic() + left))


def test_a_page_of_another_origin_cannot_enqueue_and_a_rebound_name_cannot_read(
    redis_url: str, redis_client: redis.Redis[str], tmp_path: Path
) -> None:
    binary = chromium_binary()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLUXQ_", "FLOWER_")) and k != "BFL_API_KEY"
    }
    env |= {"FLUXQ_REDIS_URL": redis_url, "FLUXQ_OUTPUT_DIR": str(tmp_path / "out")}
    # Given `fluxq api` as by default: loopback, no token
    server = ApiServer(env, tmp_path, port=free_port())
    try:
        server.wait_up()
        api = server.url
        # And a page of another origin on this machine (127.0.0.2), open in a real browser
        with (
            serving(attack_page(api), "127.0.0.2") as page_url,
            chromium(binary) as tools,
        ):
            tab = Tab(tools)
            tab.open(page_url)
            # When its script POSTs a job as text/plain, as an untyped Blob, and a batch
            assert tab.evaluate("window.sent") == ["opaque", "opaque", "opaque"]
            # Then each POST reached the API and was refused
            posts = tab.wait_answers(3, api)
            assert [(m, status) for m, _url, status in posts] == [("POST", 403)] * 3, posts
            # When the page submits its text/plain form, whose body is a JSON job
            tab.evaluate("document.getElementById('form').submit(); 0")
            form = tab.wait_answers(4, api)[3]
            # Then it is refused too
            assert form == ("POST", f"{api}/v1/jobs", 403), form
            # When a page whose name was rebound to 127.0.0.1 reads the metrics and a job
            rebound = f"http://{REBOUND}:{server.port}"
            tab.open(f"{rebound}/metrics")
            tab.open(f"{rebound}/v1/jobs/csrf-text")
            reads = tab.wait_answers(2, rebound)
            # Then the API answers neither: that Host is not one of its names
            assert [status for _m, _url, status in reads] == [400, 400], reads
            assert "not a name of this server" in tab.evaluate("document.body.innerText")
        # And nothing was enqueued
        assert redis_client.keys("fluxq:job:*") == []
        assert not redis_client.exists(keys.batch("csrf"))
        with httpx.Client(base_url=api, timeout=10) as client:
            for job_id in ("csrf-text", "csrf-blob", "csrf-form"):
                assert client.get(f"/v1/jobs/{job_id}").status_code == 404, job_id
            # While a client that is not a browser, on this machine, still enqueues
            job = {"endpoint": "flux-dev", "request": {"prompt": "a heron"}, "job_id": "local"}
            assert client.post("/v1/jobs", json=job).status_code == 201
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log.read_text()
