"""Budget reservations of a whole round at once, on a real standalone Redis and a real 3-master
cluster: several rules and days in one call (one script on a standalone server, one pipelined
script per rule-day on a cluster), budgets never overspent, a replay counting nothing twice,
decided action keys dropped, and a script cache emptied (as by a restart) loaded again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from strata.io.realtime_store import RealtimeStore
from strata.io.redis_client import is_cluster
from strata.realtime.model import ActionSpec, Firing, action_key
from strata.realtime.stream_config import load_stream_config

pytestmark = pytest.mark.integration

NS = "strata"
DAY1, DAY2 = "2026-12-01", "2026-12-02"


def firing(rule: str, user: int, day: str, *, count: int | None = None, cny: float = 0.0,
           budget_cny: float | None = None) -> Firing:  # fmt: skip
    return Firing(
        rule=rule, user_id=user, instance=f"i{user}", key=action_key(rule, user, f"i{user}"),
        tier="regular", issued_ms=0, day=day, actions=[ActionSpec("coupon", {})], trigger={},
        cost_cny=cny, budget_count=count, budget_cny=budget_cny,
    )  # fmt: skip


@pytest.fixture(params=["standalone", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[RealtimeStore]:
    url = request.getfixturevalue(
        "redis_url" if request.param == "standalone" else "redis_cluster_url"
    )
    s = RealtimeStore(url, NS, load_stream_config(), partitions=8)
    yield s
    s.close()


def _commands(store: RealtimeStore, name: str) -> int:
    """Calls of command ``name`` the server(s) answered so far (INFO commandstats)."""
    client = store.redis
    nodes = (
        [client.get_redis_connection(n) for n in client.get_primaries()]  # type: ignore[union-attr]
        if is_cluster(client)
        else [client]
    )
    total = 0
    for node in nodes:
        stats = node.info("commandstats")
        total += int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
    return total


def test_a_round_reserves_several_rule_days_at_once_and_a_replay_counts_nothing_twice(
    store: RealtimeStore,
) -> None:
    keys = store.keys
    round_1 = [
        firing("negative_review", 1, DAY1, count=2),
        firing("negative_review", 2, DAY1, count=2),
        firing("negative_review", 3, DAY1, count=2),  # over the count budget
        firing("negative_review", 4, DAY2, count=2),  # another day: its own budget
        firing("cart_abandoned", 5, DAY1, cny=20.0, budget_cny=30.0),
        firing("cart_abandoned", 6, DAY1, cny=20.0, budget_cny=30.0),  # over the CNY budget
        firing("visit_streak_3d", 7, DAY1),  # no budget
    ]
    store.redis.script_load(store._reserve.script)  # counted below: no NOSCRIPT first
    evalsha_before = _commands(store, "evalsha")
    status = [r.status for r in store.reserve(round_1)]
    assert status == ["ok", "ok", "budget", "ok", "ok", "budget", "ok"]
    # standalone: the whole round in one script call; cluster: one per rule-day (4)
    assert _commands(store, "evalsha") - evalsha_before == (4 if is_cluster(store.redis) else 1)
    client = store.redis
    assert client.hgetall(keys.budget("negative_review", DAY1)) == {b"count": b"2", b"cents": b"0"}
    assert client.hget(keys.budget("negative_review", DAY2), "count") == b"1"
    assert client.hgetall(keys.budget("cart_abandoned", DAY1)) == {
        b"count": b"1",
        b"cents": b"2000",
    }
    # the same round again (a worker killed before its commit): reserved ones stay ok
    # without counting, refused ones stay refused
    assert [r.status for r in store.reserve(round_1)] == status
    assert client.hget(keys.budget("negative_review", DAY1), "count") == b"2"
    assert client.hget(keys.budget("cart_abandoned", DAY1), "cents") == b"2000"
    # committed since (the decision recorded): dropped as duplicates, the budget untouched
    client.set(keys.idem(round_1[0].key, 1), b"issued")
    again = [round_1[0], firing("negative_review", 8, DAY2, count=2)]
    assert [r.status for r in store.reserve(again)] == ["duplicate", "ok"]
    assert client.hget(keys.budget("negative_review", DAY2), "count") == b"2"


def test_a_script_cache_emptied_by_a_restart_is_loaded_again(store: RealtimeStore) -> None:
    client = store.redis
    first = [firing("negative_review", 1, DAY1, count=5), firing("cart_abandoned", 2, DAY1)]
    assert [r.status for r in store.reserve(first)] == ["ok", "ok"]
    if is_cluster(client):
        for node in client.get_primaries():  # type: ignore[union-attr]
            client.get_redis_connection(node).script_flush()  # type: ignore[union-attr]
    else:
        client.script_flush()
    assert not any(client.script_exists(store._reserve.sha))
    nxt = [
        firing("negative_review", 3, DAY1, count=5),
        firing("cart_abandoned", 4, DAY1),
        firing("cart_abandoned", 5, DAY2),
    ]
    assert [r.status for r in store.reserve(nxt)] == ["ok", "ok", "ok"]
    assert client.hget(store.keys.budget("negative_review", DAY1), "count") == b"2"
    assert client.hget(store.keys.budget("cart_abandoned", DAY2), "count") == b"1"


def test_a_redis_error_of_the_script_is_raised(store: RealtimeStore) -> None:
    # a budget hash of the wrong type: the script fails, the round must fail (not reserve)
    store.redis.set(store.keys.budget("negative_review", DAY1), "not a hash")
    with pytest.raises(redis.ResponseError):
        store.reserve([firing("negative_review", 1, DAY1, count=5)])
