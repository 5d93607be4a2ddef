"""Privacy: audit ids, tombstones, erased rows dropped by every warehouse read and by
compaction, event and snapshot retention (no services)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jobs import cli
from strata.config import ConfigError
from strata.ids import bucket_of, pseudonymise_many
from strata.io.forget import expire_snapshots
from strata.io.snapshots import SnapshotStore
from strata.io.tombstones import ErasureFilter, TombstoneStore
from strata.io.warehouse import Warehouse
from strata.privacy import (
    RetentionConfig,
    audit_id,
    audit_key,
    event_cutoff_ms,
    load_retention_config,
    snapshots_to_delete,
)
from strata.timeutil import DAY_MS

KEY = b"unit-test-key-0123456789"
runner = CliRunner()


def test_audit_id_is_the_documented_keyed_hash_and_stable() -> None:
    akey = audit_key(KEY)
    assert akey == hmac.new(KEY, b"strata-audit-v1", hashlib.sha256).digest()
    uid = 1234567890123
    want = hmac.new(akey, uid.to_bytes(8, "big"), hashlib.sha256).digest()[:16].hex()
    assert audit_id(uid, akey) == want
    ids = np.array([uid, 7, uid], dtype=np.int64)
    many = audit_id(ids, akey)
    assert isinstance(many, np.ndarray) and many.shape == (3,)
    assert list(many) == [want, audit_id(7, akey), want]
    # keyed: another pseudonym key gives other audit ids; never the pseudonym itself
    assert audit_id(uid, audit_key(b"another-key-0123456789")) != want
    assert str(uid) not in want


def _ids(n: int) -> np.ndarray:
    return pseudonymise_many([str(i) for i in range(n)], KEY)


def test_tombstones_are_idempotent_and_hold_no_pseudonym(tmp_path: Path) -> None:
    store = TombstoneStore(str(tmp_path))
    ids = _ids(3)
    first = store.add(ids[:2], key=KEY, n_buckets=8, by="cli", what='{"redis": 2}')
    again = TombstoneStore(str(tmp_path)).add(ids[1:], key=KEY, n_buckets=8, by="admin-key")
    assert first[1] == again[0] and len(set(first + again)) == 3
    entries = TombstoneStore(str(tmp_path)).entries()
    assert entries.num_rows == 3  # the id added twice is there once
    assert entries.column("by").to_pylist() == ["cli", "cli", "admin-key"]
    assert entries.column("bucket").to_pylist() == bucket_of(ids, 8).tolist()
    assert store.buckets() == set(bucket_of(ids, 8).tolist())
    raw = (tmp_path / "privacy" / "tombstones.parquet").read_bytes()
    for uid in ids:  # neither the pseudonym (as bytes or text) nor the raw id is stored
        assert int(uid).to_bytes(8, "little", signed=True) not in raw
        assert str(int(uid)).encode() not in raw


def test_erased_mask_hashes_only_tombstoned_buckets(tmp_path: Path) -> None:
    ids = _ids(400)
    buckets = bucket_of(ids, 8)
    erased = ids[buckets == 3][:2]
    store = TombstoneStore(str(tmp_path))
    store.add(erased, key=KEY, n_buckets=8, by="cli")
    for b in range(8):
        if b == 3:
            continue
        mask = store.erased_mask(b, ids[buckets == b], KEY)
        assert not mask.any()
    assert store.hashed_ids == 0  # no tombstone in those buckets: no hashing at all
    mine = np.concatenate([ids[buckets == 3], ids[buckets == 3]])  # duplicates: hashed once
    mask = store.erased_mask(3, mine, KEY)
    assert store.hashed_ids == int(np.sum(buckets == 3))
    assert set(mine[mask].tolist()) == set(erased.tolist())
    assert int(mask.sum()) == 4


def _events(ids: np.ndarray, per_user: int, t0: int, span_ms: int) -> pa.Table:
    n = len(ids) * per_user
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "user_id": np.repeat(ids, per_user),
            "ts": pa.array(t0 + rng.integers(0, span_ms, n), pa.timestamp("ms", tz="UTC")),
            "event_type": ["order"] * n,
            "amount_cny": rng.random(n) * 100,
        }
    )


def test_reads_drop_erased_users_and_compaction_removes_their_rows(tmp_path: Path) -> None:
    root = str(tmp_path)
    ids = _ids(60)
    wh = Warehouse(root, pseudonym_key=KEY)
    wh.create(4)
    wh.commit(wh.write_partitioned("events", _events(ids, 3, 0, 10**9), "a"), "test")
    wh.commit(wh.write_partitioned("users", pa.table({"user_id": ids}), "u"), "test")
    erased = ids[:2]
    TombstoneStore(root).add(erased, key=KEY, n_buckets=4, by="cli")
    fresh = Warehouse(root, pseudonym_key=KEY)
    for table in ("events", "users"):
        got = fresh.read_table(table, ["user_id"]).column("user_id").to_numpy()
        assert not np.isin(got, erased).any()
        assert set(got.tolist()) == set(ids[2:].tolist())
    # a projection without user_id still drops the erased rows
    b = int(bucket_of(erased[0], 4))
    n_kept = int(np.sum(bucket_of(np.repeat(ids[2:], 3), 4) == b))
    assert fresh.read_bucket("events", b, ["amount_cny"]).num_rows == n_kept
    # the raw files still hold them until compaction rewrites the buckets
    raw = Warehouse(root, drop_erased=False).read_table("events", ["user_id"])
    assert np.isin(raw.column("user_id").to_numpy(), erased).any()
    wh2 = Warehouse(root, pseudonym_key=KEY)
    for t in ("events", "users"):
        for bucket in wh2.buckets(t):
            wh2.compact_bucket(t, bucket)
    for path in (tmp_path / "warehouse").rglob("*.parquet"):
        got = pq.read_table(path).column("user_id").to_numpy()
        assert not np.isin(got, erased).any(), path
    # a second compaction has nothing left to drop
    wh3 = Warehouse(root, pseudonym_key=KEY)
    assert all(wh3.compact_bucket("events", b) is None for b in wh3.buckets("events"))


def test_compaction_drops_events_past_retention(tmp_path: Path) -> None:
    root = str(tmp_path)
    ids = _ids(20)
    wh = Warehouse(root, pseudonym_key=KEY)
    wh.create(2)
    wh.commit(wh.write_partitioned("events", _events(ids, 10, 0, 100 * DAY_MS), "a"), "test")
    for b in wh.buckets("events"):
        wh.compact_bucket("events", b)  # sorted now: retention must still rewrite it
    cutoff = 50 * DAY_MS
    assert all(wh.needs_compaction("events", b, cutoff) for b in wh.buckets("events"))
    for b in wh.buckets("events"):
        wh.compact_bucket("events", b, cutoff)
    ts = Warehouse(root).read_table("events", ["ts"]).column("ts").cast(pa.int64()).to_numpy()
    assert ts.min() >= cutoff and 0 < len(ts) < 200
    assert not any(wh.needs_compaction("events", b, cutoff) for b in wh.buckets("events"))


def test_retention_config_and_decisions(tmp_path: Path) -> None:
    assert RetentionConfig().model_dump() == load_retention_config().model_dump()
    cfg = RetentionConfig(events_days=10, snapshots_keep=2)
    assert event_cutoff_ms(cfg, 30 * DAY_MS) == 20 * DAY_MS
    assert event_cutoff_ms(RetentionConfig(events_days=None), 5) is None
    assert event_cutoff_ms(cfg, None) is None
    assert snapshots_to_delete(cfg, ["a", "b", "c", "d"]) == ["a", "b"]
    assert snapshots_to_delete(cfg, ["a"]) == []
    assert snapshots_to_delete(RetentionConfig(snapshots_keep=None), ["a", "b"]) == []
    (tmp_path / "retention.yaml").write_text("events_day: 3\n")
    with pytest.raises(ConfigError, match="events_day"):
        load_retention_config(tmp_path)


def test_snapshot_retention_and_erasure_rewrite(tmp_path: Path) -> None:
    root = str(tmp_path)
    store = SnapshotStore(root)
    ids = _ids(40)
    buckets = bucket_of(ids, 4)
    for i, version in enumerate(["v1", "v2", "v3"]):
        for b in range(4):
            mine = ids[buckets == b]
            table = pa.table({"user_id": mine, "tier": ["gold"] * len(mine)})
            store.write_bucket(version, b, 4, table)
        store.write_manifest(
            version,
            {
                "as_of_ms": i,
                "inputs": {"n_buckets": 4},
                "outputs": {"users": 40, "tiers": {"gold": 40}},
            },
        )
    assert expire_snapshots(root, RetentionConfig(snapshots_keep=2)) == ["v1"]
    assert store.versions() == ["v2", "v3"]
    TombstoneStore(root).add(ids[:3], key=KEY, n_buckets=4, by="cli")
    erasure = ErasureFilter(root, KEY)
    assert store.drop_erased("v3", erasure, 4) == 3
    assert store.drop_erased("v3", erasure, 4) == 0
    left = store.read("v3").column("user_id").to_numpy()
    assert set(left.tolist()) == set(ids[3:].tolist())
    m = store.manifest("v3")
    assert (
        m["outputs"] == {"users": 37, "tiers": {"gold": 37}} and m["erasure"]["rows_removed"] == 3
    )


def test_compact_command_reports_and_applies_retention(tmp_path: Path) -> None:
    root = tmp_path / "data"
    wh = Warehouse(str(root), pseudonym_key=KEY)
    wh.create(2)
    ids = _ids(10)
    wh.commit(wh.write_partitioned("events", _events(ids, 40, 0, 500 * DAY_MS), "a"), "test")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "retention.yaml").write_text("events_days: 400\nsnapshots_keep: 1\n")
    result = runner.invoke(cli.app, ["compact", "--data", str(root), "--config-dir", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "events removed" in result.output
    # retention counts back from the newest event, not from today: 1970 data is not wiped
    after = Warehouse(str(root))
    ts = after.read_table("events", ["ts"]).column("ts").cast(pa.int64()).to_numpy()
    newest = after.newest_ms()
    assert newest is not None and ts.max() == newest
    assert ts.min() >= newest - 400 * DAY_MS and 0 < len(ts) < 400


def test_kept_training_shards_and_truth_lose_erased_users(tmp_path: Path) -> None:
    from strata.io.forget import drop_erased_training_shards, drop_erased_truth

    root = str(tmp_path)
    ids = _ids(30)
    shard = tmp_path / "models" / "_work" / "v1" / "train" / "bucket=001"
    shard.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": ids, "x": np.arange(30.0)}), shard / "part-0.parquet")
    (tmp_path / "truth").mkdir()
    raws = [str(i) for i in range(30)]
    pq.write_table(
        pa.table({"user_id": ids, "raw_user_id": raws}), tmp_path / "truth" / "users.parquet"
    )
    erasure = ErasureFilter(root, KEY)
    assert drop_erased_training_shards(root, erasure, 4) == 0  # no tombstones: untouched
    TombstoneStore(root).add(ids[:4], key=KEY, n_buckets=4, by="cli")
    assert drop_erased_training_shards(root, erasure, 4) == 4
    assert drop_erased_truth(root, erasure, 4) == 4
    for path in (shard / "part-0.parquet", tmp_path / "truth" / "users.parquet"):
        left = pq.read_table(path).column("user_id").to_numpy()
        assert set(left.tolist()) == set(ids[4:].tolist())
