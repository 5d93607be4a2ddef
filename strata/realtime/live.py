"""Minute-level live tiers: a user's snapshot row plus the live orders since its as-of,
re-scored with the snapshot's cut points by the batch functions themselves.

A recompute scores every user at its as-of against the merged RFM partials of all users
(:mod:`strata.features.rfm`). Between recomputes the stream worker keeps each user's live
orders in :class:`strata.realtime.model.UserState` (local day -> [orders, CNY]). After an order,
:class:`LiveScorer` builds the user's features *now*: the snapshot row, with the live orders
the snapshot does not cover added to every order window, to the lifetime totals and to the
spend to date, and recency and first/last order from the live orders. It then calls
:func:`strata.features.rfm_scores` (with the snapshot's partials, the tier rules' weights and
measures), :func:`strata.tiering.lifecycle.assign_lifecycle` and
:func:`strata.tiering.tiers.assign_tiers` (the snapshot tier as the previous tier, for the
hysteresis), so live and batch tiers follow the same rules and cut points. The result is the
overlay JSON of ``{ns}:rt:live:{user}``.

Which live orders are new to the snapshot: a day bucket whose local day starts at or after
the snapshot's as-of; and every day after the snapshot's last order of the user (the
snapshot holds none of those orders, e.g. a user it did not know yet, or orders the warehouse
sink had not committed when the recompute ran). The day holding a mid-day as-of counts when
every live order is after the as-of; otherwise it is left out (it cannot be split) and only
recency follows it.

Approximations, until the next recompute replaces the overlay:

* windows do not slide: an order of the snapshot that falls out of a window (30/90/180/365
  days, or the previous-30-days window of the declining rule) after the as-of still counts in
  it; live orders do slide (they are placed by day against the evaluation day);
* RFM ranks are against the snapshot's population (the partials are not updated, so a live
  user is ranked among everyone *as of the snapshot*);
* model outputs (``churn_p``) are the snapshot's: the model is not re-run on live features.

Pure: numpy and pyarrow only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from strata.features import RfmPartials, rfm_scores
from strata.features.compute import MONTH_DAYS
from strata.realtime.model import UserState
from strata.schema import TIMESTAMP
from strata.tiering.bands import assign_bands
from strata.tiering.lifecycle import assign_lifecycle
from strata.tiering.scoring import RecomputeConfig
from strata.tiering.tiers import assign_tiers
from strata.timeutil import DAY_MS, LOCAL_OFFSET_MS, local_day, local_iso

__all__ = [
    "LIVE_FEATURE_COLUMNS",
    "LIVE_TAG_KEYS",
    "OVERLAY_KEYS",
    "LiveScorer",
    "SnapshotInputs",
    "live_features",
    "superseded",
]

#: snapshot columns the live scorer reads (every measure window, so any tiers.yaml works)
LIVE_FEATURE_COLUMNS: tuple[str, ...] = (
    "user_id",
    "recency_days",
    "frequency_30d",
    "frequency_90d",
    "frequency_180d",
    "frequency_365d",
    "monetary_30d",
    "monetary_90d",
    "monetary_180d",
    "monetary_365d",
    "frequency_prev_30d",
    "frequency_prev_90d",
    "orders_total",
    "spend_total_cny",
    "ltv_cny",
    "first_order_ts",
    "last_order_ts",
    "signup_ts",
    "active_months",
    "tier",
    "lifecycle_stage",
    "churn_p",
    "top_category",
)
#: overlay keys of the tags a live order changes (the lookups show them with ``source: live``)
LIVE_TAG_KEYS: tuple[str, ...] = (
    "recency_band",
    "frequency_band",
    "spend_level",
    "ltv_cny",
    "arpu_30d_cny",
)
#: keys of an overlay (``{ns}:rt:live:{user}``); the first 13 are the shared contract
OVERLAY_KEYS: tuple[str, ...] = (
    "version",
    "as_of",
    "tier",
    "lifecycle_stage",
    "rfm_r",
    "rfm_f",
    "rfm_m",
    "rfm_score",
    "recency_days",
    "frequency_90d",
    "monetary_90d",
    "last_event_ms",
    "last_event_at",
    # additions: why, and what a later recompute must cover to supersede the overlay
    "tier_rule",
    "tier_explanation",
    "lifecycle_rule",
    "previous_tier",
    "orders_total",
    "last_order_ms",
    "scored_ms",
    # the tags a live order changes: RFM base bands and value
    *LIVE_TAG_KEYS,
)

_WINDOWS: tuple[int, ...] = (30, 90, 180, 365)
_COUNT_COLUMNS: tuple[str, ...] = (
    *(f"frequency_{d}d" for d in _WINDOWS),
    "frequency_prev_30d",
    "frequency_prev_90d",
    "orders_total",
)
_MONEY_COLUMNS: tuple[str, ...] = (
    *(f"monetary_{d}d" for d in _WINDOWS),
    "spend_total_cny",
    "ltv_cny",
)
# window (first, last) offsets in days before the evaluation day; None = unbounded
_COUNT_RANGES: tuple[tuple[int, int | None], ...] = (
    *((0, d - 1) for d in _WINDOWS),
    (30, 59),
    (90, 179),
    (0, None),
)
_MONEY_RANGES: tuple[tuple[int, int | None], ...] = (
    *((0, d - 1) for d in _WINDOWS),
    (0, None),
    (0, None),
)


_ALL_DAYS = -(2**62)
_NO_END = 2**62


class SnapshotInputs(Protocol):
    """What :meth:`LiveScorer.for_snapshot` needs (``strata.io.snapshot_features``)."""

    partials: RfmPartials
    as_of_ms: int
    version: str
    as_of_iso: str


def _day_start_ms(day: int) -> int:
    return day * DAY_MS - LOCAL_OFFSET_MS


def _num(value: Any) -> float:
    """A snapshot number, 0 for null/NaN."""
    if value is None:
        return 0.0
    v = float(value)
    return 0.0 if math.isnan(v) else v


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class _Live:
    """Per-user columns of the live features (numpy arrays / lists, one entry per user)."""

    counts: np.ndarray  # (n, len(_COUNT_COLUMNS)) int64
    money: np.ndarray  # (n, len(_MONEY_COLUMNS)) float64
    first_ms: list[int | None]
    last_ms: list[int | None]
    signup_ms: list[int | None]
    previous_tier: list[str | None]
    churn_p: list[float | None]


def _live_columns(
    states: Sequence[UserState],
    rows: Sequence[Mapping[str, Any] | None],
    as_of_ms: int,
    obs_day: int,
) -> _Live:
    # plain Python per user (a few day buckets each), numpy once at the end: element-wise
    # numpy indexing would cost more than the scoring itself
    count_rows: list[list[int]] = []
    money_rows: list[list[float]] = []
    first_ms: list[int | None] = []
    last_ms: list[int | None] = []
    signup_ms: list[int | None] = []
    previous: list[str | None] = []
    churn: list[float | None] = []
    as_of_day = int(local_day(as_of_ms))
    mid_day = _day_start_ms(as_of_day) != as_of_ms
    count_ranges = [(lo, _NO_END if hi is None else hi) for lo, hi in _COUNT_RANGES]
    money_ranges = [(lo, _NO_END if hi is None else hi) for lo, hi in _MONEY_RANGES]
    for state, row in zip(states, rows, strict=True):
        if row is not None:
            c = [int(_num(row.get(name))) for name in _COUNT_COLUMNS]
            m = [_num(row.get(name)) for name in _MONEY_COLUMNS]
            base_first = _opt_int(row.get("first_order_ts"))
            base_last = _opt_int(row.get("last_order_ts"))
            signup_ms.append(_opt_int(row.get("signup_ts")))
            tier = row.get("tier")
            previous.append(None if tier is None else str(tier))
            p = row.get("churn_p")
            churn.append(None if p is None else float(p))
        else:
            c = [0] * len(_COUNT_COLUMNS)
            m = [0.0] * len(_MONEY_COLUMNS)
            base_first = base_last = None
            signup_ms.append(None)
            previous.append(None)
            churn.append(None)
        # the first live day the snapshot does not cover (see the module docstring)
        first_new = as_of_day + 1 if mid_day else as_of_day
        if base_last is not None:
            first_new = min(first_new, int(local_day(base_last)) + 1)
        else:
            first_new = _ALL_DAYS
        if (
            mid_day
            and state.first_order_ms is not None
            and state.first_order_ms >= as_of_ms
            and first_new > as_of_day
        ):
            first_new = as_of_day
        for day, (n_orders, cny) in state.orders.items():
            if day < first_new:
                continue
            back = obs_day - day
            k = int(n_orders)
            for j, (lo, hi) in enumerate(count_ranges):
                if lo <= back <= hi:
                    c[j] += k
            for j, (lo, hi) in enumerate(money_ranges):
                if lo <= back <= hi:
                    m[j] += cny
        count_rows.append(c)
        money_rows.append(m)
        firsts = [t for t in (base_first, state.first_order_ms) if t is not None]
        lasts = [t for t in (base_last, state.last_order_ms) if t is not None]
        first_ms.append(min(firsts) if firsts else None)
        last_ms.append(max(lasts) if lasts else None)
    counts = np.asarray(count_rows, dtype=np.int64).reshape(len(states), len(_COUNT_COLUMNS))
    money = np.asarray(money_rows, dtype=np.float64).reshape(len(states), len(_MONEY_COLUMNS))
    return _Live(counts, money, first_ms, last_ms, signup_ms, previous, churn)


def _ts_array(values: list[int | None]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(TIMESTAMP)


def live_features(
    states: Sequence[UserState],
    rows: Sequence[Mapping[str, Any] | None],
    as_of_ms: int,
    at_ms: int,
) -> tuple[pa.Table, list[str | None], list[float | None]]:
    """The users' features at ``at_ms``: snapshot rows plus the live orders they do not cover.

    Args:
        states: live state of each user.
        rows: each user's snapshot row (``SnapshotFeatures.rows``; timestamps epoch ms), or
            None for a user the snapshot does not hold.
        as_of_ms: the snapshot's as-of.
        at_ms: the evaluation instant, exclusive like an as-of (after every order counted).

    Returns:
        (features, previous tier, churn_p): a table with the columns of
        :data:`LIVE_FEATURE_COLUMNS` that the scoring reads (feature types as in
        ``strata.features.FEATURES_SCHEMA``), the snapshot tier and churn_p of each user.
    """
    obs_day = int(local_day(at_ms - 1))
    live = _live_columns(states, rows, as_of_ms, obs_day)
    n = len(states)
    has = np.fromiter((t is not None for t in live.last_ms), dtype=bool, count=n)
    last = np.fromiter((t or 0 for t in live.last_ms), dtype=np.int64, count=n)
    first = np.fromiter((t or 0 for t in live.first_ms), dtype=np.int64, count=n)
    recency = obs_day - local_day(last)
    tenure_days = obs_day - local_day(first) + 1
    months = np.maximum(np.ceil(tenure_days / MONTH_DAYS), 1).astype(np.int32)
    cols: dict[str, pa.Array] = {
        "user_id": pa.array([s.user_id for s in states], pa.int64()),
        "recency_days": pa.array(recency.astype(np.int32), pa.int32(), mask=~has),
    }
    for j, name in enumerate(_COUNT_COLUMNS):
        cols[name] = pa.array(live.counts[:, j].astype(np.int32), pa.int32())
    for j, name in enumerate(_MONEY_COLUMNS):
        cols[name] = pa.array(np.round(live.money[:, j], 6), pa.float64())
    cols["first_order_ts"] = _ts_array(live.first_ms)
    cols["last_order_ts"] = _ts_array(live.last_ms)
    cols["signup_ts"] = _ts_array(live.signup_ms)
    cols["active_months"] = pa.array(months, pa.int32(), mask=~has)
    return pa.table(cols), live.previous_tier, live.churn_p


def superseded(overlay: Mapping[str, Any], as_of_ms: int) -> bool:
    """True when a snapshot with this as-of covers every order of the overlay (the overlay
    adds nothing to it and is to be dropped); False when the overlay still has orders after it.
    """
    last = overlay.get("last_order_ms")
    return last is None or int(last) < as_of_ms


class LiveScorer:
    """Live re-scoring against one snapshot (its cut points, its as-of).

    Args:
        config: the recompute configuration (tiers.yaml weights, measures, bands, hysteresis;
            lifecycle.yaml); should be the one the snapshot was computed with.
        partials: the snapshot's merged RFM partials (``SnapshotStore.read_partials``).
        as_of_ms: the snapshot's as-of.
        version: the snapshot version (written into every overlay).
        as_of_iso: the snapshot's as-of as its manifest writes it.
        with_predictions: the snapshot has model outputs (``churn_p`` then decides the churn
            warning as in the recompute); None: when any scored row has a ``churn_p``.

    Raises:
        ValueError: the partials do not fit the configured frequency measure.
    """

    def __init__(
        self,
        config: RecomputeConfig,
        partials: RfmPartials,
        as_of_ms: int,
        version: str,
        as_of_iso: str,
        with_predictions: bool | None = None,
    ) -> None:
        per_month = config.tiers.measures.frequency.per == "active_month"
        if partials.frequency_per_month() != per_month:
            raise ValueError(
                "the snapshot's RFM partials were built for another frequency measure than "
                "tiers.yaml measures.frequency.per now says; recompute first"
            )
        self.config = config
        self.partials = partials
        self.as_of_ms = int(as_of_ms)
        self.version = version
        self.as_of_iso = as_of_iso
        self.with_predictions = with_predictions
        w = config.tiers.weights
        self._weights = (w.recency, w.frequency, w.monetary)

    @classmethod
    def for_snapshot(
        cls, config: RecomputeConfig, snapshot: SnapshotInputs, **kwargs: Any
    ) -> LiveScorer:
        """The scorer of a snapshot (e.g. a ``strata.io.snapshot_features.SnapshotFeatures``;
        its ``with_predictions``, when it has one, says whether the snapshot had a model)."""
        kwargs.setdefault("with_predictions", getattr(snapshot, "with_predictions", None))
        return cls(
            config, snapshot.partials, snapshot.as_of_ms, snapshot.version, snapshot.as_of_iso,
            **kwargs,
        )  # fmt: skip

    def overlay(
        self,
        user_id: int,
        state: UserState,
        features: Mapping[str, Any] | None,
        now_ms: int,
    ) -> dict[str, Any]:
        """The live overlay of one user (see :meth:`overlays`)."""
        if state.user_id != user_id:
            raise ValueError(f"state of user {state.user_id} passed for user {user_id}")
        return self.overlays([state], [features], now_ms)[0]

    def overlays(
        self,
        states: Sequence[UserState],
        rows: Sequence[Mapping[str, Any] | None],
        now_ms: int,
    ) -> list[dict[str, Any]]:
        """Live overlays of many users at once (one call per batch of events).

        Args:
            states: each user's live state (after the batch's events).
            rows: each user's snapshot row, None for a user unknown to the snapshot.
            now_ms: wall clock; the evaluation instant is the later of it and just after the
                newest order or event of the batch (an event stamped slightly ahead of the
                clock still counts).

        Returns:
            one overlay dict per user (keys :data:`OVERLAY_KEYS`), in order.
        """
        if len(states) != len(rows):
            raise ValueError(f"{len(states)} states but {len(rows)} snapshot rows")
        if not states:
            return []
        newest = max(
            (
                t
                for s in states
                for t in (s.last_order_ms, s.last_event_ms)
                if t is not None
            ),
            default=now_ms - 1,
        )  # fmt: skip
        at_ms = max(int(now_ms), int(newest) + 1)
        features, previous, churn = live_features(states, rows, self.as_of_ms, at_ms)
        scored = self.score(features, previous, churn, at_ms)
        return self._overlays(states, features, scored, previous, at_ms)

    def score(
        self,
        features: pa.Table,
        previous_tier: Sequence[str | None],
        churn_p: Sequence[float | None],
        at_ms: int,
    ) -> dict[str, Any]:
        """RFM ranks, lifecycle and tier of live features, by the recompute's own functions
        (as :func:`strata.tiering.scoring.score_features` calls them).

        Returns:
            {"rfm_r", "rfm_f", "rfm_m", "rfm_score" (float arrays, rounded like the
            snapshot), "lifecycle_stage", "lifecycle_rule", "tier", "tier_rule",
            "tier_explanation", "recency_band", "frequency_band", "spend_level" (string
            lists)}.
        """
        tiers = self.config.tiers
        r, f, m, score = rfm_scores(features, self.partials, self._weights, tiers.measures)
        stage, stage_rule = assign_lifecycle(features, at_ms, self.config.lifecycle)
        stage, stage_rule = self._reactivated(features, at_ms, stage, stage_rule)
        ltv = features.column("ltv_cny").to_numpy(zero_copy_only=False).astype("float64")
        predictions = (
            any(p is not None for p in churn_p)
            if self.with_predictions is None
            else self.with_predictions
        )
        churn = (
            np.asarray([np.nan if p is None else p for p in churn_p], dtype=np.float64)
            if predictions
            else None
        )
        tier, tier_rule, why = assign_tiers(
            score, stage, ltv, pa.array(list(previous_tier), pa.string()), tiers, churn_p=churn
        )
        bands = assign_bands(
            features, self.partials, at_ms, tiers.rfm_bands, tiers.measures.monetary.window
        )
        return {
            **{name: col.to_pylist() for name, col in bands.items()},
            "rfm_r": np.round(r, 6),
            "rfm_f": np.round(f, 6),
            "rfm_m": np.round(m, 6),
            "rfm_score": np.round(score, 6),
            "lifecycle_stage": stage.to_pylist(),
            "lifecycle_rule": stage_rule.to_pylist(),
            "tier": tier.to_pylist(),
            "tier_rule": tier_rule.to_pylist(),
            "tier_explanation": why.to_pylist(),
        }

    def _reactivated(
        self, features: pa.Table, at_ms: int, stage: pa.Array, rule: pa.Array
    ) -> tuple[pa.Array, pa.Array]:
        """A declining user who ordered after the snapshot's as-of is no longer declining
        (the issue's live rule): such users take the stage the batch rules give without the
        declining rule (growing or mature), and a rule text saying why. The batch rule alone
        may keep them declining until the ordering pace recovers (orders of the last window
        <= ratio x the window before)."""
        last = features.column("last_order_ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
        last = np.nan_to_num(np.asarray(last, dtype=np.float64), nan=-1.0)
        declining = np.asarray(pc.equal(stage, "declining").to_numpy(zero_copy_only=False))
        again = np.asarray(declining, dtype=bool) & (last >= self.as_of_ms)
        if not again.any():
            return stage, rule
        no_declining = self.config.lifecycle.model_copy(
            update={"declining_min_prev_orders": 1 << 40}
        )
        alt_stage, alt_rule = assign_lifecycle(features, at_ms, no_declining)
        mask = pa.array(again)
        alt_rule = pc.binary_join_element_wise(
            "ordered again after the snapshot (live): ", alt_rule, ""
        )
        return pc.if_else(mask, alt_stage, stage), pc.if_else(mask, alt_rule, rule)

    def _overlays(
        self,
        states: Sequence[UserState],
        features: pa.Table,
        scored: dict[str, Any],
        previous: Sequence[str | None],
        at_ms: int,
    ) -> list[dict[str, Any]]:
        recency = features.column("recency_days").to_pylist()
        f90 = features.column("frequency_90d").to_pylist()
        m90 = features.column("monetary_90d").to_pylist()
        total = features.column("orders_total").to_pylist()
        ltv_cny = features.column("ltv_cny").to_pylist()
        arpu_30d = features.column("monetary_30d").to_pylist()
        last_order = features.column("last_order_ts").cast(pa.int64()).to_pylist()
        r, f, m, s = (scored[k].tolist() for k in ("rfm_r", "rfm_f", "rfm_m", "rfm_score"))
        out = []
        for i, state in enumerate(states):
            last_event = state.last_event_ms if state.last_event_ms is not None else last_order[i]
            out.append(
                {
                    "version": self.version,
                    "as_of": self.as_of_iso,
                    "tier": scored["tier"][i],
                    "lifecycle_stage": scored["lifecycle_stage"][i],
                    "rfm_r": r[i],
                    "rfm_f": f[i],
                    "rfm_m": m[i],
                    "rfm_score": s[i],
                    "recency_days": recency[i],
                    "frequency_90d": f90[i],
                    "monetary_90d": m90[i],
                    "last_event_ms": last_event,
                    "last_event_at": None if last_event is None else local_iso(last_event),
                    "tier_rule": scored["tier_rule"][i],
                    "tier_explanation": scored["tier_explanation"][i],
                    "lifecycle_rule": scored["lifecycle_rule"][i],
                    "previous_tier": previous[i],
                    "orders_total": total[i],
                    "last_order_ms": last_order[i],
                    "scored_ms": at_ms,
                    "recency_band": scored["recency_band"][i],
                    "frequency_band": scored["frequency_band"][i],
                    "spend_level": scored["spend_level"][i],
                    "ltv_cny": ltv_cny[i],
                    "arpu_30d_cny": arpu_30d[i],
                }
            )
        return out
