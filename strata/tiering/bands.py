"""RFM base bands: the recency, frequency and spend bands operators filter on.

The RFM *scores* (``rfm_r``/``rfm_f``/``rfm_m``) rank users against each other; the *bands*
say in words where a user stands, with thresholds in ``configs/tiers.yaml`` (``rfm_bands:``,
:class:`RfmBands`):

* ``recency_band`` from ``recency_days`` (days since the last order, 0 = the last day before
  the as-of): ``within_30d`` (<= 30), ``lapsed_30d`` (31-90), ``lapsed_90d`` (91-180),
  ``lapsed_180d`` (> 180), ``no_order`` (never ordered);
* ``frequency_band`` from orders per 30 days over the last ``window`` days (or since the first
  order when that is shorter, but over at least ``min_days``, so one order yesterday is not a
  weekly habit): ``weekly``, ``monthly``, ``quarterly`` at or above each rate, else ``rarer``;
* ``spend_level`` from the user's percentile *among buyers* of the spend that ``rfm_m`` ranks
  (the ``measures.monetary`` window): ``high`` at or above ``high_min_percentile`` (0.8: the
  top 20 % of buyers), ``mid`` at or above ``mid_min_percentile``, else ``low``; users with no
  spend in the window are ``low``. A percentile among buyers (not CNY thresholds, not ``rfm_m``
  itself, whose zero-spend users shift every buyer's rank up) means the same on any platform:
  a grocery log with a weekly cadence and a sparse one where most users bought nothing lately.

The percentile uses the merged RFM partials of every shard (:class:`RfmPartials`), so bands are
identical however users were spread over shards, and the live scorer gets the same bands from
the snapshot's partials. Pure: numpy, pyarrow and pydantic.
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from strata.config import StrictModel
from strata.features.rfm import RfmPartials, percentile_rank
from strata.timeutil import local_day

__all__ = [
    "BAND_COLUMNS",
    "FREQUENCY_BANDS",
    "RECENCY_BANDS",
    "SPEND_LEVELS",
    "FrequencyBands",
    "RecencyBands",
    "RfmBands",
    "SpendLevels",
    "assign_bands",
    "band_conditions",
    "spend_column",
]

RECENCY_BANDS: tuple[str, ...] = (
    "within_30d",
    "lapsed_30d",
    "lapsed_90d",
    "lapsed_180d",
    "no_order",
)
FREQUENCY_BANDS: tuple[str, ...] = ("weekly", "monthly", "quarterly", "rarer")
SPEND_LEVELS: tuple[str, ...] = ("high", "mid", "low")
#: the snapshot columns :func:`assign_bands` adds
BAND_COLUMNS: tuple[str, ...] = ("recency_band", "frequency_band", "spend_level")

_FREQUENCY_COLUMN: dict[str, str] = {
    "30d": "frequency_30d",
    "90d": "frequency_90d",
    "180d": "frequency_180d",
    "365d": "frequency_365d",
}
_MONETARY_COLUMN: dict[str, str] = {
    "30d": "monetary_30d",
    "90d": "monetary_90d",
    "180d": "monetary_180d",
    "365d": "monetary_365d",
    "lifetime": "spend_total_cny",
}
_PERIOD_DAYS = 30.0


class RecencyBands(StrictModel):
    """Largest ``recency_days`` of each recency band (older: ``lapsed_180d``)."""

    within_30d: int = Field(default=30, ge=0, le=3650)
    lapsed_30d: int = Field(default=90, ge=0, le=3650)
    lapsed_90d: int = Field(default=180, ge=0, le=3650)

    @model_validator(mode="after")
    def _increasing(self) -> RecencyBands:
        days = [self.within_30d, self.lapsed_30d, self.lapsed_90d]
        if any(b <= a for a, b in itertools.pairwise(days)):
            raise ValueError(
                "recency_days must increase strictly: within_30d < lapsed_30d < lapsed_90d, "
                f"got {days}"
            )
        return self

    def limits(self) -> tuple[int, int, int]:
        """The three upper bounds, in band order."""
        return self.within_30d, self.lapsed_30d, self.lapsed_90d


class FrequencyBands(StrictModel):
    """Orders per 30 days that each frequency band needs (``rarer`` below the last)."""

    window: Literal["30d", "90d", "180d", "365d"] = "90d"
    min_days: int = Field(default=30, ge=1, le=365)
    weekly_min_per_30d: float = Field(default=3.0, gt=0)
    monthly_min_per_30d: float = Field(default=0.6, gt=0)
    quarterly_min_per_30d: float = Field(default=0.3, gt=0)

    @model_validator(mode="after")
    def _decreasing(self) -> FrequencyBands:
        rates = [self.weekly_min_per_30d, self.monthly_min_per_30d, self.quarterly_min_per_30d]
        if any(b >= a for a, b in itertools.pairwise(rates)):
            raise ValueError(
                "the per-30-day rates must decrease strictly: weekly_min_per_30d > "
                f"monthly_min_per_30d > quarterly_min_per_30d, got {rates}"
            )
        if self.min_days > self.window_days:
            raise ValueError(f"min_days {self.min_days} is longer than the window {self.window}")
        return self

    @property
    def window_days(self) -> int:
        return int(self.window.removesuffix("d"))

    def rates(self) -> tuple[float, float, float]:
        """The three minimum rates, in band order."""
        return self.weekly_min_per_30d, self.monthly_min_per_30d, self.quarterly_min_per_30d


class SpendLevels(StrictModel):
    """Minimum percentile among buyers of ``high`` and ``mid`` spend."""

    high_min_percentile: float = Field(default=0.8, gt=0, le=1)
    mid_min_percentile: float = Field(default=0.4, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> SpendLevels:
        if self.mid_min_percentile >= self.high_min_percentile:
            raise ValueError(
                "mid_min_percentile must be below high_min_percentile, got "
                f"{self.mid_min_percentile:g} >= {self.high_min_percentile:g}"
            )
        return self


class RfmBands(StrictModel):
    """configs/tiers.yaml ``rfm_bands:`` (see the module docstring)."""

    recency_days: RecencyBands = Field(default_factory=RecencyBands)
    frequency: FrequencyBands = Field(default_factory=FrequencyBands)
    spend_level: SpendLevels = Field(default_factory=SpendLevels)


def spend_column(monetary_window: str) -> str:
    """The feature column ``spend_level`` ranks: the spend of the ``measures.monetary``
    window (what ``rfm_m`` ranks, and what the RFM partials' money histogram holds)."""
    return _MONETARY_COLUMN[monetary_window]


def _numbers(features: pa.Table, name: str, fill: float) -> np.ndarray:
    col = features.column(name)
    return np.asarray(pc.fill_null(col, fill).to_numpy(zero_copy_only=False), dtype=np.float64)


def _labels(labels: tuple[str, ...], idx: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(labels, dtype=object)[idx], pa.string())


def assign_bands(
    features: pa.Table,
    partials: RfmPartials,
    as_of_ms: int,
    bands: RfmBands,
    monetary_window: str = "90d",
) -> dict[str, pa.Array]:
    """The three RFM base bands of every user (columns :data:`BAND_COLUMNS`, never null).

    Args:
        features: per-user features (``recency_days``, ``frequency_<window>``,
            ``first_order_ts`` and the spend column of ``monetary_window``).
        partials: the merged RFM partials of every user (built with the tier measures).
        as_of_ms: the as-of (exclusive) instant the features were computed at.
        bands: the thresholds.
        monetary_window: the tier rules' ``measures.monetary.window``.

    Returns:
        ``{"recency_band", "frequency_band", "spend_level"}`` string arrays.
    """
    n = features.num_rows
    # recency: no order (null recency) is its own band
    rec_col = features.column("recency_days")
    has = np.asarray(pc.is_valid(rec_col).to_numpy(zero_copy_only=False), dtype=bool)
    rec = _numbers(features, "recency_days", 0.0)
    r_idx = np.searchsorted(np.asarray(bands.recency_days.limits()), rec, side="left")
    r_idx = np.where(has, r_idx, len(RECENCY_BANDS) - 1)

    # frequency: orders per 30 days over min(window, days since the first order), >= min_days
    fb = bands.frequency
    orders = _numbers(features, _FREQUENCY_COLUMN[fb.window], 0.0)
    first = features.column("first_order_ts").cast(pa.int64())
    has_first = np.asarray(pc.is_valid(first).to_numpy(zero_copy_only=False), dtype=bool)
    first_ms = np.asarray(pc.fill_null(first, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    obs_day = int(local_day(int(as_of_ms) - 1))
    tenure = np.where(has_first, obs_day - local_day(first_ms) + 1, fb.window_days)
    days = np.clip(tenure, fb.min_days, fb.window_days).astype(np.float64)
    rate = orders * _PERIOD_DAYS / days
    # first rate the user reaches (small epsilon: 3 orders in 30 days is exactly 3.0)
    mins = np.asarray(fb.rates())
    reached = rate[:, None] >= mins[None, :] - 1e-9
    f_idx = np.where(reached.any(axis=1), reached.argmax(axis=1), len(FREQUENCY_BANDS) - 1)

    # spend: percentile among buyers (users with spend > 0), from the merged money histogram
    sl = bands.spend_level
    spend = _numbers(features, spend_column(monetary_window), 0.0)
    hist = partials.monetary
    zeros = int(hist.counts[0]) if len(hist.counts) else 0
    buyers = hist.total - zeros
    if buyers > 0:
        pct = (percentile_rank(spend, hist, buyers, "average") * buyers - zeros) / buyers
    else:
        pct = np.zeros(n, dtype=np.float64)
    s_idx = np.where(
        spend > 0,
        np.where(
            pct >= sl.high_min_percentile - 1e-9,
            0,
            np.where(pct >= sl.mid_min_percentile - 1e-9, 1, 2),
        ),
        2,
    )
    return {
        "recency_band": _labels(RECENCY_BANDS, r_idx.astype(np.intp)),
        "frequency_band": _labels(FREQUENCY_BANDS, f_idx.astype(np.intp)),
        "spend_level": _labels(SPEND_LEVELS, s_idx.astype(np.intp)),
    }


def band_conditions(bands: RfmBands, monetary_window: str = "90d") -> dict[str, dict[str, str]]:
    """Each band's condition as text, per band column: ``{"recency_band": {"within_30d":
    "recency_days <= 30", ...}, ...}`` (what the explanation and the docs show)."""
    d = bands.recency_days
    fb = bands.frequency
    w, m, q = fb.rates()
    per = (
        f"orders per 30 days over the last {fb.window_days} days (or since the first order "
        f"if later, at least {fb.min_days} days)"
    )
    sl = bands.spend_level
    spend = f"percentile among buyers of {spend_column(monetary_window)}"
    return {
        "recency_band": {
            "within_30d": f"recency_days <= {d.within_30d}",
            "lapsed_30d": f"{d.within_30d} < recency_days <= {d.lapsed_30d}",
            "lapsed_90d": f"{d.lapsed_30d} < recency_days <= {d.lapsed_90d}",
            "lapsed_180d": f"recency_days > {d.lapsed_90d}",
            "no_order": "no order yet",
        },
        "frequency_band": {
            "weekly": f"{per} >= {w:g}",
            "monthly": f"{m:g} <= {per} < {w:g}",
            "quarterly": f"{q:g} <= {per} < {m:g}",
            "rarer": f"{per} < {q:g}",
        },
        "spend_level": {
            "high": f"{spend} >= {sl.high_min_percentile:g}",
            "mid": f"{sl.mid_min_percentile:g} <= {spend} < {sl.high_min_percentile:g}",
            "low": f"{spend} < {sl.mid_min_percentile:g}, or no spend in the window",
        },
    }
