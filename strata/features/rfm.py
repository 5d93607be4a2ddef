"""Global R, F, M normalisation from mergeable partials.

Each shard returns :class:`RfmPartials` (exact integer histograms and fine log-spaced money
bins) of its users; the driver merges them (integer addition, so the result does not depend on
how users were split) and every shard scores its users with :func:`rfm_scores` against the
merged partials. Which window and unit each measure uses, how ties rank and whether users with
zero count are :class:`RfmMeasures` (``configs/tiers.yaml``, ``measures``).

Pure: numpy, pyarrow and pydantic only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from strata.config import StrictModel
from strata.features.compute import MONTH_DAYS, _one_array, _valid

__all__ = [
    "MONEY_BINS",
    "FrequencyMeasure",
    "IntHistogram",
    "LogHistogram",
    "MonetaryMeasure",
    "RecencyMeasure",
    "RfmMeasures",
    "RfmPartials",
    "histogram_from_json",
    "money_bin",
    "percentile_rank",
    "rfm_partials",
    "rfm_scores",
]

#: Money bins: bin 0 holds values <= 0, bin 1 values in (0, 0.01), then bins of 0.5 % width
#: from 0.01 CNY (1 fen) up to 10M CNY, and one overflow bin above.
MONEY_MIN_CNY = 0.01
MONEY_MAX_CNY = 1e7
MONEY_BIN_RATIO = 1.005
_MONEY_LOG_BINS = math.ceil(math.log(MONEY_MAX_CNY / MONEY_MIN_CNY) / math.log(MONEY_BIN_RATIO))
MONEY_BINS = _MONEY_LOG_BINS + 3


def money_bin(values: np.ndarray) -> np.ndarray:
    """Histogram bin of each money value (see :data:`MONEY_BINS`); NaN goes to bin 0."""
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros(v.shape, dtype=np.int64)
    pos = v > 0
    small = pos & (v < MONEY_MIN_CNY)
    out[small] = 1
    big = pos & ~small
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.floor(np.log(v[big] / MONEY_MIN_CNY) / math.log(MONEY_BIN_RATIO)).astype(np.int64)
    out[big] = 2 + np.clip(b, 0, _MONEY_LOG_BINS)
    return out


@dataclass(frozen=True)
class IntHistogram:
    """Exact counts of non-negative integer values: ``counts[v]`` users have value ``v``."""

    counts: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> IntHistogram:
        """Histogram of non-negative integer values (no nulls)."""
        v = np.asarray(values, dtype=np.int64)
        if len(v) and int(v.min()) < 0:
            raise ValueError("IntHistogram needs non-negative values")
        return cls(np.bincount(v).astype(np.int64))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def merge(self, other: IntHistogram) -> IntHistogram:
        """Sum of two histograms (exact; order-independent)."""
        size = max(len(self.counts), len(other.counts))
        out = np.zeros(size, dtype=np.int64)
        out[: len(self.counts)] += self.counts
        out[: len(other.counts)] += other.counts
        return IntHistogram(out)

    def below_equal(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Counts of values ``< v`` and ``== v`` for each ``v`` (integer-valued)."""
        v = np.asarray(values, dtype=np.int64)
        cum = np.concatenate(([0], np.cumsum(self.counts)))
        k = len(self.counts)
        idx = np.clip(v, 0, k)
        below = cum[idx]
        if k == 0:
            return below, np.zeros(len(v), dtype=np.int64)
        equal = np.where((v >= 0) & (v < k), self.counts[np.clip(v, 0, k - 1)], 0)
        return below, equal

    def to_json(self) -> dict[str, Any]:
        """JSON form (sparse: only non-empty values), read back by :func:`histogram_from_json`."""
        return _sparse_json("int", self.counts)


