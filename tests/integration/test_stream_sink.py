"""The warehouse sink of the live streams against a real redis-server and real Parquet: rows
in the right buckets, internal entries skipped, dead letters, crashes before and after the
commit, trimming that spares the workers' entries, batch imports in between, the Ray actor;
the outbox's actions into the ``actions`` table exactly once, and outbox trimming that spares
what is not committed and the newest ``outbox_keep`` entries; the exposures stream into the
``exposures`` table the same way (every column, crashes, dead letters, trimming, merging, a
warehouse from before the table)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
import redis

from strata.ids import bucket_of
from strata.io import stream_sink
from strata.io.realtime_store import RealtimeStore, action_records, outbox_records
from strata.io.stream_sink import (
    SinkStats,
    StreamSink,
    action_row,
    events_table,
    exposure_row,
    format_id,
    manifest_exposure_watermark,
    manifest_outbox_watermark,
    manifest_watermarks,
    parse_id,
)
from strata.io.warehouse import Warehouse
from strata.realtime.engine import coupon_id
from strata.realtime.keys import ENTRY_FIELD, OUTBOX_FIELD, SINK_GROUP, WORKER_GROUP, RealtimeKeys
from strata.realtime.model import ActionSpec, Firing, action_key
from strata.realtime.stream_config import StreamConfig
from strata.realtime.wire import CAMPAIGN_EVENT, derived_event_id, encode_event, partition_of
from strata.settings import Settings
from strata.timeutil import local_iso

pytestmark = pytest.mark.integration

NS = "sinktest"
PARTITIONS = 4
KEYS = RealtimeKeys(NS, PARTITIONS)
T0_MS = 1_764_547_200_000  # 2025-12-01T00:00:00Z
CONFIG = StreamConfig(partitions=PARTITIONS, batch_size=50, block_ms=10, sink_interval_s=3600)


#: the outbox and exposures tests use the users of one partition: one outbox (exposures
#: stream) per partition, with its own watermark and its own ``outbox_keep``
SIDE_P = 0
OUTBOX = KEYS.outbox(SIDE_P)
U0 = next(u for u in range(77, 10_000) if partition_of(u, PARTITIONS) == SIDE_P)


def _side_users(rng: np.random.Generator, n: int) -> list[int]:
    """``n`` random users of partition SIDE_P."""
    ids = rng.choice(2**40, size=n * PARTITIONS * 4, replace=False)
    return [int(u) for u in ids if partition_of(int(u), PARTITIONS) == SIDE_P][:n]


def _dead_letters(r: redis.Redis) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The dead letters of every partition."""
    return [e for p in range(PARTITIONS) for e in r.xrange(KEYS.dead(p))]


class Crash(Exception):
    """A simulated process death."""


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _events(n: int, seed: int = 0, users: int = 40) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(2**40, size=users, replace=False)
    out = []
    for i in range(n):
        e: dict[str, Any] = {
            "user_id": int(ids[i % users]),
            "ts": T0_MS + i * 1000,
            "received_ms": T0_MS + i * 1000 + 5,
        }
        if i % 3 == 0:
            e |= {"event_type": "order", "order_id": f"o{seed}-{i}", "amount_cny": 10.0 + i}
            e |= {"item_count": 2, "categories": ["fruit", "dairy_eggs"]}
        elif i % 3 == 1:
            e |= {"event_type": "add_to_cart", "category": "fruit", "item_id": i}
        else:
            e |= {"event_type": "review", "rating": 1 + i % 5}
        e["event_id"] = derived_event_id(e)
        out.append(e)
    return out


def _append(r: redis.Redis, events: list[dict[str, Any]], partitions: int = PARTITIONS) -> None:
    r.hsetnx(KEYS.layout, "partitions", partitions)
    pipe = r.pipeline(transaction=False)
    for e in events:
        pipe.xadd(
            KEYS.stream(partition_of(e["user_id"], partitions)), {ENTRY_FIELD: encode_event(e)}
        )
    pipe.execute()


def _sink(r: redis.Redis, settings: Settings, **kw: Any) -> StreamSink:
    config = kw.pop("config", CONFIG)
    return StreamSink(r, settings.data, config, NS, settings.n_buckets, **kw)


def _drain(sink: StreamSink) -> SinkStats:
    """Poll until a poll reads nothing (without committing: the interval is an hour)."""
    total = SinkStats()
    while True:
        stats = sink.poll_once()
        total = total + stats
        if stats.read == 0:
            return total


def _rows(settings: Settings) -> pa.Table:
    wh = Warehouse(settings.data)
    return wh.read_table("events")


def _keys_of(table: pa.Table) -> list[tuple[int, int, str]]:
    d = table.select(["user_id", "ts", "event_type"]).to_pydict()
    return sorted(
        (u, int(t.timestamp() * 1000), e)
        for u, t, e in zip(d["user_id"], d["ts"], d["event_type"], strict=True)
    )


