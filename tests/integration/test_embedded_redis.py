"""The embedded redis-server is a real server that starts, answers and stops."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from jobs._runtime import redis_session
from strata.io.redis_server import EmbeddedRedis, find_redis_server
from strata.settings import Settings

pytestmark = pytest.mark.integration


def test_start_answer_stop() -> None:
    assert find_redis_server()
    server = EmbeddedRedis().start()
    client = redis.Redis.from_url(server.url)
    try:
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.info("server")["redis_version"]
    finally:
        client.close()
        server.stop()
    assert not server.running
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=0.5).ping()


def test_session_fixture_flushes(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    client.close()


def test_a_second_process_finds_the_running_embedded_server(tmp_path: Any) -> None:
    persist = str(tmp_path / "redis")
    assert EmbeddedRedis.running_in(persist) is None
    with EmbeddedRedis(persist_dir=persist) as server:
        assert EmbeddedRedis.running_in(persist) == server.url
        settings = Settings(data=str(tmp_path))
        with redis_session(settings) as url:  # reuses it instead of starting another
            assert url == server.url
        assert server.running  # the session did not stop a server it does not own
    assert EmbeddedRedis.running_in(persist) is None
