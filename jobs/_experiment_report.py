"""The warehouse side of `strata report experiment NAME`: every bucket's exposures joined to
its orders (a user's exposures and orders share a bucket), per-arm sufficient statistics
merged over buckets, then the gbstats-equal engine — against the control, and for the
headline margin against the holdout."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from jobs._errors import CommandError
from jobs._runtime import progress
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
from strata.io.warehouse import Warehouse
from strata.timeutil import DAY_MS, local_iso

HOLDOUT = "holdout"
HEADLINE = "margin_per_user"
_EVENT_COLUMNS = ["user_id", "ts", "event_type", "amount_cny", "discount_cny"]
_EXPOSURE_COLUMNS = ["user_id", "ts", "experiment", "arm"]


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
    exposures = wh.read_bucket("exposures", bucket, columns=_EXPOSURE_COLUMNS)
    if exposures.num_rows == 0:
        return {}, 0, 0
    events = wh.read_bucket(
        "events", bucket, columns=_EVENT_COLUMNS, read_dictionary=["event_type"]
    )
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
    show_progress: bool = True,
) -> WarehouseReport:
    """Analyse ``exp`` from the warehouse at ``data``.

    Raises:
        CommandError: nobody is exposed to the experiment, or only one arm is.
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
        bar: Any = progress() if show_progress else None
        task = bar.add_task(f"{exp.name}: buckets", total=len(futures)) if bar else None
        if bar:
            bar.start()
        try:
            for f in futures:
                stats, n, u = f.result()
                if stats:
                    parts.append(stats)
                exposed += n
                unknown += u
                if bar and task is not None:
                    bar.advance(task)
        finally:
            if bar:
                bar.stop()
    merged = merge_arm_statistics(parts)
    present = [a for a in arm_names if a in merged and any(s.n for s in merged[a].values())]
    if exp.control not in present:
        raise CommandError(
            f"experiment {exp.name!r}: no exposed user in its control arm {exp.control!r} in "
            f"the warehouse at {data} ({exposed} exposed in all)"
        )
    if len(present) < 2:
        raise CommandError(
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


@dataclass
class StrategyReport:
    """Per strategy and tier: reach, holdout, and the treated-vs-holdout comparisons."""

    version: str
    since_ms: int
    until_ms: int
    rows: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.version,
            "window": {"since": local_iso(self.since_ms), "until": local_iso(self.until_ms)},
            "strategies": self.rows,
        }


def strategy_report(
    data: str,
    *,
    since_ms: int | None,
    until_ms: int,
    version: str | None = None,
    cuped: bool = True,
    pre_window_days: int = 28,
    margin_rate: float = 0.25,
    config_dir: str | None = None,
    show_progress: bool = True,
) -> StrategyReport:
    """Evaluate every strategy of configs/strategies.yaml against its standing holdout over
    ``[since, until)`` on the users of a snapshot (default: the newest one; ``since`` defaults
    to its as-of).

    Raises:
        CommandError: no snapshot, or an empty window.
    """
    from strata.io.snapshots import SnapshotStore
    from strata.strategies.config import load_strategies
    from strata.strategies.evaluation import ARMS, merge_cells, strategy_statistics

    config = load_strategies(config_dir)
    snapshots = SnapshotStore(data)
    versions = snapshots.versions()
    if not versions:
        raise CommandError(f"no snapshot under {data}: run `strata recompute` first")
    version = version or versions[-1]
    if version not in versions:
        raise CommandError(f"no snapshot {version!r}; snapshots: {', '.join(versions[-5:])}")
    manifest = snapshots.manifest(version)
    start = since_ms if since_ms is not None else int(manifest["as_of_ms"])
    if until_ms <= start:
        raise CommandError(
            f"the window is empty: until {local_iso(until_ms)} is not after since "
            f"{local_iso(start)}"
        )
    wh = Warehouse(data)
    n_buckets = int(manifest.get("inputs", {}).get("n_buckets") or wh.n_buckets)
    window = OutcomeWindow(until_ms - start, pre_window_days * DAY_MS, margin_rate, until_ms)

    def one(bucket: int) -> Any:
        rows = snapshots.read_bucket(
            version, bucket, n_buckets, columns=["user_id", "tier", "lifecycle_stage"]
        )
        if rows is None or rows.num_rows == 0:
            return {}
        events = wh.read_bucket(
            "events", bucket, columns=_EVENT_COLUMNS, read_dictionary=["event_type"]
        )
        return strategy_statistics(rows, events, config, start, window, cuped=cuped)

    parts = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        futures = [pool.submit(one, b) for b in range(n_buckets)]
        bar: Any = progress() if show_progress else None
        task = bar.add_task("strategies: buckets", total=len(futures)) if bar else None
        if bar:
            bar.start()
        try:
            for f in futures:
                parts.append(f.result())
                if bar and task is not None:
                    bar.advance(task)
        finally:
            if bar:
                bar.stop()
    cells = merge_cells(parts)
    out: list[dict[str, Any]] = []
    for (name, target), by_arm in cells.items():
        n = {a: max((s.n for s in by_arm[a].values()), default=0) for a in ARMS}
        strategy = config.get(name)
        share = config.holdout_of(strategy) if strategy is not None else 0.0
        row: dict[str, Any] = {
            "strategy": name,
            "target": target,
            "reach": n["treated"],
            "holdout_users": n["holdout"],
            "holdout_share": share,
            "metrics": {},
        }
        if min(n.values()) < 2:
            row["note"] = "not enough users in the holdout or the treated group"
            out.append(row)
            continue
        result = analyse(
            {a: dict(by_arm[a]) for a in ARMS},
            "holdout",
            experiment=name,
            users=n,
            weights={"holdout": share, "treated": 1 - share},
        ).to_json()
        means = {a["arm"]: a["metrics"] for a in result["arms"]}
        for c in result["comparisons"]:
            m = c["metric"]
            row["metrics"][m] = {
                "treated": means["treated"][m]["mean"],
                "holdout": means["holdout"][m]["mean"],
                "cuped": c["cuped"],
                "absolute": c["absolute"],
                "relative": c["relative"],
            }
        row["srm_p_value"] = result["srm_p_value"]
        out.append(row)
    return StrategyReport(version, start, until_ms, out)
