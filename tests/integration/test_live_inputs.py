"""The live tier refresh's inputs from a real recompute (local Ray): the snapshot's stored RFM
partials and its rows read back per bucket through SnapshotFeatures."""

from __future__ import annotations

import datetime as dt
import posixpath
from typing import Any

import numpy as np
import pytest

from jobs import generate
from jobs.recompute import RecomputeJob
from strata.features import rfm_partials
from strata.ids import bucket_of
from strata.io.snapshot_features import SnapshotFeatures
from strata.io.snapshots import PARTIALS, SnapshotStore
from strata.io.warehouse import WarehouseError
from strata.realtime.live import LIVE_FEATURE_COLUMNS, LiveScorer
from strata.realtime.model import UserState
from strata.settings import Settings
from strata.tiering.scoring import RecomputeConfig
from strata.timeutil import HOUR_MS, local_day, parse_as_of, to_epoch_ms
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

AS_OF = parse_as_of("2026-10-01")
N_BUCKETS = 8


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> tuple[str, str]:
    """(data root, version) of one recompute of a tiny generated warehouse."""
    root = str(tmp_path_factory.mktemp("live") / "data")
    settings = Settings(data=root, pseudonym_key=TEST_KEY, n_buckets=N_BUCKETS)
    generate.run(settings, users=400, days=60, seed=11, end=dt.date(2026, 10, 1))
    result = RecomputeJob(settings, AS_OF, actors=2, publish=False).run()
    return root, result.version


def test_the_recompute_stores_its_merged_partials(snapshot: tuple[str, str]) -> None:
    root, version = snapshot
    store = SnapshotStore(root)
    stored = store.read_partials(version)
    # merging the shards' partials is exact: the same as the partials of the whole snapshot
    whole = rfm_partials(store.read(version), RecomputeConfig.load().tiers.measures)
    assert stored.n_users == whole.n_users == store.manifest(version)["outputs"]["users"]
    for a, b in (
        (stored.recency, whole.recency),
        (stored.frequency, whole.frequency),
        (stored.monetary, whole.monetary),
    ):
        assert np.array_equal(a.counts, b.counts)
    assert store.manifest(version)["inputs"]["n_buckets"] == N_BUCKETS


def test_rows_are_the_snapshot_rows(snapshot: tuple[str, str]) -> None:
    root, version = snapshot
    table = SnapshotStore(root).read(version)
    ids = table.column("user_id").to_pylist()
    sample = ids[::17]
    feats = SnapshotFeatures(root, version)
    assert feats.as_of_ms == to_epoch_ms(AS_OF) and feats.version == version
    assert feats.with_predictions is False  # no trained model
    rows = feats.rows([*sample, 42, sample[0]])  # an unknown user, a repeat
    assert sorted(rows) == sorted(sample)
    by_id = {r["user_id"]: r for r in table.select(list(LIVE_FEATURE_COLUMNS)).to_pylist()}
    for uid in sample:
        want = by_id[uid]
        got = rows[uid]
        assert set(got) == set(LIVE_FEATURE_COLUMNS)
        for key in ("first_order_ts", "last_order_ts", "signup_ts"):
            t = want[key]
            assert got[key] == (None if t is None else int(t.timestamp() * 1000)), key
        for key in set(LIVE_FEATURE_COLUMNS) - {"first_order_ts", "last_order_ts", "signup_ts"}:
            assert got[key] == want[key], key
    assert feats.row(42) is None and feats.row(sample[1]) == rows[sample[1]]


def test_the_bucket_cache_is_bounded(snapshot: tuple[str, str]) -> None:
    root, version = snapshot
    ids = SnapshotStore(root).read(version, ["user_id"]).column("user_id").to_pylist()
    unbounded = SnapshotFeatures(root, version)
    unbounded.rows(ids)
    unbounded.rows(ids)
    assert unbounded.reads == N_BUCKETS  # every bucket read once, then cached
    tiny = SnapshotFeatures(root, version, max_cache_bytes=1)  # one bucket kept at most
    buckets = bucket_of(np.asarray(ids), N_BUCKETS)
    a = ids[0]
    b = ids[int(np.flatnonzero(buckets != buckets[0])[0])]
    tiny.rows([a])
    tiny.rows([a])
    assert tiny.reads == 1  # a hit
    tiny.rows([b])
    tiny.rows([a])
    assert tiny.reads == 3  # b's bucket pushed a's out
    assert tiny.rows(ids) == unbounded.rows(ids)
    assert 0 < tiny.cached_bytes < unbounded.cached_bytes


def test_live_scores_of_the_snapshot_users_reproduce_it(snapshot: tuple[str, str]) -> None:
    root, version = snapshot
    feats = SnapshotFeatures(root, version)
    scorer = LiveScorer.for_snapshot(RecomputeConfig.load(), feats)
    table = SnapshotStore(root).read(version, ["user_id", "tier", "lifecycle_stage", "rfm_score"])
    ids = table.column("user_id").to_pylist()
    rows = feats.rows(ids)
    # no live orders, evaluated at the as-of: exactly the recompute's answer for everyone
    got = scorer.overlays([UserState(u) for u in ids], [rows[u] for u in ids], feats.as_of_ms)
    want = table.to_pylist()
    assert [(o["tier"], o["lifecycle_stage"], o["rfm_score"]) for o in got] == [
        (w["tier"], w["lifecycle_stage"], w["rfm_score"]) for w in want
    ]
    # one live order an hour after the as-of: recency 0, one more order in 90 days
    u = next(w["user_id"] for w in want if w["lifecycle_stage"] == "churned")
    ts = feats.as_of_ms + HOUR_MS
    state = UserState(u, last_order_ms=ts, first_order_ms=ts, last_event_ms=ts)
    state.orders[int(local_day(ts))] = [1, 80.0]
    o = scorer.overlay(u, state, rows[u], ts + 60_000)
    assert o["recency_days"] == 0 and o["frequency_90d"] == (rows[u]["frequency_90d"] or 0) + 1
    assert o["lifecycle_stage"] != "churned" and o["version"] == version


def test_a_snapshot_without_partials_or_manifest_is_a_clear_error(
    snapshot: tuple[str, str], tmp_path: Any
) -> None:
    root, version = snapshot
    with pytest.raises(WarehouseError, match="missing or incomplete"):
        SnapshotFeatures(root, "v-none")
    store = SnapshotStore(root)
    store.write_manifest("v-old", store.manifest(version))
    try:
        with pytest.raises(WarehouseError, match="no RFM partials"):
            SnapshotFeatures(root, "v-old")
        with store.fs.open_output_stream(posixpath.join(store.path("v-old"), PARTIALS)) as f:
            f.write(b'{"n_users": 1}')
        with pytest.raises(WarehouseError, match="bad RFM partials"):
            SnapshotFeatures(root, "v-old")
    finally:
        store.delete("v-old")
