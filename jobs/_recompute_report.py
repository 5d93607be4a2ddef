"""What `strata recompute` prints: its result, the summary, transitions, histogram, tiers."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.markup import escape
from rich.table import Table

from jobs._runtime import console, summary_table
from strata.tiering.scoring import NEW_USER


@dataclass
class RecomputeResult:
    version: str
    as_of: str
    users: int
    tiers: dict[str, int]
    stages: dict[str, int]
    transitions: dict[str, dict[str, int]]
    previous_version: str | None
    published: bool
    snapshot_path: str
    model: str
    timings: dict[str, float] = field(default_factory=dict)
    max_actor_rss_mb: float = 0.0
    histogram: list[tuple[str, str, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: the latest event time included (max ts < as-of), local ISO; None: no event
    last_event: str | None = None


def transition_table(moves: dict[str, dict[str, int]], tier_names: list[str]) -> Table:
    """Previous tier (rows) x new tier (columns)."""
    table = Table(title="tier transitions (previous -> now)", header_style="bold")
    table.add_column("previous")
    for name in tier_names:
        table.add_column(name, justify="right")
    for prev in [*tier_names, NEW_USER]:
        row = moves.get(prev, {})
        if row:
            table.add_row(prev, *(f"{row.get(t, 0):,}" for t in tier_names))
    return table


def print_result(result: RecomputeResult, tier_names: list[str]) -> None:
    """The run summary, the transition matrix and, last, the tier table."""
    console.print(
        summary_table(
            "recompute",
            [
                ("version", result.version),
                ("previous version", result.previous_version or "-"),
                ("users", result.users),
                ("last event included (< as-of)", result.last_event or "none"),
                *[(f"lifecycle {k}", v) for k, v in sorted(result.stages.items())],
                ("model", result.model),
                ("published to Redis", "yes" if result.published else "no"),
                ("snapshot", result.snapshot_path),
                *[(k, v) for k, v in result.timings.items()],
            ],
        )
    )
    if result.previous_version is not None:
        console.print(transition_table(result.transitions, tier_names))
    if result.histogram:
        hist = Table(title="rfm_score histogram (band boundaries marked)", header_style="bold")
        hist.add_column("score")
        hist.add_column("users", justify="right")
        hist.add_column("share", justify="right")
        hist.add_column("")
        for row in result.histogram:
            hist.add_row(*(escape(c) for c in row))
        console.print(hist)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")
    tiers = Table(title=f"tiers as of {result.as_of}", header_style="bold")
    tiers.add_column("tier")
    tiers.add_column("users", justify="right")
    tiers.add_column("share", justify="right")
    for name in tier_names:
        n = result.tiers.get(name, 0)
        tiers.add_row(name, f"{n:,}", f"{n / max(result.users, 1):.1%}")
    console.print(tiers)
