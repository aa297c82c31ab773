"""Take docs/images/flower-tasks.png: Flower's task list, filtered by a demo batch, in Chromium.

    .venv/bin/python scripts/flower_screenshot.py [--out docs/images/flower-tasks.png]

Everything runs on this machine, on free loopback ports, and is stopped by its pid at the end:
a private redis-server, the BFL simulator, a `fluxq worker` tree and `fluxq flower` (with basic
auth, as beyond loopback). Two batches run ("herons" and "egrets"); a real headless Chromium
(Debian's `chromium`, or CHROMIUM=/path/to/chrome) opens Flower's task list, types
`batch=herons` into its search box, and the page is saved as a PNG.

The browser is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``): no
port, and the basic-auth header travels on that pipe, never on a command line.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from fluxq.config.settings import load_settings
from fluxq.simulator import SimConfig, running_simulator
from fluxq.tasks.enqueue import enqueue
from fluxq.workers.dispatch import celery_runtime
from fluxq.workers.process.children import python_argv, start_child, stop_child
from fluxq.workers.process.embedded_redis import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "images" / "flower-tasks.png"
KEY = "fluxq-screenshot-simulator-key"
BATCH = "herons"
OTHER_BATCH = "egrets"
HERONS = (
    "a grey heron fishing at dawn, watercolour",
    "a heron standing in fog on a frozen lake",
    "two herons nesting in a tall pine, telephoto",
    "a heron taking flight over a rice field, ink drawing",
    "a heron's reflection in a still canal at dusk",
    "a night heron under a lantern, film photograph",
)
EGRETS = (
    "a white egret in reeds, soft light",
    "an egret on a water buffalo, morning haze",
    "a flock of egrets over mangroves",
)
ENDPOINTS = ("flux-pro-1.1", "flux-dev")
VIEWPORT = (1600, 860)
MAX_WIDTH = 1968
"""Flower's page is at most 120rem (1,920 px) wide, plus its padding: wider adds margins only."""
WIRING = """
import os, sys
commands, answers = int(sys.argv[1]), int(sys.argv[2])
os.dup2(commands, 3)
os.dup2(answers, 4)
os.close(commands)
os.close(answers)
os.execv(sys.argv[3], sys.argv[3:])
"""
"""Run as ``python -c WIRING R W chromium …``: the DevTools pipe where Chromium expects it."""
WAIT_S = 120.0


def say(text: str) -> None:
    print(f"flower_screenshot: {text}", file=sys.stderr, flush=True)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.25)


