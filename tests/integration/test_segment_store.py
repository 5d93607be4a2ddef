"""SegmentStore against a real embedded redis-server: publish, reads, rollback, retention,
parallel writers, and readers racing a publish."""

from __future__ import annotations

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

from strata.io.segment_store import (
    IncompleteVersionError,
    LooseEncodingError,
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
    store.begin_version("v1", FULL, n_groups_for(len(ids)), expected_users=len(ids))
    halves = [ids[::2], ids[1::2]]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        added = pool.starmap(_write_half, [(redis_url, "v1", h, 1) for h in halves])
    assert added == [20_000, 20_000]
    assert store.info("v1").users_written == 40_000  # type: ignore[union-attr]
    assert store.publish("v1").n_users == 40_000  # expected_users from begin_version
    sample = np.random.default_rng(2).choice(len(ids), 1000, replace=False)
    version, records = store.get_many(ids[sample])
    assert version == "v1"
    assert records == [_expected(ids[sample], 1)[i] for i in range(1000)]


def test_parallel_thread_writers_and_retried_chunks(redis_url: str) -> None:
    ids = _ids(20_000, seed=3)
    parts = np.array_split(ids, 4)
    with SegmentStore(redis_url, write_chunk_users=7) as s:  # chunks smaller than a group
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
    assert len(_keys(redis_url, "strata:v:v4:g:*")) == n_groups_for(2000)
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
    assert store.discard("v2") == 17  # 16 groups + meta
    assert _keys(redis_url, "strata:v:v2:*") == []
    assert store.current() == "v1" and store.versions() == ["v1"]
    assert store.get(int(ids[0])) == ("v1", _expected(ids[:1], 1)[0])
    with pytest.raises(VersionStateError, match="current"):
        store.discard("v1")
    store.begin_version("v2", FULL, 16)  # the id is free again
    # stray keys of a version whose meta is gone are swept by prefix
    client = redis.Redis.from_url(redis_url)
    client.hset("strata:v:v9:g:3", b"x", b"y")
    client.close()
    assert store.discard("v9") == 1


def test_incomplete_publish_raises_and_keeps_current(store: SegmentStore) -> None:
    ids = _ids(1000)
    _publish(store, "v1", ids, 1)
    store.begin_version("v2", FULL, 16, expected_users=1000)
    store.write_users("v2", ids[:990], encode(segment_columns(ids[:990], 2), FULL))
    with pytest.raises(IncompleteVersionError, match="990 users, expected 1000"):
        store.publish("v2")
    assert store.current() == "v1" and store.info("v2").status == "writing"  # type: ignore[union-attr]
    assert store.get(int(ids[0]))[0] == "v1"  # type: ignore[index]
    store.write_users("v2", ids[990:], encode(segment_columns(ids[990:], 2), FULL))
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
    # groups sized for Redis 7's default 128-entry listpacks: the tighter, production case
    store.begin_version("v1", FULL, n_groups_for(n), expected_users=n)
    store.write_users("v1", ids, encode(cols, FULL))
    store.publish("v1")
    after = client.info("memory")["used_memory"]
    encodings = {client.object("encoding", store.group_key("v1", g)) for g in range(8)}
    client.close()
    per_user = (after - before) / n
    assert encodings <= {b"listpack", b"ziplist"}
    assert per_user <= 40, f"{per_user:.1f} bytes/user"


def test_loose_encoding_is_caught(store: SegmentStore, redis_url: str, caplog: Any) -> None:
    wide = RecordLayout(
        fields=tuple(FieldSpec(name=f"x{i}", kind=FieldKind.FLOAT32) for i in range(17))
    )
    assert wide.size == 68 > store.compact_limits().max_value_bytes
    with pytest.raises(LooseEncodingError, match="hash-max-listpack-value"):
        store.begin_version("wide", wide, 4)
    with pytest.raises(LooseEncodingError, match="n_groups="):
        store.begin_version("crowded", FULL, 1, expected_users=100_000)
    assert store.info("wide") is None and store.info("crowded") is None
    ids = _ids(50)
    with SegmentStore(redis_url, on_loose_encoding="warn") as lenient:
        with caplog.at_level(logging.WARNING, logger="strata.io.segment_store"):
            lenient.begin_version("wide", wide, 4)
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
    store.begin_version("one", FULL, 128)
    store.write_users("one", one, encode(segment_columns(one, 1), FULL))
    with caplog.at_level(logging.WARNING, logger="strata.io.segment_store"):
        store.publish("one")  # 1 of 128 groups: a warning, not a failure
    assert "1 of 128 groups are not in the compact encoding" in caplog.text
    two = np.concatenate([crowd[0], crowd[1], rest])
    store.begin_version("two", FULL, 128)
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
            assert s.plan_n_groups(1_000_000) == 16384
        with SegmentStore(redis_url) as s:
            assert s.compact_limits().source == "config"
    finally:
        admin.acl_deluser("reader")
        admin.close()


def test_decode_responses_client_is_refused(redis_url: str) -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        SegmentStore(redis.Redis.from_url(redis_url, decode_responses=True))
    assert issubclass(IncompleteVersionError, SegmentStoreError)
