"""The fluxq image's HEALTHCHECK: checks whichever fluxq command the container runs.

The image runs any fluxq command (``ENTRYPOINT ["fluxq"]``), so its one HEALTHCHECK must fit
them all. It finds the fluxq process in /proc (PID 1, or the child of an init such as
``docker run --init``), reads its command and options, and checks that command on this host:

- ``api``: ``GET /healthz`` (no token needed);
- ``flower``: ``GET /healthcheck`` (Flower's own route, outside its basic auth);
- ``metrics``: ``GET /metrics``, with ``FLUXQ_API_TOKEN`` as a bearer token when it is set
  (off loopback ``fluxq metrics`` requires it);
- ``simulator``: ``GET /sim/stats``;
- ``worker``: a Celery worker process (``python -P -m fluxq.worker_process``) is alive; the
  supervisor restarts a dead one after 1 to 30 s, so only a child that stays dead across the
  retries makes the container unhealthy;
- anything else (``fluxq enqueue ...``): healthy while it runs.

Exit 0 when healthy, 1 when not (Docker's convention). Standard library only: it runs with the
image's Python, outside fluxq's packages. Kubernetes ignores HEALTHCHECK: the manifests in
deploy/k8s use probes (this script as the workers' exec probe).
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

DEFAULT_PORTS = {"api": 8000, "flower": 5555, "metrics": 9108, "simulator": 8080}
"""Each HTTP command's default ``--port`` (tests/deploy checks them against the CLI)."""

HEALTH_PATHS = {
    "api": "/healthz",
    "flower": "/healthcheck",
    "metrics": "/metrics",
    "simulator": "/sim/stats",
}
"""The route checked for each HTTP command."""

HOST_OPTIONS = {"api": "--host", "flower": "--address", "metrics": "--host", "simulator": "--host"}
"""The option naming each HTTP command's listening address."""

WILDCARDS = ("", "0.0.0.0", "::", "[::]")  # noqa: S104 - names of "every interface", not a bind
"""Addresses meaning "every interface": checked through loopback."""

WORKER_MODULE = "fluxq.worker_process"
"""The module every Celery child of ``fluxq worker`` runs."""

TIMEOUT_S = 4.0

Fetch = Callable[[str], int]


def processes(proc: Path) -> list[list[str]]:
    """Every process's argv, lowest pid first (unreadable ones skipped)."""
    found: list[tuple[int, list[str]]] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
        if argv:
            found.append((int(entry.name), argv))
    return [argv for _, argv in sorted(found)]


def _runs_fluxq(argv: list[str], index: int) -> bool:
    """Whether ``argv[index]`` is the program fluxq, not an option's value (``--name fluxq``):
    first, or after ``-m``, an init's ``--`` or the Python running the ``fluxq`` script."""
    if argv[index].rsplit("/", 1)[-1] != "fluxq":
        return False
    before = argv[index - 1] if index else ""
    return not before or before in ("-m", "--") or before.rsplit("/", 1)[-1].startswith("python")


def fluxq_args(argv: list[str]) -> list[str] | None:
    """The arguments after ``fluxq`` in one argv (``fluxq``, ``/path/fluxq``, ``-m fluxq``)."""
    for index in range(len(argv)):
        if _runs_fluxq(argv, index):
            return argv[index + 1 :]
    return None


def command_of(proc: Path) -> list[str] | None:
    """The first fluxq process's arguments, global options (``--debug``) dropped."""
    for argv in processes(proc):
        args = fluxq_args(argv)
        if args is not None:
            while args and args[0].startswith("-"):
                args = args[1:]
            return args
    return None


def option(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE``; the last one given wins."""
    value: str | None = None
    for index, part in enumerate(args):
        if part == name and index + 1 < len(args):
            value = args[index + 1]
        elif part.startswith(name + "="):
            value = part[len(name) + 1 :]
    return value


def url_for(args: list[str]) -> str | None:
    """The URL to check for an HTTP command, None for any other command."""
    command = args[0] if args else ""
    if command not in HEALTH_PATHS:
        return None
    port = option(args, "--port") or str(DEFAULT_PORTS[command])
    host = option(args, HOST_OPTIONS[command]) or "127.0.0.1"
    if host in WILDCARDS:
        host = "127.0.0.1"
    host = host.strip("[]")
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{HEALTH_PATHS[command]}"


def http_status(url: str) -> int:
    """The status of a GET of ``url`` (an http:// URL built by ``url_for``); the metrics route
    gets ``FLUXQ_API_TOKEN`` as a bearer token when the container has one."""
    request = urllib.request.Request(url)  # noqa: S310 - http only, built by url_for
    token = os.environ.get("FLUXQ_API_TOKEN")
    if token and url.endswith(HEALTH_PATHS["metrics"]):
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
        status: int = response.status
        return status


def check(proc: Path = Path("/proc"), fetch: Fetch = http_status) -> tuple[bool, str]:
    """Whether the container is healthy, and why."""
    args = command_of(proc)
    if args is None:
        return False, "no fluxq process found"
    command = args[0] if args else ""
    if command == "worker":
        alive = any(WORKER_MODULE in argv for argv in processes(proc))
        return alive, "a worker process runs" if alive else "no worker process (restarting?)"
    url = url_for(args)
    if url is None:
        return True, f"fluxq {command or '(no command)'} runs"
    try:
        status = fetch(url)
    except Exception as exc:  # any failure to answer is unhealthy, whatever it was
        return False, f"GET {url}: {type(exc).__name__}: {exc}"
    return 200 <= status < 300, f"GET {url}: {status}"


def main() -> int:
    healthy, why = check()
    print(why)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
