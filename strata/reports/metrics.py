"""Tier-report metrics, written once against the pandas API.

Every function takes data frames and returns plain dicts or the report document's models
(:mod:`strata.reports.model`), so the same code runs on Modin (on Ray) and on plain pandas
(:mod:`strata.reports.frames` picks the engine). Heavy steps (filters, one merge, one group-by)
run on the engine; their results are a few rows per tier and are finished in plain pandas.

Input frames (column names are the contract with :mod:`strata.io.report_inputs`):

* a snapshot: :data:`SNAPSHOT_COLUMNS` (+ :data:`BAND_COLUMNS` when the snapshot has them);
* orders: :data:`ORDER_COLUMNS` (order events, ``ts_ms`` epoch milliseconds UTC);
* exposures: :data:`EXPOSURE_COLUMNS`.

The period of a snapshot with as-of ``A`` is the half-open interval
``[A - period_days, A)``: ARPU, orders per user, coupon cost and strategy conversion count
the order events (and exposures) inside it, each user in the tier of that snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from strata.reports.frames import collect
from strata.reports.model import (
    SnapshotReport,
    StrategyMetrics,
    TierMetrics,
    TiersReport,
    Transition,
)
from strata.timeutil import DAY_MS

SNAPSHOT_COLUMNS: tuple[str, ...] = ("user_id", "tier", "tier_rule", "lifecycle_stage", "ltv_cny")
#: the RFM base bands (part of a snapshot since they were added; older snapshots lack them)
BAND_COLUMNS: tuple[str, ...] = ("recency_band", "frequency_band", "spend_level")
BAND_LABELS: dict[str, tuple[str, ...]] = {
    "recency_band": ("within_30d", "lapsed_30d", "lapsed_90d", "lapsed_180d", "no_order"),
    "frequency_band": ("weekly", "monthly", "quarterly", "rarer"),
    "spend_level": ("high", "mid", "low"),
}
ORDER_COLUMNS: tuple[str, ...] = ("user_id", "ts_ms", "amount_cny", "discount_cny")
EXPOSURE_COLUMNS: tuple[str, ...] = ("user_id", "ts_ms", "experiment", "arm")
HOLDOUT_ARM = "holdout"
CHURNED_STAGE = "churned"
#: the tier or rule of a user whose snapshot row has none
UNKNOWN = "unknown"


@dataclass(frozen=True)
class SnapshotInfo:
    """A retained snapshot the report covers."""

    version: str
    as_of_ms: int
    as_of: str


@dataclass(frozen=True)
class ReportSpec:
    """What the report computes.

    Args:
        tier_order: tiers, best first (bands, then the churn warning tier).
        stage_order: lifecycle stages.
        period_days: length of each snapshot's period (days before its as-of).
        strategies: strategy names (experiments in the exposures table) to report.
        churned_stage: the lifecycle stage that counts as churned (lost / returning users).
    """

    tier_order: tuple[str, ...]
    stage_order: tuple[str, ...]
    period_days: int = 30
    strategies: tuple[str, ...] = ()
    churned_stage: str = CHURNED_STAGE

    def __post_init__(self) -> None:
        if self.period_days < 1:
            raise ValueError(f"period_days must be >= 1, got {self.period_days}")


@dataclass
class Comparison:
    """A snapshot against the previous one (users in both), reduced to a few rows.

    ``moves`` has one row per (from_tier, to_tier, rule, was_churned, is_churned) with
    ``users``: enough for the transition matrix, its rules and lost / returning users.
    """

    moves: pd.DataFrame
    both_by_tier: dict[str, int] = field(default_factory=dict)


def period_bounds(as_of_ms: int, period_days: int) -> tuple[int, int]:
    """The period ``[as_of - period_days, as_of)`` in epoch milliseconds."""
    return as_of_ms - period_days * DAY_MS, as_of_ms


def _ordered(counts: dict[str, int], order: Iterable[str]) -> dict[str, int]:
    """Counts in a fixed order with zeros for absent names; unknown names follow, sorted."""
    out = {name: int(counts.get(name, 0)) for name in order}
    for name in sorted(set(counts) - set(out)):
        out[name] = counts[name]
    return out


def _ratio(num: float, den: float) -> float | None:
    return float(num) / den if den > 0 else None


def band_counts(counts: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Users per RFM base band label (from :func:`snapshot_counts`), for the band columns
    the snapshot has ({} if none)."""
    return {
        col: _ordered({k: int(v) for k, v in _sums(counts, col).items()}, BAND_LABELS[col])
        for col in BAND_COLUMNS
        if col in counts.columns
    }


