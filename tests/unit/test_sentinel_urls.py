"""Sentinel URLs: checked like every FLUXQ_REDIS_URL (the message never repeats the URL), read
into Sentinels, a master's password and a database, and handed to Celery with the master's name."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

from fluxq.config.celery import celery_config
from fluxq.config.errors import ConfigError
from fluxq.config.redis_url import SentinelURL, parse_sentinel, redis_url_problem
from fluxq.config.settings import load_settings
from fluxq.workers.state.redis_client import FAILOVER_RETRIES, connect

SECRET = "s3cret-pw"


def test_sentinel_urls_are_read_into_sentinels_a_password_and_a_database() -> None:
    url = f"sentinel://:{SECRET}@10.0.0.1:26379;sentinel://10.0.0.2;sentinel://10.0.0.3:5000/2"
    assert redis_url_problem(url) is None
    assert parse_sentinel(url) == SentinelURL(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 5000)),
        password=SECRET,
        username=None,
        db=2,
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sentinel://h:1;redis://h:2", "Sentinel 2 of 2 is not a sentinel:// URL"),
        (f"sentinel://:{SECRET}@h:1/x", "the Sentinel has a database that is not a number"),
        ("sentinel://h:1/1;sentinel://h:2", "Sentinel 1 of 2 has a database that is not a number"),
        ("sentinel://h:99999", "the Sentinel has a port that is not a number"),
        ("sentinel://:1", "the Sentinel names no host"),
        ("sentinel://h:1?ssl=true", "the Sentinel has options"),
    ],
)
def test_a_bad_sentinel_url_is_named_without_repeating_it(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None, redis_url=url)
    text = str(refused.value)
    assert "FLUXQ_REDIS_URL" in text
    assert problem in text
    assert "sentinel://HOST:PORT;sentinel://HOST:PORT/DB" in text  # the valid shape
    assert SECRET not in text


def test_celery_gets_the_masters_name_only_for_a_sentinel_url() -> None:
    sentinel = celery_config("sentinel://127.0.0.1:26379", sentinel_master="fluxq-main")
    assert sentinel["broker_transport_options"]["master_name"] == "fluxq-main"
    plain = celery_config("redis://127.0.0.1:6379/0", sentinel_master="fluxq-main")
    assert "master_name" not in plain["broker_transport_options"]
    settings = load_settings(_env_file=None, redis_sentinel_master="fluxq-main")
    assert settings.redis_sentinel_master == "fluxq-main"
    with pytest.raises(ConfigError, match="FLUXQ_REDIS_SENTINEL_MASTER"):
        load_settings(_env_file=None, redis_sentinel_master="no spaces")


def test_a_sentinel_client_asks_for_its_master_by_name_and_rides_out_a_failover() -> None:
    # (nothing is contacted: redis-py connects on the first command)
    client = connect(
        f"sentinel://:{SECRET}@127.0.0.1:1;sentinel://127.0.0.1:2/3",
        sentinel_master="fluxq-main",
        decode_responses=True,
    )
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "fluxq-main"
    assert [
        (s.connection_pool.connection_kwargs["port"]) for s in pool.sentinel_manager.sentinels
    ] == [1, 2]
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["decode_responses"]) == (3, SECRET, True)
    assert kwargs["retry"].get_retries() == FAILOVER_RETRIES
    client.close()
