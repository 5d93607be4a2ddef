"""Redis restarted under stream load: events appended at a steady rate through the event log
(the API's append script) while Redis restarts; every event acknowledged to the producer
reaches the warehouse once, and every action is issued once.

The producer behaves like a client of ``POST /v1/events``: a batch that fails (Redis down) is
sent again with the same event ids, so a batch whose acknowledgement was lost appends nothing
twice. Counting: events acknowledged vs rows the sink committed (each event carries a unique
``item_id``), and actions issued (per-user action logs, the outbox's actions table rows) vs
unique idempotency keys. ``bench/chaos.py`` runs :func:`stream_with_restart` longer.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from pydantic import SecretStr

from strata.io.redis_server import EmbeddedRedis
from tests.conftest import TEST_KEY
from tests.faults.conftest import restart

pytestmark = pytest.mark.integration

#: one in this many events is a negative review (the ``negative_review`` rule: a coupon and a
#: service task, then a 24 h cooldown: exactly 2 actions per reviewing user)
REVIEW_EVERY = 5


def _events(start: int, n: int, users: list[int], now_ms: int) -> list[dict[str, Any]]:
    out = []
    for seq in range(start, start + n):
        user = users[seq % len(users)]
        review = seq % REVIEW_EVERY == 0
        out.append(
            {
                "event_id": f"chaos-{seq}",
                "user_id": user,
                "event_type": "review" if review else "item_view",
                "item_id": seq,  # unique: finds the event among the sunk rows
                "ts": now_ms + seq % 1000,
                "received_ms": now_ms,
                **({"rating": 1, "category": "fruit"} if review else {}),
            }
        )
    return out


def stream_with_restart(
    settings: Any,
    server: EmbeddedRedis,
    how: str,
    rate_per_s: float = 400.0,
    seconds: float = 8.0,
    n_users: int = 200,
    batch: int = 20,
    restarts: int = 1,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Two stream workers and the sink on ``server``; a producer appends ``rate_per_s`` events
    for ``seconds`` while Redis is restarted ``restarts`` times (``how``: graceful or
    sigkill); then waits until the sink has committed what was acknowledged.

    Returns:
        ``accepted`` (events acknowledged to the producer), ``retried_batches``,
        ``sunk``/``sunk_unique``/``lost``/``extra`` (warehouse rows vs acknowledged events),
        ``actions``/``actions_unique`` (per-user logs; an action is its idempotency key and
        kind) against ``expected_actions`` (2 per ``negative_review`` firing), the reviewers
        with and without actions, the same for the warehouse ``actions`` table,
        the worker restarts and each Redis ``down_s``.
    """
    from jobs.stream import StreamPool
    from strata.io.event_log import EventAppender, stream_partitions
    from strata.io.warehouse import Warehouse
    from strata.realtime.keys import RealtimeKeys
    from strata.realtime.stream_config import load_stream_config
    from tests.support import publish_raw_users, rt_stats

    url = server.url
    raw = [f"chaos-u{i}" for i in range(n_users)]
    users = [int(u) for u in publish_raw_users(url, "v1", raw, TEST_KEY)]
    pool = StreamPool(settings, url, workers=2, sink=True)
    pool.start()
    acked: set[int] = set()
    reviewers: set[int] = set()
    counts = {"retried_batches": 0, "refused_batches": 0}
    now_ms = time.time_ns() // 1_000_000
    total = int(rate_per_s * seconds)
    done = threading.Event()

    def produce() -> None:
        appender = EventAppender(url, settings.redis_namespace, load_stream_config())
        t0 = time.monotonic()
        for start in range(0, total, batch):
            events = _events(start, min(batch, total - start), users, now_ms)
            while True:
                try:
                    res = appender.append(events)
                except (redis.exceptions.RedisError, OSError):
                    counts["retried_batches"] += 1
                    time.sleep(0.05)
                    continue
                if res.refused:  # backpressure: the API would answer 503 + Retry-After
                    counts["refused_batches"] += 1
                    time.sleep(0.1)
                    continue
                break
            acked.update(e["item_id"] for e in events)
            reviewers.update(e["user_id"] for e in events if e["event_type"] == "review")
            # a steady rate: the next batch when its time has come
            time.sleep(max(0.0, t0 + (start + batch) / rate_per_s - time.monotonic()))
        appender.close()
        done.set()

    producer = threading.Thread(target=produce, name="producer", daemon=True)
    downs: list[float] = []
    wh = Warehouse(settings.data)
    keys = RealtimeKeys(settings.redis_namespace)
    try:
        deadline = time.monotonic() + 120
        while pool.poll().get("rounds", 0) == 0:  # under load: the workers run already
            assert time.monotonic() < deadline, "the stream workers did not start"
            time.sleep(0.2)
        producer.start()
        for _ in range(restarts):
            time.sleep(seconds / (restarts + 1))
            downs.append(round(restart(server, how), 3))
        deadline = time.monotonic() + seconds + timeout_s
        sunk: list[int] = []
        while time.monotonic() < deadline:
            pool.poll()
            if done.is_set() and wh.exists():
                wh.reload()
                if wh.summary()["events"]["rows"] >= len(acked):
                    break
            time.sleep(0.5)
        time.sleep(3)  # the workers' last rounds and one more sink interval
        totals = pool.poll()
    finally:
        pool.stop()
        producer.join(30)
    wh.reload()
    sunk = [int(x) for x in wh.read_table("events", ["item_id"]).column("item_id").to_pylist()]
    table = wh.read_table("actions", ["key", "action"])
    action_rows = [f"{k}|{a}" for k, a in zip(*table.to_pydict().values(), strict=True)]
    client = redis.Redis.from_url(url)
    keys = keys.with_partitions(stream_partitions(client, keys, load_stream_config().partitions))
    stats = {
        (k.decode() if isinstance(k, bytes) else k): int(float(v))
        for k, v in rt_stats(client, settings.redis_namespace).items()
    }
    fired = sum(
        v for k, v in stats.items() if k.startswith("negative_review|") and k.endswith("|fired")
    )
    held_out = sum(
        v
        for k, v in stats.items()
        if k.startswith("negative_review|") and k.endswith("|suppressed.holdout")
    )
    per_user = {
        user: [
            "{key}|{action}".format(**orjson.loads(a))
            for a in client.lrange(keys.actions(user), 0, -1)
        ]
        for user in users
    }
    logged = [a for acts in per_user.values() for a in acts]
    client.close()
    sunk_set = set(sunk)
    return {
        "how": how,
        "events": total,
        "accepted": len(acked),
        **counts,
        "down_s": downs,
        "sunk": len(sunk),
        "sunk_unique": len(sunk_set),
        "lost": len(acked - sunk_set),
        "extra": len(sunk_set - acked),
        "actions": len(logged),
        "actions_unique": len(set(logged)),
        "reviewers": len(reviewers),
        "acting_users": sum(1 for acts in per_user.values() if acts),
        "reviewers_without_actions": sum(1 for u in reviewers if not per_user.get(u)),
        "fired": fired,
        "held_out": held_out,
        "expected_actions": 2 * fired,
        "action_rows": len(action_rows),
        "action_rows_unique": len(set(action_rows)),
        "max_duplicate": max(Counter(logged).values(), default=0),
        "worker_restarts": pool.restarts,
        "processed": totals.get("events", 0),
    }


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_redis_restarted_under_stream_load(
    how: str, tmp_path: Path, settings: Any, ray_local: Any
) -> None:
    settings = settings.model_copy(update={"pseudonym_key": SecretStr(TEST_KEY)})
    # SIGKILL: only an fsync before each reply keeps every acknowledged event (docs/faults)
    fsync = "always" if how == "sigkill" else "everysec"
    with EmbeddedRedis(
        persist_dir=str(tmp_path / "redis"), supervise=True, appendfsync=fsync
    ) as server:
        out = stream_with_restart(settings, server, how, rate_per_s=300, seconds=6)
    print(out)
    assert out["down_s"] and out["accepted"] == out["events"], out
    assert out["lost"] == 0 and out["extra"] == 0, out  # no acknowledged event lost
    assert out["sunk"] == out["sunk_unique"], out  # none sunk twice
    # every reviewer's first review fired (a coupon and a service task), or met its standing
    # holdout (counted once per held-out review, so at least once per held-out user)
    assert out["fired"] == out["acting_users"] and out["fired"] > 0, out
    assert out["reviewers_without_actions"] <= out["held_out"], out
    assert out["actions"] == out["actions_unique"] == out["expected_actions"], out
    assert out["action_rows"] == out["action_rows_unique"] == out["expected_actions"], out


