"""The baselines the models must beat, and BG/NBD as model input.

* :func:`recency_rule`: a rule of thumb from recency and recent spend (no fitting);
* BG/NBD (:mod:`strata.training.bgnbd`): :func:`fit_bgnbd_by_cutoff` (the driver's fit per
  cutoff on the merged train patterns), :func:`bgnbd_predictions` /
  :func:`bgnbd_predictions_by_cutoff` (its own predictions), :func:`bgnbd_meta` (meta.json's
  block), :func:`bgnbd_baseline` (the classical ``lifetimes`` reference);
* BG/NBD as features (:func:`add_bgnbd_features`) and as the base margins the models boost from
  (:func:`bgnbd_margins`), per cutoff on training examples (:func:`apply_bgnbd_by_cutoff`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from strata.features import int64_values
from strata.training._arrow import F32, f32_array, f64_of
from strata.training.bgnbd import (
    BgnbdParams,
    bgnbd_scores,
    expected_purchases,
    fit_bgnbd,
    p_alive,
    p_no_purchase,
)
from strata.training.examples import BGNBD_FEATURES, cutoff_iso
from strata.training.targets import MARGIN_COLUMNS

__all__ = [
    "add_bgnbd_features",
    "apply_bgnbd_by_cutoff",
    "bgnbd_baseline",
    "bgnbd_margins",
    "bgnbd_meta",
    "bgnbd_predictions",
    "bgnbd_predictions_by_cutoff",
    "fit_bgnbd_by_cutoff",
    "params_by_cutoff",
    "recency_rule",
]


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
    recency = f64_of(table.column("recency_days"))
    never = np.isnan(recency)
    r = np.where(never, 0.0, recency)
    churn = np.where(never, 1.0, -np.expm1(-r / horizon_days))
    repurchase = np.where(never, 0.0, np.exp(-r / repurchase_days))
    window = next((w for w in (30, 90, 180) if w >= horizon_days), 180)
    monetary = np.nan_to_num(f64_of(table.column(f"monetary_{window}d")), nan=0.0)
    return {"churn": churn, "repurchase": repurchase, "spend": monetary * horizon_days / window}


def _btyd(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        f64_of(table.column("btyd_frequency")),
        f64_of(table.column("btyd_recency")),
        f64_of(table.column("btyd_t")),
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
        per_day = f64_of(table.column("spend_total_cny")) / (x + 1.0)
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
    """The classical BG/NBD reference for churn and repurchase: one fit over the train rows.

    Fitted with :func:`strata.training.bgnbd.fit_bgnbd` (lifetimes' ``BetaGeoFitter``,
    penalizer 0.001) on at most ``sample_users`` random train rows with a complete
    BTYD summary (``btyd_frequency``, ``btyd_recency``, ``btyd_t`` in days), compressed to
    distinct (x, t_x, T) patterns with counts as weights (the same likelihood, much faster).
    For each test row, with ``P_alive`` the conditional probability of being alive at T and
    ``(r + x, alpha + T)`` the posterior of the purchase rate, the probability of no purchase
    in the next ``t`` days is ``P0(t) = 1 - P_alive + P_alive * ((alpha + T) / (alpha + T +
    t)) ** (r + x)`` (in BG/NBD a customer can only drop out right after a purchase, so an alive
    customer without purchases stays alive); the scores are the closed forms of
    :func:`strata.training.bgnbd.bgnbd_scores` (equal to lifetimes' own to 1e-7). Then:

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
    params = fit_bgnbd(patterns, weights)

    x, tx, big_t = _btyd(test)
    has = np.isfinite(x) & np.isfinite(tx) & np.isfinite(big_t)
    xs, txs, ts = np.where(has, x, 0.0), np.where(has, tx, 0.0), np.where(has, big_t, 1.0)
    out = bgnbd_scores(params, horizon_days, repurchase_days, xs, txs, ts)
    if "spend_total_cny" in test.column_names:
        per_day = f64_of(test.column("spend_total_cny")) / (xs + 1.0)
        out["spend"] = out["expected_purchases"] * per_day
    return {k: np.where(has, v, np.nan) for k, v in out.items()}


def add_bgnbd_features(table: pa.Table, params: BgnbdParams | None, horizon_days: int) -> pa.Table:
    """``table`` with the :data:`BGNBD_FEATURES` columns set from BG/NBD ``params``.

    ``bgnbd_p_alive`` = P(alive), ``bgnbd_expected`` = expected purchase days in the horizon,
    ``bgnbd_p_churn`` = P(no purchase in the horizon) (:mod:`strata.training.bgnbd`), from the row's
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
        col = f32_array(values[name])
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, col)
        else:
            table = table.append_column(name, col)
    return table


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
            out[name][rows] = f64_of(part.column(name))
        for task, m in bgnbd_margins(part, params, horizon_days, repurchase_days).items():
            margins[task][rows] = m
    for name in BGNBD_FEATURES:
        table = table.set_column(table.schema.get_field_index(name), name, f32_array(out[name]))
    for task, name in MARGIN_COLUMNS.items():
        col = pa.array(margins[task].astype(np.float32), type=F32)
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, col)
        else:
            table = table.append_column(name, col)
    return table


def fit_bgnbd_by_cutoff(
    patterns_by_cutoff: Mapping[int, tuple[np.ndarray, np.ndarray]], sample_users: int, seed: int
) -> tuple[dict[int, BgnbdParams | None], list[str]]:
    """BG/NBD parameters fitted on the train users at each cutoff (None where the fit is not
    possible: too few users, or it failed), and notes saying why. At most ``sample_users``
    customers per cutoff enter the fit (a seeded draw of the pattern counts).

    Args:
        patterns_by_cutoff: the merged train patterns per cutoff
            (:attr:`strata.training.ExamplePartials.patterns`).
    """
    out: dict[int, BgnbdParams | None] = {}
    notes: list[str] = []
    rng = np.random.default_rng(seed)
    for cutoff, (patterns, counts) in sorted(patterns_by_cutoff.items()):
        if counts.sum() > sample_users:
            counts = rng.multivariate_hypergeometric(counts, sample_users)
            patterns, counts = patterns[counts > 0], counts[counts > 0]
        try:
            out[cutoff] = fit_bgnbd(patterns, counts)
        except (ValueError, RuntimeError) as exc:
            out[cutoff] = None
            notes.append(f"BG/NBD at cutoff {cutoff_iso(cutoff)} not fitted: {exc}")
    return out, notes


def bgnbd_meta(params: dict[int, BgnbdParams | None], cutoffs_ms: list[int]) -> dict[str, Any]:
    """The BG/NBD block of meta.json: the parameters per cutoff and those the recompute
    scores with (the newest cutoff's: the latest fit on the train users' history)."""
    per_cutoff = {
        cutoff_iso(c): None if params.get(c) is None else params[c].model_dump()  # type: ignore[union-attr]
        for c in cutoffs_ms
    }
    newest = params.get(cutoffs_ms[0]) if cutoffs_ms else None
    return {
        "fitted_on": "train users, at each cutoff (history before the cutoff only)",
        "params_by_cutoff": per_cutoff,
        "scoring_cutoff": cutoff_iso(cutoffs_ms[0]) if cutoffs_ms else None,
        "scoring_params": None if newest is None else newest.model_dump(),
    }


def params_by_cutoff(meta: Mapping[str, Any]) -> dict[int, BgnbdParams | None]:
    """The BG/NBD parameters of meta.json's ``bgnbd`` block, by cutoff_ms."""
    block = meta.get("bgnbd", {}).get("params_by_cutoff", {})
    out: dict[int, BgnbdParams | None] = {}
    for c, iso in zip(meta["cutoffs_ms"], meta["cutoffs"], strict=True):
        p = block.get(iso)
        out[int(c)] = None if p is None else BgnbdParams.model_validate(p)
    return out
