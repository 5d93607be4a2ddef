"""`strata rules stats`: what each trigger rule did — fired, suppressed by reason, converted,
revenue and coupon cost, per tier — from the live counters in Redis."""

from __future__ import annotations

from typing import Any

import orjson
import typer
from rich.table import Table

from jobs._runtime import console, redis_session
from strata.io.realtime_store import RealtimeStore
from strata.realtime.model import SUPPRESSION_REASONS
from strata.realtime.stats import rule_stats
from strata.realtime.stream_config import load_stream_config
from strata.settings import Settings

app = typer.Typer(no_args_is_help=True)


def _money(x: float) -> str:
    return f"{x:,.2f}"


def stats_table(report: dict[str, Any], by_tier: bool) -> Table:
    table = Table(title="trigger rules", title_justify="left")
    for col in ["rule", "kind", *(["tier"] if by_tier else []), "fired"]:
        table.add_column(col)
    for reason in SUPPRESSION_REASONS:
        table.add_column(f"supp. {reason}", justify="right")
    for col in ("converted", "conv. rate", "revenue CNY", "coupon cost CNY"):
        table.add_column(col, justify="right")

    def row(name: str, kind: str, tier: str | None, s: dict[str, Any]) -> None:
        fired = int(s["fired"])
        rate = f"{s['converted'] / fired:.1%}" if fired else "-"
        table.add_row(
            name,
            kind,
            *([tier or "all"] if by_tier else []),
            f"{fired:,}",
            *(f"{int(s['suppressed'].get(r, 0)):,}" for r in SUPPRESSION_REASONS),
            f"{int(s['converted']):,}",
            rate,
            _money(s["revenue_cny"]),
            _money(s["coupon_cost_cny"]),
        )

    for rule in report["rules"]:
        row(rule["name"], rule["kind"], None, rule)
        if by_tier:
            for tier, s in sorted(rule.get("by_tier", {}).items()):
                row("", "", tier, s)
    return table


@app.command("stats")
def stats(
    data: str = typer.Option(
        "./data", "--data", envvar="STRATA_DATA", help="Data root (embedded Redis)."
    ),
    by_tier: bool = typer.Option(False, "--by-tier", help="One row per rule and tier."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON of GET /v1/rules."),
) -> None:
    """Per rule (and per tier): fired, suppressed by reason, converted, revenue, coupon cost."""
    settings = Settings(data=data)
    with redis_session(settings) as url:
        store = RealtimeStore(url, settings.redis_namespace, load_stream_config())
        try:
            report = rule_stats(*store.read_rule_stats())
        finally:
            store.close()
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    console.print(stats_table(report, by_tier))
