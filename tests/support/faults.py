"""Fault cases: the BFL simulator, real `fluxq worker` trees, a real Redis, and `FaultReport`.

Every case ends with one ``FAULT-REPORT {json}`` line computed from the job store, the output
directory and the simulator's own counters (also appended to the file named by
``FLUXQ_FAULT_REPORT`` when set). Every process started here is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from fluxq.simulator.clock import ListenerURLs
from fluxq.simulator.config import SimConfig
from fluxq.simulator.listeners import bind_loopback
from fluxq.simulator.server import SimulatorServer
from fluxq.tasks.enqueue import enqueue
from fluxq.workers.dispatch import celery_runtime
from fluxq.workers.process.children import start_child
from fluxq.workers.process.embedded_redis import redis_server_binary
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import Job, State
from tests.support.cluster import FAST_ENV, Cluster, cluster_env
from tests.support.env import KEY, settings_for
from tests.support.net import free_port, wait_until
from tests.support.simulator import simulator_fixture

FAULT_ENV = {
    **FAST_ENV,
    # One POST is bounded by these four timeouts summed (7 s): the lease must outlast it.
    "FLUXQ_HTTP_CONNECT_TIMEOUT_S": "1",
    "FLUXQ_HTTP_READ_TIMEOUT_S": "3",
    "FLUXQ_HTTP_WRITE_TIMEOUT_S": "2",
    "FLUXQ_HTTP_POOL_TIMEOUT_S": "1",
    "FLUXQ_LEASE_TTL_S": "8",
    "FLUXQ_SWEEP_INTERVAL_S": "1",
    "FLUXQ_CREDITS_CHECK_INTERVAL_S": "1",
    "FLUXQ_AIMD_INCREASE_INTERVAL_S": "1",
    # An uncertain job holds its slot until this long after its POST: short, so cases end.
    "FLUXQ_POLL_DEADLINE_S": "20",
}
"""Settings every fault case starts from; a case overrides what it tests."""

STOP_GRACE_S = 15.0
"""How long a worker tree gets after SIGTERM at teardown before it is SIGKILLed by pid."""


# ---------------------------------------------------------------------------------------------
# Processes


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _ppid(int(p.name)) == pid
    ]


def kill_tree(pid: int, targets: list[int] | None = None) -> list[int]:
    """SIGKILL a `fluxq worker` supervisor's children, then the supervisor, by their own pids.

    Children first: a supervisor killed first would have them SIGTERMed (a graceful stop).
    ``targets`` (children then supervisor, found earlier) saves the /proc scan when every
    millisecond counts. Returns the pids signalled.
    """
    targets = targets or [*children_of(pid), pid]
    for target in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)
    return targets


def alive(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


class FaultCluster(Cluster):
    """Worker trees on one Redis and one simulator, with the helpers the fault cases share."""

    def enqueue_case(self, case: str, total: int) -> list[str]:
        """Enqueue ``total`` flux-dev jobs of batch ``case`` (``request_for``); their ids."""
        return [
            enqueue(self.rt, "flux-dev", request_for(case, i), batch=case, name=f"img-{i:02d}")
            for i in range(total)
        ]

    def kill_worker(
        self, process: subprocess.Popen[bytes], targets: list[int] | None = None
    ) -> list[int]:
        pids = kill_tree(process.pid, targets)
        process.wait(timeout=10)
        return pids

    def log_text(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')}"
            for log in self.logs
            if log.exists()
        )

    def log_tail(self, chars: int = 4000) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}"
            for log in self.logs
            if log.exists()
        )

    def jobs(self, job_ids: Iterable[str]) -> dict[str, Job | None]:
        """The records, read in one round trip (a case reads hundreds of them a second)."""
        ids = list(job_ids)
        return dict(zip(ids, self.rt.store.get_many(ids), strict=True))

    def states(self, job_ids: Iterable[str]) -> Counter[str]:
        """Jobs per state (``missing`` for a record that is gone), reading only the state field."""
        pipe = self.rt.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "state")
        return Counter(state or "missing" for state in pipe.execute())

    def posts_in_flight(self, job_ids: Iterable[str]) -> int:
        """Admitted jobs whose POST has begun and has no answer recorded yet."""
        return sum(
            1
            for job in self.jobs(job_ids).values()
            if job is not None and job.state is State.ADMITTED and job.submitting_at is not None
        )

    def wait_all_terminal(self, job_ids: list[str], timeout_s: float) -> bool:
        """True once every job is done, failed or cancelled (False at the time limit)."""
        ids = list(job_ids)

        def finished() -> bool:
            states = self.states(ids)
            return sum(states[s.value] for s in State if s.terminal) >= len(ids)

        return wait_until(finished, timeout_s, interval_s=0.25)

    def stop(self) -> None:
        """SIGTERM every tree, wait a bounded time, then SIGKILL what is left, by pid."""
        for process in self.processes:
            if alive(process):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_tree(process.pid)
                process.wait(timeout=10)


FAULT_SIM = SimConfig(time_scale=0.02, rng_seed=1234)
"""A fresh simulator per case: fast models (time_scale 0.02), reproducible dice."""

fault_sim = simulator_fixture(FAULT_SIM, name="fault_sim", loopback_only=True)
"""All three listeners bind 127.0.0.1 (on their own ports), not the 127.0.0.2/3 aliases."""


class TrickleProxy:
    """A loopback TCP relay that sends the server's bytes back in small, delayed chunks.

    Put in front of the simulator's delivery listener, it makes every download take a while,
    so a SIGKILL lands while a save's temporary file exists. Bounded: it stops with ``close``.
    """

    def __init__(self, target: tuple[str, int], *, chunk: int = 2048, delay_s: float = 0.02):
        self.target = target
        self.chunk = chunk
        self.delay_s = delay_s
        self._listener = bind_loopback("127.0.0.1", 0)
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="trickle-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            for src, dst, slow in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, slow), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        src.settimeout(1.0)
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(self.chunk if slow else 65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                dst.sendall(data)
                if slow:
                    time.sleep(self.delay_s)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def slow_delivery(sim: SimulatorServer, *, delay_s: float = 0.02) -> Iterator[TrickleProxy]:
    """Route the simulator's sample URLs through a TrickleProxy; set up before the cluster, so
    the proxy's URL is in FLUXQ_ALLOWED_URLS."""
    assert sim.urls is not None
    host, port = sim.urls.delivery.removeprefix("http://").rsplit(":", 1)
    proxy = TrickleProxy((host, int(port)), delay_s=delay_s)
    original = sim.urls
    urls = ListenerURLs(original.api, original.polling, proxy.url)
    sim.urls = sim.simulator.urls = urls
    try:
        yield proxy
    finally:
        sim.urls = sim.simulator.urls = original
        proxy.close()


