"""The result of `strata train` (:class:`TrainResult`) and the rich tables of `strata train` and
`strata models` (output only)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from jobs._runtime import console, summary_table
from strata.io.models import ModelError, ModelRegistry
from strata.training import IMPORTANCE_TOP, METHODS, TARGETS


@dataclass
class TrainResult:
    """What one ``strata train`` run produced."""

    version: str
    status: str
    path: str
    as_of: str
    horizon_days: int
    cutoffs: list[str]
    examples: dict[str, int]
    features: list[str]
    dropped_features: list[str]
    metrics: dict[str, dict[str, dict[str, Any]]]
    winners: dict[str, str]
    champions: dict[str, dict[str, Any]]
    parity: dict[str, dict[str, Any]]
    importance: dict[str, list[tuple[str, float]]]
    models: dict[str, dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    work_dir: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        version: str,
        path: str,
        meta: dict[str, Any],
        metrics: dict[str, dict[str, dict[str, Any]]],
        importance: dict[str, list[tuple[str, float]]],
        work_dir: str | None,
    ) -> TrainResult:
        """The result of a run that saved ``meta`` (its ``meta.json``) to ``path``."""
        return cls(
            version=version,
            status=meta["status"],
            path=path,
            as_of=meta["as_of"],
            horizon_days=meta["horizon_days"],
            cutoffs=meta["cutoffs"],
            examples=dict(meta["data"]["examples"]),
            features=meta["features"],
            dropped_features=meta["dropped_features"],
            metrics=metrics,
            winners=meta["winner"],
            champions=meta["champion"],
            parity=meta["checks"]["parity"],
            importance=importance,
            models=meta["models"],
            problems=meta["problems"],
            notes=meta["notes"],
            work_dir=work_dir,
            timings=meta["timings"],
        )


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


def metrics_tables(result: TrainResult) -> list[Table]:
    """Test-split metrics: classifiers (churn, repurchase) and the spend regression."""
    cls = Table(title="test metrics: classification", header_style="bold")
    for col in ("target", "method", "AUC", "PR-AUC", "log loss", "base rate", "n"):
        cls.add_column(col, justify="left" if col in ("target", "method") else "right")
    reg = Table(title="test metrics: next-period spend (CNY)", header_style="bold")
    for col in ("method", "MAE", "RMSE", "R²", "n"):
        reg.add_column(col, justify="left" if col == "method" else "right")
    for name, target in TARGETS.items():
        for method in METHODS:
            m = result.metrics.get(name, {}).get(method)
            if m is None:
                continue
            mark = " *" if result.winners.get(name) == method else ""
            if target.kind == "classification":
                cls.add_row(
                    name, method + mark, _fmt(m.get("auc")), _fmt(m.get("pr_auc")),
                    _fmt(m.get("log_loss")), _fmt(m.get("base_rate")), _fmt(m.get("n")),
                )  # fmt: skip
            else:
                reg.add_row(
                    method + mark, _fmt(m.get("mae"), 2), _fmt(m.get("rmse"), 2),
                    _fmt(m.get("r2")), _fmt(m.get("n")),
                )  # fmt: skip
    return [cls, reg]


def calibration_table(metrics: dict[str, Any], title: str) -> Table | None:
    """Calibration deciles (mean predicted vs observed rate), when the metrics carry them."""
    deciles = metrics.get("calibration")
    if not deciles:
        return None
    table = Table(title=title, header_style="bold")
    rows = _calibration_rows(deciles)
    if not rows:
        return None
    for col in rows[0]:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row.values()))
    return table


def _calibration_rows(deciles: Any) -> list[dict[str, Any]]:
    """Normalise the calibration deciles (a list of dicts or a dict of lists) into rows."""
    if isinstance(deciles, dict):
        keys = list(deciles)
        n = len(deciles[keys[0]]) if keys else 0
        return [{k: deciles[k][i] for k in keys} for i in range(n)]
    if isinstance(deciles, list) and deciles and isinstance(deciles[0], dict):
        return list(deciles)
    return []


def importance_table(result: TrainResult) -> Table:
    """Top features by gain, one column pair per model."""
    table = Table(title=f"feature importance (gain, top {IMPORTANCE_TOP})", header_style="bold")
    table.add_column("#", justify="right")
    for name in TARGETS:
        table.add_column(name, overflow="fold")
        table.add_column("gain", justify="right")
    depth = max((len(v) for v in result.importance.values()), default=0)
    for i in range(depth):
        cells = [str(i + 1)]
        for name in TARGETS:
            ranked = result.importance.get(name, [])
            if i < len(ranked):
                cells += [ranked[i][0], f"{ranked[i][1]:,.1f}"]
            else:
                cells += ["", ""]
        table.add_row(*cells)
    return table


def print_result(result: TrainResult) -> None:
    """Metrics, churn calibration, importance and, last, the run summary."""
    for table in metrics_tables(result):
        console.print(table)
    churn = result.metrics.get("churn", {}).get("distributed")
    if churn:
        cal = calibration_table(churn, "churn calibration (test, distributed model)")
        if cal is not None:
            console.print(cal)
    console.print(importance_table(result))
    rows: list[tuple[str, Any]] = [
        ("version", result.version),
        ("status", result.status),
        ("as of", result.as_of),
        ("horizon (days)", result.horizon_days),
        ("cutoffs", ", ".join(result.cutoffs)),
        *[(f"examples {s}", n) for s, n in result.examples.items()],
        ("features used", len(result.features)),
        ("features dropped (no data)", ", ".join(result.dropped_features) or "-"),
    ]
    for name, p in result.parity.items():
        if "auc_gap" in p:
            ok = "ok" if p["ok"] else f"ABOVE {p['max_auc_gap']}"
            rows.append((f"{name} AUC gap distributed vs single", f"{p['auc_gap']:.4f} ({ok})"))
    rows += [(f"winner {k}", v) for k, v in result.winners.items()]
    rows += [
        (f"published {k}", f"{c['method']} ({c['reason']})") for k, c in result.champions.items()
    ]
    rows += [(f"{k} rounds", v.get("rounds", "-")) for k, v in result.models.items()]
    rows += [(k, v) for k, v in result.timings.items()]
    rows += [("models", result.path)]
    if result.work_dir:
        rows.append(("scratch shards kept", result.work_dir))
    rows += [("problem", p) for p in result.problems]
    rows += [("note", n) for n in result.notes]
    console.print(summary_table("train", rows))
    for name, p in result.parity.items():
        if "auc_gap" in p and not p["ok"]:
            console.print(
                f"[yellow]{name}: distributed and single-node AUC differ by "
                f"{p['auc_gap']:.4f} (> {p['max_auc_gap']})"
            )


def published(meta: dict[str, Any]) -> str:
    """Which method publishes each target (champion/challenger), e.g. ``churn=model,
    repurchase=bgnbd``; ``-`` for a version without a champion block."""
    block = meta.get("champion") or {}
    return ", ".join(f"{k}={v.get('method', 'model')}" for k, v in block.items()) or "-"


def print_versions(registry: ModelRegistry) -> None:
    """The trained model versions with status, test metrics, winners and what publishes."""
    versions = registry.versions()
    latest = registry.latest_good()
    table = Table(title=f"models in {registry.root}", header_style="bold")
    for col in (
        "version", "status", "as of", "horizon", "train rows", "churn AUC",
        "repurchase AUC", "spend RMSE", "AUC gap", "winners", "published",
    ):  # fmt: skip
        left = col in ("version", "status", "as of", "winners", "published")
        table.add_column(col, justify="left" if left else "right", no_wrap=col != "winners")
    for version in versions:
        try:
            meta = registry.meta(version)
        except ModelError as exc:
            table.add_row(version, f"unreadable: {exc}", *[""] * 9)
            continue
        m = meta.get("metrics", {})
        gaps = [
            p["auc_gap"]
            for p in meta.get("checks", {}).get("parity", {}).values()
            if "auc_gap" in p
        ]
        status = str(meta.get("status", "?")) + (" (latest)" if version == latest else "")
        table.add_row(
            version,
            status,
            str(meta.get("as_of", "-")),
            str(meta.get("horizon_days", "-")),
            _fmt(meta.get("data", {}).get("examples", {}).get("train")),
            _fmt(m.get("churn", {}).get("auc")),
            _fmt(m.get("repurchase", {}).get("auc")),
            _fmt(m.get("spend", {}).get("rmse"), 2),
            _fmt(max(gaps)) if gaps else "-",
            ", ".join(f"{k}={v}" for k, v in meta.get("winner", {}).items()) or "-",
            published(meta),
        )
    console.print(table)
    if not versions:
        console.print("no model versions yet; run `strata train`")
