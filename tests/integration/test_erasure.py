"""Erasure end to end: the segment store's erase (both storage formats, every version), the
real-time keys, and the zero-traces test over every Redis key and value and every Parquet file
after `DELETE /v1/users/{id}`, `strata erase`, `strata compact` and the next recompute."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from jobs import cli, generate
from jobs.recompute import RecomputeJob
from strata.ids import bucket_of
from strata.io.event_log import EventAppender
from strata.io.exposure_log import Exposure, ExposureLog
from strata.io.realtime_store import PartitionReader, RealtimeStore
from strata.io.redis_server import EmbeddedRedis
from strata.io.segment_store import IncompleteVersionError, SegmentStore
from strata.io.tombstones import TombstoneStore
from strata.io.whatif_inputs import load_whatif_inputs
from strata.online.codec import decode_many, encode, n_groups_for
from strata.realtime.batch import EffectBatch
from strata.realtime.keys import WORKER_GROUP, RealtimeKeys, split_tag
from strata.realtime.model import ActionSpec, Firing, Timer, action_key
from strata.realtime.stream_config import load_stream_config
from strata.realtime.wire import partition_of
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from strata.timeutil import parse_as_of
from tests.conftest import TEST_KEY
from tests.support import FULL, segment_columns

pytestmark = pytest.mark.integration


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(2**40, size=n, replace=False).astype(np.int64)


@pytest.fixture
def store(redis_url: str) -> Iterator[SegmentStore]:
    with SegmentStore(redis_url) as s:
        yield s


def _write(store: SegmentStore, version: str, ids: np.ndarray, n_groups: int, **kw: object) -> None:
    store.begin_version(version, FULL, n_groups, **kw)  # type: ignore[arg-type]
    store.write_users(version, ids, encode(segment_columns(ids, 1), FULL))


def test_erase_rewrites_packed_groups_and_hash_versions(store: SegmentStore) -> None:
    ids = _ids(2000)
    records = decode_many(encode(segment_columns(ids, 1), FULL), FULL)
    expected = dict(zip(ids.tolist(), records, strict=True))
    # two buckets of ~1000 users: several full groups each, so erasing from the first group
    # shifts every later entry of the bucket
    _write(store, "old", ids, n_groups_for(len(ids)), storage="hash")
    store.publish("old", expected_users=len(ids))
    _write(store, "new", ids, 2)
    store.publish("new", expected_users=len(ids))
    _write(store, "wip", ids, 2, expected_users=len(ids))
    info = store.info("new")
    assert info is not None and info.chunk_users < 900
    order = np.lexsort((ids, bucket_of(ids, 2)))
    in_bucket0 = ids[order][: int((bucket_of(ids, 2) == 0).sum())]
    gone = np.array([in_bucket0[0], in_bucket0[info.chunk_users + 5], ids[order][-1]])

    assert store.erase(gone) == 9  # 3 users x 3 versions
    assert store.erase(gone) == 0  # idempotent
    rest = ids[~np.isin(ids, gone)]
    for version in ("new", "old"):
        if version == "old":
            store.rollback("old")
        for start in range(0, len(rest), 1000):
            got_version, records = store.get_many(rest[start : start + 1000])
            assert got_version == version
            assert records == [expected[int(u)] for u in rest[start : start + 1000]]
        assert store.get_many(gone)[1] == [None, None, None]
        got = store.info(version)
        assert got is not None and got.n_users == len(rest) and got.users_written == len(rest)
    new = store.info("new")
    assert new is not None and store._verify_packed("new", new) == len(rest)  # publish's checks
    # the version being written: its count is lowered, so the publish with the job's own
    # (now stale) count fails instead of serving the erased users
    with pytest.raises(IncompleteVersionError):
        store.publish("wip", expected_users=len(ids))
    assert store.publish("wip").n_users == len(rest)  # the lowered expected_users

    # a bucket erased to nothing loses its index and groups; the other bucket still answers
    store.rollback("new")
    emptied = ids[bucket_of(ids, 2) == 1]
    assert store.erase(emptied) == 3 * (len(emptied) - 1)
    client = redis.Redis(connection_pool=store._redis.connection_pool)
    assert not list(client.scan_iter(match="strata:v:new:[gi]:1*"))
    survivors = rest[bucket_of(rest, 2) == 0]
    assert store.get_many(survivors[:500])[1] == [expected[int(u)] for u in survivors[:500]]
    assert store.get_many(emptied[:5])[1] == [None] * 5


def test_readers_racing_an_erasure_never_see_a_torn_group(store: SegmentStore) -> None:
    ids = _ids(1500, seed=4)
    _write(store, "v1", ids, 1)  # one bucket of several groups: every erasure shifts entries
    store.publish("v1", expected_users=len(ids))
    records = decode_many(encode(segment_columns(ids, 1), FULL), FULL)
    expected = dict(zip(ids.tolist(), records, strict=True))
    doomed = ids[::30]
    rest = ids[~np.isin(ids, doomed)]
    wrong: list[str] = []
    rounds = [0]
    stop = threading.Event()

    def read() -> None:
        with SegmentStore(redis.Redis(connection_pool=store._redis.connection_pool)) as reader:
            while not stop.is_set():
                for start in range(0, len(rest), 500):
                    got = reader.get_many(rest[start : start + 500])[1]
                    want = [expected[int(u)] for u in rest[start : start + 500]]
                    if got != want:
                        wrong.append(f"batch at {start}")
                rounds[0] += 1

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for uid in doomed.tolist():
            assert store.erase(np.array([uid])) == 1
    finally:
        stop.set()
        thread.join(10)
    assert wrong == [] and rounds[0] >= 3
    assert store.get_many(doomed[:100])[1] == [None] * len(doomed[:100])


# ------------------------------------------------------------------------------ zero traces

END = dt.date(2026, 10, 1)
AS_OF = parse_as_of("2026-10-01")
KEYS = RealtimeKeys("strata")
ADMIN_KEY, ADMIN_REC = new_key("ops", ["admin"])
READ_KEY, READ_REC = new_key("reader", ["segments:read"])
runner = CliRunner()


def _parquet_hits(root: Path, ids: set[int], raws: set[str]) -> list[str]:
    """Every Parquet file column under ``root`` holding one of ``ids`` (int64) or ``raws``."""
    hits = []
    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path, partitioning=None)
        for name, col in zip(table.column_names, table.columns, strict=True):
            if pa.types.is_int64(col.type):
                found = bool(np.isin(col.to_numpy(zero_copy_only=False), list(ids)).any())
            elif pa.types.is_string(col.type) or pa.types.is_dictionary(col.type):
                found = bool(set(col.cast(pa.string()).to_pylist()) & raws)
            else:
                continue
            if found:
                hits.append(f"{path}:{name}")
    return hits


def _needles(uid: int, raw: str) -> list[bytes]:
    return [
        uid.to_bytes(8, "big"),
        uid.to_bytes(8, "little"),
        str(uid).encode(),
        raw.encode(),
    ]


def _redis_dump(client: redis.Redis) -> Iterator[tuple[bytes, bytes]]:
    """(key, every byte string the key holds) for every key: type-aware."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        parts: list[bytes] = [key]
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"hash":
            for f, v in client.hgetall(key).items():
                parts += [f, v]
        elif kind == b"list":
            parts += client.lrange(key, 0, -1)
        elif kind == b"set":
            parts += list(client.smembers(key))
        elif kind == b"zset":
            parts += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            for eid, fields in client.xrange(key):
                parts.append(eid)
                for f, v in fields.items():
                    parts += [f, v]
            for group in client.xinfo_groups(key):
                pending = client.xpending_range(key, group["name"], "-", "+", 10_000)
                parts += [str(p["message_id"]).encode() for p in pending]
        else:
            raise AssertionError(f"unexpected key type {kind!r} of {key!r}")
        yield key, b"\x00".join(parts)


