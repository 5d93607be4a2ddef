"""The embedded redis-server is a real server that starts, answers and stops."""

from __future__ import annotations

import pytest
import redis

from strata.io.redis_server import EmbeddedRedis, find_redis_server

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
