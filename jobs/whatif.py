"""`strata whatif`: tiers of the current snapshot under changed tier settings, before publishing.

Re-applies the tier rules to the newest snapshot's stored scores with ``--set`` overrides (no
warehouse pass, nothing written or published) and prints tier sizes before and after, the
movement matrix and the cost change of the strategies that follow tiers
(:mod:`strata.reports.whatif`; docs/whatif.md).
"""

from __future__ import annotations

import contextlib
import time

import orjson
import typer
from rich.table import Table

from jobs._errors import CommandError, run_command
from jobs._runtime import console, progress, summary_table
from strata.io.whatif_inputs import load_whatif_inputs
from strata.reports.whatif import (
    WhatIfError,
    WhatIfResult,
    apply_overrides,
    parse_overrides,
    simulate,
)
from strata.settings import Settings
from strata.tiering.tiers import load_tier_rules


def sizes_table(res: WhatIfResult) -> Table:
    """Users per tier before (the snapshot) and after (the what-if), with the change."""
    table = Table(title=f"tiers of snapshot {res.version}: before -> after", header_style="bold")
    for name, justify in (("tier", "left"), ("before", "right"), ("after", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("change", justify="right")
    for tier in res.tier_order:
        a, b = res.before[tier], res.after[tier]
        table.add_row(tier, f"{a:,}", f"{b:,}", f"{b - a:+,}")
    return table


def moves_table(res: WhatIfResult) -> Table:
    """The movement matrix: snapshot tier (rows) -> what-if tier (columns)."""
    table = Table(title="moves (rows: snapshot tier, columns: what-if tier)", header_style="bold")
    table.add_column("from \\ to")
    for tier in res.tier_order:
        table.add_column(tier, justify="right")
    for a in res.tier_order:
        table.add_row(a, *(f"{res.moves[a][b]:,}" for b in res.tier_order))
    return table


def costs_table(res: WhatIfResult) -> Table:
    """Users reached and cost per tier-following strategy, before and after."""
    table = Table(title="strategies that follow tiers (one action per user)", header_style="bold")
    table.add_column("strategy", no_wrap=True)
    table.add_column("tiers")
    for name in ("CNY/action", "users before", "users after", "change CNY"):
        table.add_column(name, justify="right")
    for name, s in res.strategies.items():
        table.add_row(
            name,
            ",".join(s.tiers),
            f"{s.cost_per_action_cny:g}",
            f"{s.users_before:,}",
            f"{s.users_after:,}",
            f"{s.cost_change_cny:+,.2f}",
        )
    return table


def command(
    data: str = typer.Option(
        "./data", "--data", envvar="STRATA_DATA", help="Data root (local path or filesystem URI)."
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="KEY=VALUE, repeatable, e.g. --set tiers.bands.high_value.min_score=0.75 --set "
        "tiers.weights.recency=0.5 (unset weights are scaled so the three sum to 1).",
    ),
    version: str | None = typer.Option(
        None, "--version", help="Snapshot version (default: the latest on disk)."
    ),
    config_dir: str | None = typer.Option(None, "--config-dir", help="Folder of YAML configs."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Try tier settings on the current snapshot's scores: sizes, moves, cost change."""
    try:
        overrides = parse_overrides(set_)
        # refused keys and values are answered before the snapshot is read
        apply_overrides(load_tier_rules(config_dir), overrides)
    except WhatIfError as exc:
        raise CommandError(str(exc)) from None
    data_root = Settings(data=data).data
    t0 = time.perf_counter()
    with progress() if not as_json else contextlib.nullcontext() as bar:
        task = bar.add_task("reading the snapshot", total=None) if bar else None
        inputs = load_whatif_inputs(data_root, version, config_dir)
        loaded_s = time.perf_counter() - t0
        if bar is not None and task is not None:
            bar.update(task, total=1, completed=1)
            task = bar.add_task(f"simulating {inputs.users:,} users", total=1)
        try:
            res = simulate(inputs, overrides)
        except WhatIfError as exc:
            raise CommandError(str(exc)) from None
        if bar is not None and task is not None:
            bar.advance(task)
    total_s = time.perf_counter() - t0
    if as_json:
        print(orjson.dumps(res.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        return
    console.print(sizes_table(res))
    console.print(moves_table(res))
    console.print(costs_table(res))
    for warning in res.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if res.unreproduced_users:
        console.print(
            f"[yellow]note:[/yellow] {res.unreproduced_users:,} users' stored tier is not "
            "reproduced by the current tiers.yaml (the snapshot was scored with other settings "
            "or sits on a threshold after rounding); they keep it unless the change moves them"
        )
    w = res.weights
    weights = f"r {w['recency']:g} / f {w['frequency']:g} / m {w['monetary']:g}"
    console.print(
        summary_table(
            "what-if",
            [
                ("snapshot", res.version),
                ("users", res.users),
                ("settings changed", ", ".join(f"{k}={v}" for k, v in res.overrides.items())),
                ("weights used", weights),
                ("users moved", res.moved_users),
                ("cost before CNY", res.cost_before_cny),
                ("cost after CNY", res.cost_after_cny),
                ("cost change CNY", f"{res.cost_change_cny:+,.2f}"),
                ("load seconds", loaded_s),
                ("seconds", total_s),
            ],
        )
    )


if __name__ == "__main__":
    run_command(command)