def period_orders(orders: Any, as_of_ms: int, period_days: int) -> Any:
    """The order rows inside a snapshot's period."""
    lo, hi = period_bounds(as_of_ms, period_days)
    ts = orders["ts_ms"]
    return orders[(ts >= lo) & (ts < hi)]


def revenue_by_tier(snapshot: Any, orders_in_period: Any) -> pd.DataFrame:
    """Per tier: ``revenue_cny``, ``orders``, ``coupon_cost_cny`` of the period's orders of
    the tier's users (plain pandas, indexed by tier)."""
    joined = orders_in_period.merge(snapshot[["user_id", "tier"]], on="user_id", how="inner")
    agg = joined.groupby("tier", observed=True).agg(
        revenue_cny=("amount_cny", "sum"),
        orders=("user_id", "size"),
        coupon_cost_cny=("discount_cny", "sum"),
    )
    out: pd.DataFrame = collect(agg)
    out.index = out.index.astype(str)
    return out


def snapshot_counts(snapshot: Any) -> pd.DataFrame:
    """One group-by over the snapshot: per (tier, lifecycle_stage, bands...) ``users``,
    ``ltv_sum`` and ``ltv_n`` (non-null LTVs), plain pandas (a few hundred rows at most).

    Tier sizes, LTV per tier, lifecycle and band counts are all sums over it, so the big
    frame is scanned once.
    """
    keys = ["tier", "lifecycle_stage", *(c for c in BAND_COLUMNS if c in snapshot.columns)]
    agg = snapshot.groupby(keys, observed=True, dropna=False).agg(
        users=("user_id", "size"), ltv_sum=("ltv_cny", "sum"), ltv_n=("ltv_cny", "count")
    )
    out: pd.DataFrame = collect(agg).reset_index()
    out = out[out["users"] > 0]
    for key in keys:
        out[key] = out[key].astype(object).where(out[key].notna(), None)
    return out


def _sums(counts: pd.DataFrame, key: str, value: str = "users") -> dict[str, Any]:
    sums = counts.dropna(subset=[key]).groupby(key)[value].sum()
    return {str(k): v for k, v in sums.items()}


def compare(previous: Any, snapshot: Any, churned_stage: str = CHURNED_STAGE) -> Comparison:
    """Join a snapshot to the previous one on user_id (users in both) and reduce the pairs
    to one row per (from_tier, to_tier, rule, was_churned, is_churned)."""
    prev = previous[["user_id", "tier", "lifecycle_stage"]].rename(
        columns={"tier": "from_tier", "lifecycle_stage": "from_stage"}
    )
    cur = snapshot[["user_id", "tier", "tier_rule", "lifecycle_stage"]]
    both = cur.merge(prev, on="user_id", how="inner")
    both = both.assign(
        was_churned=both["from_stage"] == churned_stage,
        is_churned=both["lifecycle_stage"] == churned_stage,
    )
    grouped = both.groupby(
        ["from_tier", "tier", "tier_rule", "was_churned", "is_churned"],
        observed=True,
        dropna=False,  # a user without a rule still moved: counted under "unknown"
    ).size()
    moves: pd.DataFrame = collect(grouped).reset_index(name="users")
    moves = moves[moves["users"] > 0]
    for col in ("from_tier", "tier", "tier_rule"):
        known = moves[col].notna()
        moves[col] = moves[col].astype(object).where(known, UNKNOWN).astype(str)
    moves = moves.rename(columns={"tier": "to_tier", "tier_rule": "rule"})
    by_tier = moves.groupby("to_tier")["users"].sum()
    return Comparison(moves=moves, both_by_tier={str(k): int(v) for k, v in by_tier.items()})


def strategy_exposures(exposures: Any, spec: ReportSpec) -> Any:
    """The exposures that count as a strategy's reach: an experiment named like one of
    ``spec.strategies``, arm not the standing holdout (the same for every snapshot, so
    :func:`tiers_report` applies it once)."""
    keep = (exposures["arm"] != HOLDOUT_ARM) & exposures["experiment"].isin(list(spec.strategies))
    return exposures[keep]


