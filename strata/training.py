"""Training data and evaluation of the predictive models: churn, repurchase, next-period spend.

Leakage rule: the features of a training example are computed as of a past **cutoff** with the
very function the recompute job uses (:func:`strata.features.compute_features`, which ignores
every event with ``ts >= cutoff``), and its labels come only from the window after it:
``cutoff_ms <= ts < end_ms`` (``end_ms = cutoff + horizon``). Every event lies on exactly one
side. Several past cutoffs can be stacked (:func:`cutoffs_for`), each obeying the same rule.

Split: users go to train / validation / test by a stable hash of their (pseudonymous) id
(:func:`split_of`), so one user never sits on two sides, at any cutoff.

Model inputs: :func:`model_features` turns a features table into numeric float32 columns
(:data:`MODEL_FEATURES`; null stays null, NaN for xgboost via :func:`feature_matrix`), the
same function at training and at scoring time. Evaluation: rank/probability metrics
(:func:`classification_metrics`, :func:`regression_metrics`) and two baselines on the same
users, a recency rule (:func:`recency_rule`) and BG/NBD (:func:`bgnbd_baseline`).
``docs/models.md`` explains every choice.

BG/NBD enters three ways (:mod:`strata.btyd`, fitted per cutoff on the train users by the
train job): as model features (:func:`add_bgnbd_features`), as the base margin the models boost
from (:func:`bgnbd_margins`), and as the baseline the champion rule compares with
(:func:`bgnbd_predictions_by_cutoff`, :func:`choose_champion`).

Pure: numpy, pyarrow and pydantic (scipy and ``lifetimes``/pandas are imported lazily by
:mod:`strata.btyd` and :func:`bgnbd_baseline`).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import ArrayLike
from pydantic import Field, model_validator

from strata.btyd import (
    BgnbdParams,
    bgnbd_scores,
    expected_purchases,
    p_alive,
    p_no_purchase,
)
from strata.config import StrictModel, config_path, load_yaml
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
    LOCAL_UTC_OFFSET_HOURS,
    EventType,
)

__all__ = [
    "BASELINE_COLUMNS",
    "BEHAVIOUR_COLUMNS",
    "BGNBD_FEATURES",
    "CATEGORICAL_FEATURES",
    "DERIVED_FEATURES",
    "EXAMPLES_SCHEMA",
    "LABEL_COLUMNS",
    "MARGIN_COLUMNS",
    "MODEL_FEATURES",
    "MODEL_FEATURES_SCHEMA",
    "MONOTONE_CHURN",
    "PUBLISHABLE_BASELINES",
    "TASKS",
    "SplitFractions",
    "TrainConfig",
    "XgbParams",
    "add_bgnbd_features",
    "apply_bgnbd_by_cutoff",
    "bgnbd_baseline",
    "bgnbd_margins",
    "bgnbd_predictions",
    "bgnbd_predictions_by_cutoff",
    "choose_champion",
    "classification_metrics",
    "cutoffs_for",
    "data_hash",
    "feature_matrix",
    "labels",
    "load_train_config",
    "model_features",
    "monotone_constraints",
    "recency_rule",
    "regression_metrics",
    "split_of",
    "stacked_examples",
    "training_examples",
    "winner",
]

DAY_MS = 86_400_000
_LOCAL_OFFSET_MS = LOCAL_UTC_OFFSET_HOURS * 3_600_000


# =========================================================================== configuration
class SplitFractions(StrictModel):
    """Shares of users in train / validation / test (by user hash); they sum to 1."""

    train: float = Field(default=0.7, gt=0, lt=1)
    validation: float = Field(default=0.15, ge=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"split fractions must sum to 1, got train={self.train:g} + "
                f"validation={self.validation:g} + test={self.test:g} = {total:g}"
            )
        return self


class XgbParams(StrictModel):
    """Booster parameters of the three models (xgboost names)."""

    max_depth: int = Field(default=4, ge=1, le=32)
    eta: float = Field(default=0.05, gt=0, le=1)
    subsample: float = Field(default=0.8, gt=0, le=1)
    colsample_bytree: float = Field(default=0.8, gt=0, le=1)
    min_child_weight: float = Field(default=20.0, ge=0)
    reg_lambda: float = Field(default=5.0, ge=0)
    num_boost_round: int = Field(default=400, ge=1, le=100_000)
    early_stopping_rounds: int = Field(default=30, ge=0, le=100_000)  # 0: no early stopping
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class TrainConfig(StrictModel):
    """configs/train.yaml: label windows, stacked cutoffs, population, split and boosters."""

    horizon_days: int = Field(default=30, ge=1, le=365)
    repurchase_days: int = Field(default=7, ge=1, le=364)
    cutoffs: int = Field(default=4, ge=1, le=12)
    cutoff_step_days: int = Field(default=30, ge=1, le=365)
    min_orders: int = Field(default=1, ge=1, le=10_000)
    split: SplitFractions = Field(default_factory=SplitFractions)
    xgboost: XgbParams = Field(default_factory=XgbParams)
    bgnbd_sample_users: int = Field(default=50_000, ge=100, le=10_000_000)
    #: monotone constraints where the direction is known (:func:`monotone_constraints`)
    monotone: bool = True
    #: also check the model on the newest cutoff held out by time (needs older cutoffs whose
    #: label windows end by it); the model must win there too to be the champion
    time_holdout: bool = True
    #: boost from BG/NBD: its prediction is each model's base margin, the trees learn the
    #: correction (so an early-stopped model starts no worse than BG/NBD)
    boost_from_bgnbd: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.repurchase_days >= self.horizon_days:
            raise ValueError(
                f"repurchase_days ({self.repurchase_days}) must be smaller than horizon_days "
                f"({self.horizon_days}): repurchase looks at the first days of the label window"
            )
        if self.split.validation == 0 and self.xgboost.early_stopping_rounds > 0:
            raise ValueError(
                "split.validation is 0 but xgboost.early_stopping_rounds > 0: early stopping "
                "needs validation users (set early_stopping_rounds: 0 to train without)"
            )
        return self


def load_train_config(config_dir: str | Path | None = None) -> TrainConfig:
    """Load and validate ``train.yaml`` (default: the repository's configs/).

    Raises:
        ConfigError: the file is missing or invalid (the message names the key).
    """
    return load_yaml(config_path("train", config_dir), TrainConfig)


# =========================================================================== columns
LABEL_COLUMNS: tuple[str, ...] = ("label_churn", "label_repurchase", "label_spend")
#: Model name -> (label column, kind).
TASKS: dict[str, tuple[str, str]] = {
    "churn": ("label_churn", "binary"),
    "repurchase": ("label_repurchase", "binary"),
    "spend": ("label_spend", "regression"),
}

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

_F32 = pa.float32()
_F64 = pa.float64()
MODEL_FEATURES_SCHEMA = pa.schema(
    [pa.field("user_id", pa.int64(), nullable=False)]
    + [pa.field(name, _F32) for name in MODEL_FEATURES],
    metadata={"strata.table": "model_features"},
)
EXAMPLES_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("cutoff_ms", pa.int64(), nullable=False),
        pa.field("split", pa.int8(), nullable=False),
        *(pa.field(n, _F64 if n in BASELINE_COLUMNS else _F32) for n in MODEL_FEATURES),
        pa.field("label_churn", pa.int8(), nullable=False),
        pa.field("label_repurchase", pa.int8(), nullable=False),
        pa.field("label_spend", _F64),
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


# =========================================================================== model features
def _local_day(ms: np.ndarray) -> np.ndarray:
    return (ms + _LOCAL_OFFSET_MS) // DAY_MS


def _f64_of(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric or timestamp column as float64 numpy, NaN for null (timestamps in ms)."""
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.timestamp("ms", tz=col.type.tz), safe=False).cast(pa.int64())
    arr = col.cast(_F64)
    return np.array(arr.to_numpy(zero_copy_only=False), dtype=np.float64)  # writable copy