def _redis_hits(client: redis.Redis, needles: list[bytes]) -> list[str]:
    dump = _redis_dump(client)
    return [k.decode("utf-8", "replace") for k, blob in dump if any(n in blob for n in needles)]


def _live_traces(url: str, uid: int) -> None:
    """A live event, its state, overlay, timer, an action (log, outbox, decision, reservation,
    tag), a pending stream entry, a dead letter and a first exposure for ``uid``."""
    cfg = load_stream_config()
    now = int(time.time() * 1000)
    appender = EventAppender(url, "strata", cfg)
    event = {"event_id": f"ev-{now}", "user_id": uid, "event_type": "order",
             "order_id": "O-erase", "amount_cny": 42.0, "ts": now, "received_ms": now}  # fmt: skip
    assert appender.append([event]).accepted == 1
    appender.close()
    store = RealtimeStore(url, "strata", cfg)
    client = store.redis
    p = partition_of(uid, int(client.hget(KEYS.layout, "partitions") or 0))
    consumer = PartitionReader(store, p, WORKER_GROUP, "w-test")
    consumer.ensure_group()
    assert consumer.acquire()
    entries = consumer.read(10, 100)
    assert entries  # now pending for the group (not acked below)
    key = action_key("win_back", uid, "i1")
    firing = Firing(rule="win_back", user_id=uid, instance="i1", key=key, tier="regular",
                    issued_ms=now, day="2026-10-01", trigger={"event_id": event["event_id"]},
                    actions=[ActionSpec("coupon", {"amount_cny": 5})],
                    tag=("hot", now + 86_400_000))  # fmt: skip
    assert store.reserve([firing])
    state = orjson.dumps({"user_id": uid, "orders": 1})
    batch = EffectBatch(
        states={uid: state},
        firings=[firing],
        timers_add=[Timer(now + 3_600_000, "win_back", uid, "i2")],
        overlays={uid: orjson.dumps({"user_id": uid, "version": "x"})},
        overlay_order_ms={uid: now},
        dead=[(b"0-1", orjson.dumps(event), "test")],
    )
    store.commit(p, WORKER_GROUP, consumer.token, batch)
    consumer.release()
    store.close()
    log = ExposureLog(url)
    log.log([Exposure("potential_coupon_value", "control", uid, now)])
    log.close()


