"""The real-time loop on a real 3-master Redis Cluster (``STRATA_REDIS_MODE=cluster``): events
appended across partitions (the streams spread over every master), two stream workers (the
worker class driven in-process, in threads) firing the shipped rules, each expected action in
the per-partition outboxes exactly once, live state read through the API's reader, a master
restarted mid-load (clean, then SIGKILL after the fsync) losing no accepted event and
duplicating no action, and an erasure removing a user's keys on every node."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from redis.exceptions import RedisClusterException

from actors.stream_worker import StreamWorker
from strata.ids import pseudonymise
from strata.io.erasure import erase_realtime
from strata.io.event_log import AsyncEventAppender, EventAppender
from strata.io.realtime_reader import AsyncRealtimeReader
from strata.io.realtime_store import PartitionReader, RealtimeStore
from strata.io.redis_client import SyncClient, is_cluster, slot_of, sync_client
from strata.io.redis_cluster_server import _slot_owners
from strata.realtime.batch import EffectBatch
from strata.realtime.keys import OUTBOX_FIELD, WORKER_GROUP, RealtimeKeys
from strata.realtime.stream_config import load_stream_config
from strata.timeutil import DAY_MS, LOCAL_OFFSET_MS
from tests.conftest import TEST_KEY

NS = "strata"
CONFIG = load_stream_config().model_copy(update={"lease_ms": 2000, "block_ms": 100})
PARTITIONS = CONFIG.partitions
KEYS = RealtimeKeys(NS, PARTITIONS)
#: every user: a negative review (service task + coupon) and a cart left 31 minutes ago
#: (coupon + push, tag cart_abandoner), unless the shipped experiments hold the user out
ACTIONS = {"negative_review": ["coupon", "service_task"], "cart_abandoned": ["coupon", "push"]}
ERRORS = (redis.RedisError, RedisClusterException, OSError)


def uid(raw: str) -> int:
    return pseudonymise(raw, TEST_KEY.encode())


def _events(raw: str) -> list[dict[str, Any]]:
    now = time.time_ns() // 1_000_000
    u = uid(raw)
    return [
        {"event_id": f"rev.{raw}", "user_id": u, "event_type": "review", "rating": 1,
         "ts": now, "received_ms": now},
        {"event_id": f"cart.{raw}", "user_id": u, "event_type": "add_to_cart",
         "category": "fruit", "ts": now - 31 * 60_000, "received_ms": now},
        {"event_id": f"search.{raw}", "user_id": u, "event_type": "search", "ts": now,
         "received_ms": now},
    ]  # fmt: skip


def _wait_for(
    check: Callable[[], Any], timeout_s: float, what: str, state: Callable[[], Any] = str
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got = check()
        except ERRORS:
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {state()}")


def _append_until_done(appender: EventAppender, events: list[dict[str, Any]]) -> None:
    """Append a batch, retrying through a restarting master (the dedupe markers make a retry
    of a batch that got in append nothing twice)."""
    for _ in range(300):
        try:
            res = appender.append(events)
        except ERRORS:
            time.sleep(0.1)
            continue
        assert not res.refused
        return
    raise AssertionError("the batch was never accepted")


def _outbox(client: SyncClient) -> list[dict[str, Any]]:
    out = []
    for p in range(PARTITIONS):
        out += [orjson.loads(f[OUTBOX_FIELD]) for _, f in client.xrange(KEYS.outbox(p))]
    return out


def _appended(client: SyncClient) -> int:
    return sum(int(client.xlen(KEYS.stream(p))) for p in range(PARTITIONS))


def _decisions(client: SyncClient) -> dict[str, dict[str, int]]:
    """Per rule: firings and suppressions, from the partitions' statistics merged."""
    _, stats = RealtimeStore(client, NS, CONFIG).read_rule_stats()
    out: dict[str, dict[str, int]] = {r: {"fired": 0, "suppressed": 0} for r in ACTIONS}
    for name, value in stats.items():
        rule, _, metric = name.decode().split("|")
        if rule in out and (metric == "fired" or metric.startswith("suppressed.")):
            out[rule]["fired" if metric == "fired" else "suppressed"] += int(value)
    return out


def _settled(client: SyncClient, users: int) -> bool:
    """Every user's two rules decided once, every firing's actions in the outboxes, nothing
    pending."""
    d = _decisions(client)
    fired = sum(r["fired"] for r in d.values())
    return (
        all(r["fired"] + r["suppressed"] == users for r in d.values())
        and len(_outbox(client)) == 2 * fired
        and _pending(client) == 0
    )


def _pending(client: SyncClient) -> int:
    return sum(
        int(client.xpending(KEYS.stream(p), WORKER_GROUP)["pending"]) for p in range(PARTITIONS)
    )


