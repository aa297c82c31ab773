"""The webhook guard: fluxq POSTs a job's outcome only to public addresses unless told otherwise.

Nothing here leaves 127.0.0.0/8: addresses are classified as literals without connecting, host
names go through a monkeypatched resolver, and the end-to-end checks use loopback listeners that
record whether they were contacted.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

from fluxq.tasks import notify
from fluxq.tasks.enqueue import enqueue
from fluxq.tasks.notify import deliver_notification, refusal_reason
from fluxq.workers.runtime import Runtime

REQUEST = {"prompt": "notify me"}


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    """The shared offline Runtime (tests/conftest.py): a real Redis, no broker, no BFL."""
    return runtime


def allow_private(rt: Runtime) -> None:
    """FLUXQ_WEBHOOK_ALLOW_PRIVATE=1 for this runtime."""
    rt.settings = rt.settings.model_copy(update={"webhook_allow_private": True})


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any name lookup that would leave this machine (literal addresses still work)."""
    real = socket.getaddrinfo

    def literal_only(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    monkeypatch.setattr(socket, "getaddrinfo", literal_only)


class Listener(BaseHTTPRequestHandler):
    """Records each request; answers 204, or a redirect when ``redirect_to`` is set."""

    hits: ClassVar[list[tuple[str, dict[str, str]]]] = []
    redirect_to: ClassVar[str | None] = None

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).hits.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        if self.redirect_to is not None and self.path == "/hook":
            self.send_response(302)
            self.send_header("location", self.redirect_to)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback HTTP listener; yields its port."""
    Listener.hits = []
    Listener.redirect_to = None
    server = HTTPServer(("127.0.0.1", 0), Listener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "169.254.169.254",
        "fe80::1",
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "fd00::1",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
        "100.64.0.1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:a00:1::",  # 6to4 around 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
    ],
)
def test_internal_addresses_are_refused_without_connecting(address: str) -> None:
    assert refusal_reason(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal_reason(address) is None


def test_a_host_name_resolving_to_a_private_address_is_refused(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job whose webhook host resolves to the cloud metadata address (and one public)
    looked_up: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return ["93.184.216.34", "169.254.169.254"]

    monkeypatch.setattr(notify, "resolve_host", resolver)
    posted: list[object] = []
    monkeypatch.setattr(notify, "post_webhook", lambda *a, **k: posted.append(a))
    job_id = enqueue(rt, "flux-dev", REQUEST, webhook_url="https://hooks.example.com/fluxq")
    # When it is delivered
    assert deliver_notification(rt, job_id, attempt=1) is None
    # Then nothing was posted, it is not retried, and the job says why
    assert looked_up == ["hooks.example.com"]
    assert posted == []
    job = rt.store.get(job_id)
    assert job is not None
    assert job.webhook_failed is not None
    assert "169.254.169.254" in job.webhook_failed
    assert not job.webhook_delivered


def test_a_loopback_receiver_is_not_contacted_by_default_and_the_job_says_why(
    rt: Runtime, listener: int
) -> None:
    job_id = enqueue(rt, "flux-dev", REQUEST, webhook_url=f"http://127.0.0.1:{listener}/hook")
    assert deliver_notification(rt, job_id, attempt=1) is None
    assert Listener.hits == []
    job = rt.store.get(job_id)
    assert job is not None
    assert job.webhook_failed is not None
    assert "127.0.0.1" in job.webhook_failed
    assert "FLUXQ_WEBHOOK_ALLOW_PRIVATE" in job.webhook_failed


def test_a_loopback_receiver_is_contacted_when_private_destinations_are_allowed(
    rt: Runtime, listener: int
) -> None:
    allow_private(rt)
    job_id = enqueue(rt, "flux-dev", REQUEST, webhook_url=f"http://127.0.0.1:{listener}/hook")
    assert deliver_notification(rt, job_id, attempt=1) is None
    assert [path for path, _ in Listener.hits] == ["/hook"]
    job = rt.store.get(job_id)
    assert job is not None
    assert job.webhook_delivered
    assert job.webhook_failed is None


def test_a_redirect_is_not_followed(rt: Runtime, listener: int) -> None:
    # Given a receiver that answers 302 to another (internal) place
    allow_private(rt)
    Listener.redirect_to = f"http://127.0.0.1:{listener}/internal"
    job_id = enqueue(rt, "flux-dev", REQUEST, webhook_url=f"http://127.0.0.1:{listener}/hook")
    # When the webhook is delivered, on every attempt
    attempts = rt.settings.webhook_max_attempts
    countdowns = [deliver_notification(rt, job_id, attempt=n) for n in range(1, attempts + 1)]
    # Then the redirect target was never contacted, and the job failed its webhook
    assert {path for path, _ in Listener.hits} == {"/hook"}
    assert countdowns[-1] is None
    job = rt.store.get(job_id)
    assert job is not None
    assert job.webhook_failed == "HTTP 302"


def test_the_post_goes_to_the_address_that_was_checked(
    rt: Runtime, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a name that resolves (through the patched resolver) to the loopback listener, and
    # a guard told to accept it: a second lookup by the HTTP client could be answered
    # differently (DNS rebinding), so the connection must use the checked address
    monkeypatch.setattr(notify, "resolve_host", lambda host, port: ["127.0.0.1"])
    real_reason: Callable[[str], str | None] = refusal_reason
    monkeypatch.setattr(
        notify, "refusal_reason", lambda a: None if a == "127.0.0.1" else real_reason(a)
    )
    url = f"http://hooks.example.com:{listener}/hook"
    job_id = enqueue(rt, "flux-dev", REQUEST, webhook_url=url)
    assert deliver_notification(rt, job_id, attempt=1) is None
    # Then the listener got it, addressed to the original host (the autouse no_dns fixture
    # fails any real lookup of hooks.example.com)
    assert len(Listener.hits) == 1
    _, headers = Listener.hits[0]
    assert headers["host"] == f"hooks.example.com:{listener}"
    job = rt.store.get(job_id)
    assert job is not None
    assert job.webhook_delivered


def test_a_stored_url_that_no_longer_validates_is_refused_not_retried(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job enqueued before webhook URLs were validated
    job_id = enqueue(rt, "flux-dev", REQUEST)
    rt.store.update(job_id, {"webhook_url": "http:///etc/passwd"})
    posted: list[object] = []
    monkeypatch.setattr(notify, "post_webhook", lambda *a, **k: posted.append(a))
    assert deliver_notification(rt, job_id, attempt=1) is None
    assert posted == []
    job = rt.store.get(job_id)
    assert job is not None
    assert job.webhook_failed


def test_a_failed_lookup_is_retried(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_answer(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution")

    monkeypatch.setattr(notify, "resolve_host", no_answer)
    job_id = enqueue(rt, "flux-dev", REQUEST, webhook_url="https://hooks.example.com/fluxq")
    assert deliver_notification(rt, job_id, attempt=1) is not None
    last = rt.settings.webhook_max_attempts
    assert deliver_notification(rt, job_id, attempt=last) is None
    job = rt.store.get(job_id)
    assert job is not None
    assert job.webhook_failed
