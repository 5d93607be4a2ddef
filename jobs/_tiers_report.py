"""`strata report tiers`: wiring and output.

Reads the retained snapshots and the warehouse's orders and exposures
(:mod:`strata.io.report_inputs`), computes the report with the metric code of
:mod:`strata.reports.metrics` on the chosen engine (Modin on Ray by default), writes it
through :class:`strata.io.reports.ReportStore` and prints rich tables or the JSON document.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from rich.table import Table

from jobs._errors import CommandError
from jobs._runtime import console, progress, ray_session, summary_table
from strata.io.report_inputs import (
    ReportInputError,
    read_exposures,
    read_orders,
    read_snapshot,
    select_range,
    snapshot_refs,
)
from strata.io.reports import ReportStore
from strata.reports import frames
from strata.reports.frames import Engine
from strata.reports.metrics import (
    BAND_COLUMNS,
    SNAPSHOT_COLUMNS,
    ReportSpec,
    SnapshotInfo,
    period_bounds,
    tiers_report,
)
from strata.reports.model import TiersReport
from strata.reports.tables import report_tables
from strata.settings import Settings
from strata.strategies.config import load_strategies
from strata.tiering.lifecycle import STAGES
from strata.tiering.tiers import load_tier_rules


@dataclass
class TiersRun:
    """A written report and what it cost."""

    report: TiersReport
    seconds: float
    engine: str
    orders: int
    data: str


def default_spec(period_days: int) -> ReportSpec:
    """Tiers (best first, then the churn warning), stages and strategies from configs/."""
    rules = load_tier_rules()
    strategies = tuple(s.name for s in load_strategies().strategies)
    return ReportSpec(
        tier_order=tuple(rules.tier_names),
        stage_order=STAGES,
        period_days=period_days,
        strategies=strategies,
    )


def compute(
    data: str,
    engine: Engine,
    first: str | None = None,
    last: str | None = None,
    period_days: int = 30,
    show_progress: bool = True,
) -> tuple[TiersReport, int]:
    """The report over the selected snapshots (not written) and the number of orders read.

    Raises:
        CommandError: no snapshots, or an unknown --from / --to version.
    """
    spec = default_spec(period_days)
    refs = snapshot_refs(data)
    try:
        i, j = select_range([r[0] for r in refs], first, last)
    except ReportInputError as exc:
        raise CommandError(f"{data}: {exc}") from None
    infos = [SnapshotInfo(v, at, iso) for v, at, iso in refs[i:j]]
    lo = min(period_bounds(s.as_of_ms, period_days)[0] for s in infos)
    hi = max(s.as_of_ms for s in infos)
    orders_table = read_orders(data, lo, hi)
    exposures_table = read_exposures(data, lo, hi)
    orders = frames.from_arrow(orders_table, engine)
    exposures = frames.from_arrow(exposures_table, engine) if exposures_table.num_rows else None

    def load(info: SnapshotInfo) -> Any:
        table = read_snapshot(data, info.version, SNAPSHOT_COLUMNS, BAND_COLUMNS)
        return frames.from_arrow(table, engine)

    if not show_progress:
        return tiers_report(infos, load, orders, spec, exposures), orders_table.num_rows
    bar = progress()
    task = bar.add_task(f"snapshots ({engine})", total=len(infos))
    with bar:
        report = tiers_report(
            infos, load, orders, spec, exposures, on_snapshot=lambda _: bar.advance(task)
        )
    return report, orders_table.num_rows


def run(
    settings: Settings,
    engine: Engine,
    first: str | None = None,
    last: str | None = None,
    period_days: int = 30,
    show_progress: bool = True,
) -> TiersRun:
    """Compute and write the report (Modin runs on the job's Ray, started here if needed)."""
    t0 = time.perf_counter()
    if engine == "modin":
        frames.quiet_workers()
        with ray_session(settings):
            report, orders = compute(settings.data, engine, first, last, period_days, show_progress)
    else:
        report, orders = compute(settings.data, engine, first, last, period_days, show_progress)
    written = ReportStore(settings.data).write(report, report_tables(report))
    return TiersRun(written, time.perf_counter() - t0, engine, orders, settings.data)


def _money(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _int(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def _tier_column(table: Table, title: str = "tier") -> None:
    table.add_column(title, no_wrap=True, min_width=len("churn_warning"))


def shares_table(report: TiersReport) -> Table:
    """Tier shares per snapshot, oldest first."""
    table = Table(title="tier shares over time", title_justify="left")
    table.add_column("as of", no_wrap=True)
    table.add_column("users", justify="right")
    for tier in report.tier_order:
        table.add_column(tier, justify="right")
    for s in report.snapshots:
        table.add_row(
            s.as_of[:10],
            f"{s.users:,}",
            *(f"{s.tiers[t].share:.1%}" if t in s.tiers else "-" for t in report.tier_order),
        )
    return table


def newest_tables(report: TiersReport) -> list[Table]:
    """The newest snapshot's per-tier value and movement, and its transition matrix."""
    s = report.snapshots[-1]
    value = Table(
        title=f"per tier, as of {s.as_of} ({s.version}; revenue over the {s.period_days} days "
        "before)",
        title_justify="left",
    )
    _tier_column(value)
    for col in ("users", "ARPU CNY", "orders/user", "LTV CNY", "coupon CNY"):
        value.add_column(col, justify="right")
    moves = Table(title="new, lost and returning users per tier", title_justify="left")
    _tier_column(moves)
    for col in ("new", "lost", "returning"):
        moves.add_column(col, justify="right")
    for tier, m in s.tiers.items():
        value.add_row(
            tier,
            f"{m.users:,}",
            _money(m.arpu_cny),
            "-" if m.orders_per_user is None else f"{m.orders_per_user:.2f}",
            _money(m.ltv_cny),
            _money(m.coupon_cost_cny),
        )
        moves.add_row(tier, _int(m.new_users), _int(m.lost_users), _int(m.returning_users))
    tables = [value, moves]
    if report.transitions:
        t = report.transitions[-1]
        matrix = Table(
            title=f"transitions {t.from_version} -> {t.to_version} (users in both)",
            title_justify="left",
        )
        _tier_column(matrix, "from \\ to")
        names = list(t.matrix)
        for name in names:
            matrix.add_column(name, justify="right")
        for f, row in t.matrix.items():
            matrix.add_row(f, *(f"{row.get(n, 0):,}" for n in names))
        tables.append(matrix)
    return tables


def print_run(result: TiersRun, as_json: bool) -> None:
    """The JSON document alone (``--json``), or the tables and a summary (the whole report
    is in its files and in ``--json``)."""
    report = result.report
    if as_json:
        print(orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        return
    console.print(shares_table(report))
    for table in newest_tables(report):
        console.print(table)
    last = report.snapshots[-1]
    store = ReportStore(result.data)
    console.print(
        summary_table(
            "strata report tiers",
            [
                ("report version", report.report_version),
                ("written to", store.path(report.report_version)),
                ("snapshots", len(report.snapshots)),
                ("from", report.snapshots[0].version),
                ("to", last.version),
                ("users (newest)", last.users),
                ("orders read", result.orders),
                ("bands", ", ".join(last.bands) or "none (snapshot predates them)"),
                ("strategies reported", sum(len(v) for v in last.strategies.values())),
                ("engine", result.engine),
                ("seconds", result.seconds),
            ],
        )
    )