def _expected(events: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    return sorted((e["user_id"], e["ts"], e["event_type"]) for e in events)


def _pending(r: redis.Redis, group: str = SINK_GROUP) -> int:
    return sum(int(r.xpending(KEYS.stream(p), group)["pending"]) for p in range(PARTITIONS))


def test_rows_land_in_their_buckets_and_internal_entries_are_skipped(
    r: redis.Redis, settings: Settings
) -> None:
    events = _events(200)
    _append(r, events)
    campaign = {"user_id": events[0]["user_id"], "event_type": CAMPAIGN_EVENT, "ts": T0_MS,
                "rule": "festival_eve", "date": "2025-12-24"}  # fmt: skip
    r.xadd(
        KEYS.stream(partition_of(campaign["user_id"], PARTITIONS)),
        {ENTRY_FIELD: encode_event(campaign)},
    )
    sink = _sink(r, settings)
    read = _drain(sink)
    assert read.read == 201 and read.buffered == 200 and read.internal == 1
    assert not Warehouse(settings.data).buckets()  # created, but nothing committed yet
    done = sink.flush()
    assert done.committed == 200 and done.commits == 1

    wh = Warehouse(settings.data)
    assert wh.n_buckets == settings.n_buckets
    seen = 0
    for b in wh.buckets():
        t = wh.read_bucket("events", b)
        assert set(bucket_of(t.column("user_id").to_numpy(), wh.n_buckets)) == {b}
        seen += t.num_rows
    assert seen == 200
    table = _rows(settings)
    assert _keys_of(table) == _expected(events)
    assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    orders = table.filter(pa.compute.equal(table.column("event_type"), "order")).to_pylist()
    by_id = {e["order_id"]: e for e in events if e["event_type"] == "order"}
    for row in orders:
        src = by_id[row["order_id"]]
        assert row["amount_cny"] == src["amount_cny"]
        assert row["categories"] == src["categories"] and row["item_count"] == 2
    assert wh.manifest["writes"][-1]["source"] == "stream"
    # the watermark in the manifest and in Redis is each partition's last entry
    marks = manifest_watermarks(wh.manifest, NS)
    for p in range(PARTITIONS):
        last = parse_id(r.xrevrange(KEYS.stream(p), count=1)[0][0])
        assert marks[p] == last
        assert r.hget(KEYS.sink, str(p)) == format_id(last).encode()
    assert _pending(r) == 0


def test_entries_under_the_old_untagged_names_are_reported_at_start(
    r: redis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    old = f"{KEYS.prefix}events:1"  # the layout before the partition hash tags
    r.xadd(old, {ENTRY_FIELD: encode_event(_events(1)[0])})
    _append(r, _events(3))
    sink = _sink(r, settings)
    with caplog.at_level(logging.WARNING, logger="strata.io.stream_sink"):
        assert _drain(sink).buffered == 3  # the tagged streams only
    warned = [m for m in caplog.messages if "old key layout" in m]
    assert len(warned) == 1 and f"'{old}': 1" in warned[0]
    caplog.clear()
    r.delete(old)
    with caplog.at_level(logging.WARNING, logger="strata.io.stream_sink"):
        _sink(r, settings, consumer="again").start()
    assert not [m for m in caplog.messages if "old key layout" in m]


def test_crash_after_commit_before_ack_duplicates_nothing(
    r: redis.Redis, settings: Settings
) -> None:
    events = _events(120, seed=1)
    _append(r, events)
    first = _sink(r, settings)
    _drain(first)

    def crash() -> None:
        raise Crash

    first.after_commit_hook = crash
    with pytest.raises(Crash):
        first.flush()
    assert _pending(r) == 120  # committed but never acked
    assert _keys_of(_rows(settings)) == _expected(events)

    more = _events(30, seed=2)
    _append(r, more)
    second = _sink(r, settings)  # a restarted sink over the same Redis and data
    stats = _drain(second)
    assert stats.already_committed == 120 and stats.buffered == 30
    second.flush()
    assert _keys_of(_rows(settings)) == _expected(events + more)
    assert _pending(r) == 0


def test_crash_before_commit_loses_nothing(r: redis.Redis, settings: Settings) -> None:
    events = _events(150, seed=3)
    _append(r, events)
    first = _sink(r, settings, consumer="sink-old")
    assert _drain(first).buffered == 150
    del first  # died holding 150 uncommitted rows (read, pending, not in the warehouse)
    assert _rows(settings).num_rows == 0

    # another consumer name claims the old one's entries (in pages of 16: ~37 per partition)
    second = _sink(r, settings, config=CONFIG.model_copy(update={"batch_size": 16}))
    stats = _drain(second)
    assert stats.buffered == 150 and stats.already_committed == 0
    second.flush()
    assert _keys_of(_rows(settings)) == _expected(events)
    assert _pending(r) == 0
    # a crash while writing parts (before the manifest commit) leaves orphans, no rows
    _append(r, _events(20, seed=4))
    third = _sink(r, settings)
    _drain(third)

    def fail(*_: Any, **__: Any) -> None:
        raise OSError("disk full")

    third.warehouse.commit = fail  # type: ignore[method-assign]
    with pytest.raises(OSError):
        third.flush()
    assert _rows(settings).num_rows == 150
    fourth = _sink(r, settings)
    _drain(fourth)
    fourth.flush()
    assert _rows(settings).num_rows == 170


def test_a_sink_commits_by_rows_and_by_interval(r: redis.Redis, settings: Settings) -> None:
    _append(r, _events(100, seed=5))
    by_rows = _sink(r, settings, config=CONFIG.model_copy(update={"sink_max_rows": 40}))
    stats = by_rows.poll_once()  # 4 partitions x 25 entries: one read, over the row limit
    assert stats.read == 100 and stats.commits == 1 and stats.committed == 100
    by_time = _sink(r, settings, config=CONFIG.model_copy(update={"sink_interval_s": 0.3}))
    _append(r, _events(10, seed=6))
    started = time.monotonic()
    committed = 0
    while committed < 10 and time.monotonic() - started < 5:
        committed += by_time.poll_once().committed
    assert committed == 10 and 0.3 <= time.monotonic() - started < 2
    assert _rows(settings).num_rows == 110


def test_bad_entries_go_to_the_dead_letter_stream(r: redis.Redis, settings: Settings) -> None:
    good = _events(10, seed=7)
    _append(r, good)
    user = good[0]["user_id"]
    stream = KEYS.stream(partition_of(user, PARTITIONS))
    base = {"user_id": user, "ts": T0_MS, "event_type": "order"}
    bad = {
        r.xadd(stream, {ENTRY_FIELD: b"{not json"}): "",
        r.xadd(stream, {b"x": b"1"}): "no 'e' field",
        r.xadd(stream, {ENTRY_FIELD: encode_event({**base, "ts": "yesterday"})}): "ts",
        r.xadd(stream, {ENTRY_FIELD: encode_event({**base, "phone": "555"})}): "phone",
        r.xadd(stream, {ENTRY_FIELD: encode_event({**base, "event_type": "teleport"})}): "teleport",
        r.xadd(stream, {ENTRY_FIELD: encode_event({**base, "amount_cny": "ten"})}): "events schema",
        r.xadd(stream, {ENTRY_FIELD: encode_event({**base, "rating": 1000})}): "events schema",
    }
    _append(r, _events(5, seed=8))
    sink = _sink(r, settings)
    stats = _drain(sink)
    assert stats.dead == len(bad) and stats.buffered == 15
    assert _pending(r) == 15  # dead letters are acked at once, the rest at the commit
    sink.flush()
    assert _rows(settings).num_rows == 15
    letters = {e[b"id"]: e for _, e in _dead_letters(r)}
    assert set(letters) == set(bad)
    for entry_id, needle in bad.items():
        letter = letters[entry_id]
        assert needle in letter[b"reason"].decode()
        assert letter[b"group"] == SINK_GROUP.encode()
        assert int(letter[b"partition"]) == partition_of(user, PARTITIONS)
    assert letters[next(iter(bad))][b"payload"] == b"{not json"
    assert _pending(r) == 0


def test_trimming_keeps_what_the_workers_have_not_processed(
    r: redis.Redis, settings: Settings
) -> None:
    events = _events(200, seed=9)
    _append(r, events)
    sink = _sink(r, settings)
    _drain(sink)
    sink.flush()
    lengths = [r.xlen(KEYS.stream(p)) for p in range(PARTITIONS)]
    assert sum(lengths) == 200  # no workers group yet: they will want every entry

    for p in range(PARTITIONS):
        r.xgroup_create(KEYS.stream(p), WORKER_GROUP, id="0")
    s0, s1 = KEYS.stream(0), KEYS.stream(1)
    # partition 0: the workers read 10 entries and acked the first 4 (6 still pending)
    got = r.xreadgroup(WORKER_GROUP, "w1", {s0: ">"}, count=10)[0][1]
    r.xack(s0, WORKER_GROUP, *[i for i, _ in got[:4]])
    # partition 1: the workers read and acked 5 entries (nothing pending)
    got1 = r.xreadgroup(WORKER_GROUP, "w1", {s1: ">"}, count=5)[0][1]
    r.xack(s1, WORKER_GROUP, *[i for i, _ in got1])
    trimmed = sink.trim().trimmed
    assert trimmed == 4 + 5
    assert r.xlen(s0) == lengths[0] - 4 and r.xrange(s0, count=1)[0][0] == got[4][0]
    assert r.xlen(s1) == lengths[1] - 5
    for p in (2, 3):
        assert r.xlen(KEYS.stream(p)) == lengths[p]
    # the workers still get every entry they have not processed
    rest = r.xreadgroup(WORKER_GROUP, "w1", {s0: "0"}, count=1000)[0][1]
    assert [i for i, _ in rest] == [i for i, _ in got[4:]]

    # the workers catch up; new entries that neither group has read yet are kept
    _work_all(r)
    _append(r, _events(40, seed=10))
    sink.trim()
    assert sum(r.xlen(KEYS.stream(p)) for p in range(PARTITIONS)) == 40
    _drain(sink)
    sink.flush()  # commits, acks, then trims: the workers still need the 40
    assert sum(r.xlen(KEYS.stream(p)) for p in range(PARTITIONS)) == 40
    _work_all(r)
    sink.trim()
    assert sum(r.xlen(KEYS.stream(p)) for p in range(PARTITIONS)) == 0
    assert _rows(settings).num_rows == 240


class _AckingBeforeXpending(redis.Redis):
    """A real client whose XPENDING of the workers' group first lets the workers ack every
    entry they hold: the race between the sink's XINFO GROUPS and its XPENDING."""

    def xpending(self, name: Any, groupname: Any) -> Any:
        if _text_of(groupname) == WORKER_GROUP:
            _work(self, _text_of(name))
        return super().xpending(name, groupname)


def _text_of(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_trimming_while_the_workers_ack_everything_in_between(
    redis_url: str, r: redis.Redis, settings: Settings
) -> None:
    """XINFO GROUPS saw entries pending for the workers, who acked them all before the sink's
    XPENDING (empty: no oldest id). The trim goes by what XINFO saw delivered instead (before,
    the sink parsed the missing id and its run died with an AttributeError)."""
    _append(r, _events(60, seed=11))
    sink = _sink(r, settings)
    _drain(sink)
    sink.flush()
    for p in range(PARTITIONS):
        r.xgroup_create(KEYS.stream(p), WORKER_GROUP, id="0")
        r.xreadgroup(WORKER_GROUP, "w1", {KEYS.stream(p): ">"}, count=5)  # 5 pending each
    racing = _AckingBeforeXpending.from_url(redis_url)
    try:
        sink = _sink(racing, settings)
        sink.start()
        trimmed = sink.trim().trimmed
    finally:
        racing.close()
    assert trimmed == 5 * PARTITIONS  # up to what XINFO saw delivered, not a step further
    assert sum(r.xlen(KEYS.stream(p)) for p in range(PARTITIONS)) == 60 - 5 * PARTITIONS
    assert _pending(r, WORKER_GROUP) == 0


def _work_all(r: redis.Redis) -> None:
    """The rule workers process (read and ack) every entry, pending ones included."""
    for p in range(PARTITIONS):
        _work(r, KEYS.stream(p))


def _work(r: redis.Redis, stream: str) -> None:
    """The rule workers process (read and ack) every entry of ``stream``."""
    for start in ("0", ">"):
        reply = r.xreadgroup(WORKER_GROUP, "w1", {stream: start}, count=100_000)
        ids = [i for i, _ in reply[0][1]] if reply else []
        if ids:
            r.xack(stream, WORKER_GROUP, *ids)


def test_batch_imports_committing_in_between_keep_both(r: redis.Redis, settings: Settings) -> None:
    first = _events(50, seed=11)
    _append(r, first)
    sink = _sink(r, settings)
    _drain(sink)
    sink.flush()
    # a batch import commits between two sink commits
    wh = Warehouse(settings.data)
    imported = events_table([{"user_id": 7, "ts": T0_MS, "event_type": "app_visit"}])
    wh.commit(wh.write_partitioned("events", imported, "import-x"), "import")
    second = _events(30, seed=12)
    _append(r, second)
    _drain(sink)
    sink.flush()
    wh.reload()
    assert wh.summary()["events"]["rows"] == 81
    assert [w["source"] for w in wh.manifest["writes"]] == ["stream", "import", "stream"]
    marks = manifest_watermarks(wh.manifest, NS)
    assert all(marks[p] == parse_id(r.xrevrange(KEYS.stream(p), count=1)[0][0]) for p in marks)


def test_sink_actor_survives_a_kill_exactly_once(
    ray_local: Any, redis_url: str, settings: Settings
) -> None:
    from actors.event_sink import EventSinkActor

    r = redis.Redis.from_url(redis_url)
    config = CONFIG.model_copy(update={"sink_interval_s": 0.3, "block_ms": 50})
    actor = EventSinkActor.remote(
        redis_url, settings.data, config.model_dump(), NS, settings.n_buckets
    )
    running = actor.run.remote()
    events = _events(300, seed=13)
    _append(r, events[:150])
    deadline = time.monotonic() + 60
    while ray_local.get(actor.stats.remote())["committed"] < 150:
        assert time.monotonic() < deadline, "the actor sank nothing"
        time.sleep(0.1)
    ray_local.kill(actor, no_restart=False)  # the process dies; Ray restarts it, retries run
    _append(r, events[150:])
    exposures = _exposures(20, seed=14)
    _expose(r, exposures)
    wh = Warehouse(settings.data)
    while _rows(settings).num_rows < 300 or wh.summary()["exposures"]["rows"] < 20:
        assert time.monotonic() < deadline, "the restarted actor did not resume"
        time.sleep(0.2)
        wh.reload()
    ray_local.get(actor.stop.remote())
    totals = ray_local.get(running, timeout=30)
    assert totals["committed"] == 150  # the restarted process sank the second half only
    assert totals["exposures_committed"] == 20
    assert _keys_of(_rows(settings)) == _expected(events)
    assert _exposure_rows(settings) == _expected_exposures(exposures)
    assert _pending(r) == 0 and _exposures_pending(r) == 0
    ray_local.kill(actor)
    r.close()


def test_run_stops_and_commits_what_it_holds(r: redis.Redis, settings: Settings) -> None:
    _append(r, _events(25, seed=14))
    sink = _sink(r, settings)
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while sink.totals.buffered < 25 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert sink.totals.committed == 25 and _rows(settings).num_rows == 25


def test_an_entry_erased_while_pending_is_acked_not_dead_lettered(
    r: redis.Redis, settings: Settings
) -> None:
    events = _events(20, seed=15)
    _append(r, events)
    first = _sink(r, settings)
    _drain(first)  # then dies before its commit
    stream = KEYS.stream(partition_of(events[0]["user_id"], PARTITIONS))
    erased = r.xrange(stream, count=1)[0][0]
    r.xdel(stream, erased)
    second = _sink(r, settings, consumer="other")
    assert _drain(second).buffered == 19
    second.flush()
    assert _rows(settings).num_rows == 19 and len(_dead_letters(r)) == 0
    assert _pending(r) == 0


def test_concurrent_commits_lose_no_parts(settings: Settings) -> None:
    """The sink commits every few seconds while imports or other writers commit too."""
    wh = Warehouse(settings.data)
    wh.create(settings.n_buckets)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        mine = Warehouse(settings.data)
        try:
            for i in range(30):
                row = events_table([{"user_id": w * 1000 + i, "ts": T0_MS, "event_type": "search"}])
                mine.commit(mine.write_partitioned("events", row, f"w{w}-{i}"), f"writer{w}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    wh.reload()
    assert wh.summary()["events"]["rows"] == 90


def test_a_commit_during_compaction_of_its_bucket_is_kept(settings: Settings) -> None:
    """Compaction replaces a bucket's parts: a sink commit into that bucket while it runs must
    survive (it waits for the compaction instead of being swept away by it)."""
    wh = Warehouse(settings.data)
    wh.create(settings.n_buckets)
    users = [u for u in range(10_000) if bucket_of(np.array([u]), settings.n_buckets)[0] == 3]
    for i in range(2):
        row = events_table([{"user_id": users[i], "ts": T0_MS, "event_type": "search"}])
        wh.commit(wh.write_partitioned("events", row, f"a{i}"), "import")
    other = Warehouse(settings.data)
    late = events_table([{"user_id": users[2], "ts": T0_MS, "event_type": "order"}])
    started: list[threading.Thread] = []
    write_bucket = wh.write_bucket

    def racing_write(*args: Any, **kwargs: Any) -> Any:
        def commit_late() -> None:
            other.commit(other.write_partitioned("events", late, "late"), "stream")

        t = threading.Thread(target=commit_late)
        t.start()
        t.join(1.0)  # unserialised, the late commit lands now, between read and swap
        started.append(t)
        return write_bucket(*args, **kwargs)

    wh.write_bucket = racing_write  # type: ignore[method-assign]
    assert wh.compact_bucket("events", 3) is not None
    started[0].join(10)
    wh.reload()
    assert sorted(wh.read_bucket("events", 3).column("user_id").to_pylist()) == users[:3]


def test_small_part_files_are_merged_in_levels(r: redis.Redis, settings: Settings) -> None:
    """Committing every few seconds adds a file per touched bucket each time: the sink merges
    them (fan-in 4 here), so files per bucket stay few and every row is kept exactly once."""
    sink = _sink(r, settings, merge_fan_in=4)
    events: list[dict[str, Any]] = []
    merged = 0
    for i in range(40):
        batch = _events(12, seed=100 + i, users=6)
        events += batch
        _append(r, batch)
        _drain(sink)
        merged += sink.flush().merged
    wh = Warehouse(settings.data)
    assert merged > 0
    levels = [w for w in wh.manifest["writes"] if w["source"] == "stream-merge"]
    assert levels and wh.manifest["writes"][-1]["source"] in ("stream", "stream-merge")
    assert _keys_of(_rows(settings)) == _expected(events)
    for b in wh.buckets():
        names = [p["name"] for p in wh.manifest["tables"]["events"]["buckets"][str(b)]["parts"]]
        assert len(names) < 40 // 2
        levels_ = ("stream", "streamL1", "streamL2")
        by_level = [sum(1 for n in names if n.startswith(f"part-{lv}-")) for lv in levels_]
        assert all(c < 4 for c in by_level), names
    parts = [p for e in wh.manifest["tables"]["events"]["buckets"].values() for p in e["parts"]]
    assert any(p["name"].startswith("part-streamL2-") for p in parts)
    assert wh.vacuum() == []  # the merged files were deleted, none left behind
    marks = manifest_watermarks(wh.manifest, NS)
    assert all(marks[p] == parse_id(r.xrevrange(KEYS.stream(p), count=1)[0][0]) for p in marks)


def test_a_merge_overtaken_by_a_compaction_changes_nothing(
    r: redis.Redis, settings: Settings
) -> None:
    sink = _sink(r, settings, merge_fan_in=1000)  # no merges while committing
    events = _events(12, seed=200, users=1)
    for i in range(4):
        _append(r, events[i * 3 : i * 3 + 3])
        _drain(sink)
        sink.flush()
    wh = sink.warehouse
    wh.reload()
    (bucket,) = wh.buckets()
    names = [p["name"] for p in wh.manifest["tables"]["events"]["buckets"][str(bucket)]["parts"]]
    assert len(names) == 4
    write_bucket = wh.write_bucket

    def compact_first(*args: Any, **kwargs: Any) -> Any:
        Warehouse(settings.data).compact_bucket("events", bucket)
        return write_bucket(*args, **kwargs)

    wh.write_bucket = compact_first  # type: ignore[method-assign]
    assert sink._merge(bucket, 0, names) == 0
    wh.write_bucket = write_bucket  # type: ignore[method-assign]
    assert sink._merge(bucket, 0, names) == 0  # the files are gone now: nothing to merge
    wh.reload()
    assert wh.is_sorted("events", bucket)
    assert _keys_of(_rows(settings)) == _expected(events)
    assert wh.vacuum() == []


def test_acks_failing_after_the_commit_are_retried_without_a_second_commit(
    r: redis.Redis, settings: Settings
) -> None:
    events = _events(60, seed=300)
    _append(r, events)
    sink = _sink(r, settings)
    _drain(sink)
    calls: list[int] = []

    def redis_down_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("Redis restarting")

    sink.after_commit_hook = redis_down_once
    with pytest.raises(redis.ConnectionError):
        sink.flush()
    assert _pending(r) == 60
    again = sink.flush()  # the same process goes on (run() retries after a second)
    assert again.commits == 0 and _pending(r) == 0
    assert _keys_of(_rows(settings)) == _expected(events)
    assert sink.totals.committed == 60 and sink.totals.commits == 1 and sink.totals.read == 60


# ------------------------------------------------------------------ the outbox: actions table
def _firings(n: int, seed: int = 0, users: int = 10, user: int | None = None) -> list[Firing]:
    """Firings like the rule workers' (a coupon, or a service task and a coupon), of
    ``users`` random users or of ``user`` only."""
    rng = np.random.default_rng(seed)
    ids = [user] if user is not None else _side_users(rng, users)
    out = []
    for i in range(n):
        uid = int(ids[i % len(ids)])
        rule = "cart_abandoned" if i % 2 == 0 else "negative_review"
        key = action_key(rule, uid, f"e{seed}-{i}")
        ms = T0_MS + i * 1000 + 123
        coupon = ActionSpec("coupon", {"coupon_id": coupon_id(key), "value_cny": 5.0 + i % 3,
                                       "min_spend_cny": 30.0, "category": "fruit",
                                       "valid_until": local_iso(ms + 7_200_000)})  # fmt: skip
        task = ActionSpec("service_task", {"queue": "care", "reason": "negative_review"})
        out.append(
            Firing(
                rule=rule, user_id=uid, instance=f"e{seed}-{i}", key=key, tier="potential",
                issued_ms=ms, day="2025-12-01",
                actions=[coupon] if rule == "cart_abandoned" else [task, coupon],
                trigger={"event_id": f"e{seed}-{i}", "event_type": "add_to_cart", "ts": ms - 5},
            )
        )  # fmt: skip
    return out


def _issue(r: redis.Redis, firings: list[Firing]) -> None:
    """Write firings' outbox entries and per-user logs as a rule worker's commit does."""
    store = RealtimeStore(r, NS, CONFIG)
    pipe = r.pipeline(transaction=True)
    store._queue_firings(pipe, SIDE_P, firings)
    pipe.execute()


def _action_keys(settings: Settings) -> list[tuple[int, int, str, str]]:
    d = Warehouse(settings.data).read_table("actions").to_pydict()
    return sorted(
        (u, int(t.timestamp() * 1000), k, a)
        for u, t, k, a in zip(d["user_id"], d["ts"], d["key"], d["action"], strict=True)
    )


def _expected_actions(firings: list[Firing]) -> list[tuple[int, int, str, str]]:
    return sorted((f.user_id, f.issued_ms, f.key, a.action) for f in firings for a in f.actions)


def _outbox_pending(r: redis.Redis) -> int:
    return int(r.xpending(OUTBOX, SINK_GROUP)["pending"])


def test_actions_from_the_outbox_land_in_the_actions_table(
    r: redis.Redis, settings: Settings
) -> None:
    firings = _firings(30)
    _issue(r, firings)
    events = _events(40, seed=20)
    _append(r, events)
    sink = _sink(r, settings)
    read = _drain(sink)
    assert read.actions_buffered == 45 and read.buffered == 40 and read.read == 85
    done = sink.flush()
    assert done.actions_committed == 45 and done.committed == 40 and done.commits == 1

    wh = Warehouse(settings.data)
    assert wh.summary()["actions"]["rows"] == 45 and wh.summary()["events"]["rows"] == 40
    assert (
        wh.manifest["writes"][-1] | {"actions_rows": 45, "events_rows": 40}
        == (wh.manifest["writes"][-1])
    )  # one commit holds both tables
    assert _action_keys(settings) == _expected_actions(firings)
    for b in wh.buckets("actions"):
        t = wh.read_bucket("actions", b, ["user_id"])
        assert set(bucket_of(t.column("user_id").to_numpy(), wh.n_buckets)) == {b}
    rows = {(row["key"], row["action"]): row for row in wh.read_table("actions").to_pylist()}
    for f in firings:
        for spec in f.actions:
            row = rows[(f.key, spec.action)]
            assert row["user_id"] == f.user_id and row["rule"] == f.rule
            assert int(row["ts"].timestamp() * 1000) == f.issued_ms  # ms kept
            assert orjson.loads(row["params"]) == spec.params
            assert orjson.loads(row["trigger"]) == f.trigger
            if spec.action == "coupon":
                assert row["coupon_id"] == spec.params["coupon_id"] == coupon_id(f.key)
                assert row["value_cny"] == spec.params["value_cny"]
            else:
                assert row["coupon_id"] is None and row["value_cny"] is None
    # the watermark in the manifest and in Redis is the outbox's last entry
    last = parse_id(r.xrevrange(OUTBOX, count=1)[0][0])
    assert manifest_outbox_watermark(wh.manifest, NS, SIDE_P) == last
    assert r.hget(KEYS.sink, f"outbox:{SIDE_P}") == format_id(last).encode()
    assert _outbox_pending(r) == 0 and _pending(r) == 0
    # the per-user log keeps the API's shape; the outbox entry has the user (and ms) more
    log = orjson.loads(r.lindex(KEYS.actions(firings[0].user_id), 0))
    assert set(log) == {"rule", "action", "params", "key", "issued_at", "trigger"}
    entry = orjson.loads(r.xrange(OUTBOX, count=1)[0][1][OUTBOX_FIELD])
    assert entry == orjson.loads(action_records(firings[0])[0]) | {
        "user_id": firings[0].user_id,
        "issued_ms": firings[0].issued_ms,
    }


def test_outbox_crash_after_commit_before_ack_duplicates_no_actions(
    r: redis.Redis, settings: Settings
) -> None:
    firings = _firings(20, seed=1)
    _issue(r, firings)
    _append(r, _events(10, seed=21))
    first = _sink(r, settings)
    _drain(first)

    def crash() -> None:
        raise Crash

    first.after_commit_hook = crash
    with pytest.raises(Crash):
        first.flush()
    assert _outbox_pending(r) == 30  # committed but never acked
    assert _action_keys(settings) == _expected_actions(firings)

    more = _firings(6, seed=2)
    _issue(r, more)
    second = _sink(r, settings, consumer="sink-2")  # restarted, even under another name
    stats = _drain(second)
    assert stats.already_committed == 30 + 10 and stats.actions_buffered == 9
    second.flush()
    assert _action_keys(settings) == _expected_actions(firings + more)
    assert _outbox_pending(r) == 0
    # a crash before the commit loses no action either
    last = _firings(4, seed=3)
    _issue(r, last)
    third = _sink(r, settings, consumer="sink-3")
    assert _drain(third).actions_buffered == 6
    del third
    fourth = _sink(r, settings)
    assert _drain(fourth).actions_buffered == 6
    fourth.flush()
    assert _action_keys(settings) == _expected_actions(firings + more + last)
    assert _outbox_pending(r) == 0


def test_bad_outbox_entries_go_to_the_dead_letter_stream(
    r: redis.Redis, settings: Settings
) -> None:
    good = _firings(4, seed=4)
    _issue(r, good)
    record = orjson.loads(outbox_records(good[0])[0])
    bad = {
        r.xadd(OUTBOX, {OUTBOX_FIELD: b"{not json"}): "",
        r.xadd(OUTBOX, {b"x": b"1"}): "no 'a' field",
        r.xadd(OUTBOX, {OUTBOX_FIELD: b"[1, 2]"}): "not a JSON object",
        r.xadd(OUTBOX, {OUTBOX_FIELD: orjson.dumps(record | {"user_id": None})}): "user_id",
        r.xadd(OUTBOX, {OUTBOX_FIELD: orjson.dumps(record | {"user_id": "7"})}): "user_id",
        r.xadd(OUTBOX, {OUTBOX_FIELD: orjson.dumps(record | {"params": {"value_cny": "x"}})}):
            "actions schema",
    }  # fmt: skip
    sink = _sink(r, settings)
    stats = _drain(sink)
    assert stats.dead == len(bad) and stats.actions_buffered == 6
    sink.flush()
    assert _action_keys(settings) == _expected_actions(good)
    letters = {e[b"id"]: e for _, e in _dead_letters(r)}
    assert set(letters) == set(bad)
    for entry_id, needle in bad.items():
        letter = letters[entry_id]
        assert needle in letter[b"reason"].decode()
        assert letter[b"stream"] == OUTBOX.encode() and letter[b"partition"] == b"%d" % SIDE_P
    assert _outbox_pending(r) == 0


def test_action_rows_from_older_payloads_and_their_errors() -> None:
    base = {"rule": "festival_eve", "action": "gift_pack", "key": "festival_eve:7:2025-12-24",
            "params": {"pack": "spring_festival"}, "trigger": None, "user_id": 7}  # fmt: skip
    row = action_row(base | {"issued_at": "2025-12-23T00:00:00+08:00"})  # no issued_ms
    assert row["ts"] == T0_MS + 21 * 86_400_000 + 16 * 3_600_000  # 2025-12-22T16:00Z
    assert row["trigger"] is None and row["coupon_id"] is None and row["value_cny"] is None
    assert row["params"] == '{"pack":"spring_festival"}'
    assert action_row(base | {"issued_ms": 5, "issued_at": "junk"})["ts"] == 5
    for bad, needle in [
        (base, "issued_at"),
        (base | {"issued_at": "yesterday"}, "ISO-8601"),
        (base | {"issued_at": "2025-12-23T00:00:00"}, "UTC offset"),
        (base | {"issued_ms": 5, "user_id": True}, "user_id"),
        (base | {"issued_ms": 5.5}, "issued_ms"),
        (base | {"issued_ms": 5, "rule": 3}, "rule"),
        (base | {"issued_ms": 5, "params": [1]}, "params"),
        ({k: v for k, v in base.items() if k != "key"} | {"issued_ms": 5}, "key"),
    ]:
        with pytest.raises(ValueError, match=needle):
            action_row(bad)


def test_outbox_trimming_spares_uncommitted_and_the_newest_entries(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_sink, "_TRIM_PAGE", 4)  # several pages per trim
    config = CONFIG.model_copy(update={"outbox_keep": 5})
    _issue(r, _firings(20, seed=5))  # 30 outbox entries
    # a delivery system outside strata reads the outbox with its own group; it decides nothing
    r.xgroup_create(OUTBOX, "delivery", id="0")
    sink = _sink(r, settings, config=config)
    _drain(sink)
    assert sink.trim().outbox_trimmed == 0 and r.xlen(OUTBOX) == 30  # nothing committed
    assert sink.flush().outbox_trimmed == 25  # commit, ack, then trim down to the newest 5
    newest = [i for i, _ in r.xrevrange(OUTBOX, count=5)]
    assert r.xlen(OUTBOX) == 5
    assert manifest_outbox_watermark(Warehouse(settings.data).manifest, NS, SIDE_P) == parse_id(
        newest[0]
    )

    _issue(r, _firings(6, seed=6))  # 9 entries the sink has not committed: over the 5 to keep
    assert sink.trim().outbox_trimmed == 5  # only the committed ones go
    assert r.xlen(OUTBOX) == 9
    _drain(sink)
    assert sink.trim().outbox_trimmed == 0  # read but not committed yet
    sink.flush()
    assert r.xlen(OUTBOX) == 5
    assert Warehouse(settings.data).summary()["actions"]["rows"] == 39
    assert sink.totals.outbox_trimmed == 34 and sink.totals.trimmed == 0


def test_action_parts_are_merged_in_levels(r: redis.Redis, settings: Settings) -> None:
    sink = _sink(r, settings, merge_fan_in=3)
    firings: list[Firing] = []
    for i in range(12):
        batch = _firings(2, seed=300 + i, user=U0)  # one user: one bucket, one part a commit
        firings += batch
        _issue(r, batch)
        _drain(sink)
        sink.flush()
    wh = Warehouse(settings.data)
    (bucket,) = wh.buckets("actions")
    names = [p["name"] for p in wh.manifest["tables"]["actions"]["buckets"][str(bucket)]["parts"]]
    assert len(names) < 6 and any(n.startswith("part-streamL1-") for n in names), names
    assert _action_keys(settings) == _expected_actions(firings)
    assert wh.vacuum() == []


def test_the_rule_workers_actions_reach_the_warehouse_once(
    ray_local: Any, redis_url: str, settings: Settings
) -> None:
    """The whole loop: a cart abandoned 31 minutes ago fires cart_abandoned in a real stream
    worker, whose outbox entries the real sink (both Ray actors) commits as action rows; the
    same entry delivered again issues and sinks nothing more."""
    from jobs.stream import StreamPool
    from strata.ids import pseudonymise
    from strata.io.event_log import EventAppender
    from strata.realtime.stream_config import load_stream_config
    from tests.conftest import TEST_KEY
    from tests.support import publish_raw_users

    keys = RealtimeKeys(settings.redis_namespace, load_stream_config().partitions)
    publish_raw_users(redis_url, "v1", ["u1", "u2"], TEST_KEY, namespace=settings.redis_namespace)
    user = pseudonymise("u1", TEST_KEY.encode())
    now = time.time_ns() // 1_000_000
    cart = {"event_id": "cart-e2e", "user_id": user, "event_type": "add_to_cart",
            "category": "fruit", "ts": now - 31 * 60_000, "received_ms": now}  # fmt: skip
    pool = StreamPool(settings, redis_url, workers=1, sink=True)
    pool.start()
    r = redis.Redis.from_url(redis_url)
    try:
        appender = EventAppender(redis_url, settings.redis_namespace, load_stream_config())
        assert appender.append([cart]).accepted == 1
        appender.close()
        deadline = time.monotonic() + 90
        wh = Warehouse(settings.data)
        while True:
            assert time.monotonic() < deadline, "no action rows reached the warehouse"
            if wh.exists():
                wh.reload()
                if wh.summary()["actions"]["rows"] >= 2:
                    break
            time.sleep(0.25)
        # the same entry again: decided before by its idempotency key, nothing new to sink
        r.xadd(keys.stream(partition_of(user, pool.partitions)), {ENTRY_FIELD: encode_event(cart)})
        time.sleep(8)  # longer than a sink interval
    finally:
        pool.stop()
    wh.reload()
    rows = wh.read_table("actions").to_pylist()
    assert sorted(row["action"] for row in rows) == ["coupon", "push"]
    assert {row["rule"] for row in rows} == {"cart_abandoned"} and rows[0]["user_id"] == user
    coupon = next(row for row in rows if row["action"] == "coupon")
    log = [orjson.loads(a) for a in r.lrange(keys.actions(user), 0, -1)]
    logged = next(a for a in log if a["action"] == "coupon")
    assert coupon["key"] == logged["key"] and orjson.loads(coupon["params"]) == logged["params"]
    assert coupon["coupon_id"] == logged["params"]["coupon_id"]
    assert coupon["value_cny"] == logged["params"]["value_cny"] > 0
    # the events are sunk too: both entries (a raw re-send bypasses the API's event-id dedupe)
    assert wh.summary()["events"]["rows"] == 2
    r.close()


# ------------------------------------------------------------------ exposures table
EXPOSURES = KEYS.exposures(SIDE_P)  # the contract's stream key of the users of SIDE_P
EXPOSURE_FIELD = b"x"


def _exposures(
    n: int, seed: int = 0, users: int = 12, user: int | None = None
) -> list[dict[str, Any]]:
    """First exposures in the contract's format: each user once per experiment, of two
    experiments, from both sources, holdout included."""
    rng = np.random.default_rng(100 + seed)
    ids = [user] if user is not None else _side_users(rng, users)
    arms = ["control", "coupon_20", "holdout"]
    out = []
    for i in range(n):
        out.append(
            {
                "experiment": f"exp{seed}_{i // len(ids)}" if user is not None else
                ("coupon_10_vs_20" if i % 2 == 0 else "trial_invite"),
                "arm": arms[i % 3],
                "user_id": int(ids[(i // 2) % len(ids)]) if user is None else user,
                "ts": T0_MS + i * 1000 + 7,
                "source": "serve" if i % 4 else "action",
            }
        )  # fmt: skip
    return out


def _expose(r: redis.Redis, records: list[dict[str, Any]]) -> list[bytes]:
    """XADD records as the exposure log writes them (one stream, field ``x``, JSON)."""
    pipe = r.pipeline(transaction=False)
    for rec in records:
        pipe.xadd(EXPOSURES, {EXPOSURE_FIELD: orjson.dumps(rec)})
    return list(pipe.execute())


def _exposure_rows(settings: Settings) -> list[tuple[int, int, str, str, str]]:
    d = Warehouse(settings.data).read_table("exposures").to_pydict()
    return sorted(
        (u, int(t.timestamp() * 1000), e, a, s)
        for u, t, e, a, s in zip(
            d["user_id"], d["ts"], d["experiment"], d["arm"], d["source"], strict=True
        )
    )


def _expected_exposures(records: list[dict[str, Any]]) -> list[tuple[int, int, str, str, str]]:
    return sorted((x["user_id"], x["ts"], x["experiment"], x["arm"], x["source"]) for x in records)


def _exposures_pending(r: redis.Redis) -> int:
    return int(r.xpending(EXPOSURES, SINK_GROUP)["pending"])


def test_exposures_land_in_the_exposures_table_with_every_column(
    r: redis.Redis, settings: Settings
) -> None:
    records = _exposures(24)
    ids = _expose(r, records)
    firings = _firings(4, seed=40)
    _issue(r, firings)
    _append(r, _events(10, seed=41))
    sink = _sink(r, settings)
    read = _drain(sink)
    assert read.exposures_buffered == 24 and read.actions_buffered == 6 and read.buffered == 10
    assert sink.trim().exposures_trimmed == 0 and r.xlen(EXPOSURES) == 24  # nothing committed
    done = sink.flush()
    assert done.exposures_committed == 24 and done.actions_committed == 6
    assert done.committed == 10 and done.commits == 1  # one commit holds all three tables

    wh = Warehouse(settings.data)
    assert wh.manifest["writes"][-1]["exposures_rows"] == 24
    assert wh.manifest["writes"][-1]["actions_rows"] == 6
    assert _exposure_rows(settings) == _expected_exposures(records)  # every column, ms kept
    table = wh.read_table("exposures")
    assert table.column_names == ["user_id", "ts", "experiment", "arm", "source"]
    assert set(table.column("arm").to_pylist()) == {"control", "coupon_20", "holdout"}
    for b in wh.buckets("exposures"):
        t = wh.read_bucket("exposures", b, ["user_id"])
        assert set(bucket_of(t.column("user_id").to_numpy(), wh.n_buckets)) == {b}
    # the exposures watermark is the stream's last entry, in the manifest and in Redis
    last = parse_id(ids[-1])
    assert manifest_exposure_watermark(wh.manifest, NS, SIDE_P) == last
    assert r.hget(KEYS.sink, f"exposures:{SIDE_P}") == format_id(last).encode()
    assert manifest_outbox_watermark(wh.manifest, NS, SIDE_P) == parse_id(
        r.xrevrange(OUTBOX, count=1)[0][0]
    )
    assert _exposures_pending(r) == 0 and _outbox_pending(r) == 0 and _pending(r) == 0
    # no other reader: everything committed is trimmed (the outbox keeps its newest entries)
    assert done.exposures_trimmed == 24 and r.xlen(EXPOSURES) == 0 and r.xlen(OUTBOX) == 6


def test_exposures_crash_after_commit_before_ack_duplicates_nothing(
    r: redis.Redis, settings: Settings
) -> None:
    records = _exposures(20, seed=1)
    _expose(r, records)
    _append(r, _events(8, seed=42))
    first = _sink(r, settings)
    _drain(first)

    def crash() -> None:
        raise Crash

    first.after_commit_hook = crash
    with pytest.raises(Crash):
        first.flush()
    assert _exposures_pending(r) == 20  # committed but never acked (nor trimmed)
    assert r.xlen(EXPOSURES) == 20
    assert _exposure_rows(settings) == _expected_exposures(records)

    more = _exposures(6, seed=2)
    _expose(r, more)
    second = _sink(r, settings, consumer="sink-2")  # restarted, even under another name
    stats = _drain(second)
    assert stats.already_committed == 20 + 8 and stats.exposures_buffered == 6
    second.flush()
    assert _exposure_rows(settings) == _expected_exposures(records + more)
    assert _exposures_pending(r) == 0 and r.xlen(EXPOSURES) == 0
    # a crash before the commit loses no exposure either
    last = _exposures(4, seed=3)
    _expose(r, last)
    third = _sink(r, settings, consumer="sink-3")
    assert _drain(third).exposures_buffered == 4
    del third
    fourth = _sink(r, settings)
    assert _drain(fourth).exposures_buffered == 4
    fourth.flush()
    assert _exposure_rows(settings) == _expected_exposures(records + more + last)
    assert Warehouse(settings.data).summary()["exposures"]["rows"] == 30


def test_bad_exposure_entries_go_to_the_dead_letter_stream(
    r: redis.Redis, settings: Settings
) -> None:
    good = _exposures(5, seed=4)
    _expose(r, good)
    rec = good[0]
    bad = {
        r.xadd(EXPOSURES, {EXPOSURE_FIELD: b"{not json"}): "",
        r.xadd(EXPOSURES, {b"a": b"1"}): "no 'x' field",
        r.xadd(EXPOSURES, {EXPOSURE_FIELD: b'"serve"'}): "not a JSON object",
        r.xadd(EXPOSURES, {EXPOSURE_FIELD: orjson.dumps(rec | {"arm": None})}): "lacks ['arm']",
        r.xadd(EXPOSURES, {EXPOSURE_FIELD: orjson.dumps(rec | {"user_id": "7"})}): "user_id",
        r.xadd(EXPOSURES, {EXPOSURE_FIELD: orjson.dumps(rec | {"ts": 1.5})}): "ts",
        r.xadd(EXPOSURES, {EXPOSURE_FIELD: orjson.dumps(rec | {"experiment": ""})}): "experiment",
        r.xadd(EXPOSURES, {EXPOSURE_FIELD: orjson.dumps(rec | {"source": "email"})}): "source",
        r.xadd(EXPOSURES, {EXPOSURE_FIELD: orjson.dumps(rec | {"user_id": 2**63})}):
            "exposures schema",
    }  # fmt: skip
    _expose(r, good[1:2])  # a good entry after the bad ones is not held up
    sink = _sink(r, settings)
    stats = _drain(sink)
    assert stats.dead == len(bad) and stats.exposures_buffered == 6
    sink.flush()
    assert _exposure_rows(settings) == _expected_exposures(good + good[1:2])
    letters = {e[b"id"]: e for _, e in _dead_letters(r)}
    assert set(letters) == set(bad)
    for entry_id, needle in bad.items():
        letter = letters[entry_id]
        assert needle in letter[b"reason"].decode(), letter[b"reason"]
        assert letter[b"stream"] == EXPOSURES.encode()
        assert letter[b"partition"] == b"%d" % SIDE_P
        assert letter[b"group"] == SINK_GROUP.encode()
    assert _exposures_pending(r) == 0


def test_exposure_rows_and_their_errors() -> None:
    rec = {"experiment": "coupon_10_vs_20", "arm": "holdout", "user_id": 7, "ts": T0_MS,
           "source": "action"}  # fmt: skip
    assert exposure_row(rec | {"tier": "potential"}) == rec  # a newer writer's extra key: ignored
    for bad, needle in [
        ([rec], "not a JSON object"),
        ({k: v for k, v in rec.items() if k != "source"}, "lacks \\['source'\\]"),
        (rec | {"user_id": True}, "user_id"),
        (rec | {"ts": "2025-12-01"}, "ts"),
        (rec | {"arm": 3}, "arm"),
        (rec | {"source": "Serve"}, "source"),
    ]:
        with pytest.raises(ValueError, match=needle):
            exposure_row(bad)  # type: ignore[arg-type]


def test_exposures_trimming_spares_what_is_not_committed(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_sink, "_TRIM_PAGE", 4)  # several pages per trim
    _expose(r, _exposures(10, seed=5))
    sink = _sink(r, settings)
    _drain(sink)
    assert sink.flush().exposures_trimmed == 10 and r.xlen(EXPOSURES) == 0
    later = _exposures(7, seed=6)
    _expose(r, later)  # not read yet
    assert sink.trim().exposures_trimmed == 0 and r.xlen(EXPOSURES) == 7
    _drain(sink)
    assert sink.trim().exposures_trimmed == 0 and r.xlen(EXPOSURES) == 7  # read, not committed
    _expose(r, _exposures(3, seed=7))  # arrive during the commit: above its watermark
    sink.flush()
    assert r.xlen(EXPOSURES) == 3 and _exposures_pending(r) == 0
    assert Warehouse(settings.data).summary()["exposures"]["rows"] == 17
    assert sink.totals.exposures_trimmed == 17 and sink.totals.outbox_trimmed == 0


def test_exposure_parts_are_merged_in_levels(r: redis.Redis, settings: Settings) -> None:
    sink = _sink(r, settings, merge_fan_in=3)
    records: list[dict[str, Any]] = []
    for i in range(12):
        batch = _exposures(2, seed=300 + i, user=U0)  # one user: one bucket, one part a commit
        records += batch
        _expose(r, batch)
        _drain(sink)
        sink.flush()
    wh = Warehouse(settings.data)
    (bucket,) = wh.buckets("exposures")
    names = [p["name"] for p in wh.manifest["tables"]["exposures"]["buckets"][str(bucket)]["parts"]]
    assert len(names) < 6 and any(n.startswith("part-streamL1-") for n in names), names
    assert _exposure_rows(settings) == _expected_exposures(records)
    assert wh.vacuum() == []


def test_a_warehouse_from_before_the_exposures_table_takes_exposures(
    r: redis.Redis, settings: Settings
) -> None:
    """A warehouse the previous sink wrote (events, actions, their watermarks; no exposures
    table, no exposures watermark): the new sink adds the table and sinks nothing twice."""
    events = _events(12, seed=50)
    _append(r, events)
    firings = _firings(2, seed=51)
    _issue(r, firings)
    old = _sink(r, settings)
    _drain(old)
    old.flush()
    path = f"{settings.data}/warehouse/manifest.json"
    with open(path) as f:
        manifest = json.load(f)
    assert "exposure_watermarks" not in manifest  # no exposure yet: no watermark written
    del manifest["tables"]["exposures"]
    for entry in manifest["writes"]:
        entry.pop("exposures_rows", None)
    with open(path, "w") as f:
        json.dump(manifest, f)
    assert Warehouse(settings.data).summary()["exposures"]["rows"] == 0

    records = _exposures(8, seed=52)
    _expose(r, records)
    _append(r, _events(3, seed=53))
    new = _sink(r, settings, consumer="sink-new")
    stats = _drain(new)
    assert stats.exposures_buffered == 8 and stats.buffered == 3 and stats.actions_buffered == 0
    new.flush()
    wh = Warehouse(settings.data)
    assert _exposure_rows(settings) == _expected_exposures(records)
    assert wh.summary()["events"]["rows"] == 15 and wh.summary()["actions"]["rows"] == 3
    assert manifest_exposure_watermark(wh.manifest, NS, SIDE_P) > (0, 0)
