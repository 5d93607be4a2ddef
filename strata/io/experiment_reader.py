"""An experiment's analysis from the warehouse: every bucket's exposures joined to its orders
(a user's exposures and orders share a bucket), per-arm sufficient statistics merged over
buckets, then the gbstats-equal engine — against the control, and for the headline margin
against the holdout. Used by `strata report experiment NAME` and the API's
``GET /v1/reports/experiments`` (the dashboard), so both show the same numbers."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from strata.experiments import ExperimentAnalysis, analyse
from strata.experiments.analysis import Correction
from strata.experiments.config import Experiment
from strata.experiments.outcomes import (
    OutcomeWindow,
    arm_statistics,
    merge_arm_statistics,
    unit_outcomes,
)
from strata.experiments.stats import Statistic
from strata.io.warehouse import Warehouse, WarehouseError
from strata.timeutil import DAY_MS


class ExperimentDataError(WarehouseError):
    """The warehouse holds too little of an experiment to analyse it (no exposed control
    user, or only one arm)."""


HOLDOUT = "holdout"
HEADLINE = "margin_per_user"
EVENT_COLUMNS = ["user_id", "ts", "event_type", "amount_cny", "discount_cny"]
EXPOSURE_COLUMNS = ["user_id", "ts", "experiment", "arm"]


@dataclass
class WarehouseReport:
    """The analysis and what it read."""

    analysis: ExperimentAnalysis
    buckets: int
    exposed: int
    unknown_arms: int


def _bucket(
    wh: Warehouse,
    bucket: int,
    exp: Experiment,
    window: OutcomeWindow,
    arm_names: list[str],
    metrics: list[str],
    cuped: bool,
) -> tuple[dict[str, dict[str, Statistic]], int, int]:
    exposures = wh.read_bucket("exposures", bucket, columns=EXPOSURE_COLUMNS)
    if exposures.num_rows == 0:
        return {}, 0, 0
    events = wh.read_bucket("events", bucket, columns=EVENT_COLUMNS, read_dictionary=["event_type"])
    outcomes = unit_outcomes(exposures, events, exp.name, window)
    if len(outcomes) == 0:
        return {}, 0, 0
    known = set(arm_names)
    unknown = sum(1 for a in outcomes.arms.tolist() if a not in known)
    return arm_statistics(outcomes, arm_names, metrics, cuped=cuped), len(outcomes), unknown


def guardrail_breaches(exp: Experiment, analysis: ExperimentAnalysis) -> list[str]:
    """A warning per arm whose mean breaks one of the experiment's guardrails."""
    out = []
    for arm in analysis.arms:
        for g in exp.guardrails:
            m = arm.metrics.get(g.metric)
            if m is None:
                continue
            if g.max is not None and m.mean > g.max:
                out.append(f"guardrail: {arm.arm} has {g.metric} {m.mean:.4g} > max {g.max:g}")
            if g.min is not None and m.mean < g.min:
                out.append(f"guardrail: {arm.arm} has {g.metric} {m.mean:.4g} < min {g.min:g}")
    return out


def warehouse_report(
    data: str,
    exp: Experiment,
    *,
    until_ms: int | None,
    cuped: bool = True,
    correction: Correction = "none",
    sequential_tuning: float | None = None,
    threads: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_bucket: Callable[[], None] | None = None,
) -> WarehouseReport:
    """Analyse ``exp`` from the warehouse at ``data``.

    Args:
        on_start: called once with the number of buckets to read (a progress bar's total).
        on_bucket: called after each bucket is read.

    Raises:
        ExperimentDataError: nobody is exposed to the experiment's control, or only one arm is.
    """
    wh = Warehouse(data)
    buckets = wh.buckets("exposures")
    metrics = list(dict.fromkeys([exp.primary_metric, *exp.secondary_metrics,
                                  *(g.metric for g in exp.guardrails)]))  # fmt: skip
    arm_names = [a.name for a in exp.arms] + ([HOLDOUT] if exp.holdout > 0 else [])
    window = OutcomeWindow(
        window_ms=exp.analysis_window_days * DAY_MS,
        pre_window_ms=exp.pre_window_days * DAY_MS,
        margin_rate=exp.margin_rate,
        until_ms=until_ms,
    )
    parts: list[dict[str, dict[str, Statistic]]] = []
    exposed = unknown = 0
    workers = threads or min(8, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(_bucket, wh, b, exp, window, arm_names, metrics, cuped) for b in buckets
        ]
        if on_start is not None:
            on_start(len(futures))
        for f in futures:
            stats, n, u = f.result()
            if stats:
                parts.append(stats)
            exposed += n
            unknown += u
            if on_bucket is not None:
                on_bucket()
    merged = merge_arm_statistics(parts)
    present = [a for a in arm_names if a in merged and any(s.n for s in merged[a].values())]
    if exp.control not in present:
        raise ExperimentDataError(
            f"experiment {exp.name!r}: no exposed user in its control arm {exp.control!r} in "
            f"the warehouse at {data} ({exposed} exposed in all)"
        )
    if len(present) < 2:
        raise ExperimentDataError(
            f"experiment {exp.name!r}: only the control arm has exposed users; nothing to compare"
        )
    stats_by_arm = {a: merged[a] for a in present}
    total = sum(a.weight for a in exp.arms)
    shares = {a.name: a.weight / total * (1 - exp.holdout) for a in exp.arms}
    shares[HOLDOUT] = exp.holdout
    weights = {a: shares[a] for a in present}
    users = {a: max(s.n for s in stats_by_arm[a].values()) for a in present}
    main = analyse(
        stats_by_arm,
        exp.control,
        experiment=exp.name,
        users=users,
        weights=weights,
        sequential_tuning=sequential_tuning,
        correction=correction,
    )
    if HOLDOUT in present and HEADLINE in metrics:
        # the headline: each arm's margin per user against the standing holdout
        vs_holdout = analyse(
            {a: {HEADLINE: stats_by_arm[a][HEADLINE]} for a in present},
            HOLDOUT,
            experiment=exp.name,
            users=users,
            weights=weights,
            sequential_tuning=sequential_tuning,
            correction=correction,
        )
        main = dataclasses.replace(main, comparisons=[*main.comparisons, *vs_holdout.comparisons])
    main.warnings.extend(guardrail_breaches(exp, main))
    if unknown:
        main.warnings.append(
            f"{unknown} exposed users are in arms the experiment no longer defines; left out"
        )
    return WarehouseReport(main, len(buckets), exposed, unknown)