def clean_env() -> dict[str, str]:
    """This environment less anything that would point fluxq or Flower elsewhere."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLUXQ_", "FLOWER_")) and k != "BFL_API_KEY"
    }


class DevTools:
    """The Chrome DevTools protocol over ``--remote-debugging-pipe``: NUL-separated JSON."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self._out = to_browser
        self._in = from_browser
        self._buffer = b""
        self._last_id = 0
        self._events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise RuntimeError("the browser did not answer in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed its DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data) :]
        deadline = time.monotonic() + 30
        while True:
            reply = self._read(deadline)
            if reply.get("id") != self._last_id:
                self._events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply.get("result", {})
            return result

    def wait_event(self, method: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            for index, event in enumerate(self._events):
                if event.get("method") == method:
                    return self._events.pop(index)
            self._events.append(self._read(deadline))

    def evaluate(self, expression: str, *, session: str) -> Any:
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


def chromium_binary() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    raise SystemExit(
        "flower_screenshot: no Chromium found: `apt-get install -y chromium`, "
        "or set CHROMIUM=/path/to/chrome"
    )


@contextmanager
def chromium(profile: Path) -> Iterator[DevTools]:
    """A headless Chromium whose DevTools pipe is on its fds 3 (commands) and 4 (answers)."""
    # Every end above fd 9, so that the shell's redirections below never clobber one another.
    commands_r, commands_w, answers_r, answers_w = (_high(fd) for fd in (*os.pipe(), *os.pipe()))
    flags = [
        "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={profile}",
        "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--hide-scrollbars",
        "--disable-extensions", "--disable-background-networking", "--disable-sync",
        "--mute-audio", "--disable-dev-shm-usage", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
    ]  # fmt: skip
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    # A tiny launcher puts the pipe ends on fds 3 and 4, then becomes Chromium (same pid).
    argv = [
        sys.executable, "-c", WIRING, str(commands_r), str(answers_w),
        chromium_binary(), *flags, "about:blank",
    ]  # fmt: skip
    browser = subprocess.Popen(  # noqa: S603 - argv is built here, with no outside text
        argv, pass_fds=(commands_r, answers_w), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    os.close(commands_r)
    os.close(answers_w)
    tools = DevTools(commands_w, answers_r)
    try:
        yield tools
    finally:
        with suppress(RuntimeError, OSError):
            tools.call("Browser.close")
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait(timeout=5)
        leftover = [pid for pid in _group(browser.pid) if pid != browser.pid]
        for pid in leftover:  # a renderer or zygote its browser did not reap: by pid
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.close(commands_w)
        os.close(answers_r)


def _high(fd: int) -> int:
    """``fd`` moved to a number above 9 (close-on-exec, as os.pipe makes them)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def _group(pgrp: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgrp and fields[0] != "Z":
                found.append(int(name))
    return found


def screenshot(flower_url: str, user: str, password: str, expected_rows: int, out: Path) -> None:
    """Open Flower's task list, type ``batch=herons`` into its search box, save the page."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    with (
        tempfile.TemporaryDirectory(prefix="fluxq-chromium-") as profile,
        chromium(Path(profile)) as tools,
    ):
        target = tools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        tools.call("Network.enable", session=session)
        tools.call(
            "Network.setExtraHTTPHeaders",
            {"headers": {"Authorization": f"Basic {token}"}},
            session=session,
        )
        width, height = VIEWPORT
        tools.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        tools.call("Page.enable", session=session)
        tools.call("Page.navigate", {"url": f"{flower_url}/tasks"}, session=session)
        tools.wait_event("Page.loadEventFired", timeout_s=30)

        def page(expression: str) -> Any:
            return tools.evaluate(expression, session=session)

        wait_until(
            lambda: bool(page("!!(window.jQuery && $.fn.dataTable.isDataTable('#tasks-table'))")),
            30,
            "Flower's task table",
        )
        page("document.querySelector('#tasks-table_filter input').focus()")
        tools.call("Input.insertText", {"text": f"batch={BATCH}"}, session=session)
        rows = "Array.from(document.querySelectorAll('#tasks-table tbody tr'))"
        wait_until(
            lambda: bool(
                page(
                    f"{rows}.length === {expected_rows} && "
                    f"{rows}.every(r => r.innerText.includes('batch={BATCH}'))"
                )
            ),
            30,
            f"{expected_rows} rows of batch {BATCH}",
        )
        # The whole table, not only the first screenful: as wide and as tall as its content.
        body = "document.querySelector('.dataTables_scrollBody')"
        for _ in range(4):  # widen by what the table still hides, then measure again
            hidden = int(page(f"{body}.scrollWidth - {body}.clientWidth"))
            width = min(width + max(hidden, 0), MAX_WIDTH)
            tall = int(page("document.documentElement.scrollHeight"))
            tools.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": min(max(tall, 400), 2400), "deviceScaleFactor": 1,
                 "mobile": False},
                session=session,
            )  # fmt: skip
            page("$('#tasks-table').DataTable().columns.adjust(); 0")
            time.sleep(0.5)  # let the table settle its column widths
        shot = tools.call("Page.captureScreenshot", {"format": "png"}, session=session)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))