@contextlib.contextmanager
def _cluster_factory(
    sim: SimulatorServer, redis_url: str, tmp_path: Path, base_env: dict[str, str]
) -> Iterator[Callable[..., FaultCluster]]:
    made: list[FaultCluster] = []

    def factory(*, redis_url_override: str | None = None, **env_overrides: str) -> FaultCluster:
        env = cluster_env(
            sim, redis_url_override or redis_url, tmp_path, {**base_env, **env_overrides}
        )
        rt = celery_runtime(settings_for(env))
        cluster = FaultCluster(env=env, rt=rt, sim=sim, processes=[], log_dir=tmp_path)
        made.append(cluster)
        return cluster

    try:
        yield factory
    finally:
        for cluster in made:
            try:
                cluster.stop()
            finally:
                cluster.rt.close()


@pytest.fixture
def fault_cluster(
    fault_sim: SimulatorServer, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., FaultCluster]]:
    """``fault_cluster(redis_url_override=None, **env)``: a FaultCluster on the session Redis
    (flushed; or on ``redis_url_override``), with FAULT_ENV plus ``env``; every tree is stopped at
    teardown."""
    with _cluster_factory(fault_sim, redis_url, tmp_path, FAULT_ENV) as factory:
        yield factory


@pytest.fixture
def default_cluster(
    fault_sim: SimulatorServer, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., FaultCluster]]:
    """``default_cluster(**env)``: a FaultCluster like ``fault_cluster``'s, but on fluxq's default
    settings (none of FAULT_ENV's shortened leases, deadlines, timeouts and intervals) plus
    ``env``: for cases that test those defaults themselves."""
    with _cluster_factory(fault_sim, redis_url, tmp_path, {}) as factory:
        yield factory


# ---------------------------------------------------------------------------------------------
# A redis-server of a case's own, restartable on the same port and directory (AOF on)


