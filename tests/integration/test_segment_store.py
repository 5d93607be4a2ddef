"""SegmentStore against a real embedded redis-server: publish, reads, rollback, retention,
parallel writers, readers racing a publish, the packed layout's checks, and hash-layout
versions (written before the packed layout) staying readable."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import redis

from strata.ids import bucket_of
from strata.io.segment_reader import AsyncSegmentReader
from strata.io.segment_store import (
    IncompleteVersionError,
    LooseEncodingError,
    PackingError,
    SegmentStore,
    SegmentStoreError,
    VersionStateError,
)
from strata.online.codec import (
    FieldKind,
    FieldSpec,
    RecordLayout,
    decode_many,
    encode,
    group_of,
    n_groups_for,
)
from tests.support import BASE, FULL, segment_columns

pytestmark = pytest.mark.integration


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(2**40, size=n, replace=False).astype(np.int64)


def _publish(
    store: SegmentStore,
    version: str,
    ids: np.ndarray,
    marker: int,
    *,
    layout: RecordLayout = FULL,
    n_groups: int | None = None,
    keep: int = 3,
) -> None:
    store.begin_version(version, layout, n_groups or n_groups_for(len(ids)), {"job": "test"})
    store.write_users(version, ids, encode(segment_columns(ids, marker, layout), layout))
    store.publish(version, keep=keep, expected_users=len(ids))


def _expected(ids: np.ndarray, marker: int, layout: RecordLayout = FULL) -> list[dict[str, Any]]:
    return decode_many(encode(segment_columns(ids, marker, layout), layout), layout)


def _keys(url: str, pattern: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=pattern, count=1000))
    finally:
        client.close()


@pytest.fixture
def store(redis_url: str) -> Iterator[SegmentStore]:
    with SegmentStore(redis_url) as s:
        yield s


def _write_half(url: str, version: str, ids: np.ndarray, marker: int) -> int:
    """A writer process: its own store, its own users."""
    with SegmentStore(url) as s:
        return s.write_users(version, ids, encode(segment_columns(ids, marker), FULL))


# ----------------------------------------------------------------------------- publish & read


def test_publish_and_read_back(store: SegmentStore) -> None:
    ids = _ids(5000)
    assert store.current() is None and store.get(int(ids[0])) is None
    store.begin_version("v1", FULL, 64, {"job": "test", "as_of": "2026-10-01T00:00:00+08:00"})
    assert store.write_users("v1", ids, encode(segment_columns(ids, 1), FULL)) == 5000
    assert store.current() is None  # written, not visible
    info = store.publish("v1", expected_users=5000)
    assert (info.status, info.n_users, info.users_written) == ("published", 5000, 5000)
    assert info.as_of == "2026-10-01T00:00:00+08:00" and info.meta["job"] == "test"
    assert info.layout == FULL and info.published_at
    assert store.current() == "v1" and store.versions() == ["v1"]
    expected = _expected(ids, 1)
    for i in (0, 1, 2500, 4999):
        assert store.get(int(ids[i])) == ("v1", expected[i])
    version, records = store.get_many(ids[:1000])
    assert version == "v1" and records == expected[:1000]
    assert store.history()[0]["action"] == "publish"
    assert store.history()[0]["version"] == "v1"


def test_batch_order_not_found_and_limits(store: SegmentStore) -> None:
    ids = _ids(300)
    assert store.get_many(ids[:3]) == (None, [None, None, None])
    _publish(store, "v1", ids, 1)
    expected = _expected(ids, 1)
    absent = int(ids.max()) + 1
    version, records = store.get_many([absent, int(ids[3]), int(ids[1]), absent + 1, int(ids[3])])
    assert version == "v1"
    assert records == [None, expected[3], expected[1], None, expected[3]]
    assert store.get(absent) is None
    assert store.get_many([]) == ("v1", [])
    with pytest.raises(ValueError, match="at most 1000"):
        store.get_many(np.arange(1001))
    with pytest.raises(ValueError, match="non-negative"):
        store.get_many([-1])


def test_two_writer_processes_in_parallel(redis_url: str, store: SegmentStore) -> None:
    ids = _ids(40_000, seed=1)
    store.begin_version("v1", FULL, 16, expected_users=len(ids))
    # each writer owns whole buckets, as the recompute's shards own warehouse buckets
    odd = bucket_of(ids, 16) % 2 == 1
    halves = [ids[~odd], ids[odd]]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        added = pool.starmap(_write_half, [(redis_url, "v1", h, 1) for h in halves])
    assert added == [len(h) for h in halves] and sum(added) == 40_000
    assert store.info("v1").users_written == 40_000  # type: ignore[union-attr]
    assert store.publish("v1").n_users == 40_000  # expected_users from begin_version
    sample = np.random.default_rng(2).choice(len(ids), 1000, replace=False)
    version, records = store.get_many(ids[sample])
    assert version == "v1"
    assert records == [_expected(ids[sample], 1)[i] for i in range(1000)]


def test_parallel_thread_writers_and_retried_chunks(redis_url: str) -> None:
    ids = _ids(20_000, seed=3)
    parts = [ids[bucket_of(ids, 256) % 4 == j] for j in range(4)]
    with SegmentStore(redis_url, write_chunk_users=7) as s:  # chunks smaller than a bucket
        s.begin_version("v1", FULL, 256)
        threads = [
            threading.Thread(target=_write_half, args=(redis_url, "v1", p, 1)) for p in parts
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # a retried shard rewrites its users: no new users, no double count
        assert s.write_users("v1", parts[0], encode(segment_columns(parts[0], 1), FULL)) == 0
        assert s.info("v1").users_written == 20_000  # type: ignore[union-attr]
        assert s.publish("v1", expected_users=20_000).n_users == 20_000


# ------------------------------------------------------------------------ rollback & retention


def test_rollback(store: SegmentStore) -> None:
    ids = _ids(500)
    with pytest.raises(VersionStateError, match="nothing is published"):
        store.rollback()
    _publish(store, "v1", ids, 1)
    with pytest.raises(VersionStateError, match="no retained version older"):
        store.rollback()
    _publish(store, "v2", ids, 2)
    assert store.get(int(ids[0]))[1]["frequency_90d"] == 2  # type: ignore[index]
    assert store.rollback() == "v1"
    assert store.current() == "v1"
    assert store.get(int(ids[0])) == ("v1", _expected(ids[:1], 1)[0])
    assert store.rollback(to="v2") == "v2" and store.current() == "v2"
    assert store.rollback(to="v2") == "v2"
    with pytest.raises(VersionStateError, match="missing"):
        store.rollback(to="v9")
    store.begin_version("v3", FULL, 8)
    with pytest.raises(VersionStateError, match="writing"):
        store.rollback(to="v3")
    assert [h["action"] for h in store.history()] == ["rollback", "rollback", "publish", "publish"]
    assert store.history()[1] == {**store.history()[1], "version": "v1", "previous": "v2"}


def test_retention_keeps_k_and_deletes_old_keys(redis_url: str, store: SegmentStore) -> None:
    ids = _ids(2000)
    for k in range(1, 6):
        _publish(store, f"v{k}", ids, k, keep=2)
    assert store.versions() == ["v4", "v5"]
    for gone in ("v1", "v2", "v3"):
        assert _keys(redis_url, f"strata:v:{gone}:*") == []
        assert store.info(gone) is None
    # 32 buckets of ~62 users: one group string and one index each
    assert len(_keys(redis_url, "strata:v:v4:g:*")) == n_groups_for(2000) == 32
    assert len(_keys(redis_url, "strata:v:v4:i:*")) == 32
    # the version the pointer leaves is never deleted, even when it is the oldest
    assert store.rollback(to="v4") == "v4"
    _publish(store, "v6", ids, 6, keep=1)
    assert store.versions() == ["v4", "v6"]
    assert _keys(redis_url, "strata:v:v5:*") == []
    assert store.rollback() == "v4"
    assert store.get(int(ids[7]))[1]["frequency_90d"] == 4  # type: ignore[index]
    with pytest.raises(ValueError):
        store.publish("v6", keep=0)


def test_discard_unpublished_leaves_current(redis_url: str, store: SegmentStore) -> None:
    ids = _ids(1000)
    _publish(store, "v1", ids, 1)
    store.begin_version("v2", FULL, 16)
    store.write_users("v2", ids[:600], encode(segment_columns(ids[:600], 2), FULL))
    assert store.discard("v2") == 33  # 16 buckets of one group string each, 16 indexes, meta
    assert _keys(redis_url, "strata:v:v2:*") == []
    assert store.current() == "v1" and store.versions() == ["v1"]
    assert store.get(int(ids[0])) == ("v1", _expected(ids[:1], 1)[0])
    with pytest.raises(VersionStateError, match="current"):
        store.discard("v1")
    store.begin_version("v2", FULL, 16)  # the id is free again
    # stray keys of a version whose meta is gone are swept by prefix
    client = redis.Redis.from_url(redis_url)
    client.hset("strata:v:v9:g:3", b"x", b"y")
    client.set("strata:v:v9:i:3", b"z")
    client.close()
    assert store.discard("v9") == 2


def test_incomplete_publish_raises_and_keeps_current(store: SegmentStore) -> None:
    ids = _ids(1000)
    _publish(store, "v1", ids, 1)
    store.begin_version("v2", FULL, 16, expected_users=1000)
    late = bucket_of(ids, 16) == 3  # one bucket's writer has not finished
    early = ids[~late]
    store.write_users("v2", early, encode(segment_columns(early, 2), FULL))
    with pytest.raises(IncompleteVersionError, match=f"{len(early)} users, expected 1000"):
        store.publish("v2")
    assert store.current() == "v1" and store.info("v2").status == "writing"  # type: ignore[union-attr]
    assert store.get(int(ids[0]))[0] == "v1"  # type: ignore[index]
    store.write_users("v2", ids[late], encode(segment_columns(ids[late], 2), FULL))
    with pytest.raises(IncompleteVersionError):
        store.publish("v2", expected_users=999)
    store.publish("v2")
    assert store.current() == "v2"
    store.begin_version("empty", FULL, 4)
    with pytest.raises(IncompleteVersionError, match="at least one"):
        store.publish("empty")


def test_state_errors(store: SegmentStore) -> None:
    ids = _ids(100)
    encoded = encode(segment_columns(ids, 1), FULL)
    with pytest.raises(VersionStateError, match="does not exist"):
        store.write_users("v1", ids, encoded)
    with pytest.raises(VersionStateError, match="does not exist"):
        store.publish("v1")
    store.begin_version("v1", FULL, 4)
    with pytest.raises(VersionStateError, match="already exists"):
        store.begin_version("v1", FULL, 4)
    with pytest.raises(ValueError, match=f"needs {FULL.size}"):
        store.write_users("v1", ids, encode(segment_columns(ids, 1, BASE), BASE))
    with pytest.raises(ValueError, match="same length"):
        store.write_users("v1", ids[:5], encoded)
    other = RecordLayout(fields=(*FULL.fields[:-1], FieldSpec(name="spend", kind=FieldKind.CNY16)))
    with pytest.raises(ValueError, match="another layout"):
        store.write_users(
            "v1", ids, encode(segment_columns(ids, 1) | {"spend": np.ones(100)}, other)
        )
    store.write_users("v1", ids, encoded)
    store.publish("v1")
    with pytest.raises(VersionStateError, match="published, not writing"):
        store.write_users("v1", ids, encoded)
    with pytest.raises(VersionStateError, match="rollback"):
        store.publish("v1")


def test_each_version_is_read_with_its_own_layout(store: SegmentStore) -> None:
    ids = _ids(200)
    _publish(store, "v1", ids, 1, layout=BASE)
    _publish(store, "v2", ids, 2, layout=FULL)
    version, records = store.get_many(ids[:3])
    assert version == "v2" and records[0] is not None and "churn_p" in records[0]
    store.rollback()
    version, records = store.get_many(ids[:3])
    assert version == "v1" and records == _expected(ids[:3], 1, BASE)
    assert records[0] is not None and "churn_p" not in records[0]


def test_reader_follows_a_new_version_with_other_n_groups(redis_url: str) -> None:
    ids = _ids(3000)
    with SegmentStore(redis_url) as writer, SegmentStore(redis_url) as reader:
        _publish(writer, "v1", ids, 1, n_groups=16)
        assert reader.get(int(ids[0]))[0] == "v1"  # type: ignore[index]
        _publish(writer, "v2", ids, 2, n_groups=128)
        version, records = reader.get_many(ids[:500])
        assert version == "v2" and records == _expected(ids[:500], 2)


def test_namespaces_are_isolated(redis_url: str) -> None:
    ids = _ids(100)
    with SegmentStore(redis_url, "a") as a, SegmentStore(redis_url, "b:staging") as b:
        _publish(a, "v1", ids, 1)
        assert b.current() is None and b.get(int(ids[0])) is None
        _publish(b, "v1", ids, 2)
        assert a.get(int(ids[0]))[1]["frequency_90d"] == 1  # type: ignore[index]
        assert b.get(int(ids[0]))[1]["frequency_90d"] == 2  # type: ignore[index]


# ------------------------------------------------------------------------- concurrent readers


def test_concurrent_readers_never_see_a_mixed_answer(redis_url: str) -> None:
    """Readers hammer single and batch reads while versions are published and rolled back;
    every answer must come entirely from the version it reports."""
    ids = _ids(3000, seed=5)
    marker = {f"v{k}": k for k in range(1, 8)}
    # versions differ in marker, layout and n_groups, so a mix or a stale group count shows
    plan = {f"v{k}": (FULL if k % 2 else BASE, (16, 64, 128)[k % 3]) for k in range(1, 8)}
    with SegmentStore(redis_url) as publisher:
        layout, n_groups = plan["v1"]
        _publish(publisher, "v1", ids, 1, layout=layout, n_groups=n_groups)

        stop = threading.Event()
        problems: list[str] = []
        seen: list[set[str]] = []
        answers = [0]

        def read(seed: int) -> None:
            rng = random.Random(seed)
            versions: set[str] = set()
            with SegmentStore(redis_url) as reader:
                while not stop.is_set():
                    records: list[dict[str, Any] | None]
                    if rng.random() < 0.3:
                        uid = int(ids[rng.randrange(len(ids))])
                        got = reader.get(uid)
                        if got is None:
                            problems.append(f"user {uid} missing")
                            continue
                        version, records = got[0], [got[1]]
                    else:
                        batch = ids[rng.sample(range(len(ids)), 200)]
                        version_or_none, many = reader.get_many(batch)
                        if version_or_none is None:
                            problems.append("no version")
                            continue
                        version, records = version_or_none, many
                    versions.add(version)
                    answers[0] += 1
                    want_keys = plan[version][0].names
                    for rec in records:
                        if rec is None:
                            problems.append(f"{version}: missing record")
                        elif rec["frequency_90d"] != marker[version] or tuple(rec) != want_keys:
                            problems.append(f"{version}: record of another version {rec}")
            seen.append(versions)

        readers = [threading.Thread(target=read, args=(s,)) for s in range(4)]
        for t in readers:
            t.start()
        try:
            for k in range(2, 8):
                time.sleep(0.05)
                layout, n_groups = plan[f"v{k}"]
                _publish(publisher, f"v{k}", ids, k, layout=layout, n_groups=n_groups, keep=3)
                if k in (4, 6):
                    time.sleep(0.05)
                    publisher.rollback()
                    time.sleep(0.05)
                    publisher.rollback(to=f"v{k}")
            time.sleep(0.1)
        finally:
            stop.set()
            for t in readers:
                t.join()
    assert problems == []
    assert answers[0] > 100
    assert len(set().union(*seen)) >= 4


# ------------------------------------------------------------------------ memory & encoding


def test_memory_per_user_within_budget(redis_url: str, store: SegmentStore) -> None:
    n = 20_000
    ids = _ids(n, seed=9)
    rng = np.random.default_rng(9)
    cols = {
        f.name: pa.array(rng.choice(list(f.labels), n))
        if f.labels
        else rng.lognormal(5, 1, n)
        if f.kind is FieldKind.CNY
        else rng.random(n)
        for f in FULL.fields
    }
    cols["recency_days"] = rng.integers(0, 365, n)
    cols["frequency_90d"] = rng.integers(0, 40, n)
    client = redis.Redis.from_url(redis_url)
    # warm up first: a new connection (~50 kB) and the first scripts (~0.4 MB: Lua VM, script
    # cache) are one-time costs of the server, not of the users
    _publish(store, "warmup", _ids(100, seed=10), 0)
    before = client.info("memory")["used_memory"]
    # 16 buckets of 1250 users: 4 full 8 KiB group strings and a partial one each
    store.begin_version("v1", FULL, 16, expected_users=n)
    store.write_users("v1", ids, encode(cols, FULL))
    store.publish("v1")
    after = client.info("memory")["used_memory"]
    client.close()
    per_user = (after - before) / n
    # 8-byte id + 23-byte record + per-key overhead (the hash layout took ~38)
    assert 31 <= per_user <= 33, f"{per_user:.1f} bytes/user"


def test_loose_encoding_is_caught(store: SegmentStore, redis_url: str, caplog: Any) -> None:
    wide = RecordLayout(
        fields=tuple(FieldSpec(name=f"x{i}", kind=FieldKind.FLOAT32) for i in range(17))
    )
    assert wide.size == 68 > store.compact_limits().max_value_bytes
    with pytest.raises(LooseEncodingError, match="hash-max-listpack-value"):
        store.begin_version("wide", wide, 4, storage="hash")
    with pytest.raises(LooseEncodingError, match="n_groups="):
        store.begin_version("crowded", FULL, 1, expected_users=100_000, storage="hash")
    store.begin_version("packed-wide", wide, 4, expected_users=100_000)  # no such limit
    assert store.info("wide") is None and store.info("crowded") is None
    ids = _ids(50)
    with SegmentStore(redis_url, on_loose_encoding="warn") as lenient:
        with caplog.at_level(logging.WARNING, logger="strata.io.segment_store"):
            lenient.begin_version("wide", wide, 4, storage="hash")
            lenient.write_users(
                "wide", ids, encode({f"x{i}": np.ones(50) for i in range(17)}, wide)
            )
            lenient.publish("wide")
        assert "exceed hash-max-listpack-value" in caplog.text
        assert "4 of 4 groups are not in the compact encoding" in caplog.text
        assert lenient.get(int(ids[0]))[1]["x3"] == 1.0  # type: ignore[index]


def test_one_oversized_group_warns_many_raise(store: SegmentStore, caplog: Any) -> None:
    limit = store.compact_limits().max_entries
    pool = np.arange(400_000, dtype=np.int64)
    groups = group_of(pool, 128)
    crowd = [pool[groups == g][: limit + 1] for g in (0, 1)]
    rest = pool[groups >= 2][:3000]
    one = np.concatenate([crowd[0], rest])
    store.begin_version("one", FULL, 128, storage="hash")
    store.write_users("one", one, encode(segment_columns(one, 1), FULL))
    with caplog.at_level(logging.WARNING, logger="strata.io.segment_store"):
        store.publish("one")  # 1 of 128 groups: a warning, not a failure
    assert "1 of 128 groups are not in the compact encoding" in caplog.text
    two = np.concatenate([crowd[0], crowd[1], rest])
    store.begin_version("two", FULL, 128, storage="hash")
    store.write_users("two", two, encode(segment_columns(two, 2), FULL))
    with pytest.raises(LooseEncodingError, match="2 of 128 groups"):
        store.publish("two")
    assert store.current() == "one"


def test_compact_limits_fall_back_when_config_is_forbidden(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        "reader", enabled=True, passwords=["+secret-pw"], keys=["*"], commands=["+@all", "-config"]
    )
    try:
        with SegmentStore(
            redis.Redis.from_url(redis_url, username="reader", password="secret-pw")
        ) as s:
            limits = s.compact_limits()
            assert (limits.max_entries, limits.max_value_bytes, limits.source) == (
                128,
                64,
                "default",
            )
            assert s.plan_n_groups(1_000_000, storage="hash") == 16384
        with SegmentStore(redis_url) as s:
            assert s.compact_limits().source == "config"
    finally:
        admin.acl_deluser("reader")
        admin.close()


def test_decode_responses_client_is_refused(redis_url: str) -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        SegmentStore(redis.Redis.from_url(redis_url, decode_responses=True))
    assert issubclass(IncompleteVersionError, SegmentStoreError)


# ------------------------------------------------------------------------ the packed layout


def test_packed_group_strings_are_sorted_fixed_width_entries(
    redis_url: str, store: SegmentStore
) -> None:
    ids = _ids(3000, seed=11)
    with SegmentStore(redis_url, chunk_bytes=1024) as small:  # 32 users per group string
        small.begin_version("v1", FULL, 4, expected_users=len(ids))
        encoded = encode(segment_columns(ids, 1), FULL)
        assert small.write_users("v1", ids, encoded) == 3000
        info = small.publish("v1")
    assert (info.storage, info.n_groups, info.chunk_users) == ("packed", 4, 32)
    width = 8 + FULL.size
    client = redis.Redis.from_url(redis_url)
    total = 0
    for b in range(4):
        index = client.get(store.keys.index("v1", b))
        assert index is not None
        count = int.from_bytes(index[:4], "big")
        mine = np.sort(ids[bucket_of(ids, 4) == b])
        assert count == len(mine) and len(index) == 4 + 8 * -(-count // 32) + 8
        data = b"".join(
            client.get(store.keys.chunk("v1", b, c)) or b"" for c in range(-(-count // 32))
        )
        entries = np.frombuffer(data, dtype=np.uint8).reshape(count, width)
        assert np.array_equal(entries[:, :8].copy().view(">i8").ravel(), mine)
        assert index[4:-8] == mine[::32].astype(">i8").tobytes()
        assert index[-8:] == mine[-1:].astype(">i8").tobytes()
        total += count
    assert total == 3000
    assert client.object("encoding", store.keys.chunk("v1", 0, 0)) == b"raw"
    client.close()
    # every user, and ids next to them that are absent, read exactly
    version, records = store.get_many(ids[:1000])
    assert version == "v1" and records == _expected(ids[:1000], 1)
    near = np.setdiff1d(np.r_[ids[:300] - 1, ids[:300] + 1, 0, 2**63 - 1], ids)
    assert store.get_many(near[:1000]) == ("v1", [None] * len(near[:1000]))


@pytest.mark.parametrize("kind", ["sequential", "clustered", "extreme"])
def test_packed_reads_are_exact_for_skewed_ids(redis_url: str, kind: str) -> None:
    """Interpolation steers the search; ids far from uniform must still be found exactly."""
    rng = np.random.default_rng(4)
    if kind == "sequential":
        ids = np.arange(1, 5001, dtype=np.int64)
    elif kind == "clustered":  # dense runs far apart
        ids = np.unique(np.concatenate([s + np.arange(700) for s in (10, 2**40, 2**62)]))
    else:  # ids differing below a double's precision next to tiny ones
        top = 2**63 - 1 - np.arange(0, 3000, 3, dtype=np.int64)
        ids = np.unique(np.concatenate([top, np.arange(50, dtype=np.int64)]))
    with SegmentStore(redis_url, chunk_bytes=2048) as s:  # 66 users per group string
        _publish(s, "v1", ids, 1, n_groups=2)
        expected = _expected(ids, 1)
        for start in range(0, len(ids), 1000):
            assert s.get_many(ids[start : start + 1000]) == ("v1", expected[start : start + 1000])
        picks = rng.choice(len(ids), 50, replace=False).tolist()
        assert all(s.get(int(ids[i])) == ("v1", expected[i]) for i in picks)
        gaps = np.setdiff1d(np.r_[ids - 1, ids + 1], ids)
        gaps = gaps[gaps >= 0][:1000]
        assert s.get_many(gaps) == ("v1", [None] * len(gaps))


def test_packed_publish_catches_inconsistent_groups(redis_url: str, store: SegmentStore) -> None:
    ids = _ids(2000, seed=12)
    encoded = encode(segment_columns(ids, 1), FULL)
    with pytest.raises(ValueError, match="appears twice"):
        store.begin_version("dup", FULL, 4)
        store.write_users("dup", np.r_[ids[:5], ids[:1]], encoded[:6])
    # a bucket split over two calls: the second call replaces the first's share of it
    store.begin_version("split", FULL, 4, expected_users=2000)
    in_zero = bucket_of(ids, 4) == 0
    first = np.flatnonzero(in_zero)[::2]
    rest = np.setdiff1d(np.arange(2000), first)
    store.write_users("split", ids[first], encoded[first])
    store.write_users("split", ids[rest], encoded[rest])
    with pytest.raises(IncompleteVersionError, match="expected 2000"):
        store.publish("split")
    # a damaged group string (here: truncated) is refused, the current version unchanged
    _publish(store, "good", ids, 1, n_groups=4)
    store.begin_version("bad", FULL, 4, expected_users=2000)
    store.write_users("bad", ids, encoded)
    client = redis.Redis.from_url(redis_url)
    key = store.keys.chunk("bad", 1, 0)
    client.set(key, (client.get(key) or b"")[:-3])
    with pytest.raises(PackingError, match="bucket 1 group 0"):
        store.publish("bad")
    client.set(key, b"")
    client.close()
    assert store.current() == "good"


def test_hash_version_from_before_the_upgrade_stays_readable(
    redis_url: str, store: SegmentStore
) -> None:
    """A retained hash-layout version (meta without ``storage``, as the code before the packed
    layout wrote it) is read, rolled back to and aged out next to packed versions."""
    ids = _ids(1500, seed=13)
    store.begin_version("old", BASE, 32, {"job": "old"}, storage="hash")
    client = redis.Redis.from_url(redis_url)
    client.hdel(store.meta_key("old"), "storage")
    store.write_users("old", ids, encode(segment_columns(ids, 1, BASE), BASE))
    assert client.type(store.group_key("old", 0)) == b"hash"
    store.publish("old", expected_users=1500)
    assert store.info("old").storage == "hash"  # type: ignore[union-attr]
    _publish(store, "new", ids, 2)
    assert client.type(store.keys.index("new", 0)) == b"string"
    client.close()
    assert store.get_many(ids[:500]) == ("new", _expected(ids[:500], 2))
    assert store.rollback() == "old"
    assert store.get_many(ids[:500]) == ("old", _expected(ids[:500], 1, BASE))
    assert store.get(int(ids[9])) == ("old", _expected(ids[9:10], 1, BASE)[0])

    async def read_async() -> list[Any]:
        reader = AsyncSegmentReader(redis_url)
        try:
            got = [await reader.get_many(ids[:200]), await reader.get(int(ids[3]))]
            store.rollback(to="new")
            got += [await reader.get_many(ids[:200]), await reader.lookup(int(ids[3]))]
            got.append(await reader.lookup(int(ids.max()) + 1))
            return got
        finally:
            await reader.aclose()

    old_many, old_one, new_many, new_one, absent = asyncio.run(read_async())
    assert old_many == ("old", _expected(ids[:200], 1, BASE))
    assert old_one == ("old", _expected(ids[3:4], 1, BASE)[0])
    assert new_many == ("new", _expected(ids[:200], 2))
    assert new_one == ("new", _expected(ids[3:4], 2)[0])
    assert absent == ("new", None)
    # the old version ages out like any other, all of its hash groups with it
    _publish(store, "newer", ids, 3, keep=1)
    _publish(store, "newest", ids, 4, keep=1)
    assert store.info("old") is None and _keys(redis_url, "strata:v:old:*") == []
