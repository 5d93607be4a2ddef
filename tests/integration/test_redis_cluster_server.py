"""The embedded Redis Cluster (3 masters on loopback) and the client factory's two modes."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from strata.io.redis_client import (
    RedisModeError,
    group_by_slot,
    is_cluster,
    redis_mode,
    slot_of,
    sync_client,
)
from strata.settings import Settings


def test_cluster_forms_routes_and_recovers_a_restarted_master(
    redis_cluster_url: str, redis_cluster: Any
) -> None:
    client = sync_client(redis_cluster_url)  # STRATA_REDIS_MODE=cluster from the fixture
    assert is_cluster(client)
    assert redis_mode() == "cluster"
    keys = [f"k:{i}" for i in range(300)]
    for i, key in enumerate(keys):
        client.set(key, i)
    # the keys really spread over the three masters
    per_node = [node.client().dbsize() for node in redis_cluster.master_nodes]
    assert all(n > 0 for n in per_node) and sum(per_node) == len(keys)
    # keys with one hash tag share a slot, so a MULTI over them is allowed
    with client.pipeline(transaction=True) as pipe:  # type: ignore[call-arg]
        pipe.set("{user:7}:a", 1).set("{user:7}:b", 2)
        pipe.execute()
    assert client.mget("{user:7}:a", "{user:7}:b") == [b"1", b"2"]
    # a master stopped and started (clean shutdown) comes back with its keys
    redis_cluster.restart_node(1)
    assert sum(int(client.get(k)) for k in keys) == sum(range(300))
    # ... and after SIGKILL too (append-only file, fsync every second: wait for it)
    client.set("late", "x")
    redis_cluster.nodes[0].client().execute_command("WAIT", 0, 0)
    time.sleep(1.2)
    redis_cluster.restart_node(2, kill=True)
    assert sum(int(client.get(k)) for k in keys) == sum(range(300))
    assert client.get("late") == b"x"
    client.close()


def test_standalone_is_the_default(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATA_REDIS_MODE", raising=False)
    client = sync_client(redis_url)
    assert isinstance(client, redis.Redis) and not isinstance(client, RedisCluster)
    assert not is_cluster(client)
    client.close()


def test_bad_mode_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_REDIS_MODE", "sentinel")
    with pytest.raises(RedisModeError, match="STRATA_REDIS_MODE='sentinel'"):
        redis_mode()
    with pytest.raises(ValueError, match="redis_mode"):
        Settings()
    assert os.environ["STRATA_REDIS_MODE"] == "sentinel"


def test_slots_honour_hash_tags() -> None:
    assert slot_of("ns:v:1:{ns:b7}:i") == slot_of("ns:v:1:{ns:b7}:g.3") == slot_of("ns:b7")
    assert 0 <= slot_of("anything") < 16384
    groups = group_by_slot(["{a}1", "{b}2", "{a}3"], lambda k: k)
    assert sorted(len(g) for g in groups.values()) == [1, 2]
    assert groups[slot_of("a")] == ["{a}1", "{a}3"]
