"""Stream reads whose reply was lost, on a real redis-server.

A Redis killed right after it delivered entries to a consumer (with ``appendfsync always`` the
delivery is on disk before the reply goes out) leaves them pending for that consumer although
the consumer never saw them. redis-py would silently send ``XREADGROUP ... >`` again on a new
connection and read past them; strata's consumers get the error instead
(:func:`strata.io.redis_client.consumer_client`) and re-read their pending entries. Here the
lost reply is made exactly: while the consumer waits in a blocking read, one MULTI appends
entries, reads them for the consumer's name and drops the consumer's connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from strata.io.realtime_store import PartitionReader, RealtimeStore, read_new
from strata.io.redis_client import consumer_client
from strata.io.stream_sink import StreamSink
from strata.realtime.keys import ENTRY_FIELD, SINK_GROUP, WORKER_GROUP
from strata.realtime.wire import encode_event, partition_of
from strata.settings import Settings
from tests.integration.test_stream_sink import (
    CONFIG,
    KEYS,
    NS,
    PARTITIONS,
    _append,
    _events,
    _expected,
    _keys_of,
    _pending,
    _rows,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _blocked_readers(r: redis.Redis) -> set[int]:
    """The ids of the connections blocked in XREADGROUP (consumers waiting for entries)."""
    return {
        int(c["id"])
        for c in r.client_list()
        if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
    }


def _blocked_reader(r: redis.Redis, other: set[int], timeout_s: float = 20.0) -> int:
    """The connection of the one consumer blocked in XREADGROUP, not among ``other``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = _blocked_readers(r) - other
        if new:
            assert len(new) == 1, new
            return new.pop()
        time.sleep(0.02)
    raise AssertionError("no consumer blocked in XREADGROUP")


def _lose_a_reply(
    r: redis.Redis, group: str, consumer: str, events: list[dict[str, Any]], other: set[int]
) -> int:
    """Append ``events`` while ``consumer`` waits in a blocking XREADGROUP, and deliver them
    to it in the same MULTI that drops its connection (``other``: connections blocked before
    it began waiting): its command was in flight, the entries are pending for it, and it
    never gets them (a Redis killed just after the delivery)."""
    victim = _blocked_reader(r, other)
    pipe = r.pipeline(transaction=True)
    streams = set()
    for e in events:
        stream = KEYS.stream(partition_of(e["user_id"], PARTITIONS))
        streams.add(stream)
        pipe.xadd(stream, {ENTRY_FIELD: encode_event(e)})
    pipe.xreadgroup(group, consumer, dict.fromkeys(sorted(streams), ">"))
    pipe.client_kill_filter(_id=victim)
    *_, delivered, killed = pipe.execute()
    assert killed == 1
    return sum(len(items) for _, items in delivered or [])


def test_consumer_clients_do_not_retry(redis_url: str) -> None:
    client = consumer_client(redis_url)
    try:
        conn = client.connection_pool.make_connection()
        assert conn.retry.get_retries() == 0
    finally:
        client.close()


def test_the_sink_sinks_entries_of_a_lost_reply(
    r: redis.Redis, redis_url: str, settings: Settings
) -> None:
    first, lost = _events(12, seed=31), _events(9, seed=32)
    _append(r, first)
    config = CONFIG.model_copy(update={"block_ms": 3000})
    sink = StreamSink(redis_url, settings.data, config, NS, settings.n_buckets)
    other = _blocked_readers(r)
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    _wait(lambda: sink.totals.buffered == len(first))  # holding the first ones, blocked
    assert _lose_a_reply(r, SINK_GROUP, sink.consumer, lost, other) == len(lost)
    assert _pending(r) == len(first) + len(lost)
    _wait(lambda: sink.totals.buffered == len(first) + len(lost))
    stop.set()
    thread.join(20)
    sink.close()
    assert not thread.is_alive()
    assert _keys_of(_rows(settings)) == _expected(first + lost)  # none left behind, none twice
    assert _pending(r) == 0


def test_a_worker_read_whose_reply_was_lost_raises_and_recovery_returns_it(
    r: redis.Redis, redis_url: str
) -> None:
    first = _events(30, seed=33)
    _append(r, first)
    store = RealtimeStore(redis_url, NS, CONFIG)
    p = KEYS.partition_of(first[0]["user_id"])
    reader = PartitionReader(store, p, WORKER_GROUP, "w0")
    assert reader.acquire()
    got = read_new(store.redis, [reader], 100, 10)[p]  # nothing pending: the new entries
    store.redis.xack(reader.stream, WORKER_GROUP, *[e.id for e in got])
    errors: list[BaseException] = []

    def blocked_read() -> None:
        try:
            read_new(store.redis, [reader], 100, 5000)
        except redis.RedisError as exc:
            errors.append(exc)

    other = _blocked_readers(r)
    thread = threading.Thread(target=blocked_read, daemon=True)
    thread.start()
    lost = [e for e in _events(40, seed=34) if KEYS.partition_of(e["user_id"]) == p]
    assert _lose_a_reply(r, WORKER_GROUP, "w0", lost, other) == len(lost) > 0
    thread.join(10)
    # the error, not a silent second read past the entries
    assert len(errors) == 1 and isinstance(errors[0], redis.ConnectionError), errors
    reader.recovering = True  # what the worker does on a Redis error
    again = read_new(store.redis, [reader], 100, 10)[p]
    assert [e.raw for e in again] == [encode_event(e) for e in lost]
    store.redis.close()


def _wait(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
