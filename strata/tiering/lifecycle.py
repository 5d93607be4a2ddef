"""Lifecycle stage of each user (new / growing / mature / declining / churned).

Rules and thresholds come from configs/lifecycle.yaml (:class:`LifecycleRules`); each user also
gets the rule that fired (``lifecycle_rule``) so the stage can be explained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from strata.config import StrictModel, config_path, load_yaml
from strata.timeutil import DAY_MS

STAGES: tuple[str, ...] = ("new", "growing", "mature", "declining", "churned")


class LifecycleRules(StrictModel):
    """Thresholds of the lifecycle rules (see configs/lifecycle.yaml)."""

    churned_after_days: int = Field(90, ge=1)
    new_within_days: int = Field(30, ge=1)
    declining_window_days: Literal[30, 90] = 30
    declining_ratio: float = Field(0.35, gt=0, lt=1)
    declining_min_prev_orders: int = Field(3, ge=1)
    mature_min_orders: int = Field(6, ge=1)
    mature_min_tenure_days: int = Field(90, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> LifecycleRules:
        if self.new_within_days >= self.churned_after_days:
            raise ValueError(
                f"new_within_days ({self.new_within_days}) must be below "
                f"churned_after_days ({self.churned_after_days})"
            )
        return self


def load_lifecycle_rules(config_dir: str | Path | None = None) -> LifecycleRules:
    return load_yaml(config_path("lifecycle", config_dir), LifecycleRules)


def _days_since(ts: pa.ChunkedArray | pa.Array, as_of_ms: int) -> np.ndarray:
    """Days from each timestamp to as-of (float, NaN where null)."""
    ms = ts.cast(pa.int64()).to_numpy(zero_copy_only=False).astype("float64")
    if ts.null_count:
        valid = np.asarray(ts.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        ms = np.where(valid, ms, np.nan)
    return (as_of_ms - ms) / DAY_MS


def _int_col(features: pa.Table, name: str) -> np.ndarray:
    return np.nan_to_num(
        features.column(name).to_numpy(zero_copy_only=False).astype("float64"), nan=0.0
    )


def assign_lifecycle(
    features: pa.Table, as_of_ms: int, rules: LifecycleRules
) -> tuple[pa.Array, pa.Array]:
    """Stage and fired rule of every user.

    Args:
        features: per-user features with ``first_order_ts``, ``last_order_ts``, ``orders_total``,
            ``frequency_<w>d``, ``frequency_prev_<w>d`` (w = the declining window) and
            ``signup_ts``.
        as_of_ms: the as-of instant (epoch ms, UTC).
        rules: thresholds.

    Returns:
        (lifecycle_stage, lifecycle_rule) string arrays, one entry per row.
    """
    n = features.num_rows
    since_last = _days_since(features.column("last_order_ts"), as_of_ms)
    since_first = _days_since(features.column("first_order_ts"), as_of_ms)
    since_signup = _days_since(features.column("signup_ts"), as_of_ms)
    orders = _int_col(features, "orders_total")
    w = rules.declining_window_days
    recent = _int_col(features, f"frequency_{w}d")
    before = _int_col(features, f"frequency_prev_{w}d")
    has_order = orders > 0

    churned_gap = has_order & (since_last >= rules.churned_after_days)
    never_old = ~has_order & ~(since_signup < rules.new_within_days)
    new_buyer = has_order & (since_first < rules.new_within_days)
    new_signup = ~has_order & (since_signup < rules.new_within_days)
    declining = (
        has_order
        & (before >= rules.declining_min_prev_orders)
        & (recent <= rules.declining_ratio * before)
    )
    # tenure counts from signup when known: the warehouse may hold less history than the
    # customer relationship (first_order_ts is the first order *in the data*)
    tenure = np.where(np.isnan(since_signup), since_first, np.fmax(since_signup, since_first))
    mature = (
        has_order & (orders >= rules.mature_min_orders) & (tenure >= rules.mature_min_tenure_days)
    )
    conditions = [churned_gap, never_old, new_buyer, new_signup, declining, mature, has_order]
    stages = ["churned", "churned", "new", "new", "declining", "mature", "growing"]
    rule_names = [
        f"no order for >= {rules.churned_after_days} days",
        f"no order ever, signed up >= {rules.new_within_days} days ago",
        f"first order < {rules.new_within_days} days ago",
        f"signed up < {rules.new_within_days} days ago, no order yet",
        f"orders last {w}d <= {rules.declining_ratio:g} x previous {w}d "
        f"(>= {rules.declining_min_prev_orders})",
        f">= {rules.mature_min_orders} orders, customer >= {rules.mature_min_tenure_days} days",
        "ordering, not yet mature",
    ]
    choice = np.full(n, len(conditions) - 1, dtype=np.int8)
    for i in range(len(conditions) - 1, -1, -1):
        choice[conditions[i]] = i
    stage_idx = np.asarray([STAGES.index(s) for s in stages], dtype=np.int8)[choice]
    stage = pa.DictionaryArray.from_arrays(pa.array(stage_idx), pa.array(STAGES)).cast(pa.string())
    rule = pa.DictionaryArray.from_arrays(pa.array(choice), pa.array(rule_names)).cast(pa.string())
    return stage, rule
