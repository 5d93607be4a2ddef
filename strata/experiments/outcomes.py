"""Per-user outcomes of an experiment from the warehouse: each exposed user's first exposure
joined to their orders, one bucket at a time (a user's exposures and orders live in the same
bucket, so buckets are analysed independently and their sufficient statistics merged).

For a user first exposed at ``t0`` (arm = the arm of that first exposure):

* ``conversion``: 1 if the user ordered in ``[t0, t0 + window)``, else 0;
* ``orders_per_user``, ``revenue_per_user``: orders and spend (``amount_cny``) in the window;
* ``coupon_cost_per_user``: discounts (``discount_cny``) of those orders, the coupons' cost;
* ``margin_per_user``: ``revenue x margin_rate - coupon cost``;
* the CUPED covariate: spend in ``[t0 - pre_window, t0)``, before exposure.

The window is cut at ``until_ms`` (the analysis time) when given. Pure numpy / pyarrow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from strata.experiments.analysis import unit_statistics
from strata.experiments.config import METRICS
from strata.experiments.stats import Statistic, merge_statistics

__all__ = [
    "METRICS",
    "OutcomeWindow",
    "UnitOutcomes",
    "arm_statistics",
    "first_exposures",
    "merge_arm_statistics",
    "unit_outcomes",
]

ORDER = "order"


@dataclass(frozen=True)
class OutcomeWindow:
    """How outcomes are measured after (and the covariate before) the first exposure.

    Attributes:
        window_ms: the analysis window after the first exposure.
        pre_window_ms: the covariate's window before it.
        margin_rate: gross margin on revenue (margin = revenue x rate - coupon cost).
        until_ms: no order at or after this instant counts (None: no cut).
    """

    window_ms: int
    pre_window_ms: int
    margin_rate: float = 0.25
    until_ms: int | None = None


@dataclass(frozen=True)
class UnitOutcomes:
    """One row per exposed user of one bucket: arm, metrics, covariate."""

    user_ids: np.ndarray
    arms: np.ndarray  # str objects
    first_ms: np.ndarray
    metrics: dict[str, np.ndarray]
    covariate: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)


def _ms(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(col.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def first_exposures(
    exposures: pa.Table, experiment: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user_ids ascending, arm of the first exposure, first exposure ms)`` of one
    experiment (ties in time: the first row)."""
    rows = exposures.filter(pc.equal(exposures.column("experiment"), experiment))
    if rows.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, np.int64)
    users = np.asarray(rows.column("user_id").to_numpy(zero_copy_only=False), dtype=np.int64)
    ts = _ms(rows.column("ts"))
    arms = np.asarray(rows.column("arm").to_pylist(), dtype=object)
    order = np.lexsort((np.arange(len(users)), ts, users))
    users, ts, arms = users[order], ts[order], arms[order]
    first = np.ones(len(users), dtype=bool)
    first[1:] = users[1:] != users[:-1]
    return users[first], arms[first], ts[first]


def unit_outcomes(
    exposures: pa.Table, events: pa.Table, experiment: str, window: OutcomeWindow
) -> UnitOutcomes:
    """The outcomes of every user of ``exposures`` first exposed to ``experiment``.

    Args:
        exposures: exposure rows (user_id, ts, experiment, arm) of one bucket.
        events: event rows of the same bucket (user_id, ts, event_type, amount_cny,
            discount_cny); only orders are used.
        experiment: the experiment's name.
        window: how outcomes are measured.
    """
    users, arms, t0 = first_exposures(exposures, experiment)
    n = len(users)
    orders = events.filter(pc.equal(events.column("event_type"), ORDER))
    o_user = np.asarray(orders.column("user_id").to_numpy(zero_copy_only=False), dtype=np.int64)
    o_ts = _ms(orders.column("ts"))
    amount = np.nan_to_num(
        np.asarray(orders.column("amount_cny").to_numpy(zero_copy_only=False), dtype=np.float64)
    )
    discount = (
        np.nan_to_num(
            np.asarray(
                orders.column("discount_cny").to_numpy(zero_copy_only=False), dtype=np.float64
            )
        )
        if "discount_cny" in orders.column_names
        else np.zeros(len(o_user))
    )
    idx = np.searchsorted(users, o_user)
    idx_c = np.minimum(idx, max(n - 1, 0))
    known = (idx < n) & (users[idx_c] == o_user) if n else np.zeros(len(o_user), dtype=bool)
    idx, o_ts, amount, discount = idx_c[known], o_ts[known], amount[known], discount[known]
    start = t0[idx]
    end = start + window.window_ms
    if window.until_ms is not None:
        end = np.minimum(end, window.until_ms)
    post = (o_ts >= start) & (o_ts < end)
    pre = (o_ts < start) & (o_ts >= start - window.pre_window_ms)
    orders_n = np.bincount(idx[post], minlength=n).astype(np.float64)
    revenue = np.bincount(idx[post], weights=amount[post], minlength=n)
    cost = np.bincount(idx[post], weights=discount[post], minlength=n)
    before = np.bincount(idx[pre], weights=amount[pre], minlength=n)
    metrics = {
        "conversion": (orders_n > 0).astype(np.float64),
        "orders_per_user": orders_n,
        "revenue_per_user": revenue,
        "coupon_cost_per_user": cost,
        "margin_per_user": revenue * window.margin_rate - cost,
    }
    return UnitOutcomes(users, arms, t0, metrics, before)


def arm_statistics(
    outcomes: UnitOutcomes,
    arm_names: Sequence[str],
    metrics: Sequence[str],
    *,
    cuped: bool,
) -> dict[str, dict[str, Statistic]]:
    """Per-arm sufficient statistics of one bucket's outcomes (mergeable across buckets with
    :func:`strata.experiments.stats.merge_statistics`); users of arms not in ``arm_names``
    are left out. With ``cuped`` every metric is regression-adjusted on the covariate."""
    code_of = {name: i for i, name in enumerate(arm_names)}
    codes = np.asarray([code_of.get(a, -1) for a in outcomes.arms.tolist()], dtype=np.int64)
    keep = codes >= 0
    return unit_statistics(
        codes[keep],
        list(arm_names),
        {m: outcomes.metrics[m][keep] for m in metrics},
        outcomes.covariate[keep] if cuped else None,
    )


def merge_arm_statistics(
    parts: Sequence[Mapping[str, Mapping[str, Statistic]]],
) -> dict[str, dict[str, Statistic]]:
    """Sum per-arm, per-metric statistics of several buckets."""
    out: dict[str, dict[str, Statistic]] = {}
    for part in parts:
        for arm, by_metric in part.items():
            into = out.setdefault(arm, {})
            for metric, stat in by_metric.items():
                into[metric] = stat if metric not in into else merge_statistics(into[metric], stat)
    return out
