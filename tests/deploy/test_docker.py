"""deploy/ for real: the image built with Docker from a base made of Debian's own packages, its
demo run, and deploy/compose.yaml brought up (workers, API, Flower on one Redis, then the `ha`
profile with a failover), every container on the host network (traffic stays on loopback).

Where no Docker daemon runs and none can be started here, the test is skipped, saying why. The
base images are built once per machine (debootstrap, a few minutes) and reused after.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from fluxq.simulator.config import SimConfig
from fluxq.simulator.server import SimulatorServer
from tests.support.env import KEY, clean_env
from tests.support.faults import submit_batch_file
from tests.support.net import free_port, wait_until
from tests.support.simulator import simulator_fixture

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
BASE_IMAGE = "fluxq-base:bookworm"
REDIS_IMAGE = "fluxq-redis:bookworm"
FLUXQ_IMAGE = "fluxq:local"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
"""Given to the build as the secret pip-ca: pip inside it trusts what the host trusts (a
TLS-inspecting proxy's CA where there is one)."""
TOKEN = "docker-test-token"
FLOWER_LOGIN = ("ops", "docker-test-flower-password")
STACK = ["redis", "worker", "api", "flower"]
HA = ["redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"]

docker_sim = simulator_fixture(
    SimConfig(time_scale=1.0, rng_seed=7, latency={"default": {"kind": "fixed", "seconds": 2.0}}),
    name="docker_sim",
    loopback_only=True,
)


def run(argv: list[str], *, timeout_s: float, **options: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, **options)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def docker_cli() -> str:
    """A docker client that builds with BuildKit: one with buildx, or one with BuildKit built
    in (before 23). Debian's docker.io is the latter."""
    candidates = dict.fromkeys(p for p in (shutil.which("docker"), "/usr/bin/docker") if p)
    for cli in candidates:
        if not Path(cli).exists():
            continue
        if subprocess.run([cli, "buildx", "version"], capture_output=True).returncode == 0:
            return cli
        version = subprocess.run(
            [cli, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True
        ).stdout.strip()
        if version and int(version.split(".")[0]) < 23:
            return cli
    pytest.skip("no docker client that builds with BuildKit (buildx, or Debian's docker.io)")


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker client on a running daemon: the one running, else dockerd started here (as
    root) and stopped after by its pid; skipped, saying why, when neither can be."""
    cli = docker_cli()
    started: subprocess.Popen[bytes] | None = None
    if subprocess.run([cli, "info"], capture_output=True).returncode != 0:
        dockerd = shutil.which("dockerd")
        if dockerd is None or os.geteuid() != 0:
            pytest.skip(
                "no Docker daemon running and none can start here (no dockerd, or not root)"
            )
        log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        with log.open("wb") as out:
            started = subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT)
        up = wait_until(
            lambda: subprocess.run([cli, "info"], capture_output=True).returncode == 0, 60
        )
        if not up:
            started.send_signal(signal.SIGTERM)
            started.wait(timeout=30)
            pytest.skip(f"dockerd did not start here: {log.read_text()[-500:]}")
    try:
        yield cli
    finally:
        if started is not None:
            started.send_signal(signal.SIGTERM)
            started.wait(timeout=60)


def has_image(cli: str, name: str) -> bool:
    return subprocess.run([cli, "image", "inspect", name], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def images(docker: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The base (debootstrap, then docker import), a Redis image from Debian's redis-server,
    and fluxq's image built from deploy/Dockerfile on that base."""
    work = tmp_path_factory.mktemp("images")
    if not has_image(docker, BASE_IMAGE):
        debootstrap = shutil.which("debootstrap")
        if debootstrap is None:
            pytest.skip("no debootstrap to make a base image from Debian's packages")
        root = work / "rootfs"
        run(
            [debootstrap, "--variant=minbase",
             "--include=python3,python3-venv,python3-pip,ca-certificates",
             "bookworm", str(root), DEBIAN_MIRROR],
            timeout_s=900,
        )  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        run([docker, "import", "-", BASE_IMAGE], stdin=tar.stdout, timeout_s=600)
        tar.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    if not has_image(docker, REDIS_IMAGE):
        (work / "Dockerfile.redis").write_text(
            f"FROM {BASE_IMAGE}\n"
            "RUN apt-get update && apt-get install -y --no-install-recommends redis-server"
            " && rm -rf /var/lib/apt/lists/*\n"
            'WORKDIR /data\nCMD ["redis-server"]\n',
            encoding="utf-8",
        )
        run(
            [docker, "build", "--network", "host", "-f", str(work / "Dockerfile.redis"),
             "-t", REDIS_IMAGE, str(work)],
            timeout_s=900, env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )  # fmt: skip
    secret = ["--secret", f"id=pip-ca,src={HOST_CA}"] if HOST_CA.is_file() else []
    run(
        [docker, "build", "--network", "host", "-f", "deploy/Dockerfile",
         "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", *secret, "-t", FLUXQ_IMAGE, "."],
        timeout_s=1200, cwd=ROOT, env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )  # fmt: skip
    return docker


class Stack:
    """deploy/compose.yaml on the host network: each server on a free loopback port, fluxq on
    the test's simulator; run with docker-compose under a project name of its own."""

    def __init__(self, docker: str, sim: SimulatorServer, home: Path) -> None:
        self.docker = docker
        self.sim = sim
        self.home = home
        self.project = f"fluxqtest{os.getpid()}"
        self.ports = {name: free_port() for name in ["redis", "redis-replica-1", "redis-replica-2"]}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.api_port = free_port()
        self.flower_port = free_port()
        self.file = home / "compose.yaml"
        self.file.write_text(yaml.safe_dump(self._on_host_network()), encoding="utf-8")

    @property
    def sentinel_url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports) + "/0"

    def _on_host_network(self) -> dict[str, Any]:
        shipped = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
        services: dict[str, Any] = {}
        for name in STACK + HA:
            service = dict(shipped["services"][name])
            for key in ("ports", "expose", "build"):
                service.pop(key, None)
            service["network_mode"] = "host"
            services[name] = service
        redis_port = str(self.ports["redis"])
        for name in ("redis", "redis-replica-1", "redis-replica-2"):
            command = [str(part) for part in services[name]["command"]]
            if "--replicaof" in command:
                at = command.index("--replicaof")
                assert command[at + 1 : at + 3] == ["redis", "6379"]
                command[at + 1 : at + 3] = ["127.0.0.1", redis_port]
            port = str(self.ports[name])
            services[name]["command"] = [*command, "--port", port, "--bind", "127.0.0.1"]
            services[name]["healthcheck"] = {
                "test": ["CMD", "redis-cli", "-p", port, "ping"],
                "interval": "1s", "timeout": "3s", "retries": 30,
            }  # fmt: skip
        for number, port in enumerate(self.sentinel_ports, start=1):
            (script,) = services[f"sentinel-{number}"]["command"]
            for shipped_text, here in (
                ("'port 26379'", f"'port {port}' 'bind 127.0.0.1'"),
                ("monitor mymaster redis 6379 2", f"monitor mymaster 127.0.0.1 {redis_port} 2"),
            ):
                assert shipped_text in script
                script = script.replace(shipped_text, here)
            services[f"sentinel-{number}"]["command"] = [script]
        services["api"]["command"] = ["api", "--host", "127.0.0.1", "--port", str(self.api_port)]
        services["api"]["healthcheck"]["test"][-1] = services["api"]["healthcheck"]["test"][
            -1
        ].replace("8000", str(self.api_port))
        flower = [str(part) for part in services["flower"]["command"]]
        flower[flower.index("--address") + 1] = "127.0.0.1"
        flower[flower.index("--port") + 1] = str(self.flower_port)
        services["flower"]["command"] = flower
        services["flower"]["healthcheck"]["test"][-1] = services["flower"]["healthcheck"]["test"][
            -1
        ].replace("5555", str(self.flower_port))
        for name in ("worker", "api", "flower"):
            services[name]["environment"] = {
                **services[name]["environment"], **self.sim.env()
            }  # fmt: skip
        return {"services": services, "volumes": shipped["volumes"]}

    def write_env(self, **settings: str) -> None:
        """deploy/.env's stand-in: the secrets, and what compose interpolates."""
        values = {
            "BFL_API_KEY": KEY,
            "FLUXQ_API_TOKEN": TOKEN,
            "FLUXQ_FLOWER_USER": FLOWER_LOGIN[0],
            "FLUXQ_FLOWER_PASSWORD": FLOWER_LOGIN[1],
            "REDIS_IMAGE": REDIS_IMAGE,
            **settings,
        }
        lines = [f"{name}={value}" for name, value in values.items()]
        (self.home / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def compose(self, *args: str, timeout_s: float = 300) -> str:
        argv = ["docker-compose", "-f", str(self.file), "-p", self.project, *args]
        return run(argv, timeout_s=timeout_s, cwd=self.home).stdout

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()

    def producer_env(self, redis_url: str, **settings: str) -> dict[str, str]:
        return clean_env(BFL_API_KEY=KEY, FLUXQ_REDIS_URL=redis_url, **settings)


@pytest.fixture
def stack(images: str, docker_sim: SimulatorServer, tmp_path: Path) -> Iterator[Stack]:
    if shutil.which("docker-compose") is None:
        pytest.skip("no docker-compose (Debian's docker-compose package)")
    made = Stack(images, docker_sim, tmp_path)
    made.write_env(FLUXQ_REDIS_URL=f"redis://127.0.0.1:{made.ports['redis']}/0")
    try:
        yield made
    finally:
        logs = subprocess.run(
            ["docker-compose", "-f", str(made.file), "-p", made.project, "logs", "--no-color"],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        (tmp_path / "stack.log").write_text(logs.stdout, encoding="utf-8")
        subprocess.run(
            ["docker-compose", "-f", str(made.file), "-p", made.project, "--profile", "ha",
             "down", "-v", "--remove-orphans", "--timeout", "20"],
            capture_output=True, cwd=tmp_path, timeout=300,
        )  # fmt: skip


def batch_counts(api: httpx.Client, name: str) -> dict[str, int]:
    answer = api.get(f"/v1/batches/{name}")
    if answer.status_code != 200:
        return {}
    counts: dict[str, int] = answer.json()["counts"]
    return counts


def wait_batch(api: httpx.Client, name: str, total: int, timeout_s: float) -> dict[str, int]:
    counts: dict[str, int] = {}

    def finished() -> bool:
        nonlocal counts
        try:
            counts = batch_counts(api, name)
        except httpx.HTTPError:
            return False
        return counts.get("done", 0) + counts.get("failed", 0) >= total

    assert wait_until(finished, timeout_s, interval_s=1.0), counts
    return counts


def test_the_image_runs_the_demo_and_the_compose_stack_rides_out_a_failover(
    stack: Stack,
) -> None:
    # (one test, so that parallel test workers never build the images twice at once)
    # Given fluxq's image built on a base made of Debian's packages: its demo makes 24 images
    shown = run(
        [stack.docker, "run", "--rm", "--network", "host", FLUXQ_IMAGE, "demo"], timeout_s=300
    ).stdout
    assert "24 done, 0 failed of 24" in shown, shown
    assert "24 verified against their sha256" in " ".join(shown.split()), shown
    # Given the stack (Redis, a worker, the API, Flower) up from deploy/compose.yaml
    stack.compose("up", "-d", "--no-build", *STACK, timeout_s=600)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{stack.api_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    with api:
        _run_stack(stack, api)


def _run_stack(stack: Stack, api: httpx.Client) -> None:
    assert wait_until(lambda: _ok(api, "/readyz"), 120, interval_s=1.0), stack.compose("logs")
    # When a batch is sent to its Redis, then the workers run it and the API serves its images
    plain = f"redis://127.0.0.1:{stack.ports['redis']}/0"
    _submit(stack, "first", 24, plain)
    counts = wait_batch(api, "first", 24, timeout_s=180)
    assert counts["done"] == 24, counts
    image = api.get("/v1/jobs/first.l000/image")
    assert image.status_code == 200
    assert image.headers["content-type"].startswith("image/")
    flower = f"http://127.0.0.1:{stack.flower_port}"
    assert wait_until(lambda: _up(f"{flower}/healthcheck"), 60, interval_s=1.0)

    # Given the ha profile: two replicas, three Sentinels, fluxq on the Sentinel URL
    stack.write_env(FLUXQ_REDIS_URL=stack.sentinel_url, FLUXQ_REDIS_MIN_REPLICAS="1")
    stack.compose("--profile", "ha", "up", "-d", "--no-build", *STACK, *HA, timeout_s=600)
    assert wait_until(lambda: _sentinels_ready(stack), 120, interval_s=1.0), stack.compose("logs")
    assert wait_until(lambda: _ok(api, "/readyz"), 120, interval_s=1.0)
    # When a batch runs and the master's container is killed mid-batch
    _submit(stack, "second", 60, stack.sentinel_url, FLUXQ_REDIS_MIN_REPLICAS="1")
    assert wait_until(lambda: batch_counts(api, "second").get("done", 0) >= 10, 120, interval_s=0.5)
    master = _master_port(stack)
    assert master == stack.ports["redis"]
    killed = time.monotonic()
    run([stack.docker, "kill", "--signal", "KILL", stack.container("redis")], timeout_s=60)
    assert wait_until(lambda: _master_port(stack) not in (None, master), 120, interval_s=0.2), (
        stack.compose("logs", "sentinel-1")
    )
    failover_s = time.monotonic() - killed
    # Then the batch finishes on the new master with no restart: none lost, none sent twice
    # outside a job flagged uncertain, never above the cap; the API and Flower follow
    counts = wait_batch(api, "second", 60, timeout_s=300)
    stats = stack.sim.stats(KEY)
    assert counts["done"] + counts["failed"] == 60, counts
    assert counts["failed"] == counts.get("uncertain", 0), counts
    assert stats["max_active"] <= 24
    assert stats["duplicate_submits"] <= counts.get("uncertain", 0), stats["duplicates"]
    assert wait_until(lambda: _up(f"{flower}/healthcheck"), 60, interval_s=1.0), stack.compose(
        "logs", "flower"
    )
    print(f"compose ha failover: {failover_s:.1f} s; second batch {counts}")


def _submit(stack: Stack, name: str, total: int, url: str, **settings: str) -> None:
    sent = submit_batch_file(stack.home, name, total, stack.producer_env(url, **settings))
    assert sent.returncode == 0, sent.stderr


def _up(url: str) -> bool:
    """Flower answers (it reconnects to the broker after a failover on its own time)."""
    try:
        return httpx.get(url, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def _ok(api: httpx.Client, path: str) -> bool:
    try:
        return api.get(path).status_code == 200
    except httpx.HTTPError:
        return False


def _master_port(stack: Stack) -> int | None:
    for port in stack.sentinel_ports:
        try:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as sentinel:
                address = sentinel.sentinel_get_master_addr_by_name("mymaster")
                return int(address[1]) if address else None
        except redis.RedisError:
            continue
    return None


def _sentinels_ready(stack: Stack) -> bool:
    try:
        for port in stack.sentinel_ports:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as sentinel:
                fields = sentinel.sentinel_master("mymaster")
                if int(fields["num-slaves"]) < 2 or int(fields["num-other-sentinels"]) < 2:
                    return False
        with redis.Redis(port=stack.ports["redis"], decode_responses=True) as master:
            return int(master.info("replication")["connected_slaves"]) >= 2
    except (redis.RedisError, KeyError):
        return False
