"""The real-time loop end to end on a real Redis and a real local Ray: events appended to the
partition streams, stream workers (Ray actors) firing the shipped rules, actions issued
exactly once through crashes, replays, poison entries and a Redis restart."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis

from strata.ids import pseudonymise
from strata.io.event_log import EventAppender
from strata.io.redis_server import EmbeddedRedis
from strata.realtime.keys import ENTRY_FIELD, RealtimeKeys
from strata.realtime.stream_config import load_stream_config
from strata.realtime.wire import encode_event, partition_of
from strata.settings import Settings
from tests.conftest import TEST_KEY
from tests.support import publish_raw_users, rt_stats

pytestmark = pytest.mark.usefixtures("ray_local")

RAW = [f"u{i}" for i in range(1, 21)]
KEYS = RealtimeKeys("strata", 8)  # configs/stream.yaml's partitions


def uid(raw: str) -> int:
    return pseudonymise(raw, TEST_KEY.encode())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def wait_for(check: Callable[[], Any], timeout_s: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or check}")


def actions(client: redis.Redis, raw: str) -> list[dict[str, Any]]:
    return [orjson.loads(a) for a in client.lrange(KEYS.actions(uid(raw)), 0, -1)]


@pytest.fixture
def pool(redis_url: str, settings: Settings) -> Iterator[Any]:
    """Two stream workers (no sink) on the test Redis, with a published snapshot."""
    from jobs.stream import StreamPool

    publish_raw_users(redis_url, "v1", RAW, TEST_KEY)
    p = StreamPool(settings, redis_url, workers=2, sink=False)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def append(url: str, events: list[dict[str, Any]]) -> tuple[int, int]:
    appender = EventAppender(url, "strata", load_stream_config())
    try:
        res = appender.append(events)
    finally:
        appender.close()
    assert not res.refused
    return res.accepted, res.duplicates


def review(raw: str, rating: int, event_id: str) -> dict[str, Any]:
    t = now_ms()
    return {
        "event_id": event_id,
        "user_id": uid(raw),
        "event_type": "review",
        "rating": rating,
        "ts": t,
        "received_ms": t,
    }


def test_cart_abandoned_31_minutes_ago_fires_at_once_and_a_replay_issues_nothing(
    pool: Any, redis_url: str, client: redis.Redis
) -> None:
    t = now_ms() - 31 * 60_000
    cart = {
        "event_id": "cart1",
        "user_id": uid("u1"),
        "event_type": "add_to_cart",
        "category": "fruit",
        "ts": t,
        "received_ms": now_ms(),
    }
    assert append(redis_url, [cart]) == (1, 0)
    got = wait_for(lambda: actions(client, "u1"), what="the cart_abandoned coupon")
    assert {a["rule"] for a in got} == {"cart_abandoned"}
    assert sorted(a["action"] for a in got) == ["coupon", "push"]
    coupon = next(a for a in got if a["action"] == "coupon")
    assert coupon["params"]["category"] == "fruit"
    assert coupon["trigger"]["opened_ts"] == t
    assert coupon["key"].startswith(f"cart_abandoned:{uid('u1')}:")
    assert b"cart_abandoner" in client.hgetall(KEYS.tags(uid("u1")))
    # the same batch posted again appends nothing; the same entry re-sent raw is processed
    # again and decided before: still one coupon
    assert append(redis_url, [cart]) == (0, 1)
    p = partition_of(uid("u1"), pool.partitions)
    client.xadd(KEYS.stream(p), {ENTRY_FIELD: encode_event(cart)})
    time.sleep(3)
    assert len(actions(client, "u1")) == 2
    stats = rt_stats(client)
    fired = sum(int(v) for k, v in stats.items() if k.endswith(b"|fired"))
    assert fired == 1


def test_an_order_within_30_minutes_closes_the_cart(
    pool: Any, redis_url: str, client: redis.Redis
) -> None:
    t = now_ms() - 40 * 60_000
    events = [
        {
            "event_id": "c2",
            "user_id": uid("u2"),
            "event_type": "add_to_cart",
            "category": "seafood",
            "ts": t,
        },
        {
            "event_id": "o2",
            "user_id": uid("u2"),
            "event_type": "order",
            "order_id": "o2",
            "amount_cny": 88.0,
            "ts": t + 10 * 60_000,
        },
        {
            "event_id": "n3",
            "user_id": uid("u3"),
            "event_type": "review",
            "rating": 5,
            "ts": now_ms(),
        },
    ]
    append(redis_url, events)
    wait_for(lambda: pool.poll().get("events", 0) >= 3, what="3 events processed")
    time.sleep(2)  # any timer would be due already
    assert actions(client, "u2") == [] and actions(client, "u3") == []


def test_a_worker_killed_before_xack_loses_nothing_and_duplicates_nothing(
    pool: Any, redis_url: str, client: redis.Redis
) -> None:
    import ray

    wait_for(lambda: pool.poll().get("rounds", 0) > 0, what="workers running")
    pids = ray.get([w.pid.remote() for w in pool.workers])
    ray.get([w.inject_crash_before_commit.remote() for w in pool.workers])
    users = RAW[:10]
    append(redis_url, [review(r, 1, f"neg.{r}") for r in users])

    def all_done() -> bool:
        pool.poll()
        return all(len(actions(client, r)) >= 2 for r in users)

    wait_for(all_done, timeout_s=120, what="every negative review handled after the crash")
    assert pool.restarts >= 1
    assert ray.get([w.pid.remote() for w in pool.workers]) != pids
    for r in users:
        kinds = sorted(a["action"] for a in actions(client, r))
        assert kinds == ["coupon", "service_task"], (r, kinds)
    stats = rt_stats(client)
    assert (
        sum(
            int(v)
            for k, v in stats.items()
            if k.startswith(b"negative_review|") and k.endswith(b"|fired")
        )
        == 10
    )
    # nothing left pending
    for p in range(pool.partitions):
        assert client.xpending(KEYS.stream(p), "workers")["pending"] == 0


def test_a_poison_entry_goes_to_the_dead_letter_stream_and_the_partition_moves_on(
    pool: Any, redis_url: str, client: redis.Redis
) -> None:
    u = uid("u4")
    p = partition_of(u, pool.partitions)
    bad = {
        "event_id": "bad1",
        "user_id": u,
        "event_type": "order",
        "order_id": "x",
        "amount_cny": "lots",
        "ts": now_ms(),
    }
    client.xadd(KEYS.stream(p), {ENTRY_FIELD: orjson.dumps(bad)})
    client.xadd(KEYS.stream(p), {ENTRY_FIELD: b"not json"})
    append(redis_url, [review("u4", 2, "after-poison")])
    wait_for(lambda: len(actions(client, "u4")) == 2, what="the review after the poison")
    dead = wait_for(lambda: client.xrange(KEYS.dead(p)), what="dead letters")
    reasons = [f[b"reason"].decode() for _, f in dead]
    assert len(dead) == 2, reasons
    assert any("undecodable" in r for r in reasons)
    assert any("delivered" in r or "lots" in r or "amount" in r for r in reasons), reasons
    assert client.xpending(KEYS.stream(p), "workers")["pending"] == 0


def test_workers_reconnect_after_redis_restarts(tmp_path: Any, settings: Settings) -> None:
    from jobs.stream import StreamPool

    with EmbeddedRedis(persist_dir=str(tmp_path / "redis"), supervise=True) as server:
        url = server.url
        publish_raw_users(url, "v1", RAW, TEST_KEY)
        c = redis.Redis.from_url(url)
        c.save()
        pool = StreamPool(settings, url, workers=2, sink=False)
        pool.start()
        try:
            append(url, [review("u5", 1, "before")])
            wait_for(lambda: len(actions(c, "u5")) == 2, what="the review before the restart")
            c.save()
            pid = server.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: server.restarts == 1 and server.running, what="redis restarted")
            c = redis.Redis.from_url(url)
            wait_for(lambda: c.ping(), what="ping")
            append(url, [review("u6", 1, "after")])
            wait_for(
                lambda: pool.poll() is not None and len(actions(c, "u6")) == 2,
                timeout_s=60,
                what="the review after the restart",
            )
        finally:
            pool.stop()
            c.close()
