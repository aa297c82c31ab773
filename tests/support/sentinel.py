"""Redis with Sentinel on loopback: a master, two replicas and three Sentinels, each a redis-server
process of its own (the binary fluxq ships runs as a Sentinel with ``--sentinel``), stopped by
their own pids."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import redis

from fluxq.workers.process.children import start_child
from fluxq.workers.process.embedded_redis import redis_server_binary
from tests.support.net import free_port, wait_until

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 1000
"""A master silent this long is down for a Sentinel (Redis's default is 30 s)."""
FAILOVER_TIMEOUT_MS = 5000


class SentinelSet:
    """One master, two replicas, three Sentinels (quorum 2) in ``directory``: after a failover
    one replica is promoted and the other follows it, so writes still have a replica."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ports = {"master": free_port(), "replica": free_port(), "replica-2": free_port()}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._paused = ""

    @property
    def url(self) -> str:
        """FLUXQ_REDIS_URL for these Sentinels (database 0)."""
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports) + "/0"

    def _start(self, name: str, argv: list[str]) -> None:
        with (self.directory / f"{name}.log").open("ab") as log:
            self.processes[name] = start_child(argv, stdout=log, stderr=subprocess.STDOUT)

    def _server(self, name: str, *extra: str) -> None:
        home = self.directory / name
        home.mkdir(exist_ok=True)
        self._start(name, [
            redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.ports[name]),
            "--save", "", "--appendonly", "no", "--dir", str(home), *extra,
        ])  # fmt: skip

    def start(self, timeout_s: float = 30.0) -> None:
        master = self.ports["master"]
        self._server("master")
        self._server("replica", "--replicaof", "127.0.0.1", str(master))
        self._server("replica-2", "--replicaof", "127.0.0.1", str(master))
        for number, port in enumerate(self.sentinel_ports):
            conf = self.directory / f"sentinel-{number}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n",
                encoding="utf-8",
            )
            self._start(f"sentinel-{number}", [redis_server_binary(), str(conf), "--sentinel"])
        ready = wait_until(self.ready, timeout_s, interval_s=0.1)
        assert ready, f"Sentinels not ready: {self.log_tail()}"

    def ready(self) -> bool:
        """Each Sentinel knows the master, both replicas and the two other Sentinels, and both
        replicas are in sync with the master."""
        try:
            for port in self.sentinel_ports:
                with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
                    fields = client.sentinel_master(MASTER_NAME)
                    if int(fields["num-slaves"]) < 2 or int(fields["num-other-sentinels"]) < 2:
                        return False
            master = self.master_port()
            if master is None:
                return False
            for port in self.ports.values():
                if port == master:
                    continue
                with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as replica:
                    info = replica.info("replication")
                    if info.get("master_port") != master or info.get("master_link_status") != "up":
                        return False
            return True
        except redis.RedisError:
            return False

    def master_ports(self) -> set[int | None]:
        """The master's port as each Sentinel says it (None: no answer)."""
        said: set[int | None] = set()
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
                    address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                    said.add(int(address[1]) if address else None)
            except redis.RedisError:
                said.add(None)
        return said

    def master_port(self) -> int | None:
        """The master's port when every Sentinel agrees on it, else None."""
        said = self.master_ports()
        return said.pop() if len(said) == 1 else None

    def master_server(self) -> str:
        """The name of the server the Sentinels agree is the master."""
        port = self.master_port()
        names = [name for name, known in self.ports.items() if known == port]
        assert names, f"no agreed master ({self.master_ports()}): {self.log_tail()}"
        return names[0]

    def replicated(self, timeout_ms: int = 5000) -> int:
        """Replicas that acknowledged every write so far (Redis's WAIT on the master)."""
        port = self.ports[self.master_server()]
        with redis.Redis(port=port, socket_timeout=10) as master:
            return int(master.wait(2, timeout_ms))

    def pause_replicas(self, paused: bool) -> None:
        """SIGSTOP both replicas (they hold their connections and acknowledge nothing), or
        SIGCONT them."""
        master = self.master_server()
        for name in self.ports:
            if name != master:
                self.processes[name].send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def kill_master(self) -> str:
        """SIGKILL the master's process (by its pid); the name of the server killed."""
        name = self.master_server()
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        return name

    def restart(self, name: str, timeout_s: float = 30.0) -> None:
        """Start the killed server ``name`` again on its port, empty and believing itself a
        master, as a supervisor restarting it would: the Sentinels make it a replica of the
        current master, and this returns once it is in sync."""
        self._server(name)
        assert wait_until(self.ready, timeout_s, interval_s=0.1), (
            f"{name} not back: {self.log_tail()}"
        )

    def stop_master(self, paused: bool) -> str:
        """SIGSTOP the master (a network pause: its connections stay open, nothing answers), or
        SIGCONT the server stopped before; the name of that server."""
        if paused:
            self._paused = self.master_server()
        self.processes[self._paused].send_signal(signal.SIGSTOP if paused else signal.SIGCONT)
        return self._paused

    def wait_failover(self, old_port: int | None = None, timeout_s: float = 30.0) -> int:
        """The new master's port once every Sentinel names another server than ``old_port``
        (default: the first master) master, it says so, and another replica follows it."""
        former = self.ports["master"] if old_port is None else old_port

        def promoted() -> bool:
            port = self.master_port()
            if port is None or port == former:
                return False
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
                info = client.info("replication")
                return info.get("role") == "master" and int(info.get("connected_slaves", 0)) >= 1

        assert wait_until(promoted, timeout_s, interval_s=0.1), f"no failover: {self.log_tail()}"
        port = self.master_port()
        assert port is not None
        return port

    def log_tail(self, chars: int = 2000) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}"
            for log in sorted(self.directory.glob("*.log"))
        )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self.processes.clear()