class _Workers:
    """Two stream workers of one pool, each running in a thread of this process."""

    def __init__(self, url: str, data_root: str) -> None:
        # each worker's own snapshot store on the cluster (nothing published: no live tiers)
        self.workers = [
            StreamWorker(i, 2, PARTITIONS, url, NS, data_root, CONFIG.model_dump_json())
            for i in range(2)
        ]
        self.threads = [threading.Thread(target=w.run, daemon=True) for w in self.workers]

    def __enter__(self) -> _Workers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.workers:
            w.stop()
        for t in self.threads:
            t.join(timeout=30)


@pytest.fixture
def cluster(redis_cluster_url: str, redis_cluster: Any) -> Iterator[tuple[str, Any, SyncClient]]:
    client = sync_client(redis_cluster_url)
    assert is_cluster(client)
    yield redis_cluster_url, redis_cluster, client
    client.close()


def test_stream_loop_on_a_cluster_issues_each_action_once_through_master_restarts(
    cluster: tuple[str, Any, SyncClient], tmp_path: Path
) -> None:
    url, redis_cluster, client = cluster
    wave1 = [f"c{i}" for i in range(30)]
    wave2 = [f"d{i}" for i in range(30)]
    appender = EventAppender(url, NS, CONFIG)
    try:
        with _Workers(url, str(tmp_path / "data")) as workers:
            for start in range(0, len(wave1), 5):
                _append_until_done(
                    appender, [e for r in wave1[start : start + 5] for e in _events(r)]
                )
            # the partition streams spread over all three masters
            per_master = [
                len(node.client().keys(f"{NS}:rt:*:events")) for node in redis_cluster.master_nodes
            ]
            assert sum(per_master) == PARTITIONS and all(n > 0 for n in per_master), per_master
            _wait_for(lambda: _settled(client, len(wave1)), 60, "wave 1's actions")

            # wave 2 under load: one master restarted cleanly while batches keep coming, then
            # (the load paused and the append-only file fsynced) another one SIGKILLed
            gate, done = threading.Event(), threading.Event()
            gate.set()

            def load() -> None:
                for start in range(0, len(wave2), 3):
                    gate.wait()
                    _append_until_done(
                        appender, [e for r in wave2[start : start + 3] for e in _events(r)]
                    )
                    time.sleep(0.05)
                done.set()

            loader = threading.Thread(target=load, daemon=True)
            loader.start()
            time.sleep(0.3)
            redis_cluster.restart_node(1)
            gate.clear()
            time.sleep(0.3)  # the batch in flight finishes
            for node in redis_cluster.master_nodes:
                node.client().execute_command("WAIT", 0, 0)
            time.sleep(1.3)  # appendfsync everysec
            redis_cluster.restart_node(2, kill=True)
            gate.set()
            loader.join(timeout=60)
            assert done.is_set()
            n_users = len(wave1) + len(wave2)

            def state() -> dict[str, Any]:
                return {
                    "decisions": _decisions(client),
                    "outbox": len(_outbox(client)),
                    "pending": _pending(client),
                    "appended": _appended(client),
                    "dead": sum(int(client.xlen(KEYS.dead(p))) for p in range(PARTITIONS)),
                    "workers": [w.stats() for w in workers.workers],
                    "alive": [t.is_alive() for t in workers.threads],
                }

            _wait_for(
                lambda: _settled(client, n_users), 60, "every action after the restarts", state
            )
            time.sleep(1.5)  # a late duplicate would show up now
    finally:
        appender.close()

    # no accepted event lost: every event of both waves is in its stream, once; none of them
    # dead-lettered by the outage (a Redis failure is not the entry's)
    assert _appended(client) == 3 * (len(wave1) + len(wave2))
    assert sum(int(client.xlen(KEYS.dead(p))) for p in range(PARTITIONS)) == 0
    # each user's two rules decided once (fired, or held out by an experiment), and each
    # firing's actions exactly once in the per-partition outboxes
    assert _settled(client, n_users)
    decisions = _decisions(client)
    fired = sum(r["fired"] for r in decisions.values())
    assert fired >= n_users  # most fire: the holdouts are a small share
    outbox = _outbox(client)
    expected = 2 * fired
    assert len(outbox) == expected
    per_firing: dict[tuple[int, str], list[str]] = {}
    for a in outbox:
        per_firing.setdefault((a["user_id"], a["rule"]), []).append(a["action"])
    assert len(per_firing) == fired
    assert all(sorted(acts) == ACTIONS[rule] for (_, rule), acts in per_firing.items())
    assert {u for u, _ in per_firing} <= {uid(r) for r in wave1 + wave2}
    assert len({(a["key"], a["action"]) for a in outbox}) == expected
    for p in range(PARTITIONS):  # each user's actions sit in that user's partition's outbox
        for _, f in client.xrange(KEYS.outbox(p)):
            assert KEYS.partition_of(orjson.loads(f[OUTBOX_FIELD])["user_id"]) == p

    # the API's reader: tags, action log and the partitions' statistics merged
    users = [uid(r) for r in wave1 + wave2]
    # a user both of whose rules fired
    u0 = next(u for u in users if all((u, rule) in per_firing for rule in ACTIONS))
    mine = sum(1 for a in outbox if a["user_id"] == u0)
    store = RealtimeStore(client, NS, CONFIG)
    reader = PartitionReader(store, KEYS.partition_of(u0), WORKER_GROUP, "test")
    assert reader.acquire()  # the workers released their leases when they stopped
    overlay = orjson.dumps({"version": "v1", "tier": "potential"})
    store.commit(reader.partition, WORKER_GROUP, reader.token, EffectBatch(overlays={u0: overlay}))
    reader.release()

    async def read() -> tuple[Any, ...]:
        api = AsyncRealtimeReader(url, NS)
        try:
            return (
                await api.live_many(users),
                await api.actions(u0, 10),
                await api.rules_and_stats(),
            )
        finally:
            await api.aclose()

    live, acts, (rules, stats) = asyncio.run(read())
    tagged = {u for (u, rule) in per_firing if rule == "cart_abandoned"}
    assert [b"cart_abandoner" in s.tags for s in live] == [u in tagged for u in users]
    assert [s.overlay for s in live] == [overlay if u == u0 else None for u in users]
    assert sorted((a["rule"], a["action"]) for a in acts) == sorted(
        (rule, action) for rule, actions in ACTIONS.items() for action in actions
    )
    assert rules is not None
    for rule, d in decisions.items():
        assert int(stats[f"{rule}|unknown|fired".encode()]) == d["fired"]

    # erasure: every real-time key and entry of the user, on whichever node holds it
    removed = erase_realtime(client, NS, [u0])
    assert removed["state"] == 1 and removed["actions"] == 1 and removed["overlay"] == 1
    assert removed["decisions"] == 4 and removed["stream_entries"] == 3
    assert removed["outbox_entries"] == mine == 4
    left = [k for k in client.scan_iter(match=f"{NS}:rt:*", count=1000) if str(u0).encode() in k]
    assert left == []
    assert all(a["user_id"] != u0 for a in _outbox(client))
    assert len(_outbox(client)) == expected - 4
    store.close()


