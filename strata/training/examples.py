"""Training examples: model features, cutoffs, the user split, and the mergeable example pass.

Leakage rule: the features of a training example are computed as of a past **cutoff** with the
very function the recompute job uses (:func:`strata.features.compute_features`, which ignores
every event with ``ts >= cutoff``), and its labels come only from the window after it
(:func:`strata.training.labels.labels`). Several past cutoffs can be stacked
(:func:`cutoffs_for`), each obeying the same rule. Users go to train / validation / test by a
stable hash of their id (:func:`split_of`). :func:`model_features` turns a features table into
the numeric float32 model inputs (:data:`MODEL_FEATURES`), the same function at training and at
scoring time; :func:`feature_matrix` makes the xgboost matrix. One bucket's pass merges into
:class:`ExamplePartials`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from strata.features import (
    DAYTYPE_LABELS,
    FEATURE_COLUMNS,
    SLOTS,
    FeatureConfig,
    compute_features,
    int64_values,
)
from strata.schema import (
    AGE_BANDS,
    CATEGORIES,
    CHANNELS,
    DEVICES,
    GENDERS,
)
from strata.timeutil import DAY_MS, local_day
from strata.training._arrow import F32, F64, f32_array, f64_of
from strata.training.bgnbd import bgnbd_patterns, merge_patterns
from strata.training.labels import labels
from strata.training.params import TrainConfig
from strata.training.targets import LABEL_COLUMNS

__all__ = [
    "BASELINE_COLUMNS",
    "BEHAVIOUR_COLUMNS",
    "BGNBD_FEATURES",
    "CATEGORICAL_FEATURES",
    "DERIVED_FEATURES",
    "EXAMPLES_SCHEMA",
    "KEY_COLUMNS",
    "MODEL_FEATURES",
    "MODEL_FEATURES_SCHEMA",
    "SPLITS",
    "ExamplePartials",
    "cutoff_iso",
    "cutoffs_for",
    "data_hash",
    "feature_matrix",
    "holdout_by_time",
    "model_features",
    "select_features",
    "split_of",
    "stacked_examples",
    "train_patterns",
    "training_examples",
    "valid_counts",
]

#: Split codes of ``training_examples`` (0, 1, 2) and their folder names.
SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: Identity columns of an example (kept in the shards; never model inputs).
KEY_COLUMNS: tuple[str, ...] = ("user_id", "cutoff_ms", "split")

#: compute_features columns used as they are (float32).
_NUMERIC_FEATURES: tuple[str, ...] = (
    "recency_days",
    "frequency_30d",
    "frequency_90d",
    "frequency_180d",
    "monetary_30d",
    "monetary_90d",
    "monetary_180d",
    "frequency_prev_30d",
    "monetary_prev_30d",
    "frequency_prev_90d",
    "monetary_prev_90d",
    "orders_total",
    "spend_total_cny",
    "aov_cny",
    "btyd_frequency",
    "btyd_recency",
    "btyd_t",
    "btyd_monetary_value",
    *(f"share_{c}" for c in CATEGORIES),
    "coupon_order_share",
    "avg_discount_depth",
    "coupon_only_share",
    "discount_sensitivity",
    "weekend_share",
    *(f"slot_{s}" for s in SLOTS),
    "views",
    "searches",
    "add_to_carts",
    "cart_removals",
    "favourites",
    "cart_to_order_rate",
    "shares",
    "coupon_claims",
    "coupon_uses",
    "reviews",
    "mean_rating",
    "negative_reviews",
    "service_contacts",
    "community_posts",
    "visits",
    "active_days_30d",
    "gap_std_days",
)
#: Label columns coded as the index of the value in a fixed list (float32); a value outside
#: the list, a null, and price_sensitivity "unknown" (no price information) are null.
CATEGORICAL_FEATURES: dict[str, tuple[str, ...]] = {
    "price_sensitivity": ("coupon_sensitive", "quality_sensitive", "price_insensitive"),
    "top_category": CATEGORIES,
    "active_slot": SLOTS,
    "active_daytype": DAYTYPE_LABELS,
    "channel": CHANNELS,
    "device": DEVICES,
    "age_band": AGE_BANDS,
    "gender": GENDERS,
}
#: Derived features (see :func:`model_features`).
DERIVED_FEATURES: tuple[str, ...] = (
    "tenure_days",
    "interpurchase_days",
    "overdue_ratio",
    "gap_cv",
    "order_trend_30d",
    "order_trend_90d",
)
#: BG/NBD features (:func:`add_bgnbd_features`): fitted on the train users at each cutoff,
#: null in :func:`model_features` until parameters are applied.
BGNBD_FEATURES: tuple[str, ...] = ("bgnbd_p_alive", "bgnbd_expected", "bgnbd_p_churn")
#: Candidate numeric model inputs, in the order of :data:`MODEL_FEATURES_SCHEMA`.
MODEL_FEATURES: tuple[str, ...] = (
    *_NUMERIC_FEATURES,
    *CATEGORICAL_FEATURES,
    *DERIVED_FEATURES,
    *BGNBD_FEATURES,
)
#: Interaction counts that only a source logging behaviour events can fill: null in a table
#: where no user has any of them (an order-only log), see :func:`model_features`.
BEHAVIOUR_COLUMNS: tuple[str, ...] = (
    "views",
    "searches",
    "add_to_carts",
    "cart_removals",
    "favourites",
    "shares",
    "coupon_claims",
    "coupon_uses",
    "reviews",
    "negative_reviews",
    "service_contacts",
    "community_posts",
    "visits",
)
#: Columns the baselines read, kept as float64 in training examples (also model features).
BASELINE_COLUMNS: tuple[str, ...] = ("recency_days", "btyd_frequency", "btyd_recency", "btyd_t")

MODEL_FEATURES_SCHEMA = pa.schema(
    [pa.field("user_id", pa.int64(), nullable=False)]
    + [pa.field(name, F32) for name in MODEL_FEATURES],
    metadata={"strata.table": "model_features"},
)
EXAMPLES_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("cutoff_ms", pa.int64(), nullable=False),
        pa.field("split", pa.int8(), nullable=False),
        *(pa.field(n, F64 if n in BASELINE_COLUMNS else F32) for n in MODEL_FEATURES),
        pa.field("label_churn", pa.int8(), nullable=False),
        pa.field("label_repurchase", pa.int8(), nullable=False),
        pa.field("label_spend", F64),
    ],
    metadata={"strata.table": "training_examples"},
)


# =========================================================================== cutoffs and split
def cutoffs_for(as_of_ms: int, cfg: TrainConfig, horizon_days: int | None = None) -> list[int]:
    """Cutoffs of the stacked training windows, newest first.

    Cutoff ``i`` is ``as_of - horizon - i * cutoff_step_days`` (days of 24 h); its label window
    is ``[cutoff, cutoff + horizon)``, so the newest window ends exactly at ``as_of``. With
    as-of at local midnight every cutoff is a local midnight too.

    Args:
        as_of_ms: the as-of instant of the training run (UTC epoch ms; exclusive).
        cfg: training config (``cutoffs``, ``cutoff_step_days``, ``horizon_days``).
        horizon_days: label window length overriding ``cfg.horizon_days``.
    """
    h = cfg.horizon_days if horizon_days is None else int(horizon_days)
    if h < 1:
        raise ValueError(f"horizon_days must be >= 1, got {h}")
    newest = int(as_of_ms) - h * DAY_MS
    return [newest - i * cfg.cutoff_step_days * DAY_MS for i in range(cfg.cutoffs)]


#: Split hash: splitmix64 of the id plus its own odd constant (bucket_of multiplies by the
#: golden ratio and keeps high bits), so split and warehouse bucket are independent.
_SPLIT_SALT = np.uint64(0x2545F4914F6CDD1D)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _split_uniform(user_ids: np.ndarray) -> np.ndarray:
    """A stable uniform number in [0, 1) per id (53 bits of a splitmix64 mix)."""
    x = np.asarray(user_ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + _SPLIT_SALT
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def split_of(user_ids: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """Split of each user: 0 train, 1 validation, 2 test (int8).

    A pure function of the (already pseudonymous, uniformly hashed) id: the same user is on the
    same side in every run, at every cutoff and on every machine, and the split does not
    correlate with the warehouse bucket (:func:`strata.ids.bucket_of`).
    """
    u = _split_uniform(user_ids)
    s = cfg.split
    out = np.full(len(u), 2, dtype=np.int8)
    out[u < s.train + s.validation] = 1
    out[u < s.train] = 0
    return out


def cutoff_iso(ms: int) -> str:
    """ISO-8601 UTC name of a cutoff (meta.json's ``cutoffs`` and notes)."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def select_features(valid_train: dict[str, int]) -> tuple[list[str], list[str]]:
    """Model features = those with at least one value in the train split; and the dropped."""
    kept = [f for f in MODEL_FEATURES if valid_train.get(f, 0) > 0]
    dropped = [f for f in MODEL_FEATURES if valid_train.get(f, 0) == 0]
    return kept, dropped


# =========================================================================== model features
def _codes(col: pa.ChunkedArray | pa.Array, names: Sequence[str]) -> pa.ChunkedArray | pa.Array:
    """Index of each value in ``names`` as float32; null for null or unlisted values."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    idx = pc.index_in(col, value_set=pa.array(list(names), type=col.type))
    return idx.cast(F32)


def _logs_behaviour(features: pa.Table) -> bool:
    """Whether any user of the table has any behaviour event (an empty table: assume so)."""
    if features.num_rows == 0:
        return True
    return any((pc.max(features.column(c)).as_py() or 0) > 0 for c in BEHAVIOUR_COLUMNS)


def model_features(features: pa.Table, *, behaviour_logged: bool | None = None) -> pa.Table:
    """Numeric model inputs of a :func:`compute_features` table.

    The same function prepares training examples and scoring inputs, so they never drift.

    * Every numeric column of :data:`MODEL_FEATURES` is cast to float32; null stays null.
    * Label columns (:data:`CATEGORICAL_FEATURES`) become the index of their value in a fixed
      list (float32): stable across runs and machines. Null, unlisted values and
      ``price_sensitivity == "unknown"`` (no price information) are null.
    * Derived: ``tenure_days`` (days from the sign-up day to the observation day =
      ``btyd_t + first order day - sign-up day``; null without sign-up or order),
      ``interpurchase_days`` (``btyd_recency / btyd_frequency``; null with fewer than two
      purchase days), ``overdue_ratio`` (``recency_days / interpurchase_days``). No absolute
      time enters the model.
    * Nothing is invented for absent data: features whose source columns were absent are null
      already (compute_features). The interaction counts of :data:`BEHAVIOUR_COLUMNS` are
      nulled when the source evidently logs no behaviour events (an order-only import), and
      ``negative_reviews`` is null where no review carries a rating.

    Args:
        features: a :data:`strata.features.FEATURES_SCHEMA` table (one bucket, or more).
        behaviour_logged: whether the source logs behaviour events (views, carts, visits ...).
            None (default) decides from the table itself: logged when any user has any such
            event in the funnel window. False nulls :data:`BEHAVIOUR_COLUMNS`.

    Returns:
        :data:`MODEL_FEATURES_SCHEMA` table aligned with ``features`` (same rows and order).

    Raises:
        ValueError: a column of compute_features' output is missing.
    """
    present = set(features.column_names)
    missing = [c for c in FEATURE_COLUMNS if c not in present]
    if missing:
        raise ValueError(f"model_features needs a compute_features table; missing: {missing}")
    cols: dict[str, Any] = {"user_id": features.column("user_id").cast(pa.int64())}
    for name in _NUMERIC_FEATURES:
        cols[name] = features.column(name).cast(F32)
    if behaviour_logged is None:
        behaviour_logged = _logs_behaviour(features)
    if not behaviour_logged:
        for name in BEHAVIOUR_COLUMNS:
            cols[name] = pa.nulls(features.num_rows, F32)
    else:
        no_rating = pc.is_null(features.column("mean_rating"))
        cols["negative_reviews"] = pc.if_else(
            no_rating, pa.scalar(None, F32), cols["negative_reviews"]
        )
    for name, names in CATEGORICAL_FEATURES.items():
        cols[name] = _codes(features.column(name), names)

    first_day = local_day(f64_of(features.column("first_order_ts")))
    signup_day = local_day(f64_of(features.column("signup_ts")))
    btyd_t = f64_of(features.column("btyd_t"))
    freq = f64_of(features.column("btyd_frequency"))
    span = f64_of(features.column("btyd_recency"))
    recency = f64_of(features.column("recency_days"))
    with np.errstate(invalid="ignore", divide="ignore"):
        interval = np.where(freq > 0, span / np.where(freq > 0, freq, 1.0), np.nan)
        overdue = np.where(interval > 0, recency / np.where(interval > 0, interval, 1.0), np.nan)
    cols["tenure_days"] = f32_array(btyd_t + first_day - signup_day)
    cols["interpurchase_days"] = f32_array(interval)
    cols["overdue_ratio"] = f32_array(overdue)
    _gap_and_trend_columns(cols, features, interval)
    for name in BGNBD_FEATURES:
        cols[name] = pa.nulls(features.num_rows, F32)
    return pa.Table.from_arrays(
        [cols[f.name] for f in MODEL_FEATURES_SCHEMA], schema=MODEL_FEATURES_SCHEMA
    )


def _gap_and_trend_columns(cols: dict[str, Any], features: pa.Table, interval: np.ndarray) -> None:
    """``gap_cv`` (std / mean of the inter-purchase gaps), ``order_trend_30d`` / ``_90d``
    (orders in the latest window minus the window before; null without any order)."""
    std = f64_of(features.column("gap_std_days"))
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.where(interval > 0, std / np.where(interval > 0, interval, 1.0), np.nan)
    cols["gap_cv"] = f32_array(cv)
    has = f64_of(features.column("orders_total")) > 0
    for d in (30, 90):
        now = f64_of(features.column(f"frequency_{d}d"))
        before = f64_of(features.column(f"frequency_prev_{d}d"))
        cols[f"order_trend_{d}d"] = f32_array(np.where(has, now - before, np.nan))


def feature_matrix(table: pa.Table, names: Sequence[str]) -> np.ndarray:
    """The columns ``names`` of ``table`` as a C-ordered float32 matrix (rows x names).

    Null becomes NaN (xgboost's missing value). Numeric and boolean columns only.

    Raises:
        ValueError: a name is not a column of ``table`` (all missing ones are named), or a
            column is not numeric.
    """
    present = set(table.column_names)
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(f"feature columns missing from the table: {missing}")
    out = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        col = table.column(name)
        t = col.type
        if pa.types.is_null(t):  # an all-null column without a type
            out[:, j] = np.nan
            continue
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise ValueError(f"feature column {name!r} is not numeric ({t})")
        out[:, j] = np.asarray(col.cast(F32).to_numpy(zero_copy_only=False), dtype=np.float32)
    return out


# =========================================================================== examples
def training_examples(
    events: pa.Table,
    users: pa.Table | None,
    cutoff_ms: int,
    end_ms: int,
    feature_config: FeatureConfig,
    cfg: TrainConfig,
) -> pa.Table:
    """Training examples of one bucket at one cutoff (:data:`EXAMPLES_SCHEMA`).

    Features: ``compute_features(events, users, cutoff_ms)`` (events at or after the cutoff
    are ignored there, so no label information can leak in), then :func:`model_features`.
    Population: users with at least ``cfg.min_orders`` distinct orders before the cutoff.
    Labels: :func:`labels` over ``[cutoff_ms, end_ms)``. Plus ``user_id``, ``cutoff_ms``,
    ``split`` (:func:`split_of`) and the baseline inputs :data:`BASELINE_COLUMNS` as float64.

    Args:
        events: the bucket's events, every time (future rows are fine: see above). Pass only
            the columns the source really has (docs/features.md).
        users: the bucket's users, or None.
        cutoff_ms: the cutoff instant (UTC epoch ms; a local midnight keeps windows whole days).
        end_ms: end of the label window (exclusive), normally ``cutoff + horizon``.
        feature_config: the feature windows and rules (the recompute job's).
        cfg: training config (``min_orders``, ``repurchase_days``, ``split``).

    Returns:
        one row per user of the population, sorted by user_id.
    """
    cutoff_ms, end_ms = int(cutoff_ms), int(end_ms)
    if end_ms <= cutoff_ms:
        raise ValueError(f"end_ms ({end_ms}) must be after cutoff_ms ({cutoff_ms})")
    feats = compute_features(events, users, cutoff_ms, feature_config)
    # decided on the whole bucket, as when the recompute job scores it
    logged = _logs_behaviour(feats)
    orders = np.asarray(feats.column("orders_total").to_numpy(zero_copy_only=False))
    keep = np.flatnonzero(orders >= cfg.min_orders)
    if len(keep) < feats.num_rows:
        feats = feats.take(pa.array(keep, type=pa.int64()))
    mf = model_features(feats, behaviour_logged=logged)
    ids = np.asarray(mf.column("user_id").to_numpy(zero_copy_only=False), dtype=np.int64)
    lab = labels(events, ids, cutoff_ms, end_ms, cfg.repurchase_days)
    n = len(ids)
    cols: dict[str, Any] = {
        "user_id": mf.column("user_id"),
        "cutoff_ms": pa.array(np.full(n, cutoff_ms, dtype=np.int64)),
        "split": pa.array(split_of(ids, cfg)),
    }
    for name in MODEL_FEATURES:
        cols[name] = feats.column(name).cast(F64) if name in BASELINE_COLUMNS else mf.column(name)
    for name in LABEL_COLUMNS:
        cols[name] = lab.column(name)
    return pa.Table.from_arrays([cols[f.name] for f in EXAMPLES_SCHEMA], schema=EXAMPLES_SCHEMA)


def stacked_examples(
    events: pa.Table,
    users: pa.Table | None,
    as_of_ms: int,
    feature_config: FeatureConfig,
    cfg: TrainConfig,
) -> pa.Table:
    """Training examples of one bucket at every cutoff of :func:`cutoffs_for`, newest first
    (each cutoff with its own window ``[cutoff, cutoff + horizon)``)."""
    parts = [
        training_examples(events, users, c, c + cfg.horizon_days * DAY_MS, feature_config, cfg)
        for c in cutoffs_for(as_of_ms, cfg)
    ]
    return pa.concat_tables(parts)


def data_hash(data: pa.Table | np.ndarray) -> str:
    """Stable sha256 (hex) of a training set, for the model registry.

    A table is hashed over its ``user_id``, ``cutoff_ms``, ``split`` and label columns (those
    present), rows ordered by (cutoff_ms, user_id), so the hash does not depend on how buckets
    were concatenated; an array is hashed as its sorted int64 ids.
    """
    h = hashlib.sha256()
    if isinstance(data, np.ndarray):
        h.update(b"ids\0")
        h.update(np.sort(np.asarray(data, dtype=np.int64)).astype("<i8").tobytes())
        return h.hexdigest()
    names = [c for c in ("user_id", "cutoff_ms", "split", *LABEL_COLUMNS) if c in data.column_names]
    if "user_id" not in names:
        raise ValueError("data_hash needs a user_id column")
    uid = int64_values(data.column("user_id"), "user_id")
    cut = (
        int64_values(data.column("cutoff_ms"), "cutoff_ms")
        if "cutoff_ms" in names
        else np.zeros(len(uid), dtype=np.int64)
    )
    order = np.lexsort((uid, cut))
    for name in names:
        col = data.column(name)
        h.update(name.encode() + b"\0")
        h.update(np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False))[order].tobytes())
        if pa.types.is_floating(col.type):
            values = np.nan_to_num(f64_of(col), nan=0.0).astype("<f8")
        else:
            values = int64_values(pc.fill_null(col, 0), name).astype("<i8")
        h.update(values[order].tobytes())
    return h.hexdigest()


# =========================================================================== partials
def valid_counts(table: pa.Table, names: tuple[str, ...]) -> dict[str, int]:
    """Non-null, non-NaN values per column (absent columns count 0)."""
    out: dict[str, int] = {}
    for name in names:
        if name not in table.column_names:
            out[name] = 0
            continue
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        out[name] = int(np.count_nonzero(~np.isnan(values)))
    return out


def train_patterns(table: pa.Table, split: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Distinct BTYD summaries (with counts) of the train users, per cutoff: the mergeable
    input of the BG/NBD fit at that cutoff."""
    cut = np.asarray(table.column("cutoff_ms").to_numpy(zero_copy_only=False), dtype=np.int64)
    cols = [
        np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
        for c in ("btyd_frequency", "btyd_recency", "btyd_t")
    ]
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for c in np.unique(cut):
        rows = (cut == c) & (split == 0)
        out[int(c)] = bgnbd_patterns(*(v[rows] for v in cols))
    return out


@dataclass
class ExamplePartials:
    """Mergeable result of the example pass: per split the shard files (in bucket order),
    rows, non-null counts per model feature, label sums and labelled rows, plus the train
    users' BTYD patterns per cutoff (the BG/NBD fit's input). :meth:`merge` is exact and
    order-independent (sums; files sorted by path, i.e. by bucket)."""

    files: dict[str, list[str]]
    rows: dict[str, int]
    valid: dict[str, dict[str, int]]
    positives: dict[str, dict[str, float]]
    labelled: dict[str, dict[str, int]]
    buckets: int
    task_seconds: float
    patterns: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> ExamplePartials:
        """The neutral element of :meth:`merge`."""
        return cls(
            files={s: [] for s in SPLITS},
            rows=dict.fromkeys(SPLITS, 0),
            valid={s: dict.fromkeys(MODEL_FEATURES, 0) for s in SPLITS},
            positives={s: dict.fromkeys(LABEL_COLUMNS, 0.0) for s in SPLITS},
            labelled={s: dict.fromkeys(LABEL_COLUMNS, 0) for s in SPLITS},
            buckets=0,
            task_seconds=0.0,
        )

    @classmethod
    def of_shard(cls, shard: dict[str, Any]) -> ExamplePartials:
        """The partial of one bucket's result (``actors.example_shard.bucket_examples``)."""
        out = cls.empty()
        for split in SPLITS:
            out.rows[split] += shard["rows"].get(split, 0)
            if split in shard["files"]:
                out.files[split].append(shard["files"][split])
            for name, n in shard["valid"].get(split, {}).items():
                out.valid[split][name] += n
            for name, n in shard["positives"].get(split, {}).items():
                out.positives[split][name] += n
            for name, k in shard["labelled"].get(split, {}).items():
                out.labelled[split][name] += k
        out.buckets = 1
        out.task_seconds = shard["seconds"]
        out.patterns = dict(shard.get("patterns", {}))
        return out

    def merge(self, other: ExamplePartials) -> ExamplePartials:
        """The partial of both sets of buckets."""

        def add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}

        cutoffs = sorted(set(self.patterns) | set(other.patterns))
        patterns = {
            c: merge_patterns([p[c] for p in (self.patterns, other.patterns) if c in p])
            for c in cutoffs
        }
        return ExamplePartials(
            files={s: sorted(self.files[s] + other.files[s]) for s in SPLITS},
            rows={s: self.rows[s] + other.rows[s] for s in SPLITS},
            valid={s: add(self.valid[s], other.valid[s]) for s in SPLITS},
            positives={s: add(self.positives[s], other.positives[s]) for s in SPLITS},
            labelled={s: add(self.labelled[s], other.labelled[s]) for s in SPLITS},
            buckets=self.buckets + other.buckets,
            task_seconds=self.task_seconds + other.task_seconds,
            patterns=patterns,
        )

    def empty_splits(self) -> list[str]:
        """The splits without any example."""
        return [s for s in SPLITS if self.rows[s] == 0]

    def unlabelled(self) -> list[str]:
        """``label (split)`` for every label some example of the split lacks."""
        return [
            f"{label} ({split})"
            for split in SPLITS
            for label in LABEL_COLUMNS
            if self.labelled[split][label] < self.rows[split]
        ]

    def problem(self) -> str | None:
        """Why these examples cannot train the models (an empty split, a missing label)."""
        empty = self.empty_splits()
        if empty:
            return (
                f"split(s) {empty} have no examples (rows per split: {self.rows}); "
                "more users or an earlier cutoff are needed"
            )
        unlabelled = self.unlabelled()
        if unlabelled:
            return (
                f"labels missing for {', '.join(unlabelled)}: the spend label needs "
                "amount_cny in the events"
            )
        return None

    def files_by_bucket(self) -> dict[int, list[str]]:
        """Every split's shard files (``part-<bucket>.parquet``) grouped by bucket."""
        out: dict[int, list[str]] = {}
        for files in self.files.values():
            for path in files:
                bucket = int(posixpath.basename(path).split("-")[1].split(".")[0])
                out.setdefault(bucket, []).append(path)
        return out

    def add_valid(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Add non-null counts per split and column (columns written after the pass)."""
        for split, by_name in counts.items():
            for name, k in by_name.items():
                self.valid[split][name] = self.valid[split].get(name, 0) + k

    @classmethod
    def merge_all(cls, shards: Sequence[dict[str, Any]]) -> ExamplePartials:
        """Merge per-bucket results (in bucket order, whatever the task order)."""
        out = cls.empty()
        for shard in sorted(shards, key=lambda s: s["bucket"]):
            out = out.merge(cls.of_shard(shard))
        return out


def holdout_by_time(
    train: pa.Table, valid: pa.Table, test: pa.Table, cutoffs_ms: Sequence[int], horizon_days: int
) -> tuple[int, list[int], pa.Table, pa.Table, pa.Table] | None:
    """The rows of the check on a cutoff held out by time as well as by user.

    Train and validation rows of the cutoffs whose label windows end by the newest cutoff (no
    label they carry lies in the newest window), test rows at the newest cutoff.

    Returns:
        ``(newest, older cutoffs, train, validation, test)``, or None when no older cutoff
        qualifies (e.g. ``cutoffs: 1``) or a part has no rows.
    """
    cuts = sorted(cutoffs_ms, reverse=True)
    if not cuts:
        return None
    newest = cuts[0]
    older = [c for c in cuts[1:] if c + horizon_days * DAY_MS <= newest]
    if not older:
        return None

    def cut_of(t: pa.Table) -> np.ndarray:
        return np.asarray(t.column("cutoff_ms").to_numpy(zero_copy_only=False), dtype=np.int64)

    def rows(t: pa.Table, mask: np.ndarray) -> pa.Table:
        return t.take(pa.array(np.flatnonzero(mask)))

    tr = rows(train, np.isin(cut_of(train), older))
    va = rows(valid, np.isin(cut_of(valid), older))
    te = rows(test, cut_of(test) == newest)
    if tr.num_rows == 0 or va.num_rows == 0 or te.num_rows == 0:
        return None
    return newest, older, tr, va, te