def _f32_array(values: np.ndarray) -> pa.Array:
    """float32 Arrow array with null where ``values`` is NaN."""
    v = values.astype(np.float32)
    nan = np.isnan(v)
    return pa.array(v, type=_F32, mask=nan if nan.any() else None)


def _codes(col: pa.ChunkedArray | pa.Array, names: Sequence[str]) -> pa.ChunkedArray | pa.Array:
    """Index of each value in ``names`` as float32; null for null or unlisted values."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    idx = pc.index_in(col, value_set=pa.array(list(names), type=col.type))
    return idx.cast(_F32)


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
        cols[name] = features.column(name).cast(_F32)
    if behaviour_logged is None:
        behaviour_logged = _logs_behaviour(features)
    if not behaviour_logged:
        for name in BEHAVIOUR_COLUMNS:
            cols[name] = pa.nulls(features.num_rows, _F32)
    else:
        no_rating = pc.is_null(features.column("mean_rating"))
        cols["negative_reviews"] = pc.if_else(
            no_rating, pa.scalar(None, _F32), cols["negative_reviews"]
        )
    for name, names in CATEGORICAL_FEATURES.items():
        cols[name] = _codes(features.column(name), names)

    first_day = _local_day(_f64_of(features.column("first_order_ts")))
    signup_day = _local_day(_f64_of(features.column("signup_ts")))
    btyd_t = _f64_of(features.column("btyd_t"))
    freq = _f64_of(features.column("btyd_frequency"))
    span = _f64_of(features.column("btyd_recency"))
    recency = _f64_of(features.column("recency_days"))
    with np.errstate(invalid="ignore", divide="ignore"):
        interval = np.where(freq > 0, span / np.where(freq > 0, freq, 1.0), np.nan)
        overdue = np.where(interval > 0, recency / np.where(interval > 0, interval, 1.0), np.nan)
    cols["tenure_days"] = _f32_array(btyd_t + first_day - signup_day)
    cols["interpurchase_days"] = _f32_array(interval)
    cols["overdue_ratio"] = _f32_array(overdue)
    _gap_and_trend_columns(cols, features, interval)
    for name in BGNBD_FEATURES:
        cols[name] = pa.nulls(features.num_rows, _F32)
    return pa.Table.from_arrays(
        [cols[f.name] for f in MODEL_FEATURES_SCHEMA], schema=MODEL_FEATURES_SCHEMA
    )


def _gap_and_trend_columns(cols: dict[str, Any], features: pa.Table, interval: np.ndarray) -> None:
    """``gap_cv`` (std / mean of the inter-purchase gaps), ``order_trend_30d`` / ``_90d``
    (orders in the latest window minus the window before; null without any order)."""
    std = _f64_of(features.column("gap_std_days"))
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.where(interval > 0, std / np.where(interval > 0, interval, 1.0), np.nan)
    cols["gap_cv"] = _f32_array(cv)
    has = _f64_of(features.column("orders_total")) > 0
    for d in (30, 90):
        now = _f64_of(features.column(f"frequency_{d}d"))
        before = _f64_of(features.column(f"frequency_prev_{d}d"))
        cols[f"order_trend_{d}d"] = _f32_array(np.where(has, now - before, np.nan))


def add_bgnbd_features(table: pa.Table, params: BgnbdParams | None, horizon_days: int) -> pa.Table:
    """``table`` with the :data:`BGNBD_FEATURES` columns set from BG/NBD ``params``.

    ``bgnbd_p_alive`` = P(alive), ``bgnbd_expected`` = expected purchase days in the horizon,
    ``bgnbd_p_churn`` = P(no purchase in the horizon) (:mod:`strata.btyd`), from the row's
    ``btyd_frequency`` / ``btyd_recency`` / ``btyd_t``; null without a BTYD summary, and every
    row null when ``params`` is None (no fit was possible). Columns absent are appended.
    """
    if params is None:
        values = {name: np.full(table.num_rows, np.nan) for name in BGNBD_FEATURES}
    else:
        x, tx, t = _btyd(table)
        values = {
            "bgnbd_p_alive": p_alive(params, x, tx, t),
            "bgnbd_expected": expected_purchases(params, horizon_days, x, tx, t),
            "bgnbd_p_churn": p_no_purchase(params, horizon_days, x, tx, t),
        }
    for name in BGNBD_FEATURES:
        col = _f32_array(values[name])
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, col)
        else:
            table = table.append_column(name, col)
    return table


#: Per task, the column of training examples holding BG/NBD's own prediction on the margin
#: scale (log-odds; log spend for the Tweedie model): the model boosts from it.
MARGIN_COLUMNS: dict[str, str] = {
    "churn": "margin_churn",
    "repurchase": "margin_repurchase",
    "spend": "margin_spend",
}
_MARGIN_EPS = 1e-4


def bgnbd_margins(
    table: pa.Table, params: BgnbdParams | None, horizon_days: int, repurchase_days: int
) -> dict[str, np.ndarray]:
    """BG/NBD's predictions as xgboost base margins, per task (:data:`MARGIN_COLUMNS`).

    ``logit(clip(p, 1e-4, 1 - 1e-4))`` for churn and repurchase, ``log(max(spend, 0.01))`` for
    spend (Tweedie's log link). A row without a BTYD summary (or no ``params``) gets 0: the
    model alone decides there (such users are outside the training population).
    """
    pred = bgnbd_predictions(table, params, horizon_days, repurchase_days)
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for task in ("churn", "repurchase"):
            p = np.clip(pred[task], _MARGIN_EPS, 1.0 - _MARGIN_EPS)
            out[task] = np.log(p) - np.log1p(-p)
        out["spend"] = np.log(np.maximum(pred["spend"], 0.01))
    return {k: np.where(np.isfinite(v), v, 0.0) for k, v in out.items()}


def apply_bgnbd_by_cutoff(
    table: pa.Table,
    params_by_cutoff: Mapping[int, BgnbdParams | None],
    horizon_days: int,
    repurchase_days: int,
) -> pa.Table:
    """:func:`add_bgnbd_features` and :func:`bgnbd_margins` on training examples, each row
    with the parameters fitted at its own ``cutoff_ms`` (a cutoff without parameters gets null
    features and 0 margins). Row order is kept; the margin columns are set or appended."""
    cut = int64_values(table.column("cutoff_ms"), "cutoff_ms")
    n = table.num_rows
    out = {name: np.full(n, np.nan) for name in BGNBD_FEATURES}
    margins = {task: np.zeros(n) for task in MARGIN_COLUMNS}
    for c in np.unique(cut):
        rows = np.flatnonzero(cut == c)
        params = params_by_cutoff.get(int(c))
        if params is None:
            continue
        part = add_bgnbd_features(table.take(pa.array(rows)), params, horizon_days)
        for name in BGNBD_FEATURES:
            out[name][rows] = _f64_of(part.column(name))
        for task, m in bgnbd_margins(part, params, horizon_days, repurchase_days).items():
            margins[task][rows] = m
    for name in BGNBD_FEATURES:
        table = table.set_column(table.schema.get_field_index(name), name, _f32_array(out[name]))
    for task, name in MARGIN_COLUMNS.items():
        col = pa.array(margins[task].astype(np.float32), type=_F32)
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, col)
        else:
            table = table.append_column(name, col)
    return table


#: Features whose effect has a known direction: +1 = more of it, more churn (and less
#: repurchase). Recency is the classic one (more recent => less churn).
MONOTONE_CHURN: dict[str, int] = {
    "recency_days": 1,
    "overdue_ratio": 1,
    "bgnbd_p_churn": 1,
    "bgnbd_p_alive": -1,
    "bgnbd_expected": -1,
}


def monotone_constraints(features: Sequence[str], task: str) -> str | None:
    """xgboost ``monotone_constraints`` for ``task`` over ``features`` (None: unconstrained).

    Churn follows :data:`MONOTONE_CHURN`, repurchase the opposite signs; spend is left free.
    """
    sign = {"churn": 1, "repurchase": -1}.get(task)
    if sign is None:
        return None
    values = [sign * MONOTONE_CHURN.get(f, 0) for f in features]
    if not any(values):
        return None
    return "(" + ",".join(str(v) for v in values) + ")"


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
        out[:, j] = np.asarray(col.cast(_F32).to_numpy(zero_copy_only=False), dtype=np.float32)
    return out


# =========================================================================== labels
def _is_order(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """event_type == "order" per row (string or dictionary<string>; null is not an order)."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts: list[np.ndarray] = []
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            lut = np.asarray(
                pc.fill_null(pc.equal(chunk.dictionary, EventType.ORDER.value), False).to_numpy(
                    zero_copy_only=False
                ),
                dtype=bool,
            )
            idx = pc.fill_null(chunk.indices, -1).to_numpy(zero_copy_only=False)
            lut = np.append(lut, False)  # index -1: null slot
            parts.append(lut[np.asarray(idx, dtype=np.int64)])
        else:
            eq = pc.fill_null(pc.equal(chunk, EventType.ORDER.value), False)
            parts.append(np.asarray(eq.to_numpy(zero_copy_only=False), dtype=bool))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def labels(
    events: pa.Table,
    user_ids: np.ndarray,
    cutoff_ms: int,
    end_ms: int,
    repurchase_days: int,
) -> pa.Table:
    """Labels of ``user_ids`` from the orders in the window ``cutoff_ms <= ts < end_ms``.

    The window starts where compute_features stops (it counts ``ts < as_of``): an order at the
    cutoff instant is a label, never a feature. Only ``event_type == "order"`` rows count (every
    row when the column is absent, as for imported purchase logs). Line-level rows of one order
    need no merging: the labels are "any order" and a sum of amounts.

    Args:
        events: events with ``user_id``, ``ts`` and optionally ``event_type``, ``amount_cny``.
        user_ids: the users to label (any order; repeats allowed).
        cutoff_ms: start of the label window (inclusive), UTC epoch ms.
        end_ms: end of the label window (exclusive).
        repurchase_days: repurchase = an order in ``[cutoff, cutoff + repurchase_days)``
            (clipped to the window).

    Returns:
        Table aligned with ``user_ids``: ``label_churn`` (int8, 1 = no order in the window),
        ``label_repurchase`` (int8) and ``label_spend`` (float64, CNY; a null or NaN amount
        counts 0; null for every user when ``amount_cny`` is absent).
    """
    cutoff_ms, end_ms = int(cutoff_ms), int(end_ms)
    if end_ms <= cutoff_ms:
        raise ValueError(f"end_ms ({end_ms}) must be after cutoff_ms ({cutoff_ms})")
    if repurchase_days < 1:
        raise ValueError(f"repurchase_days must be >= 1, got {repurchase_days}")
    ids = np.asarray(user_ids, dtype=np.int64)
    names = events.column_names
    if "user_id" not in names or "ts" not in names:
        raise ValueError("events need at least the columns user_id and ts")
    ts = int64_values(events.column("ts"), "ts")
    sel = (ts >= cutoff_ms) & (ts < end_ms)
    if "event_type" in names:
        sel &= _is_order(events.column("event_type"))
    rows = np.flatnonzero(sel)
    uid = int64_values(events.column("user_id").take(pa.array(rows, type=pa.int64())), "user_id")
    uniq, inverse = np.unique(ids, return_inverse=True)
    n = len(uniq)
    pos = np.minimum(np.searchsorted(uniq, uid), max(n - 1, 0))
    hit = uniq[pos] == uid if n else np.zeros(len(uid), dtype=bool)
    p, t = pos[hit], ts[rows][hit]

    any_order = np.bincount(p, minlength=n)[inverse] > 0
    rep_end = min(end_ms, cutoff_ms + int(repurchase_days) * DAY_MS)
    early = np.bincount(p[t < rep_end], minlength=n)[inverse] > 0
    if "amount_cny" in names:
        amount = _f64_of(events.column("amount_cny").take(pa.array(rows[hit], type=pa.int64())))
        amount[~np.isfinite(amount)] = 0.0
        spend: pa.Array = pa.array(np.bincount(p, weights=amount, minlength=n)[inverse], _F64)
    else:
        spend = pa.nulls(len(ids), _F64)
    return pa.Table.from_arrays(
        [
            pa.array((~any_order).astype(np.int8)),
            pa.array(early.astype(np.int8)),
            spend,
        ],
        names=list(LABEL_COLUMNS),
    )


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
        cols[name] = feats.column(name).cast(_F64) if name in BASELINE_COLUMNS else mf.column(name)
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
            values = np.nan_to_num(_f64_of(col), nan=0.0).astype("<f8")
        else:
            values = int64_values(pc.fill_null(col, 0), name).astype("<i8")
        h.update(values[order].tobytes())
    return h.hexdigest()


# =========================================================================== metrics
def _binary(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    yy = np.asarray(y, dtype=np.float64).ravel()
    pp = np.asarray(p, dtype=np.float64).ravel()
    if yy.shape != pp.shape:
        raise ValueError(f"y and p differ in length: {len(yy)} vs {len(pp)}")
    if not np.isin(yy, (0.0, 1.0)).all():
        raise ValueError("y must be binary (0/1)")
    if not np.isfinite(pp).all():
        raise ValueError("p has NaN or infinite values")
    return yy, pp


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    start = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
    end = np.append(start[1:], len(xs))
    mean_rank = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, end - start)
    return ranks


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    r = _midranks(p)
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_precision(y: np.ndarray, p: np.ndarray) -> float | None:
    """sum over distinct thresholds (high to low) of (recall step) x precision; tied scores
    enter together (scikit-learn's definition)."""
    n_pos = float(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.append(np.flatnonzero(ps[1:] != ps[:-1]), len(ps) - 1)  # end of each tie group
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    steps = np.diff(np.concatenate(([0.0], recall)))
    return float((steps * precision).sum())


def classification_metrics(y: ArrayLike, p: ArrayLike) -> dict[str, Any]:
    """Metrics of predicted probabilities ``p`` for binary labels ``y``.

    Returns:
        ``auc`` (rank-based, tied scores count half; None with one class only), ``pr_auc``
        (average precision; None without positives), ``log_loss`` (p clipped to
        [1e-15, 1 - 1e-15]), ``brier``, ``base_rate``, ``n`` and ``calibration``: 10 bins of
        equal size by increasing p (``{bin, n, mean_p, observed}``; empty bins have n 0 and
        None values). Plain Python numbers (JSON-ready); None where undefined (n = 0).
    """
    yy, pp = _binary(y, p)
    n = len(yy)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        out.update(auc=None, pr_auc=None, log_loss=None, brier=None, base_rate=None)
        out["calibration"] = [
            {"bin": i, "n": 0, "mean_p": None, "observed": None} for i in range(10)
        ]
        return out
    q = np.clip(pp, 1e-15, 1 - 1e-15)
    out["auc"] = _auc(yy, pp)
    out["pr_auc"] = _average_precision(yy, pp)
    out["log_loss"] = float(-np.mean(yy * np.log(q) + (1 - yy) * np.log1p(-q)))
    out["brier"] = float(np.mean((pp - yy) ** 2))
    out["base_rate"] = float(yy.mean())
    calibration = []
    for i, part in enumerate(np.array_split(np.argsort(pp, kind="mergesort"), 10)):
        k = len(part)
        calibration.append(
            {
                "bin": i,
                "n": k,
                "mean_p": float(pp[part].mean()) if k else None,
                "observed": float(yy[part].mean()) if k else None,
            }
        )
    out["calibration"] = calibration
    return out


def regression_metrics(y: ArrayLike, yhat: ArrayLike) -> dict[str, Any]:
    """``mae``, ``rmse``, ``r2`` (1 - SS_res / SS_tot; None when y is constant), ``mean_y``,
    ``mean_yhat`` and ``n`` (plain Python numbers; None where undefined)."""
    yy = np.asarray(y, dtype=np.float64).ravel()
    yh = np.asarray(yhat, dtype=np.float64).ravel()
    if yy.shape != yh.shape:
        raise ValueError(f"y and yhat differ in length: {len(yy)} vs {len(yh)}")
    if not (np.isfinite(yy).all() and np.isfinite(yh).all()):
        raise ValueError("y or yhat has NaN or infinite values")
    n = len(yy)
    if n == 0:
        return {"mae": None, "rmse": None, "r2": None, "mean_y": None, "mean_yhat": None, "n": 0}
    err = yh - yy
    ss_tot = float(((yy - yy.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else None,
        "mean_y": float(yy.mean()),
        "mean_yhat": float(yh.mean()),
        "n": n,
    }


def winner(
    results: Mapping[str, Mapping[str, Any]], metric: str = "auc", higher_is_better: bool = True
) -> str:
    """Name of the model with the best ``metric`` (ties: the first listed; NaN never wins).

    Args:
        results: metrics per model name.
        metric: e.g. ``auc`` (classification) or ``rmse`` (regression).
        higher_is_better: False for errors such as ``rmse``.

    Raises:
        ValueError: no entry has a defined value of ``metric``.
    """
    best: str | None = None
    best_value = -np.inf
    for name, metrics in results.items():
        value = metrics.get(metric)
        if value is None or not np.isfinite(value):
            continue
        score = float(value) if higher_is_better else -float(value)
        if score > best_value:
            best, best_value = name, score
    if best is None:
        raise ValueError(f"no model with a defined {metric} among {list(results)}")
    return best


#: Baselines that can stand in for a model at scoring time (they need no training).
PUBLISHABLE_BASELINES: tuple[str, ...] = ("bgnbd", "recency_rule")


def choose_champion(
    metrics: Mapping[str, Mapping[str, Any]],
    classification: bool,
    time_holdout: Mapping[str, Mapping[str, Any]] | None = None,
    model: str = "distributed",
) -> dict[str, Any]:
    """Champion / challenger: the model is published only if it is at least as good as the
    best baseline (``bgnbd``, ``recency_rule``) on the users held out, and, where a check on
    a cutoff held out by time exists, there too. Otherwise the best baseline is.

    Args:
        metrics: test metrics per method (``model`` and the baselines present).
        classification: AUC decides (higher is better); else RMSE (lower is better).
        time_holdout: metrics per method on the cutoff held out by time (or None).
        model: the method name of the model.

    Returns:
        ``method`` (``model`` or a baseline name), ``reason`` (one sentence), and the numbers
        compared: ``metric``, ``model``, ``best_baseline``, ``baseline``; ``time_holdout`` with
        the same numbers when checked.
    """
    key = "auc" if classification else "rmse"

    def value(m: Mapping[str, Any] | None) -> float | None:
        v = None if m is None else m.get(key)
        return None if v is None or not np.isfinite(v) else float(v)

    def better_or_equal(a: float, b: float) -> bool:
        return a >= b if classification else a <= b

    def contest(
        block: Mapping[str, Mapping[str, Any]],
    ) -> tuple[float | None, str | None, float | None]:
        base = {b: value(block.get(b)) for b in PUBLISHABLE_BASELINES}
        valid = {b: v for b, v in base.items() if v is not None}
        if not valid:
            return value(block.get(model)), None, None
        best = (max if classification else min)(valid, key=lambda b: valid[b])
        return value(block.get(model)), best, valid[best]

    m, best, b = contest(metrics)
    out: dict[str, Any] = {"metric": key, "model": m, "best_baseline": best, "baseline": b}
    if best is None or b is None:
        out.update(method="model", reason="no baseline could be measured")
        return out
    if m is None or not better_or_equal(m, b):
        out.update(
            method=best,
            reason=f"the model's test {key} {_num(m)} is worse than {best}'s {b:.4f} on the "
            "held-out users",
        )
        return out
    if time_holdout:
        tm, tbest, tb = contest(time_holdout)
        out["time_holdout"] = {"model": tm, "best_baseline": tbest, "baseline": tb}
        if tbest is not None and tb is not None and (tm is None or not better_or_equal(tm, tb)):
            out.update(
                method=tbest,
                reason=f"the model's {key} {_num(tm)} is worse than {tbest}'s {tb:.4f} on the "
                "cutoff held out by time",
            )
            return out
    out.update(
        method="model",
        reason=f"the model's test {key} {m:.4f} is at least {best}'s {b:.4f}"
        + (" (and on the cutoff held out by time)" if "time_holdout" in out else ""),
    )
    return out


def _num(v: float | None) -> str:
    return "undefined" if v is None else f"{v:.4f}"


# =========================================================================== baselines
def recency_rule(
    table: pa.Table, horizon_days: int = 30, repurchase_days: int = 7
) -> dict[str, np.ndarray]:
    """Rule-of-thumb scores from recency and recent spend (no fitting).

    ``churn = 1 - exp(-recency_days / horizon_days)`` (rising with recency),
    ``repurchase = exp(-recency_days / repurchase_days)`` (falling with it); a user who never
    ordered scores churn 1, repurchase 0. ``spend`` = spend over the most recent feature
    window of at least the horizon (monetary_30d/90d/180d), scaled to the horizon length
    (``monetary_30d`` for the default 30 days). The scores rank; they are not calibrated.

    Returns:
        float64 arrays aligned with the rows: ``churn``, ``repurchase``, ``spend``.
    """
    recency = _f64_of(table.column("recency_days"))
    never = np.isnan(recency)
    r = np.where(never, 0.0, recency)
    churn = np.where(never, 1.0, -np.expm1(-r / horizon_days))
    repurchase = np.where(never, 0.0, np.exp(-r / repurchase_days))
    window = next((w for w in (30, 90, 180) if w >= horizon_days), 180)
    monetary = np.nan_to_num(_f64_of(table.column(f"monetary_{window}d")), nan=0.0)
    return {"churn": churn, "repurchase": repurchase, "spend": monetary * horizon_days / window}


def _btyd(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        _f64_of(table.column("btyd_frequency")),
        _f64_of(table.column("btyd_recency")),
        _f64_of(table.column("btyd_t")),
    )


def bgnbd_predictions(
    table: pa.Table,
    params: BgnbdParams | None,
    horizon_days: int,
    repurchase_days: int,
) -> dict[str, np.ndarray]:
    """BG/NBD's own predictions from given parameters (no fitting), aligned with the rows.

    ``churn`` = P(no purchase in the horizon), ``repurchase`` = 1 - P(no purchase in the first
    ``repurchase_days``), ``spend`` = expected purchase days in the horizon x spend per purchase
    day to date (``spend_total_cny / (btyd_frequency + 1)``). NaN without a BTYD summary, and
    everywhere when ``params`` is None.
    """
    n = table.num_rows
    if params is None:
        return {k: np.full(n, np.nan) for k in ("churn", "repurchase", "spend")}
    x, tx, t = _btyd(table)
    scores = bgnbd_scores(params, horizon_days, repurchase_days, x, tx, t)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_day = _f64_of(table.column("spend_total_cny")) / (x + 1.0)
    return {
        "churn": scores["churn"],
        "repurchase": scores["repurchase"],
        "spend": scores["expected_purchases"] * per_day,
    }


def bgnbd_predictions_by_cutoff(
    table: pa.Table,
    params_by_cutoff: Mapping[int, BgnbdParams | None],
    horizon_days: int,
    repurchase_days: int,
) -> dict[str, np.ndarray]:
    """:func:`bgnbd_predictions` of training examples, each row with the parameters fitted at
    its own ``cutoff_ms``: BG/NBD fitted on the same history as the model."""
    cut = int64_values(table.column("cutoff_ms"), "cutoff_ms")
    out = {k: np.full(table.num_rows, np.nan) for k in ("churn", "repurchase", "spend")}
    for c in np.unique(cut):
        rows = np.flatnonzero(cut == c)
        part = bgnbd_predictions(
            table.take(pa.array(rows)), params_by_cutoff.get(int(c)), horizon_days,
            repurchase_days,
        )  # fmt: skip
        for k, v in part.items():
            out[k][rows] = v
    return out


def bgnbd_baseline(
    train: pa.Table,
    test: pa.Table,
    horizon_days: int,
    repurchase_days: int,
    sample_users: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """The classical BG/NBD reference (``lifetimes.BetaGeoFitter``) for churn and repurchase.

    Fitted (penalizer 0.001) on at most ``sample_users`` random train rows with a complete
    BTYD summary (``btyd_frequency``, ``btyd_recency``, ``btyd_t`` in days), compressed to
    distinct (x, t_x, T) patterns with counts as weights (the same likelihood, much faster).
    For each test row, with ``P_alive`` the conditional probability of being alive at T and
    ``(r + x, alpha + T)`` the posterior of the purchase rate, the probability of no purchase
    in the next ``t`` days is ``P0(t) = 1 - P_alive + P_alive * ((alpha + T) / (alpha + T +
    t)) ** (r + x)`` (in BG/NBD a customer can only drop out right after a purchase, so an alive
    customer without purchases stays alive). Then:

    * ``churn`` = P0(horizon_days), the probability of no order in the label window;
    * ``repurchase`` = 1 - P0(repurchase_days);
    * ``expected_purchases`` = the conditional expected purchase days in the horizon;
    * ``p_alive``;
    * ``spend`` = expected_purchases x spend per purchase day to date (``spend_total_cny /
      (btyd_frequency + 1)``; only when the test table has ``spend_total_cny``).

    Rows without a BTYD summary (no order) get NaN.

    Raises:
        ImportError: ``lifetimes`` is not installed.
        ValueError: fewer than 10 usable train rows, or all of them with T = 0.
        RuntimeError: the fit failed or gave non-finite parameters.
    """
    try:
        from lifetimes import BetaGeoFitter
    except ImportError as exc:  # pragma: no cover - dev dependency
        raise ImportError("bgnbd_baseline needs the 'lifetimes' package (0.11.x)") from exc

    f, r, t = _btyd(train)
    ok = np.isfinite(f) & np.isfinite(r) & np.isfinite(t) & (f >= 0) & (r >= 0) & (r <= t)
    idx = np.flatnonzero(ok)
    if len(idx) < 10:
        raise ValueError(f"BG/NBD needs at least 10 train rows with orders, got {len(idx)}")
    if len(idx) > sample_users:
        idx = np.sort(np.random.default_rng(seed).choice(idx, sample_users, replace=False))
    if not (t[idx] > 0).any():
        raise ValueError("BG/NBD needs some train rows with btyd_t > 0")
    patterns, weights = np.unique(
        np.stack([f[idx], r[idx], t[idx]], axis=1), axis=0, return_counts=True
    )
    fitter = BetaGeoFitter(penalizer_coef=0.001)
    try:
        # lifetimes changes the global warning filters inside its likelihood: contain it
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            fitter.fit(patterns[:, 0], patterns[:, 1], patterns[:, 2], weights=weights)
    except Exception as exc:
        raise RuntimeError(
            f"BG/NBD fit failed on {len(idx)} train rows ({len(patterns)} patterns): {exc}"
        ) from exc
    params = np.asarray(fitter.params_[["r", "alpha", "a", "b"]], dtype=np.float64)
    if not (np.isfinite(params).all() and (params > 0).all()):
        raise RuntimeError(f"BG/NBD fit gave unusable parameters r, alpha, a, b = {params}")
    r_, alpha = float(params[0]), float(params[1])

    x, tx, big_t = _btyd(test)
    has = np.isfinite(x) & np.isfinite(tx) & np.isfinite(big_t)
    xs, txs, ts = np.where(has, x, 0.0), np.where(has, tx, 0.0), np.where(has, big_t, 1.0)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        p_alive = np.asarray(fitter.conditional_probability_alive(xs, txs, ts), dtype=np.float64)
        expected = np.asarray(
            fitter.conditional_expected_number_of_purchases_up_to_time(horizon_days, xs, txs, ts),
            dtype=np.float64,
        )

    def p_none(days: float) -> np.ndarray:
        stay = np.exp((r_ + xs) * np.log((alpha + ts) / (alpha + ts + days)))
        return 1.0 - p_alive + p_alive * stay

    out = {
        "churn": p_none(horizon_days),
        "repurchase": 1.0 - p_none(repurchase_days),
        "expected_purchases": expected,
        "p_alive": p_alive,
    }
    if "spend_total_cny" in test.column_names:
        per_day = _f64_of(test.column("spend_total_cny")) / (xs + 1.0)
        out["spend"] = expected * per_day
    return {k: np.where(has, v, np.nan) for k, v in out.items()}