def test_a_worker_restarted_while_redis_is_down_recovers(
    tmp_path: Path, settings: Any, ray_local: Any
) -> None:
    """Ray restarts a dead worker at once, maybe while Redis is still down: its constructor
    must not need Redis (a constructor that raises ends an actor for good)."""
    from jobs.stream import StreamPool
    from strata.io.event_log import EventAppender, stream_partitions
    from strata.realtime.keys import RealtimeKeys
    from strata.realtime.stream_config import load_stream_config
    from tests.support import publish_raw_users

    settings = settings.model_copy(update={"pseudonym_key": SecretStr(TEST_KEY)})
    with EmbeddedRedis(persist_dir=str(tmp_path / "redis")) as server:
        (user,) = publish_raw_users(server.url, "v1", ["chaos-w1"], TEST_KEY)
        pool = StreamPool(settings, server.url, workers=1, sink=False)
        pool.start()
        try:
            deadline = time.monotonic() + 120
            while pool.poll().get("rounds", 0) == 0:
                assert time.monotonic() < deadline, "the stream worker did not start"
                time.sleep(0.2)
            server.stop()
            ray_local.kill(pool.workers[0], no_restart=False)  # restarted while Redis is down
            time.sleep(4)  # its constructor has run by now
            server.start()
            now = time.time_ns() // 1_000_000
            review = {"event_id": "chaos-w1-review", "user_id": int(user), "rating": 1,
                      "event_type": "review", "ts": now, "received_ms": now}  # fmt: skip
            appender = EventAppender(server.url, settings.redis_namespace, load_stream_config())
            assert appender.append([review]).accepted == 1
            appender.close()
            client = redis.Redis.from_url(server.url)
            keys = RealtimeKeys(settings.redis_namespace)
            n = stream_partitions(client, keys, load_stream_config().partitions)
            key = keys.with_partitions(n).actions(int(user))
            deadline = time.monotonic() + 60
            while client.llen(key) < 2:
                assert time.monotonic() < deadline, "the restarted worker processes nothing"
                pool.poll()  # re-runs the restarted actor's run
                time.sleep(0.2)
            client.close()
            assert pool.restarts >= 1
        finally:
            pool.stop()