def _owner_port(redis_cluster: Any, key: str) -> int:
    c = redis_cluster.master_nodes[0].client()
    try:
        owners = _slot_owners(c)
    finally:
        c.close()
    slot = slot_of(key)
    return next(port for lo, hi, port in owners if lo <= slot <= hi)


def test_a_budget_node_down_holds_the_round_instead_of_dead_lettering_it(
    cluster: tuple[str, Any, SyncClient], tmp_path: Path
) -> None:
    """The partition's master answers while the master of the rule's budget is down (before
    the others notice, within the node timeout): the round fails on Redis, not on its
    entries, so they wait (no delivery counted) and fire once that master is back."""
    _, redis_cluster, client = cluster
    now = time.time_ns() // 1_000_000
    day = (dt.date(1970, 1, 1) + dt.timedelta(days=(now + LOCAL_OFFSET_MS) // DAY_MS)).isoformat()
    budget_port = _owner_port(redis_cluster, KEYS.budget("negative_review", day))
    down = next(i for i, n in enumerate(redis_cluster.nodes) if n.port == budget_port)
    seed = next(n for n in redis_cluster.master_nodes if n.port != budget_port)
    # users whose partition is served by another master than the budget's
    raws = [
        r
        for r in (f"b{i}" for i in range(200))
        if _owner_port(redis_cluster, KEYS.stream(KEYS.partition_of(uid(r)))) != budget_port
    ]
    raws = raws[:6]  # fmt: skip

    async def post() -> Any:  # through the API's asyncio appender, on the cluster
        appender = AsyncEventAppender(seed.url, NS, CONFIG)
        try:
            return await appender.append([_events(r)[0] for r in raws])
        finally:
            await appender.aclose()

    workers = _Workers(seed.url, str(tmp_path / "data"))
    assert asyncio.run(post()).accepted == len(raws)
    redis_cluster.stop_node(down)
    with workers:
        _wait_for(lambda: sum(w.stats()["redis_errors"] for w in workers.workers) >= 3, 20,
                  "rounds failing on the budget's master")  # fmt: skip
        redis_cluster.start_node(down)
        _wait_for(lambda: len(_outbox(client)) == 2 * len(raws) and _pending(client) == 0, 60,
                  "the held reviews' actions", lambda: [w.stats() for w in workers.workers],
                  )  # fmt: skip
        time.sleep(1.0)
    # (the rounds that failed on Redis were counted above: redis_errors >= 3; the log line
    # is not asserted, an earlier test in the session may have taken strata's loggers off
    # propagation to pytest's capture)
    assert sum(int(client.xlen(KEYS.dead(p))) for p in range(PARTITIONS)) == 0
    got = sorted((a["user_id"], a["action"]) for a in _outbox(client))
    assert got == sorted((uid(r), a) for r in raws for a in ACTIONS["negative_review"])
