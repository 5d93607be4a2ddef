"""What each tier strategy is worth: its reached users against its standing holdout.

For a strategy and a tier it applies to, the snapshot's users of that tier (or stage) split by
the strategy's standing-holdout hash into ``treated`` and ``holdout``
(:meth:`strata.strategies.config.StrategiesConfig.in_holdout`, the same split the API shows and
the stream workers enforce). Outcomes are the users' orders in the evaluation window
``[since, until)`` (:func:`strata.experiments.outcomes.unit_outcomes` with every user starting
at ``since``); the CUPED covariate is their spend in the pre-window before ``since``. One
bucket at a time (snapshot rows and orders of a bucket), merged over buckets.

Strategies that apply by dynamic tag only have no snapshot population and are skipped; the
eligibility conditions are not applied (the population is everyone the strategy targets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from strata.experiments.outcomes import OutcomeWindow, arm_statistics, unit_outcomes
from strata.experiments.stats import Statistic, merge_statistics
from strata.schema import TIMESTAMP
from strata.strategies.config import StrategiesConfig, Strategy

__all__ = ["ARMS", "STRATEGY_METRICS", "Cell", "populations", "strategy_statistics"]

#: the two groups of a strategy's evaluation (the holdout is the baseline)
ARMS: tuple[str, ...] = ("holdout", "treated")
STRATEGY_METRICS: tuple[str, ...] = ("conversion", "revenue_per_user", "margin_per_user")
#: (strategy, tier or stage)
Cell = tuple[str, str]


def populations(strategy: Strategy) -> list[tuple[str, str]]:
    """``(column, value)`` of the snapshot populations a strategy targets."""
    t = strategy.applies_to
    return [("tier", v) for v in t.tiers] + [("lifecycle_stage", v) for v in t.stages]


def strategy_statistics(
    snapshot: pa.Table,
    events: pa.Table,
    config: StrategiesConfig,
    since_ms: int,
    window: OutcomeWindow,
    *,
    cuped: bool,
) -> dict[Cell, dict[str, dict[str, Statistic]]]:
    """Per (strategy, tier or stage): per arm (``holdout``, ``treated``) sufficient statistics
    of one bucket (``snapshot``: user_id, tier, lifecycle_stage; ``events``: its orders)."""
    out: dict[Cell, dict[str, dict[str, Statistic]]] = {}
    users = np.asarray(snapshot.column("user_id").to_numpy(zero_copy_only=False), dtype=np.int64)
    columns = {
        name: np.asarray(snapshot.column(name).to_pylist(), dtype=object)
        for name in ("tier", "lifecycle_stage")
    }
    for strategy in config.strategies:
        for column, value in populations(strategy):
            members = users[columns[column] == value]
            if len(members) == 0:
                continue
            arms = [
                "holdout" if config.in_holdout(strategy, int(u)) else "treated"
                for u in members.tolist()
            ]
            exposures = pa.table(
                {
                    "user_id": members,
                    "ts": pa.array(np.full(len(members), since_ms)).cast(TIMESTAMP),
                    "experiment": [strategy.name] * len(members),
                    "arm": arms,
                }
            )
            outcomes = unit_outcomes(exposures, events, strategy.name, window)
            out[(strategy.name, value)] = arm_statistics(
                outcomes, ARMS, STRATEGY_METRICS, cuped=cuped
            )
    return out


def merge_cells(
    parts: Sequence[Mapping[Cell, Mapping[str, Mapping[str, Statistic]]]],
) -> dict[Cell, dict[str, dict[str, Statistic]]]:
    """Sum the per-bucket statistics of every cell."""
    out: dict[Cell, dict[str, dict[str, Statistic]]] = {}
    for part in parts:
        for cell, by_arm in part.items():
            into = out.setdefault(cell, {})
            for arm, by_metric in by_arm.items():
                dst = into.setdefault(arm, {})
                for metric, stat in by_metric.items():
                    dst[metric] = stat if metric not in dst else merge_statistics(dst[metric], stat)
    return out