class RestartableRedis:
    """redis-server on a fixed loopback port with AOF in ``directory``; stopped by its pid."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout_s: float = 10.0) -> None:
        argv = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--appendonly", "yes",
            "--save", "",
            "--dir", str(self.directory),
            "--protected-mode", "yes",
        ]  # fmt: skip
        log = (self.directory / "redis-server.log").open("ab")
        with log:
            self.process = start_child(argv, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:

            def pong() -> bool:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"redis-server exited: {self.process.returncode}")
                try:
                    return bool(client.ping())
                except redis.ConnectionError:
                    return False

            # A restart replays the AOF before it answers PING.
            assert wait_until(pong, timeout_s, interval_s=0.05), "redis-server did not start"
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class FaultReport:
    """What one fault case ends with; ``emit`` prints it as ``FAULT-REPORT {json}``."""

    case: str
    jobs: int
    faults_injected: str
    lost: int
    duplicate_submits: int
    duplicate_submits_outside_uncertain: int
    max_active: int
    cap: int
    orphan_files: int
    orphan_parts: int
    uncertain: int
    done: int
    failed: int
    submits: int
    bad_files: int
    elapsed_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    # Kept for assertion messages, never printed.
    orphans: list[str] = field(default_factory=list, repr=False)
    bad_file_notes: list[str] = field(default_factory=list, repr=False)
    failures: dict[str, str] = field(default_factory=dict, repr=False)
    states: dict[str, int] = field(default_factory=dict, repr=False)

    def as_json(self) -> str:
        shown = asdict(self)
        for name in ("orphans", "bad_file_notes", "failures", "states"):
            shown.pop(name)
        shown.update(shown.pop("extra"))
        return json.dumps(shown, sort_keys=False)

    def emit(self) -> FaultReport:
        line = self.as_json()
        print(f"FAULT-REPORT {line}", flush=True)
        target = os.environ.get("FLUXQ_FAULT_REPORT")
        if target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(line + "\n")
        return self


def injected_faults(sim: SimulatorServer, description: str) -> str:
    """The case's own description plus every fault the simulator counted."""
    counters = {k: v for k, v in sorted(sim.stats()["counters"].items()) if k.startswith("fault_")}
    account = sim.stats(KEY)
    for name in ("phantom_429", "payment_required_402", "lost_responses"):
        if account.get(name):
            counters[name] = account[name]
    outcomes = {k: v for k, v in account.get("outcomes", {}).items() if k != "Ready"}
    counters.update({f"outcome {k}": v for k, v in sorted(outcomes.items())})
    shown = ", ".join(f"{k}={v}" for k, v in counters.items())
    return f"{description}; sim: {shown}" if shown else description


def prompts_seen(sim: SimulatorServer) -> set[str]:
    """Every prompt the simulator accepted a POST for (its accounts' submit triples)."""
    with sim.simulator.lock:
        return {
            prompt
            for account in sim.simulator.accounts.all()
            for (prompt, _seed, _endpoint) in getattr(account, "_triples", {})
        }


def _file_checks(jobs: Iterable[Job], out_dir: Path) -> tuple[list[str], list[str]]:
    """(orphans, bad-file notes): files not belonging to a done job, and done jobs' bad files."""
    expected: set[Path] = set()
    bad: list[str] = []
    for job in jobs:
        if job.state is not State.DONE:
            continue
        if not job.path:
            bad.append(f"{job.job_id}: done without a path")
            continue
        image = Path(job.path)
        sidecar = image.with_suffix(".json")
        expected.update(
            {image.resolve(), sidecar.resolve(), (image.parent / "manifest.jsonl").resolve()}
        )
        if not image.is_file() or not sidecar.is_file():
            bad.append(f"{job.job_id}: image or sidecar missing ({image.name})")
            continue
        digest = hashlib.sha256(image.read_bytes()).hexdigest()
        recorded = json.loads(sidecar.read_text()).get("sha256")
        if digest != recorded or digest != job.sha256:
            bad.append(f"{job.job_id}: sha256 {digest} vs sidecar {recorded} vs job {job.sha256}")
    orphans = []
    if out_dir.exists():
        for path in sorted(out_dir.rglob("*")):
            if path.is_file() and path.resolve() not in expected:
                orphans.append(str(path.relative_to(out_dir)))
    return orphans, bad