def test_erased_users_leave_zero_traces(
    tmp_path: Path, ray_local: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = time.monotonic()
    root = tmp_path / "data"
    monkeypatch.delenv("STRATA_REDIS_URL", raising=False)
    # the data root's embedded Redis, as `strata serve` runs it: jobs publish into it
    with EmbeddedRedis(persist_dir=str(root / "redis")) as server:
        url = server.url
        settings = Settings(data=str(root), pseudonym_key=TEST_KEY, n_buckets=8)
        generate.run(settings, users=200, days=45, seed=3, end=END)
        first = RecomputeJob(settings, AS_OF, actors=2).run()
        second = RecomputeJob(settings, AS_OF + dt.timedelta(days=1), actors=2).run()
        assert first.published and second.published
        truth = pq.read_table(root / "truth" / "users.parquet").to_pylist()
        present = [u for u in truth if SegmentStore(url).get(int(u["user_id"])) is not None][:3]
        (a, b, kept) = [(int(u["user_id"]), str(u["raw_user_id"])) for u in present]
        for uid, _ in (a, b):
            _live_traces(url, uid)
        client = redis.Redis.from_url(url)
        before = _redis_hits(client, _needles(*a))
        rt_names = (split_tag(k[len(KEYS.prefix) :])[1] for k in before if ":v:" not in k)
        kinds = {n.split(":")[0] for n in rt_names} | {"v" for k in before if ":v:" in k}
        assert kinds >= {
            "v", "u", "live", "livers", "tags", "actions", "idem", "reserve", "due",
            "events", "outbox", "exposures", "exposed", "dead",
        }, before  # fmt: skip

        api_settings = settings.model_copy(
            update={"redis_url": url, "api_keys": dump_records([ADMIN_REC, READ_REC])}
        )
        read = {"Authorization": f"Bearer {READ_KEY}"}
        paths = ("segment", "explain", "history", "strategies")
        with TestClient(create_app(api_settings)) as api:
            for raw in (a[1], kept[1]):
                assert api.get(f"/v1/users/{raw}/segment", headers=read).status_code == 200
            assert api.delete(f"/v1/users/{a[1]}", headers=read).status_code == 403
            assert api.delete(f"/v1/users/{a[1]}", headers={
                "Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 204  # fmt: skip
            for path in paths:
                assert api.get(f"/v1/users/{a[1]}/{path}", headers=read).status_code == 404, path
            assert api.get(f"/v1/users/{a[1]}/actions", headers=read).json()["actions"] == []
            dump = (root / "redis" / "dump.rdb").read_bytes()  # the API saved it too
            assert not any(n in dump for n in _needles(*a)) and _needles(*b)[0] in dump
            ids_file = tmp_path / "erase.txt"
            ids_file.write_text(f"\n{b[1]}\n")
            done = runner.invoke(cli.app, ["erase", "--data", str(root), "--from", str(ids_file)])
            assert done.exit_code == 0, done.output
            assert "segment entries" in done.output and "erasure" in done.output
            for path in paths:
                assert api.get(f"/v1/users/{b[1]}/{path}", headers=read).status_code == 404, path
            for path in paths:
                assert api.get(f"/v1/users/{kept[1]}/{path}", headers=read).status_code == 200
            # the unknown id is tombstoned all the same (idempotent, reveals nothing)
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            assert api.delete("/v1/users/nobody-at-all", headers=admin).status_code == 204

        # the audit log: audit ids, by whom, what; never the raw id nor the pseudonym
        tomb = TombstoneStore(str(root)).entries().to_pylist()
        assert sorted(t["by"] for t in tomb) == ["cli", "ops", "ops"]
        by_ops = [json.loads(t["what"]) for t in tomb if t["by"] == "ops"]
        assert any(w["segment_entries"] == 2 and w["state"] == 1 for w in by_ops)
        assert _redis_hits(client, _needles(*a) + _needles(*b)) == []
        # both were exposed once: the arm's count follows the deleted markers
        for part in range(load_stream_config().partitions):  # one count hash per partition
            assert client.hgetall(KEYS.exposed_count("potential_coupon_value", part)) == {}
        # what-if inputs drop them before compaction (they read snapshot Parquet)
        inputs = load_whatif_inputs(str(root), second.version, key=TEST_KEY.encode())
        assert not np.isin(inputs.user_id, [a[0], b[0]]).any() and kept[0] in inputs.user_id
        dump = (root / "redis" / "dump.rdb").read_bytes()  # saved by the erasure
        assert not any(n in dump for n in _needles(*a) + _needles(*b))

        compact = runner.invoke(cli.app, ["compact", "--data", str(root)])
        assert compact.exit_code == 0, compact.output
        third = RecomputeJob(settings, AS_OF + dt.timedelta(days=2), actors=2).run()
        assert third.published and third.users == second.users - 2
        gone, raws = {a[0], b[0]}, {a[1], b[1]}
        assert _parquet_hits(root, gone, raws) == []
        assert _redis_hits(client, _needles(*a) + _needles(*b)) == []
        assert SegmentStore(url).get(kept[0]) is not None  # everyone else still served
        client.close()
    dump = (root / "redis" / "dump.rdb").read_bytes()  # saved at stop
    assert not any(n in dump for n in _needles(*a) + _needles(*b))
    assert _needles(*kept)[0] in dump  # the scan would see a user who is there
    # Redis down: 503 and nothing recorded (a retry does it all)
    with TestClient(create_app(api_settings)) as api:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert api.delete(f"/v1/users/{kept[1]}", headers=admin).status_code == 503
    assert len(TombstoneStore(str(root)).entries()) == 3
    assert time.monotonic() - t0 < 90
