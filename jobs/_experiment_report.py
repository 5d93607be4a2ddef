"""The warehouse side of `strata report experiment NAME` (a progress bar around
:func:`strata.io.experiment_reader.warehouse_report`) and of `strata report strategies`: every
strategy against its standing holdout."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from jobs._errors import CommandError
from jobs._runtime import progress
from strata.experiments import analyse
from strata.experiments.analysis import Correction
from strata.experiments.config import Experiment
from strata.experiments.outcomes import OutcomeWindow
from strata.io import experiment_reader
from strata.io.experiment_reader import WarehouseReport
from strata.io.warehouse import Warehouse
from strata.timeutil import DAY_MS, local_iso

_EVENT_COLUMNS = experiment_reader.EVENT_COLUMNS


def warehouse_report(
    data: str,
    exp: Experiment,
    *,
    until_ms: int | None,
    cuped: bool = True,
    correction: Correction = "none",
    sequential_tuning: float | None = None,
    show_progress: bool = True,
) -> WarehouseReport:
    """:func:`strata.io.experiment_reader.warehouse_report` with a progress bar over buckets."""
    bar: Any = progress() if show_progress else None
    task: list[Any] = []

    def start(total: int) -> None:
        if bar is not None:
            task.append(bar.add_task(f"{exp.name}: buckets", total=total))
            bar.start()

    def advance() -> None:
        if bar is not None and task:
            bar.advance(task[0])

    try:
        return experiment_reader.warehouse_report(
            data,
            exp,
            until_ms=until_ms,
            cuped=cuped,
            correction=correction,
            sequential_tuning=sequential_tuning,
            on_start=start,
            on_bucket=advance,
        )
    finally:
        if bar is not None:
            bar.stop()


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
