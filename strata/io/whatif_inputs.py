"""What a what-if simulation reads from disk: one snapshot's stored scores and the configs.

:func:`load_whatif_inputs` reads only the columns :class:`strata.reports.whatif.WhatIfInputs`
needs from every bucket file of a snapshot (the newest complete one by default): the stored
tier, ``rfm_r/f/m``, ``rfm_score``, lifecycle stage, ``ltv_cny``, ``churn_p`` (when the
snapshot was scored with a model), the previous snapshot's tier (``previous_tier``, which the
hysteresis compares against) and the strategies' eligibility columns, plus configs/tiers.yaml
and configs/strategies.yaml. Nothing is written. Erased (tombstoned) users' rows are dropped,
as every warehouse read drops them, before `strata compact` rewrites the snapshot.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from strata.config import ConfigError, config_path
from strata.io.snapshots import SnapshotStore
from strata.io.tombstones import ErasureFilter
from strata.io.warehouse import Warehouse, WarehouseError
from strata.reports.whatif import ELIGIBILITY_COLUMNS, WhatIfInputs
from strata.strategies.config import StrategiesConfig, load_strategies
from strata.tiering.scoring import RecomputeConfig
from strata.tiering.tiers import TierRules, load_tier_rules

__all__ = ["REQUIRED_COLUMNS", "latest_snapshot", "load_whatif_inputs"]

REQUIRED_COLUMNS: tuple[str, ...] = (
    "user_id",
    "tier",
    "rfm_r",
    "rfm_f",
    "rfm_m",
    "rfm_score",
    "lifecycle_stage",
    "ltv_cny",
    "previous_tier",
)


def latest_snapshot(store: SnapshotStore) -> str | None:
    """The complete snapshot with the latest as-of (ties: the newer version), else None."""
    best: tuple[int, str] | None = None
    for v in store.versions():
        at = int(store.manifest(v).get("as_of_ms", 0))
        if best is None or (at, v) > best:
            best = (at, v)
    return best[1] if best else None


def _floats(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks().cast(pa.float64())
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def _strings(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks().cast(pa.string())


def load_whatif_inputs(
    data_root: str,
    version: str | None = None,
    config_dir: str | Path | None = None,
    *,
    rules: TierRules | None = None,
    strategies: StrategiesConfig | None = None,
    key: bytes | None = None,
) -> WhatIfInputs:
    """Read one snapshot for :func:`strata.reports.whatif.simulate`.

    Args:
        data_root: data root (local path or any pyarrow filesystem URI).
        version: snapshot version; None: the latest (:func:`latest_snapshot`).
        config_dir: folder of tiers.yaml and strategies.yaml (default: the shipped configs).
        rules, strategies: already loaded tier settings and strategies (the API's) instead of
            those of ``config_dir``.
        key: the pseudonymisation key (drops erased users); None loads it when needed.

    Raises:
        WarehouseError: no complete snapshot, the version is missing, or the snapshot lacks
            the scored columns.
        ConfigError: tiers.yaml or strategies.yaml is invalid.
    """
    store = SnapshotStore(data_root)
    if version is None:
        version = latest_snapshot(store)
        if version is None:
            raise WarehouseError(
                f"no snapshot under {store.root}: run strata recompute --data {data_root} first"
            )
    manifest = store.manifest(version)
    if rules is None:
        rules = load_tier_rules(config_dir)
    if strategies is None:
        strategies = (
            load_strategies(config_dir)
            if config_path("strategies", config_dir).exists()
            else StrategiesConfig()
        )
    try:
        matches: bool | None = RecomputeConfig.load(config_dir).digest() == manifest.get(
            "config_sha256"
        )
    except ConfigError:
        matches = None
    base = posixpath.join(store.path(version), "features")
    dataset = pads.dataset(base, filesystem=store.fs, format="parquet")
    have = set(dataset.schema.names)
    missing = [c for c in REQUIRED_COLUMNS if c not in have]
    if missing:
        raise WarehouseError(
            f"snapshot {version} lacks the scored columns {missing}: recompute it with this "
            "version of strata"
        )
    with_model = bool(manifest.get("predictions", {}).get("model_version")) and "churn_p" in have
    wanted = [
        *REQUIRED_COLUMNS,
        *(["churn_p"] if with_model else []),
        *(c for c in ELIGIBILITY_COLUMNS if c in have),
    ]
    table = dataset.to_table(columns=wanted)
    erasure = ErasureFilter(data_root, key)
    if erasure.buckets():
        table = erasure.apply_any(table, Warehouse(data_root).n_buckets)
    return WhatIfInputs(
        version=version,
        as_of=manifest.get("as_of"),
        rules=rules,
        strategies=strategies,
        user_id=np.asarray(table.column("user_id").to_numpy(), dtype=np.int64),
        tier=_strings(table, "tier"),
        rfm_r=_floats(table, "rfm_r"),
        rfm_f=_floats(table, "rfm_f"),
        rfm_m=_floats(table, "rfm_m"),
        rfm_score=_floats(table, "rfm_score"),
        lifecycle_stage=_strings(table, "lifecycle_stage"),
        ltv_cny=_floats(table, "ltv_cny"),
        previous_tier=_strings(table, "previous_tier"),
        churn_p=_floats(table, "churn_p") if with_model else None,
        columns={c: table.column(c).combine_chunks() for c in ELIGIBILITY_COLUMNS if c in have},
        config_matches_snapshot=matches,
    )