def main() -> None:
    parser = argparse.ArgumentParser(description="Take docs/images/flower-tasks.png.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    out: Path = parser.parse_args().out
    chromium_binary()  # fail before starting anything
    user, password = "ops", secrets.token_urlsafe(24)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fluxq-shot-")))
        redis_server = stack.enter_context(EmbeddedRedis())
        sim = stack.enter_context(running_simulator(SimConfig(time_scale=0.2, rng_seed=7)))
        say(f"redis {redis_server.url}, simulator {sim.base_url}")
        env = clean_env() | sim.env() | {"FLUXQ_REDIS_URL": redis_server.url}
        env |= {"PYTHONUNBUFFERED": "1", "FLUXQ_OUTPUT_DIR": str(workdir / "out")}

        flower_port = free_port()
        flower_env = env | {"FLUXQ_FLOWER_USER": user, "FLUXQ_FLOWER_PASSWORD": password}
        flower_log = (workdir / "flower.log").open("wb")
        stack.callback(flower_log.close)
        flower = start_child(
            python_argv("fluxq", "flower", "--port", str(flower_port)),
            env=flower_env, stdout=flower_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(stop_child, flower, timeout_s=15)
        flower_url = f"http://127.0.0.1:{flower_port}"
        api = stack.enter_context(httpx.Client(base_url=flower_url, auth=(user, password)))

        def flower_answers() -> bool:
            if flower.poll() is not None:
                raise RuntimeError(f"fluxq flower exited: {(workdir / 'flower.log').read_text()}")
            try:
                return api.get("/healthcheck", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(flower_answers, 30, "fluxq flower")
        say(f"flower {flower_url}")

        worker_env = env | {
            "BFL_API_KEY": KEY,
            "FLUXQ_POLL_PRIOR_MEDIAN_S": "1",
            "FLUXQ_POLL_MIN_DELAY_S": "0.1",
            "FLUXQ_POLL_MAX_DELAY_S": "0.5",
        }
        worker_log = (workdir / "worker.log").open("wb")
        stack.callback(worker_log.close)
        worker = start_child(
            python_argv("fluxq", "worker", "--threads", "4", "--loglevel", "warning"),
            env=worker_env, stdout=worker_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(stop_child, worker, timeout_s=30)

        settings = load_settings(
            redis_url=redis_server.url, bfl_api_key=KEY, **sim.settings_overrides()
        )
        rt = celery_runtime(settings)
        stack.callback(rt.close)
        for batch, prompts in ((BATCH, HERONS), (OTHER_BATCH, EGRETS)):
            for i, prompt in enumerate(prompts):
                endpoint = ENDPOINTS[i % len(ENDPOINTS)]
                request = {"prompt": prompt, "seed": i, "width": 1024, "height": 768}
                enqueue(rt, endpoint, request, batch=batch, name=f"{batch}-{i:02d}")
        say(f"enqueued {len(HERONS)} jobs in {BATCH}, {len(EGRETS)} in {OTHER_BATCH}")

        def finished(batch: str, total: int) -> Callable[[], bool]:
            def check() -> bool:
                counts = rt.store.batch_counts(batch)
                return counts["done"] + counts["failed"] + counts["cancelled"] >= total

            return check

        wait_until(finished(BATCH, len(HERONS)), WAIT_S, f"batch {BATCH}")
        wait_until(finished(OTHER_BATCH, len(EGRETS)), WAIT_S, f"batch {OTHER_BATCH}")

        def heron_tasks() -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = api.get(
                "/api/tasks", params={"search": f"batch={BATCH}"}
            ).json()
            return found

        def all_saved() -> bool:
            tasks = heron_tasks().values()
            saved = [t for t in tasks if t["name"] == "fluxq.save" and t["state"] == "SUCCESS"]
            return len(saved) == len(HERONS)

        wait_until(all_saved, 30, "Flower to see every save")
        rows = min(len(heron_tasks()), 15)  # the page shows 15 rows at first
        screenshot(flower_url, user, password, rows, out)
        say(f"wrote {out}")


if __name__ == "__main__":
    main()
