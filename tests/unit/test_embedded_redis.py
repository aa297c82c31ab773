"""The embedded Redis starts on loopback, answers, and is gone after stop."""

from __future__ import annotations

import redis

from fluxq.workers.process.embedded_redis import EmbeddedRedis


def test_an_embedded_redis_answers_on_loopback_and_stops_by_its_own_pid() -> None:
    server = EmbeddedRedis().start()
    client = redis.Redis.from_url(server.url)
    try:
        assert server.url.startswith("redis://127.0.0.1:")
        assert client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()
        server.stop()
    probe = redis.Redis.from_url(server.url, socket_connect_timeout=0.2)
    try:
        try:
            probe.ping()
            still_up = True
        except redis.ConnectionError:
            still_up = False
    finally:
        probe.close()
    assert not still_up