def judge(
    cluster: FaultCluster,
    *,
    case: str,
    job_ids: list[str],
    cap: int,
    faults: str,
    started_at: float,
    **extra: Any,
) -> FaultReport:
    """Compute (and emit) the case's FaultReport from Redis, the output dir and the simulator."""
    records = cluster.jobs(job_ids)
    jobs = [job for job in records.values() if job is not None]
    stats = cluster.sim.stats(KEY)
    uncertain_prompts = {str(job.request.get("prompt")) for job in jobs if job.uncertain}
    # Uncertain jobs for which BFL (the simulator) created no task: a 5xx or a dropped answer
    # before any task existed, or a POST that was never sent. Reported, not judged.
    extra["uncertain_without_bfl_task"] = len(uncertain_prompts - prompts_seen(cluster.sim))
    outside = sum(
        int(d["count"]) - 1 for d in stats["duplicates"] if d["prompt"] not in uncertain_prompts
    )
    orphans, bad = _file_checks(jobs, Path(cluster.env["FLUXQ_OUTPUT_DIR"]))
    states = Counter(job.state.value for job in jobs)
    report = FaultReport(
        case=case,
        jobs=len(job_ids),
        faults_injected=injected_faults(cluster.sim, faults),
        lost=len(job_ids) - sum(states[s.value] for s in State if s.terminal),
        duplicate_submits=int(stats["duplicate_submits"]),
        duplicate_submits_outside_uncertain=outside,
        max_active=int(stats["max_active"]),
        cap=cap,
        orphan_files=len(orphans),
        orphan_parts=sum(1 for name in orphans if name.endswith(".part")),
        uncertain=sum(1 for job in jobs if job.uncertain),
        done=states[State.DONE.value],
        failed=states[State.FAILED.value],
        submits=int(stats["submits"]),
        bad_files=len(bad),
        elapsed_s=round(time.monotonic() - started_at, 1),
        extra=extra,
        orphans=orphans,
        bad_file_notes=bad,
        failures={job.job_id: job.reason or "" for job in jobs if job.state is State.FAILED},
        states=dict(states),
    )
    return report.emit()


def assert_common(report: FaultReport, cluster: FaultCluster) -> None:
    """What every case demands: nothing lost, no hidden duplicate, the cap kept, files sound."""
    tail = cluster.log_tail()
    assert report.lost == 0, f"{report.lost} jobs not terminal: {report.states}\n{tail}"
    assert report.duplicate_submits_outside_uncertain == 0, (
        f"duplicate submits of jobs never flagged uncertain: "
        f"{cluster.sim.stats(KEY)['duplicates']}\n{tail}"
    )
    assert report.max_active <= report.cap, (report.max_active, report.cap)
    assert report.bad_files == 0, report.bad_file_notes
    non_part = [name for name in report.orphans if not name.endswith(".part")]
    assert non_part == [], f"files that belong to no done job: {non_part}"
    assert report.orphan_parts == 0, (
        f"fluxq left {report.orphan_parts} temporary .part file(s) of killed or failed saves that "
        f"no later save of the job removed: {[n for n in report.orphans if n.endswith('.part')]}"
    )


def unreadable(reason: str) -> bool:
    """A failure reason a person could not act on: empty, a traceback, huge or binary."""
    text = reason.strip()
    return (
        not text
        or "Traceback" in text
        or len(text) > 600
        or any(not ch.isprintable() for ch in text)
    )


def sweep_actions(cluster: FaultCluster) -> dict[str, int]:
    """What the sweeps logged as recovered (``sweep recovered {...}``), summed over the logs."""
    totals: dict[str, int] = {}
    for match in re.finditer(r"sweep recovered \{([^}]*)\}", cluster.log_text()):
        for name, number in re.findall(r"'(\w+)': (\d+)", match.group(1)):
            if name != "admitted":
                totals[name] = totals.get(name, 0) + int(number)
    return totals


def request_for(case: str, i: int, **extra: Any) -> dict[str, Any]:
    """A flux-dev request whose prompt is unique to (case, i): the simulator finds duplicates
    by (prompt, seed, endpoint), and the report maps them back to jobs by prompt."""
    return {
        "prompt": f"{case} job {i}: a lighthouse at dusk",
        "seed": i,
        "width": 512,
        "height": 384,
        **extra,
    }


def submit_batch_file(
    directory: Path, name: str, total: int, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Write ``total`` flux-dev lines (ids l000...; ``request_for(name, i)``) to
    ``directory/<name>.jsonl`` and send them as batch ``name`` with `fluxq batch submit`, a
    producer process of its own with ``env``; its job ids are ``<name>.l000`` ..."""
    lines = directory / f"{name}.jsonl"
    lines.write_text(
        "".join(
            json.dumps({"id": f"l{i:03d}", **request_for(name, i)}) + "\n" for i in range(total)
        ),
        encoding="utf-8",
    )
    return subprocess.run(
        [sys.executable, "-P", "-m", "fluxq", "batch", "submit", str(lines), "--name", name,
         "--endpoint", "flux-dev"],
        env=dict(env), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
