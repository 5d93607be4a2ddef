"""Which configured cutoffs the warehouse's history can serve (short, young logs).

train.yaml stacks ``cutoffs`` past cutoffs ``cutoff_step_days`` apart before the newest one
(``as_of - horizon``); each needs history *before* it for its features. A young log (a few
weeks of orders) cannot serve the older ones: before a cutoff at or before the first event
there is no customer at all, and a cutoff only days after it sees customers of a few days'
tenure. :func:`plan_cutoffs` keeps the cutoffs with at least :data:`MIN_HISTORY_DAYS` of
history before them (always the newest ones: a prefix of :func:`cutoffs_for`) and says what
was dropped and why; with none kept the train job stops before any work
(:meth:`CutoffPlan.problem`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from strata.timeutil import DAY_MS
from strata.training.examples import cutoff_iso, cutoffs_for
from strata.training.params import TrainConfig

__all__ = ["MIN_HISTORY_DAYS", "CutoffPlan", "history_start_ms", "plan_cutoffs"]

#: Days of history a cutoff needs before it: two weeks (every weekday twice, twice the shipped
#: repurchase window), so its examples have a tenure, a recency and a purchase rate at all.
MIN_HISTORY_DAYS = 14


@dataclass(frozen=True)
class CutoffPlan:
    """The configured cutoffs (newest first), those kept and those dropped for short history."""

    as_of_ms: int
    horizon_days: int
    configured: list[int]
    kept: list[int]
    dropped: list[int]
    history_start_ms: int | None
    cutoffs: int
    cutoff_step_days: int

    @property
    def history_days(self) -> float:
        """Days from the first event to the as-of (0 without any event)."""
        if self.history_start_ms is None:
            return 0.0
        return max(0.0, (self.as_of_ms - self.history_start_ms) / DAY_MS)

    @property
    def days_for_one(self) -> int:
        """History needed for the newest cutoff alone."""
        return self.horizon_days + MIN_HISTORY_DAYS

    @property
    def days_for_all(self) -> int:
        """History needed for every configured cutoff."""
        return self.horizon_days + (self.cutoffs - 1) * self.cutoff_step_days + MIN_HISTORY_DAYS

    def _span(self) -> str:
        if self.history_start_ms is None:
            return "the warehouse holds no event"
        return (
            f"the events span {self.history_days:.1f} days "
            f"(from {cutoff_iso(self.history_start_ms)} to the as-of)"
        )

    def note(self) -> str | None:
        """The line for the output and meta.json's notes when cutoffs were dropped."""
        if not self.dropped or not self.kept:
            return None
        return (
            f"short history: trained on {len(self.kept)} of the {self.cutoffs} cutoffs in "
            f"train.yaml; {self._span()}, each cutoff needs {MIN_HISTORY_DAYS} days before it "
            f"(all {self.cutoffs} need {self.days_for_all} days: horizon_days "
            f"{self.horizon_days} + (cutoffs - 1) x cutoff_step_days {self.cutoff_step_days} "
            f"+ {MIN_HISTORY_DAYS}); dropped {', '.join(cutoff_iso(c) for c in self.dropped)}"
        )

    def problem(self) -> str | None:
        """Why no cutoff can be trained on (None: at least one is kept)."""
        if self.kept:
            return None
        return (
            f"history too short for train.yaml's horizon_days ({self.horizon_days}), cutoffs "
            f"({self.cutoffs}) and cutoff_step_days ({self.cutoff_step_days}): "
            f"{self._span()}; the newest cutoff needs {self.days_for_one} days "
            f"(horizon + {MIN_HISTORY_DAYS} days before it), all {self.cutoffs} need "
            f"{self.days_for_all}; use an older data root, a later --as-of or a shorter --horizon"
        )

    def meta(self) -> dict[str, Any]:
        """meta.json's ``history`` block."""
        return {
            "start": None if self.history_start_ms is None else cutoff_iso(self.history_start_ms),
            "days": round(self.history_days, 3),
            "min_days_before_cutoff": MIN_HISTORY_DAYS,
            "days_for_all_cutoffs": self.days_for_all,
            "cutoffs_configured": [cutoff_iso(c) for c in self.configured],
            "cutoffs_dropped": [cutoff_iso(c) for c in self.dropped],
        }


def history_start_ms(manifest: Mapping[str, Any], table: str = "events") -> int | None:
    """Time (epoch ms) of the oldest committed row of a table, from a warehouse manifest."""
    los = [
        p["min_ts_ms"]
        for e in manifest["tables"][table]["buckets"].values()
        for p in e["parts"]
        if p.get("min_ts_ms") is not None
    ]
    return min(los) if los else None


def plan_cutoffs(
    as_of_ms: int, cfg: TrainConfig, horizon_days: int, history_start: int | None
) -> CutoffPlan:
    """The cutoffs of :func:`cutoffs_for` split into those the history serves and the rest.

    A cutoff is kept when the first event lies at least :data:`MIN_HISTORY_DAYS` days before
    it. Since older cutoffs have less history, the kept ones are the newest ones.

    Args:
        as_of_ms: the run's as-of (UTC epoch ms, exclusive).
        cfg: train.yaml (``cutoffs``, ``cutoff_step_days``).
        horizon_days: the label window in days.
        history_start: the oldest event's time (epoch ms), or None without events.
    """
    configured = cutoffs_for(as_of_ms, cfg, horizon_days)
    if history_start is None:
        kept: list[int] = []
    else:
        need = MIN_HISTORY_DAYS * DAY_MS
        kept = [c for c in configured if c - int(history_start) >= need]
    dropped = [c for c in configured if c not in kept]
    return CutoffPlan(
        as_of_ms=int(as_of_ms), horizon_days=int(horizon_days), configured=configured,
        kept=kept, dropped=dropped, history_start_ms=history_start, cutoffs=cfg.cutoffs,
        cutoff_step_days=cfg.cutoff_step_days,
    )  # fmt: skip
