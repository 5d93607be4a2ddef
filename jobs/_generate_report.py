"""The result of `strata generate` (:class:`GenerateResult`) and its summary table's rows
(output only)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GenerateResult", "summary_rows"]


@dataclass
class GenerateResult:
    """Counts and timings of one ``strata generate`` run."""

    users: int
    days: int
    seed: int
    start: dt.date
    end: dt.date
    buckets: int
    events: int
    orders: int
    event_counts: dict[str, int]
    seconds: float
    events_per_s: float
    peak_worker_rss_mb: float
    driver_rss_mb: float
    truth_path: str
    write_id: str
    timings: dict[str, float] = field(default_factory=dict)
    #: first-stage id ranges (pseudonymised in tasks)
    id_ranges: int = 0
    orders_only: bool = False
    experiment: str | None = None
    #: arm -> exposed users of the simulated experiment
    exposed: dict[str, int] = field(default_factory=dict)
    configured_effect: float | None = None
    true_effect: float | None = None


def summary_rows(r: GenerateResult) -> list[tuple[str, Any]]:
    """Rows of the summary table printed after a run."""
    rows: list[tuple[str, Any]] = [
        ("window (local days)", f"{r.start} .. {r.end - dt.timedelta(days=1)}"),
        ("users", r.users),
        ("id ranges pseudonymised", r.id_ranges),
        ("mode", "orders only (no users table)" if r.orders_only else "full behaviour"),
        ("buckets written", r.buckets),
        ("events", r.events),
        ("orders", r.orders),
    ]
    rows += [
        (f"  {k}", v)
        for k, v in sorted(r.event_counts.items(), key=lambda kv: -kv[1])
        if v or not r.orders_only  # an orders-only log has no other types to list
    ]
    if r.experiment is not None:
        arms = ", ".join(f"{arm} {n}" for arm, n in sorted(r.exposed.items()))
        rows.append((f"experiment {r.experiment}", f"exposed: {arms or 'nobody'}"))
        rows.append(
            (
                "  relative conversion effect",
                f"{r.true_effect:.6g} planted (configured {r.configured_effect:g})",
            )
        )
    rows += [
        ("seconds", r.seconds),
        ("events/s", round(r.events_per_s)),
        ("peak worker RSS (MB)", r.peak_worker_rss_mb),
        ("driver RSS (MB)", r.driver_rss_mb),
        ("ground truth", r.truth_path),
    ]
    return rows
