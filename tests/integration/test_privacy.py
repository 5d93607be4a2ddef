"""Erasure on the warehouse side, retention and the access export, end to end: a generated
warehouse, local Ray (2 CPUs) and a real embedded Redis."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from actors.example_shard import bucket_examples
from jobs import cli, generate
from jobs.recompute import RecomputeJob
from strata.features import load_feature_config
from strata.ids import bucket_of
from strata.io.snapshots import SnapshotStore
from strata.io.tombstones import TombstoneStore
from strata.io.warehouse import Warehouse
from strata.settings import Settings
from strata.timeutil import DAY_MS, parse_as_of
from strata.training import cutoffs_for, load_train_config
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

END = dt.date(2026, 10, 1)
AS_OF = parse_as_of("2026-10-01")
runner = CliRunner()


def _scan(root: Path, ids: set[int], raws: set[str]) -> list[str]:
    """Every Parquet file under ``root`` that holds one of ``ids`` in an int64 column or one
    of ``raws`` in a string column."""
    hits = []
    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path, partitioning=None)
        for name, col in zip(table.column_names, table.columns, strict=True):
            if pa.types.is_int64(col.type):
                found = np.isin(col.to_numpy(zero_copy_only=False), list(ids)).any()
            elif pa.types.is_string(col.type) or pa.types.is_dictionary(col.type):
                found = bool(set(col.cast(pa.string()).to_pylist()) & raws)
            else:
                continue
            if found:
                hits.append(f"{path}:{name}")
    return hits


def _export(data: str, raw: str, out: Path) -> dict[str, Any]:
    result = runner.invoke(
        cli.app, ["export", "--data", data, "--user", raw, "--json-out", str(out)]
    )
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def test_erase_compact_recompute_leaves_no_trace_and_export(
    tmp_path: Path, ray_local: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    settings = Settings(data=str(root), pseudonym_key=TEST_KEY, n_buckets=8, redis_url=redis_url)
    generate.run(settings, users=300, days=60, seed=11, end=END)
    first = RecomputeJob(settings, AS_OF, actors=2).run()
    assert first.published

    # users with events: the truth file maps raw ids to pseudonyms
    truth = pq.read_table(root / "truth" / "users.parquet", columns=["user_id", "raw_user_id"])
    events = Warehouse(str(root)).read_table("events", ["user_id"]).column("user_id")
    active = pc.is_in(truth.column("user_id"), value_set=pc.unique(events))
    users = truth.filter(active).slice(0, 3).to_pylist()
    erased = {int(u["user_id"]) for u in users[:2]}
    erased_raw = {str(u["raw_user_id"]) for u in users[:2]}
    kept = users[2]

    # export of a real user: events, snapshot row, Redis record
    doc = _export(str(root), kept["raw_user_id"], tmp_path / "kept.json")
    assert doc["pseudonym"] == kept["user_id"] and not doc["empty"] and not doc["erased"]
    assert doc["warehouse"]["events"] and doc["warehouse"]["users"]
    assert len(doc["snapshots"][first.version]) == 1
    assert doc["redis"]["segment"]["version"] == first.version

    before = Warehouse(str(root)).read_table("events")
    TombstoneStore(str(root)).add(
        np.array(sorted(erased)), key=TEST_KEY.encode(), n_buckets=8, by="cli"
    )
    assert _scan(root, erased, erased_raw)  # still in the files until compaction
    # ... but training examples (a read of their bucket) no longer see them
    cfg, fc = load_train_config(), load_feature_config()
    cutoffs = cutoffs_for(int(AS_OF.timestamp() * 1000), cfg, 14)
    bucket = int(bucket_of(next(iter(erased)), 8))
    out = bucket_examples(str(root), str(tmp_path / "ex"), bucket, cutoffs, 14 * DAY_MS, fc, cfg)
    assert out["files"]
    for path in out["files"].values():
        shard_ids = pq.read_table(path, columns=["user_id"]).column("user_id").to_numpy()
        assert len(shard_ids) and not np.isin(shard_ids, list(erased)).any()
    compact = runner.invoke(cli.app, ["compact", "--data", str(root)])
    assert compact.exit_code == 0, compact.output
    second = RecomputeJob(settings, AS_OF, actors=2).run()

    assert _scan(root, erased, erased_raw) == []  # every Parquet file under the data root
    for version in (first.version, second.version):
        ids = SnapshotStore(str(root)).read(version).column("user_id").to_numpy()
        assert not np.isin(ids, list(erased)).any()
    assert second.users == first.users - 2
    # everyone else's rows are untouched
    mask = pc.invert(pc.is_in(before.column("user_id"), value_set=pa.array(sorted(erased))))
    keys = [("user_id", "ascending"), ("ts", "ascending"), ("event_type", "ascending")]
    assert (
        Warehouse(str(root))
        .read_table("events")
        .sort_by(keys)
        .equals(before.filter(mask).sort_by(keys))
    )

    gone = _export(str(root), next(iter(erased_raw)), tmp_path / "gone.json")
    assert gone["erased"] and gone["empty"]
    assert not any(gone["warehouse"].values()) and not any(gone["snapshots"].values())
    assert gone["redis"]["segment"] is None

    # Redis unreachable: the warehouse part is still exported, and the document says so
    monkeypatch.setenv("STRATA_REDIS_URL", "redis://127.0.0.1:1")
    offline = runner.invoke(cli.app, ["export", "--data", str(root), "--user", kept["raw_user_id"]])
    assert offline.exit_code == 0, offline.output
    assert "unreachable" in offline.output and '"events"' in offline.output

    # retention: events older than 30 days before the newest, one snapshot kept
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "retention.yaml").write_text("events_days: 30\nsnapshots_keep: 1\n")
    res = runner.invoke(cli.app, ["compact", "--data", str(root), "--config-dir", str(cfg)])
    assert res.exit_code == 0, res.output
    assert SnapshotStore(str(root)).versions() == [second.version]
    wh = Warehouse(str(root))
    ts = wh.read_table("events", ["ts"]).column("ts").cast(pa.int64()).to_numpy()
    newest = wh.newest_ms()
    assert newest is not None and ts.min() >= newest - 30 * DAY_MS
    assert wh.summary()["events"]["rows"] < before.num_rows


def test_export_of_an_unknown_data_root_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["export", "--data", str(tmp_path / "nope"), "--user", "1"])
    assert result.exit_code == 2
    assert "no warehouse" in result.output


def test_the_live_users_index_expires_with_the_overlays(redis_url: str) -> None:
    import redis

    from strata.io.realtime_store import RealtimeStore
    from strata.realtime.batch import EffectBatch
    from strata.realtime.stream_config import StreamConfig

    store = RealtimeStore(redis_url, "strata", StreamConfig(live_ttl_days=7))
    client = redis.Redis.from_url(redis_url)
    client.set(store.keys.lease(0), "me")
    t0 = 1_000 * DAY_MS
    store.commit(0, "g", "me", EffectBatch(overlays={1: b"{}"}, overlay_order_ms={1: t0}))
    later = t0 + 8 * DAY_MS  # user 1's overlay (7 days) is gone by then: so is its index entry
    store.commit(0, "g", "me", EffectBatch(overlays={2: b"{}"}, overlay_order_ms={2: later}))
    assert store.live_users_since(0, 0) == [2]
    assert client.ttl(store.keys.live(2)) > 6 * 86_400
    client.close()
    store.close()
