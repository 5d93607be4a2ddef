"""FeatureShard as a plain class (no Ray): the actor's work is the strata/ functions over its
buckets, so it runs and is checked without a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from actors.feature_shard import SCRATCH_PREFIX, FeatureShard
from strata.features import compute_features, load_feature_config
from strata.ids import pseudonymise_many
from strata.io.warehouse import Warehouse
from strata.tiering.scoring import RecomputeConfig
from strata.timeutil import DAY_MS, local_midnight_ms

KEY = b"unit-test-key-0123456789"


def _warehouse(root: Path, as_of_ms: int) -> Warehouse:
    rng = np.random.default_rng(1)
    ids = pseudonymise_many([str(10_000_001 + i) for i in range(60)], KEY)
    per = rng.integers(1, 8, len(ids))
    n = int(per.sum())
    events = pa.table(
        {
            "user_id": np.repeat(ids, per),
            "ts": pa.array(as_of_ms - rng.integers(1, 200 * DAY_MS, n), pa.timestamp("ms", "UTC")),
            "event_type": ["order"] * n,
            "amount_cny": np.round(rng.random(n) * 100, 2),
        }
    )
    wh = Warehouse(str(root))
    wh.create(4)
    wh.commit(wh.write_partitioned("events", events, "w1"), "test")
    return Warehouse(str(root))


def test_feature_shard_runs_without_ray(tmp_path: Path) -> None:
    import datetime as dt

    as_of_ms = local_midnight_ms(dt.date(2026, 10, 1))
    wh = _warehouse(tmp_path / "data", as_of_ms)
    config = RecomputeConfig.load()
    shard = FeatureShard(str(tmp_path / "data"), wh.buckets(), as_of_ms, config)

    out = shard.features()
    assert out["users"] == 60
    assert out["partials"].n_users == 60
    assert out["partials"].monetary.total == 60  # every user in the merged histogram
    # the actor's features are exactly the pure function over each bucket
    fconfig = load_feature_config()
    for b, table in shard._compute().items():
        events = wh.read_bucket("events", b)
        assert table.equals(compute_features(events, None, as_of_ms, fconfig))

    version = "v-unit"
    scored = shard.score(out["partials"], version, None)
    assert sum(sum(t.values()) for t in scored["tiers"]) == 60
    snapshot = shard.snapshots.read(version)
    assert snapshot.num_rows == 60 and "tier" in snapshot.column_names
    shard.close()


def test_pass_one_features_are_spilled_not_held(tmp_path: Path) -> None:
    """Between passes the shard keeps its features as scratch files (one bucket in memory at a
    time); scoring from them equals scoring from freshly computed features, and close()
    removes the files."""
    import datetime as dt

    as_of_ms = local_midnight_ms(dt.date(2026, 10, 1))
    wh = _warehouse(tmp_path / "data", as_of_ms)
    config = RecomputeConfig.load()
    shard = FeatureShard(str(tmp_path / "data"), wh.buckets(), as_of_ms, config)
    out = shard.features()
    assert shard._spilled is not None and sorted(shard._spilled) == sorted(wh.buckets())
    scratch = shard._scratch
    assert scratch is not None and Path(scratch).is_dir()
    assert not hasattr(shard, "_features")  # no table of the whole shard is kept
    shard.score(out["partials"], "v-spilled", None)

    fresh = FeatureShard(str(tmp_path / "data"), wh.buckets(), as_of_ms, config)
    fresh.score(out["partials"], "v-fresh", None)  # computes in the pass, no pass 1
    assert shard.snapshots.read("v-spilled").equals(fresh.snapshots.read("v-fresh"))

    shard.close()
    fresh.close()
    assert shard._spilled is None and not Path(scratch).exists()
    # a scratch folder of a process that is gone (a killed shard) is swept by the next shard
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{dead.pid}-test"
    stale.mkdir()
    (stale / "0.arrow").touch()
    mine = Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{os.getpid()}-test"
    mine.mkdir()
    # after close the next pass recomputes from the warehouse
    again = shard.features()
    assert again["users"] == out["users"] == 60
    assert not stale.exists() and mine.exists()  # a live process's folder is kept
    mine.rmdir()
    shard.close()