def strategy_metrics(
    snapshot: Any,
    orders_in_period: Any,
    exposures: Any,
    as_of_ms: int,
    spec: ReportSpec,
) -> dict[str, dict[str, StrategyMetrics]]:
    """Reach and conversion per tier and strategy in a snapshot's period.

    Reach: users (in the tier of the snapshot) with a non-holdout exposure to the strategy in
    the period; converted: those with an order in the period after their first exposure to it
    in the period. ``exposures`` are those of :func:`strategy_exposures`.
    """
    if exposures is None or len(exposures) == 0 or not spec.strategies:
        return {}
    lo, hi = period_bounds(as_of_ms, spec.period_days)
    ts = exposures["ts_ms"]
    exposed = exposures[(ts >= lo) & (ts < hi)]
    if len(exposed) == 0:
        return {}
    first = exposed.groupby(["user_id", "experiment"], observed=True)["ts_ms"].min().reset_index()
    last = orders_in_period.groupby("user_id")["ts_ms"].max().reset_index()
    last = last.rename(columns={"ts_ms": "last_order_ms"})
    joined = first.merge(last, on="user_id", how="left").merge(
        snapshot[["user_id", "tier"]], on="user_id", how="inner"
    )
    joined = joined.assign(converted=(joined["last_order_ms"] > joined["ts_ms"]).astype("int64"))
    grouped = joined.groupby(["tier", "experiment"], observed=True).agg(
        reach=("user_id", "size"), converted=("converted", "sum")
    )
    rows: pd.DataFrame = collect(grouped).reset_index()
    out: dict[str, dict[str, StrategyMetrics]] = {}
    order = {name: i for i, name in enumerate(spec.tier_order)}
    rows = rows[rows["reach"] > 0]
    rows = rows.assign(
        tier=rows["tier"].astype(str),
        experiment=rows["experiment"].astype(str),
        _order=rows["tier"].astype(str).map(lambda t: order.get(t, len(order))),
    ).sort_values(["_order", "tier", "experiment"])
    for tier, strategy, reach, converted in zip(
        rows["tier"], rows["experiment"], rows["reach"], rows["converted"], strict=True
    ):
        out.setdefault(tier, {})[strategy] = StrategyMetrics(
            reach=int(reach), converted=int(converted), conversion=_ratio(converted, reach)
        )
    return out


def snapshot_report(
    info: SnapshotInfo,
    snapshot: Any,
    orders: Any,
    spec: ReportSpec,
    comparison: Comparison | None = None,
    exposures: Any = None,
) -> SnapshotReport:
    """Shares, lifecycle, bands and per-tier metrics of one snapshot.

    Args:
        info: the snapshot's version and as-of.
        snapshot: its frame (:data:`SNAPSHOT_COLUMNS`, optional :data:`BAND_COLUMNS`).
        orders: order rows covering at least this snapshot's period.
        spec: tiers, stages, period, strategies.
        comparison: :func:`compare` against the previous snapshot (None for the first one:
            new, lost and returning users stay None).
        exposures: the strategies' exposures (:func:`strategy_exposures`), or None.
    """
    users = len(snapshot)
    in_period = period_orders(orders, info.as_of_ms, spec.period_days)
    rev = revenue_by_tier(snapshot, in_period)
    groups = snapshot_counts(snapshot)
    ltv_sum, ltv_count = _sums(groups, "tier", "ltv_sum"), _sums(groups, "tier", "ltv_n")
    sizes = _ordered({t: int(n) for t, n in _sums(groups, "tier").items()}, spec.tier_order)
    tiers: dict[str, TierMetrics] = {}
    for tier, n in sizes.items():
        revenue = float(rev["revenue_cny"].get(tier, 0.0)) if n else 0.0
        n_orders = int(rev["orders"].get(tier, 0)) if n else 0
        coupon = float(rev["coupon_cost_cny"].get(tier, 0.0)) if n else 0.0
        ltv_n = int(ltv_count.get(tier, 0))
        new = lost = returning = None
        if comparison is not None:
            m = comparison.moves
            new = n - comparison.both_by_tier.get(tier, 0)
            lost_rows = m[(m["from_tier"] == tier) & m["is_churned"] & ~m["was_churned"]]
            back_rows = m[(m["to_tier"] == tier) & m["was_churned"] & ~m["is_churned"]]
            lost, returning = int(lost_rows["users"].sum()), int(back_rows["users"].sum())
        tiers[tier] = TierMetrics(
            users=n,
            share=n / users if users else 0.0,
            arpu_cny=_ratio(revenue, n),
            orders_per_user=_ratio(n_orders, n),
            ltv_cny=_ratio(float(ltv_sum.get(tier, 0.0)), ltv_n),
            coupon_cost_cny=coupon if not math.isnan(coupon) else 0.0,
            new_users=new,
            lost_users=lost,
            returning_users=returning,
        )
    return SnapshotReport(
        version=info.version,
        as_of=info.as_of,
        users=users,
        period_days=spec.period_days,
        tiers=tiers,
        lifecycle=_ordered(
            {k: int(v) for k, v in _sums(groups, "lifecycle_stage").items()}, spec.stage_order
        ),
        bands=band_counts(groups),
        strategies=strategy_metrics(snapshot, in_period, exposures, info.as_of_ms, spec),
    )


