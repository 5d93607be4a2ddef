"""`strata report experiment`: an experiment's effects per arm and metric, equal to gbstats.

``--from FILE`` analyses an experiment run elsewhere (one row per unit: an arm column and metric
columns, optionally a pre-exposure covariate for CUPED) with the same engine
(:func:`strata.experiments.analyse`) as the warehouse-based report.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.table import Table

from jobs._errors import CommandError
from jobs._runtime import as_of_option, console
from strata.experiments import ExperimentAnalysis, analyse, unit_statistics
from strata.experiments.analysis import Correction
from strata.io.unit_table import read_unit_table
from strata.timeutil import to_epoch_ms

app = typer.Typer(no_args_is_help=True)


def parse_weights(text: str) -> dict[str, float]:
    """``"a=0.5,b=0.5"`` -> ``{"a": 0.5, "b": 0.5}``; a malformed item is a CommandError."""
    weights: dict[str, float] = {}
    for item in text.split(","):
        arm, sep, value = item.partition("=")
        try:
            w = float(value)
        except ValueError:
            w = math.nan
        if not sep or not arm.strip() or not (w >= 0 and math.isfinite(w)):
            raise CommandError(
                f"--weights: {item.strip()!r} is not ARM=WEIGHT with a weight >= 0 "
                "(e.g. --weights control=0.5,treatment=0.5)"
            )
        weights[arm.strip()] = w
    if sum(weights.values()) <= 0:
        raise CommandError("--weights: the weights sum to 0")
    return weights


def _num(x: float, pct: bool = False) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:+.1%}" if pct else f"{x:,.4g}"


def _p(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.4f}"


def arms_table(result: ExperimentAnalysis) -> Table:
    table = Table(title=f"experiment {result.experiment}: arms", title_justify="left")
    table.add_column("arm")
    table.add_column("users", justify="right")
    metrics = list(result.arms[0].metrics) if result.arms else []
    for m in metrics:
        table.add_column(f"{m} mean (sd)", justify="right")
    for a in result.arms:
        label = f"{a.arm} (control)" if a.arm == result.control else a.arm
        table.add_row(
            label,
            f"{a.users:,}",
            *(f"{_num(a.metrics[m].mean)} ({_num(a.metrics[m].stddev)})" for m in metrics),
        )
    return table


def comparisons_table(result: ExperimentAnalysis) -> Table:
    kind = "sequential" if result.sequential else "fixed-horizon"
    table = Table(
        title=f"effects against {result.control} (Welch t, 95% CI, {kind})", title_justify="left"
    )
    table.add_column("arm", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    table.add_column("CUPED")
    for col in ("absolute [95% CI]", "relative [95% CI]", "p", "p BH"):
        table.add_column(col, justify="right")
    for c in result.comparisons:
        a, r = c.absolute, c.relative
        table.add_row(
            c.arm,
            c.metric,
            "yes" if c.cuped else "no",
            f"{_num(a.effect)} [{_num(a.ci_low)}, {_num(a.ci_high)}]",
            f"{_num(r.effect, pct=True)} [{_num(r.ci_low, pct=True)}, {_num(r.ci_high, pct=True)}]",
            _p(r.p_value),
            _p(c.relative_p_adjusted),
        )
    return table


def show_analysis(result: ExperimentAnalysis, as_json: bool, units: str, tail: str = "") -> None:
    """Print an analysis: its JSON (warnings on stderr), or the arm and comparison tables, a
    summary line (``units``; SRM p-value; ``tail``) and the warnings."""
    if as_json:
        print(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        return
    console.print(arms_table(result))
    console.print(comparisons_table(result))
    flag = "  [bold red]MISMATCH[/]" if result.srm_mismatch else ""
    console.print(f"{units}; SRM p-value {result.srm_p_value:.4g}{flag}{tail}")
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}")


@app.command("experiment")
def experiment(
    name: str | None = typer.Argument(
        None, help="The experiment (optional with --from: the file's stem)."
    ),
    from_file: str | None = typer.Option(
        None,
        "--from",
        help="A CSV or Parquet file of one row per unit (an experiment run elsewhere).",
    ),
    arm_col: str | None = typer.Option(None, "--arm-col", help="The arm column (with --from)."),
    metric_cols: list[str] = typer.Option(
        [], "--metric-col", help="A metric column (repeatable); a 0/1 column is a proportion."
    ),
    covariate_col: str | None = typer.Option(
        None, "--covariate-col", help="Pre-exposure covariate column: CUPED on every metric."
    ),
    control: str | None = typer.Option(
        None,
        "--control",
        help="The control arm (default: 'control' if present, else the first arm in sorted order).",
    ),
    weights: str | None = typer.Option(
        None,
        "--weights",
        help="Expected split for the SRM check, e.g. a=0.5,b=0.5 (default equal).",
    ),
    sequential: bool = typer.Option(
        False, "--sequential", help="gbstats' sequential test (valid at every look)."
    ),
    sequential_tuning: float = typer.Option(
        5000.0, "--sequential-tuning", help="The sequential test's tuning (expected users)."
    ),
    correction: str = typer.Option(
        "none",
        "--correction",
        help="none | bh: --json p-values Benjamini-Hochberg adjusted "
        "across all comparisons (the table shows both).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the analysis as JSON."),
    data: str = typer.Option(
        "./data",
        "--data",
        envvar="STRATA_DATA",
        help="Data root (the warehouse's exposures and orders).",
    ),
    until: str | None = typer.Option(
        None,
        "--until",
        help="Count orders before this instant only (YYYY-MM-DD = that local midnight; "
        "default: now).",
    ),
    cuped: bool = typer.Option(
        True, "--cuped/--no-cuped", help="CUPED with the pre-exposure spend as covariate."
    ),
) -> None:
    """Per arm and metric: users, mean, effect against control, 95% CI, p-value (as gbstats).

    From the warehouse: ``strata report experiment NAME --data DIR`` (an experiment of
    configs/experiments.yaml: its exposures and the orders after each user's first exposure).
    From a file of one row per unit: ``--from FILE --arm-col A --metric-col M``."""
    if correction not in ("none", "bh"):
        raise CommandError(f"--correction: {correction!r} is not one of none, bh")
    if sequential and not sequential_tuning > 0:
        raise CommandError("--sequential-tuning must be > 0")
    if from_file is None and (arm_col or metric_cols or covariate_col or weights):
        raise CommandError(
            "--arm-col, --metric-col, --covariate-col and --weights read a file: add --from FILE "
            "(without it the report reads the experiment NAME from the warehouse)"
        )
    if from_file is None:
        _warehouse(name, data, until, cuped, correction, sequential, sequential_tuning, as_json)
        return
    if arm_col is None or not metric_cols:
        raise CommandError("--from needs --arm-col and at least one --metric-col")
    expected = parse_weights(weights) if weights else None

    table = read_unit_table(from_file, arm_col, metric_cols, covariate_col)
    if len(table.arm_names) < 2:
        raise CommandError(
            f"{from_file}: column {arm_col!r} has one arm ({table.arm_names[0]}); an experiment "
            "needs a control and at least one treatment"
        )
    if control is None:
        control = "control" if "control" in table.arm_names else table.arm_names[0]
    if control not in table.arm_names:
        raise CommandError(
            f"--control {control!r} is not an arm of {from_file}; its arms: "
            f"{', '.join(table.arm_names)}"
        )
    if expected is not None and set(expected) != set(table.arm_names):
        raise CommandError(
            f"--weights names arms {', '.join(sorted(expected))}; {from_file} has "
            f"{', '.join(table.arm_names)}"
        )
    stats = unit_statistics(table.arm_codes, table.arm_names, table.metrics, table.covariate)
    corr: Correction = "bh" if correction == "bh" else "none"
    result = analyse(
        stats,
        control,
        experiment=name or Path(from_file).name.split(".")[0],
        weights=expected,
        sequential_tuning=sequential_tuning if sequential else None,
        correction=corr,
    )
    show_analysis(result, as_json, f"{table.rows:,} units in {len(table.arm_names)} arms")


def _warehouse(
    name: str | None,
    data: str,
    until: str | None,
    cuped: bool,
    correction: str,
    sequential: bool,
    sequential_tuning: float,
    as_json: bool,
) -> None:
    from jobs._experiment_report import warehouse_report
    from strata.experiments.config import load_experiments
    from strata.settings import Settings

    if name is None:
        raise CommandError(
            "name the experiment (strata report experiment NAME --data DIR), or analyse a file "
            "of one row per unit with --from FILE --arm-col A --metric-col M"
        )
    config = load_experiments()
    exp = config.get(name)
    if exp is None:
        known = ", ".join(e.name for e in config.experiments) or "none"
        raise CommandError(f"no experiment {name!r} in configs/experiments.yaml; defined: {known}")
    until_ms = to_epoch_ms(as_of_option(until)) if until else time.time_ns() // 1_000_000
    corr: Correction = "bh" if correction == "bh" else "none"
    report = warehouse_report(
        Settings(data=data).data,
        exp,
        until_ms=until_ms,
        cuped=cuped,
        correction=corr,
        sequential_tuning=sequential_tuning if sequential else None,
        show_progress=not as_json,
    )
    result = report.analysis
    show_analysis(
        result,
        as_json,
        f"{report.exposed:,} exposed users in {len(result.arms)} arms over {report.buckets} "
        f"buckets",
        f"; outcomes in the {exp.analysis_window_days} days after each first exposure"
        + (f", CUPED on the spend of the {exp.pre_window_days} days before" if cuped else ""),
    )


@app.command("strategies")
def strategies(
    data: str = typer.Option(
        "./data", "--data", envvar="STRATA_DATA", help="Data root (snapshots and warehouse)."
    ),
    since: str | None = typer.Option(
        None, "--since", help="Window start (YYYY-MM-DD local midnight; default: the as-of)."
    ),
    until: str | None = typer.Option(None, "--until", help="Window end, exclusive (default: now)."),
    version: str | None = typer.Option(
        None, "--version", help="The snapshot whose users and tiers (default: the newest)."
    ),
    cuped: bool = typer.Option(
        True, "--cuped/--no-cuped", help="CUPED with the spend of the 28 days before."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Per tier strategy: reach, conversion, revenue and incremental margin against its
    standing holdout (configs/strategies.yaml), with 95% CIs, over a window."""
    from jobs._experiment_report import strategy_report
    from strata.settings import Settings

    report = strategy_report(
        Settings(data=data).data,
        since_ms=to_epoch_ms(as_of_option(since)) if since else None,
        until_ms=to_epoch_ms(as_of_option(until)) if until else time.time_ns() // 1_000_000,
        version=version,
        cuped=cuped,
        show_progress=not as_json,
    )
    doc = report.to_json()
    if as_json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(
        title=f"strategies vs their standing holdouts, {doc['window']['since']} .. "
        f"{doc['window']['until']} (snapshot {report.version})",
        title_justify="left",
    )
    for col in ("strategy", "target", "reach", "holdout", "conv. lift", "revenue/user lift",
                "incremental margin/user (95% CI)"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("strategy", "target") else "right")
    for row in doc["strategies"]:
        m = row["metrics"]

        def lift(metric: str, m: dict[str, Any] = m) -> str:
            if metric not in m:
                return "-"
            r = m[metric]["relative"]
            return f"{r['effect']:+.1%} (p {_p(r['p_value'])})"

        margin = m.get("margin_per_user", {}).get("absolute")
        table.add_row(
            row["strategy"],
            row["target"],
            f"{row['reach']:,}",
            f"{row['holdout_users']:,}",
            lift("conversion"),
            lift("revenue_per_user"),
            "-"
            if margin is None
            else f"{margin['effect']:+.2f} [{margin['ci_low']:+.2f}, {margin['ci_high']:+.2f}]",
        )
    console.print(table)


@app.command("tiers")
def tiers(
    data: str = typer.Option(
        "./data", "--data", envvar="STRATA_DATA", help="Data root (snapshots and warehouse)."
    ),
    first: str | None = typer.Option(
        None, "--from", help="Oldest snapshot version to cover (default: the oldest retained)."
    ),
    last: str | None = typer.Option(
        None, "--to", help="Newest snapshot version to cover (default: the newest)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report document as JSON."),
    period_days: int = typer.Option(
        30,
        "--period-days",
        min=1,
        help="Days before each as-of the ARPU, orders and coupon "
        "cost count (the period [as_of - N days, as_of)).",
    ),
    engine: str = typer.Option(
        "modin", "--engine", help="modin (on Ray) | pandas: the same metric code on either."
    ),
) -> None:
    """Tier and lifecycle shares, transitions (with their rules), ARPU, orders, LTV, coupon cost,
    strategy reach and new / lost / returning users per tier over the retained snapshots;
    written as a versioned report (JSON + Parquet) under <data>/reports/tiers/."""
    from jobs._tiers_report import print_run, run
    from strata.reports.frames import check_engine
    from strata.settings import Settings

    try:
        chosen = check_engine(engine)
    except ValueError as exc:
        raise CommandError(f"--engine: {exc}") from None
    result = run(Settings(data=data), chosen, first, last, period_days, show_progress=not as_json)
    print_run(result, as_json)