@dataclass(frozen=True)
class LogHistogram:
    """Counts of money values in :func:`money_bin` bins (fixed length :data:`MONEY_BINS`)."""

    counts: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> LogHistogram:
        """Histogram of money values (NaN and values <= 0 fall in bin 0)."""
        return cls(np.bincount(money_bin(values), minlength=MONEY_BINS).astype(np.int64))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def merge(self, other: LogHistogram) -> LogHistogram:
        """Sum of two histograms (exact; order-independent)."""
        return LogHistogram(self.counts + other.counts)

    def below_equal(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Counts in lower bins and in the same bin as each value."""
        b = money_bin(values)
        cum = np.concatenate(([0], np.cumsum(self.counts)))
        return cum[b], self.counts[b]

    def to_json(self) -> dict[str, Any]:
        """JSON form (sparse: only non-empty bins), read back by :func:`histogram_from_json`."""
        return _sparse_json("log", self.counts)


def _sparse_json(kind: str, counts: np.ndarray) -> dict[str, Any]:
    at = np.flatnonzero(counts)
    return {
        "kind": kind,
        "size": len(counts),
        "index": at.tolist(),
        "count": counts[at].astype(np.int64).tolist(),
    }


def histogram_from_json(data: dict[str, Any]) -> IntHistogram | LogHistogram:
    """A histogram from its :meth:`IntHistogram.to_json` / :meth:`LogHistogram.to_json` form.

    Raises:
        ValueError: not such a form (unknown kind, bad sizes, negative counts or indices out
            of range).
    """
    try:
        kind, size = data["kind"], int(data["size"])
        index = np.asarray(data["index"], dtype=np.int64)
        count = np.asarray(data["count"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a histogram: {exc}") from None
    if kind not in ("int", "log"):
        raise ValueError(f"histogram kind must be 'int' or 'log', got {kind!r}")
    if kind == "log" and size != MONEY_BINS:
        raise ValueError(f"a money histogram has {MONEY_BINS} bins, got {size}")
    bad_index = len(index) and (int(index.min()) < 0 or int(index.max()) >= size)
    if size < 0 or len(index) != len(count) or bad_index or (count < 0).any():
        raise ValueError("histogram index/count lists do not fit its size")
    counts = np.zeros(size, dtype=np.int64)
    counts[index] = count
    return IntHistogram(counts) if kind == "int" else LogHistogram(counts)


def percentile_rank(
    values: np.ndarray,
    histogram: IntHistogram | LogHistogram,
    n: int | None = None,
    ties: str = "average",
) -> np.ndarray:
    """Percentile rank of each value in a population given by its histogram.

    ``ties`` says what a group of equal values gets: ``average`` the mid-rank
    ``(count(< v) + 0.5 * count(== v)) / n``, ``min`` the share strictly below it
    ``count(< v) / n``, ``max`` the share at or below it ``(count(< v) + count(== v)) / n``.
    Exact for an :class:`IntHistogram`; for a :class:`LogHistogram` "equal" means "in the same
    0.5 % bin". Deterministic, and identical however the users were split into shards.

    Args:
        values: values to rank (need not be in the histogram).
        histogram: the merged histogram of the population.
        n: population size (default: the histogram's total; pass more when the population
            has users outside the histogram, e.g. users with no recency).
        ties: ``average``, ``min`` or ``max``.

    Returns:
        float64 ranks in [0, 1] (0 for an empty population).
    """
    if ties not in _TIE_SHARE:
        raise ValueError(f"ties must be one of {sorted(_TIE_SHARE)}, got {ties!r}")
    total = histogram.total if n is None else int(n)
    below, equal = histogram.below_equal(values)
    if total <= 0:
        return np.zeros(len(below), dtype=np.float64)
    return np.asarray((below + _TIE_SHARE[ties] * equal) / total, dtype=np.float64)


_TIE_SHARE: dict[str, float] = {"average": 0.5, "min": 0.0, "max": 1.0}


# --------------------------------------------------------------------------- RFM measures
RfmWindow = Literal["30d", "90d", "180d", "365d", "lifetime"]
RankTies = Literal["average", "min", "max"]
#: Users with nothing in a measure's window always get 0 for it; this says whether they count
#: in the population everyone else is ranked against (``in_population``: a buyer's rank starts
#: above their share) or not (``excluded``: buyers spread over the whole [0, 1]).
ZeroUsers = Literal["in_population", "excluded"]
_WINDOW_DAYS: dict[str, int | None] = {
    "30d": 30,
    "90d": 90,
    "180d": 180,
    "365d": 365,
    "lifetime": None,
}
#: ``orders per active month`` ranks on ``orders * RATE_SCALE / months`` in money bins, so that
#: rates down to 1 order in 100 years keep 0.5 % resolution (money bins start at 0.01).
RATE_SCALE = 100.0


class RecencyMeasure(StrictModel):
    """R: days since the last order (recent ranks high). A last order older than ``window``
    counts as no order (r = 0)."""

    window: RfmWindow = "lifetime"
    ties: RankTies = "average"
    zeros: ZeroUsers = "in_population"


class FrequencyMeasure(StrictModel):
    """F: orders in ``window`` (``per: window``) or orders per active month in it
    (``per: active_month``: orders / min(active_months, months of the window))."""

    window: RfmWindow = "90d"
    per: Literal["window", "active_month"] = "window"
    ties: RankTies = "average"
    zeros: ZeroUsers = "in_population"


class MonetaryMeasure(StrictModel):
    """M: spend (CNY) in ``window``."""

    window: RfmWindow = "90d"
    ties: RankTies = "average"
    zeros: ZeroUsers = "in_population"


class RfmMeasures(StrictModel):
    """What R, F and M rank (tiers.yaml ``measures``); the defaults are the grocery setting
    (recency to date, orders and spend in the last 90 days)."""

    recency: RecencyMeasure = Field(default_factory=RecencyMeasure)
    frequency: FrequencyMeasure = Field(default_factory=FrequencyMeasure)
    monetary: MonetaryMeasure = Field(default_factory=MonetaryMeasure)

    def columns(self) -> list[str]:
        """Feature columns the measures read."""
        f, m = self.frequency, self.monetary
        cols = ["recency_days", _FREQUENCY_COLUMN[f.window], _MONETARY_COLUMN[m.window]]
        if f.per == "active_month":
            cols.append("active_months")
        return cols


_FREQUENCY_COLUMN: dict[str, str] = {
    "30d": "frequency_30d",
    "90d": "frequency_90d",
    "180d": "frequency_180d",
    "365d": "frequency_365d",
    "lifetime": "orders_total",
}
_MONETARY_COLUMN: dict[str, str] = {
    "30d": "monetary_30d",
    "90d": "monetary_90d",
    "180d": "monetary_180d",
    "365d": "monetary_365d",
    "lifetime": "spend_total_cny",
}


@dataclass(frozen=True)
class RfmPartials:
    """Mergeable sufficient statistics for global R, F, M percentile ranks.

    ``recency`` counts ``recency_days`` of users with an order inside the recency window,
    ``frequency`` counts every user's frequency measure (an :class:`IntHistogram` of orders,
    or a :class:`LogHistogram` of scaled orders per active month) and ``monetary`` bins every
    user's spend in the monetary window; ``n_users`` is the population of all three ranks.
    """

    n_users: int
    recency: IntHistogram
    frequency: IntHistogram | LogHistogram
    monetary: LogHistogram

    @classmethod
    def empty(cls, measures: RfmMeasures | None = None) -> RfmPartials:
        """The neutral element of :meth:`merge` (for ``measures``, default the grocery ones)."""
        rate = measures is not None and measures.frequency.per == "active_month"
        return cls(
            0,
            IntHistogram(np.zeros(0, dtype=np.int64)),
            LogHistogram(np.zeros(MONEY_BINS, dtype=np.int64))
            if rate
            else IntHistogram(np.zeros(0, dtype=np.int64)),
            LogHistogram(np.zeros(MONEY_BINS, dtype=np.int64)),
        )

    def merge(self, other: RfmPartials) -> RfmPartials:
        """Partials of the union of both shards' users (integer addition)."""
        if type(self.frequency) is not type(other.frequency):
            raise ValueError("cannot merge RFM partials of different frequency measures")
        return RfmPartials(
            self.n_users + other.n_users,
            self.recency.merge(other.recency),
            self.frequency.merge(other.frequency),  # type: ignore[arg-type]
            self.monetary.merge(other.monetary),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON form (what a snapshot stores next to its features), see :meth:`from_json`."""
        return {
            "n_users": self.n_users,
            "recency": self.recency.to_json(),
            "frequency": self.frequency.to_json(),
            "monetary": self.monetary.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RfmPartials:
        """Partials from :meth:`to_json`'s form (exact round trip).

        Raises:
            ValueError: not such a form.
        """
        try:
            n_users = int(data["n_users"])
            recency = histogram_from_json(data["recency"])
            frequency = histogram_from_json(data["frequency"])
            monetary = histogram_from_json(data["monetary"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not RFM partials: missing {exc}") from None
        if not isinstance(recency, IntHistogram) or not isinstance(monetary, LogHistogram):
            raise ValueError("RFM partials need an int recency and a money monetary histogram")
        return cls(n_users, recency, frequency, monetary)

    def frequency_per_month(self) -> bool:
        """True when the frequency histogram ranks orders per active month (money bins)."""
        return isinstance(self.frequency, LogHistogram)


@dataclass(frozen=True)
class _RfmInputs:
    rec: np.ndarray  # days since the last order (0 where none)
    has: np.ndarray  # an order inside the recency window
    freq: np.ndarray  # int64 orders, or float64 scaled orders per active month
    mon: np.ndarray


def _numbers(features: pa.Table, name: str, fill: float) -> np.ndarray:
    col = pc.fill_null(_one_array(features.column(name)), fill)
    return np.asarray(col.to_numpy(zero_copy_only=False))


def _rfm_inputs(features: pa.Table, measures: RfmMeasures) -> _RfmInputs:
    rec_col = _one_array(features.column("recency_days"))
    has = _valid(rec_col)
    rec = np.asarray(pc.fill_null(rec_col, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    r_days = _WINDOW_DAYS[measures.recency.window]
    if r_days is not None:
        has = has & (rec < r_days)
    f = measures.frequency
    freq: np.ndarray = _numbers(features, _FREQUENCY_COLUMN[f.window], 0).astype(np.int64)
    if f.per == "active_month":
        months = _numbers(features, "active_months", 1).astype(np.int64)
        f_days = _WINDOW_DAYS[f.window]
        if f_days is not None:
            months = np.minimum(months, math.ceil(f_days / MONTH_DAYS))
        freq = freq * RATE_SCALE / np.maximum(months, 1)
    mon = _numbers(features, _MONETARY_COLUMN[measures.monetary.window], 0.0)
    return _RfmInputs(rec, has, freq, mon.astype(np.float64))


def rfm_partials(features: pa.Table, measures: RfmMeasures | None = None) -> RfmPartials:
    """RFM partials of one shard's features (the columns :meth:`RfmMeasures.columns` names).

    Args:
        features: one shard's features.
        measures: what R, F and M rank (default: the grocery setting, see RfmMeasures).
    """
    m = measures or RfmMeasures()
    x = _rfm_inputs(features, m)
    freq: IntHistogram | LogHistogram = (
        LogHistogram.of(x.freq) if m.frequency.per == "active_month" else IntHistogram.of(x.freq)
    )
    return RfmPartials(
        features.num_rows, IntHistogram.of(x.rec[x.has]), freq, LogHistogram.of(x.mon)
    )


def _zeros(histogram: IntHistogram | LogHistogram) -> int:
    """Users whose value is 0 (bin 0 of either histogram)."""
    return int(histogram.counts[0]) if len(histogram.counts) else 0


def rfm_scores(
    features: pa.Table,
    partials: RfmPartials,
    weights: tuple[float, float, float] = (0.4, 0.3, 0.3),
    measures: RfmMeasures | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Global R, F, M ranks and their weighted score, each float64 in [0, 1].

    With the default measures ``r = 1 - percentile_rank(recency_days)`` (recent is high; a
    user with no order has r = 0), ``f = percentile_rank(frequency_90d)`` and
    ``m = percentile_rank(monetary_90d)`` over all ``partials.n_users`` users, with f = 0 for
    no order in 90 days and m = 0 for no spend; ``score = w_r * r + w_f * f + w_m * m``.
    ``measures`` changes the windows, the frequency unit, the tie ranks and whether users with
    nothing in a window count in the population (:class:`RfmMeasures`).

    Args:
        features: one shard's features.
        partials: the merged partials of every shard (built with the same ``measures``).
        weights: (w_r, w_f, w_m), non-negative, summing to 1.
        measures: what R, F and M rank (default: the grocery setting).
    """
    if len(weights) != 3 or any(x < 0 for x in weights) or abs(sum(weights) - 1) > 1e-9:
        raise ValueError(f"weights must be 3 non-negative numbers summing to 1, got {weights}")
    ms = measures or RfmMeasures()
    x = _rfm_inputs(features, ms)
    n = partials.n_users

    def rank(
        values: np.ndarray, hist: IntHistogram | LogHistogram, zeros: str, ties: str
    ) -> np.ndarray:
        """Rank of positive values; ``excluded`` drops the users at 0 from below and from n."""
        if zeros == "in_population":
            return percentile_rank(values, hist, n, ties)
        z = _zeros(hist)
        nonzero = hist.total - z
        if nonzero <= 0:
            return np.zeros(len(values), dtype=np.float64)
        return (percentile_rank(values, hist, nonzero, ties) * nonzero - z) / nonzero

    rm, fm, mm = ms.recency, ms.frequency, ms.monetary
    # r ranks "recent is high": a tied group's min rank is 1 - its share at or below
    r_ties = {"average": "average", "min": "max", "max": "min"}[rm.ties]
    n_r = n if rm.zeros == "in_population" else partials.recency.total
    r = np.where(x.has, 1.0 - percentile_rank(x.rec, partials.recency, n_r, r_ties), 0.0)
    f = np.where(x.freq > 0, rank(x.freq, partials.frequency, fm.zeros, fm.ties), 0.0)
    m = np.where(x.mon > 0, rank(x.mon, partials.monetary, mm.zeros, mm.ties), 0.0)
    score = weights[0] * r + weights[1] * f + weights[2] * m
    return r, f, m, score