def transition(
    previous: SnapshotInfo, current: SnapshotInfo, comparison: Comparison, spec: ReportSpec
) -> Transition:
    """The movement matrix (every tier x tier, zeros included), its row rates and the rules
    (the new snapshot's ``tier_rule``) that gave users their new tier."""
    m = comparison.moves
    names = list(spec.tier_order)
    for t in sorted(set(m["from_tier"]) | set(m["to_tier"])):
        if t not in names:
            names.append(t)
    cells = m.groupby(["from_tier", "to_tier"])["users"].sum()
    matrix = {f: {t: int(cells.get((f, t), 0)) for t in names} for f in names}
    rates = {
        f: {t: n / sum(row.values()) for t, n in row.items()}
        for f, row in matrix.items()
        if sum(row.values()) > 0
    }
    by_rule: dict[str, dict[str, dict[str, int]]] = {}
    rules = m.groupby(["from_tier", "to_tier", "rule"])["users"].sum()
    rank = {name: i for i, name in enumerate(names)}
    for (f, t, rule), n in sorted(rules.items(), key=lambda r: (rank[r[0][0]], rank[r[0][1]])):
        if n > 0:
            by_rule.setdefault(f, {}).setdefault(t, {})[str(rule)] = int(n)
    return Transition(
        from_version=previous.version,
        to_version=current.version,
        matrix=matrix,
        rates=rates,
        by_rule=by_rule,
    )


def tiers_report(
    snapshots: Sequence[SnapshotInfo],
    load: Callable[[SnapshotInfo], Any],
    orders: Any,
    spec: ReportSpec,
    exposures: Any = None,
    on_snapshot: Callable[[SnapshotInfo], None] | None = None,
) -> TiersReport:
    """The whole report over snapshots (oldest first): one :class:`SnapshotReport` each and a
    :class:`Transition` between each consecutive pair.

    Args:
        snapshots: the snapshots, oldest first.
        load: reads one snapshot's frame (called once per snapshot; two are held at a time).
        orders: order rows covering every snapshot's period.
        spec: tiers, stages, period, strategies.
        exposures: strategy exposures, or None.
        on_snapshot: called after each snapshot (progress).
    """
    if exposures is not None and len(exposures) and spec.strategies:
        exposures = strategy_exposures(exposures, spec)
    reports: list[SnapshotReport] = []
    transitions: list[Transition] = []
    prev_info: SnapshotInfo | None = None
    prev_frame: Any = None
    for info in snapshots:
        frame = load(info)
        comparison = None
        if prev_info is not None:
            comparison = compare(prev_frame, frame, spec.churned_stage)
            transitions.append(transition(prev_info, info, comparison, spec))
        reports.append(snapshot_report(info, frame, orders, spec, comparison, exposures))
        prev_info, prev_frame = info, frame
        if on_snapshot is not None:
            on_snapshot(info)
    return TiersReport(
        tier_order=list(spec.tier_order),
        stage_order=list(spec.stage_order),
        snapshots=reports,
        transitions=transitions,
    )
