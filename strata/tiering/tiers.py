"""Tier assignment: RFM score bands, the churn-warning override, hysteresis, explanations.

Thresholds, weights and names come from configs/tiers.yaml (:class:`TierRules`). Every user
gets ``tier``, the rule that fired (``tier_rule``) and a human-readable ``tier_explanation``
built from the values the rule used.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from strata.config import StrictModel, config_path, load_yaml
from strata.features import RfmMeasures
from strata.tiering.lifecycle import STAGES

RULE_BAND = "score_band"
RULE_HOLD = "hysteresis_hold"
RULE_CHURN = "churn_warning"


class RfmWeights(StrictModel):
    recency: float = Field(ge=0, le=1)
    frequency: float = Field(ge=0, le=1)
    monetary: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> RfmWeights:
        total = self.recency + self.frequency + self.monetary
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"weights must sum to 1, got {total:g}")
        return self


class Band(StrictModel):
    name: str = Field(min_length=1)
    min_score: float = Field(ge=0, le=1)


class ChurnWarning(StrictModel):
    """Win-back tier. With a churn model, users whose calibrated ``churn_p`` reaches
    ``churn_p_min`` get it; without one, users in ``lifecycle_stages``. Either way only users
    who spent at least ``min_ltv_cny`` (they were worth something)."""

    name: str = "churn_warning"
    lifecycle_stages: list[str] = Field(default_factory=lambda: ["declining", "churned"])
    min_ltv_cny: float = Field(0.0, ge=0)
    churn_p_min: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _known_stages(self) -> ChurnWarning:
        unknown = [s for s in self.lifecycle_stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown lifecycle stages {unknown}; allowed: {list(STAGES)}")
        return self


class TierRules(StrictModel):
    """configs/tiers.yaml."""

    weights: RfmWeights
    measures: RfmMeasures = Field(default_factory=RfmMeasures)
    bands: list[Band] = Field(min_length=1)
    churn_warning: ChurnWarning | None = None
    hysteresis_margin: float = Field(0.0, ge=0, lt=0.5)
    #: a score band holding less than this share of the scored users is a recompute warning
    min_band_share: float = Field(0.01, ge=0, lt=1)

    @model_validator(mode="after")
    def _bands_in_order(self) -> TierRules:
        mins = [b.min_score for b in self.bands]
        if any(a <= b for a, b in itertools.pairwise(mins)):
            raise ValueError(f"bands must be listed with strictly decreasing min_score, got {mins}")
        if mins[-1] != 0:
            raise ValueError("the last band must have min_score 0 (it catches everyone else)")
        names = [b.name for b in self.bands]
        if self.churn_warning is not None:
            names.append(self.churn_warning.name)
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        return self

    @property
    def tier_names(self) -> list[str]:
        names = [b.name for b in self.bands]
        if self.churn_warning is not None:
            names.append(self.churn_warning.name)
        return names


def load_tier_rules(config_dir: str | Path | None = None) -> TierRules:
    return load_yaml(config_path("tiers", config_dir), TierRules)


def band_index(score: np.ndarray, rules: TierRules) -> np.ndarray:
    """Index into ``rules.bands`` of the band each score falls in (0 = highest band)."""
    mins = np.asarray([b.min_score for b in rules.bands])
    # first band whose min_score the score strictly exceeds; the last band catches the rest
    above = score[:, None] > mins[None, :-1]
    idx = np.where(above.any(axis=1), above.argmax(axis=1), len(mins) - 1)
    return idx.astype(np.int16)


def assign_tiers(
    score: np.ndarray,
    lifecycle_stage: pa.Array | pa.ChunkedArray,
    ltv_cny: np.ndarray,
    previous_tier: pa.Array | pa.ChunkedArray | None,
    rules: TierRules,
    churn_p: np.ndarray | None = None,
) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Tier, fired rule and explanation of every user.

    Args:
        score: RFM scores in [0, 1].
        lifecycle_stage: stage per user (for the churn-warning override).
        ltv_cny: spend to date per user (NaN/0 when none).
        previous_tier: the user's tier in the previous snapshot, null for users new to it.
        rules: tier configuration.
        churn_p: model churn probability per user (NaN where unknown); with
            ``churn_warning.churn_p_min`` set it decides the churn warning instead of the
            lifecycle stage.

    Returns:
        (tier, tier_rule, tier_explanation) string arrays.
    """
    tier_idx, rule, raw = tier_codes(score, lifecycle_stage, ltv_cny, previous_tier, rules, churn_p)
    cw = rules.churn_warning
    by_model = cw is not None and cw.churn_p_min is not None and churn_p is not None
    tier = pa.DictionaryArray.from_arrays(pa.array(tier_idx), pa.array(rules.tier_names)).cast(
        pa.string()
    )
    rule_arr = pa.DictionaryArray.from_arrays(
        pa.array(rule), pa.array([RULE_BAND, RULE_HOLD, RULE_CHURN])
    ).cast(pa.string())
    explanation = _explain(
        score, raw, tier_idx, rule, lifecycle_stage, ltv_cny, rules, churn_p if by_model else None
    )
    return tier, rule_arr, explanation


def tier_codes(
    score: np.ndarray,
    lifecycle_stage: pa.Array | pa.ChunkedArray,
    ltv_cny: np.ndarray,
    previous_tier: pa.Array | pa.ChunkedArray | None,
    rules: TierRules,
    churn_p: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`assign_tiers` as codes, without the explanation texts (what-if simulations).

    Returns:
        (tier index into ``rules.tier_names`` (int16), rule code (int8: 0 score band,
        1 hysteresis hold, 2 churn warning), raw score band index (int16)) per user.
    """
    n = len(score)
    bands = rules.bands
    raw = band_index(score, rules)
    chosen = raw.copy()
    rule = np.zeros(n, dtype=np.int8)  # 0 band, 1 hold, 2 churn
    m = rules.hysteresis_margin
    if previous_tier is not None and m > 0:
        prev_name = pc.fill_null(previous_tier.cast(pa.string()), "")
        prev_idx = pc.index_in(prev_name, pa.array([b.name for b in bands])).to_numpy(
            zero_copy_only=False
        )
        has_prev = ~np.isnan(prev_idx.astype("float64"))
        prev = np.where(has_prev, np.nan_to_num(prev_idx.astype("float64")), -1).astype(np.int16)
        # a better (lower index) band only once the score clears its threshold by the margin,
        # a worse one only once it falls below the current band's threshold by the margin
        up = band_index(score - m, rules)
        down = band_index(score + m, rules)
        promote = has_prev & (raw < prev)
        demote = has_prev & (raw > prev)
        chosen = np.where(promote, np.minimum(up, prev), chosen)
        chosen = np.where(demote, np.maximum(down, prev), chosen)
        rule[(promote | demote) & (chosen != raw)] = 1
    tier_idx = chosen.astype(np.int16)
    cw = rules.churn_warning
    by_model = cw is not None and cw.churn_p_min is not None and churn_p is not None
    if cw is not None:
        ltv = np.nan_to_num(np.asarray(ltv_cny, dtype="float64"))
        worth = (ltv >= cw.min_ltv_cny) & (ltv > 0)
        if by_model:
            assert churn_p is not None and cw.churn_p_min is not None
            flagged = np.nan_to_num(np.asarray(churn_p, dtype="float64")) >= cw.churn_p_min
        else:
            stage = pc.fill_null(lifecycle_stage.cast(pa.string()), "")
            in_stage = pc.is_in(stage, pa.array(cw.lifecycle_stages))
            flagged = np.asarray(in_stage.to_numpy(zero_copy_only=False), dtype=bool)
        warn = flagged & worth
        tier_idx = np.where(warn, len(bands), tier_idx).astype(np.int16)
        rule[warn] = 2
    return tier_idx, rule, raw


def _explain(
    score: np.ndarray,
    raw: np.ndarray,
    tier_idx: np.ndarray,
    rule: np.ndarray,
    stage: pa.Array | pa.ChunkedArray,
    ltv: np.ndarray,
    rules: TierRules,
    churn_p: np.ndarray | None = None,
) -> pa.Array:
    """Vectorised one-line explanations, e.g. ``rfm_score 0.834 > 0.8 -> high_value``."""
    names = np.asarray(rules.tier_names, dtype=object)
    mins = np.asarray([b.min_score for b in rules.bands])
    lowest = len(mins) - 1
    # the lowest band is "not above the next threshold"; every other band "above its own"
    next_up = mins[lowest - 1] if lowest > 0 else 0.0
    is_lowest = raw == lowest
    band_thr = np.where(is_lowest, next_up, mins[raw])

    def txt(values: np.ndarray) -> pa.Array:
        return pc.cast(pa.array(values), pa.string())

    score_txt = txt(np.round(score, 3))
    band_txt = pc.binary_join_element_wise(
        "rfm_score ", score_txt, pc.if_else(pa.array(is_lowest), " <= ", " > "),
        txt(band_thr), " -> ", pa.array(names[raw].astype(str)), "",
    )  # fmt: skip
    kept = pa.array(names[np.minimum(tier_idx, lowest)].astype(str))
    hold_txt = pc.binary_join_element_wise(
        "held at ", kept, ": rfm_score ", score_txt, " is in ", pa.array(names[raw].astype(str)),
        f"'s band but not past the threshold by the hysteresis margin {rules.hysteresis_margin:g}",
        "",
    )  # fmt: skip
    cw = rules.churn_warning
    if cw is None:
        return pc.if_else(pa.array(rule == 1), hold_txt, band_txt)
    ltv_txt = txt(np.round(np.nan_to_num(np.asarray(ltv, dtype="float64")), 2))
    if churn_p is not None:
        churn_txt = pc.binary_join_element_wise(
            "churn_p ", txt(np.round(np.nan_to_num(np.asarray(churn_p, dtype="float64")), 3)),
            f" >= {cw.churn_p_min:g} with ltv_cny ", ltv_txt,
            f" >= {cw.min_ltv_cny:g} -> {cw.name}", "",
        )  # fmt: skip
    else:
        churn_txt = pc.binary_join_element_wise(
            "lifecycle ", pc.fill_null(stage.cast(pa.string()), "unknown"),
            " with ltv_cny ", ltv_txt, f" >= {cw.min_ltv_cny:g} -> {cw.name}", "",
        )  # fmt: skip
    return pc.if_else(
        pa.array(rule == 2), churn_txt, pc.if_else(pa.array(rule == 1), hold_txt, band_txt)
    )


# --------------------------------------------------------------------------- score histogram
#: Equal-width bins of the score histogram: (lo, hi], the first one [0, 0.1].
SCORE_BINS = 10
_LONG_WINDOWS = ("365d", "lifetime")


@dataclass(frozen=True)
class ScoreHistogram:
    """Mergeable counts of ``rfm_score``: per equal-width bin and per score band.

    ``bands`` counts users by the band their score falls in (``band_index``), before the
    churn-warning override and hysteresis: it shows whether the bands cut the score
    distribution where users are. Shards return one each; :meth:`merge` adds them.
    """

    bins: tuple[int, ...]
    bands: tuple[int, ...]

    @classmethod
    def of(cls, scores: np.ndarray | pa.Table, rules: TierRules) -> ScoreHistogram:
        """Histogram of scores (an array, or a scored table's ``rfm_score`` column)."""
        if isinstance(scores, pa.Table):
            scores = scores.column("rfm_score").to_numpy()
        s = np.nan_to_num(np.asarray(scores, dtype=np.float64))
        # (lo, hi] bins like the bands' strict "score > min_score"; rounding drops float noise
        idx = np.clip(np.ceil(np.round(s * SCORE_BINS, 9)) - 1, 0, SCORE_BINS - 1)
        bins = np.bincount(idx.astype(np.int64), minlength=SCORE_BINS)
        bands = np.bincount(band_index(s, rules), minlength=len(rules.bands))
        return cls(tuple(int(c) for c in bins), tuple(int(c) for c in bands))

    @classmethod
    def empty(cls, rules: TierRules) -> ScoreHistogram:
        """The neutral element of :meth:`merge`."""
        return cls((0,) * SCORE_BINS, (0,) * len(rules.bands))

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        """Counts of both (integer addition, order-independent)."""
        if len(self.bins) != len(other.bins) or len(self.bands) != len(other.bands):
            raise ValueError("cannot merge score histograms of different bins or bands")
        return ScoreHistogram(
            tuple(a + b for a, b in zip(self.bins, other.bins, strict=True)),
            tuple(a + b for a, b in zip(self.bands, other.bands, strict=True)),
        )

    @classmethod
    def merge_all(cls, parts: Sequence[ScoreHistogram], rules: TierRules) -> ScoreHistogram:
        """Sum of any number of histograms (the empty one for none)."""
        out = cls.empty(rules)
        for p in parts:
            out = out.merge(p)
        return out

    @property
    def total(self) -> int:
        return sum(self.bins)

    def to_json(self, rules: TierRules) -> dict[str, Any]:
        """Manifest form: bin edges, bin counts and users per band by name."""
        return {
            "edges": [round(i / SCORE_BINS, 6) for i in range(SCORE_BINS + 1)],
            "counts": list(self.bins),
            "bands": {b.name: c for b, c in zip(rules.bands, self.bands, strict=True)},
        }


def _band_range(rules: TierRules, i: int) -> str:
    lo = rules.bands[i].min_score
    if i == 0:
        return f"rfm_score > {lo:g}"
    hi = rules.bands[i - 1].min_score
    return f"{lo:g} < rfm_score <= {hi:g}" if lo > 0 else f"rfm_score <= {hi:g}"


def band_warnings(histogram: ScoreHistogram, rules: TierRules) -> list[str]:
    """One warning per score band holding less than ``rules.min_band_share`` of the scored
    users, naming the band and the tiers.yaml settings that move users into it."""
    total = histogram.total
    if total == 0:
        return []
    out = []
    ms = rules.measures
    short = [
        f"measures.{name}.window"
        for name, m in (("frequency", ms.frequency), ("monetary", ms.monetary))
        if m.window not in _LONG_WINDOWS
    ]
    for i, (band, count) in enumerate(zip(rules.bands, histogram.bands, strict=True)):
        if count >= rules.min_band_share * total:
            continue
        keys = [f"bands[{i}].min_score"] if band.min_score > 0 else []
        if i > 0:
            keys.append(f"bands[{i - 1}].min_score")
        text = (
            f"tier band {band.name!r} ({_band_range(rules, i)}) holds {count:,} of "
            f"{total:,} scored users ({count / total:.1%}, under "
            f"{rules.min_band_share:.0%}): move its bounds (tiers.yaml {' / '.join(keys)})"
        )
        if short:
            text += (
                " or, for a sparse purchase cadence, rank over a longer window (tiers.yaml "
                f"{' / '.join(short)}: 365d or lifetime)"
            )
        out.append(text)
    return out


def histogram_rows(
    histogram: ScoreHistogram, rules: TierRules, width: int = 30
) -> list[tuple[str, str, str, str]]:
    """Rows ``(score bin, users, share, bar)`` from the highest bin down; where a band
    boundary falls on a bin edge a marker row ``("", "", "", "-- 0.8: high_value above,
    potential below --")`` separates them (a boundary inside a bin is noted after its bar)."""
    total = max(histogram.total, 1)
    peak = max(max(histogram.bins), 1)
    bands = rules.bands
    cuts = [(bands[i].min_score, bands[i].name, bands[i + 1].name) for i in range(len(bands) - 1)]

    def cut_text(cut: tuple[float, str, str]) -> str:
        return f"{cut[0]:g}: {cut[1]} above, {cut[2]} below"

    rows: list[tuple[str, str, str, str]] = []
    for k in reversed(range(SCORE_BINS)):
        lo, hi = k / SCORE_BINS, (k + 1) / SCORE_BINS
        count = histogram.bins[k]
        bar = "#" * round(width * count / peak)
        inside = [c for c in cuts if lo + 1e-9 < c[0] < hi - 1e-9]
        if inside:
            bar += "  <- " + "; ".join(cut_text(c) for c in inside)
        label = f"[{lo:.1f}, {hi:.1f}]" if k == 0 else f"({lo:.1f}, {hi:.1f}]"
        rows.append((label, f"{count:,}", f"{count / total:.1%}", bar))
        for c in cuts:
            if math.isclose(c[0], lo, abs_tol=1e-9):
                rows.append(("", "", "", f"-- {cut_text(c)} --"))
    return rows


def empty_bands(band_counts: Mapping[str, int], users: int, rules: TierRules) -> dict[str, bool]:
    """Per score band: True when it holds less than ``rules.min_band_share`` of ``users``."""
    if users <= 0:
        return {b.name: False for b in rules.bands}
    return {b.name: band_counts.get(b.name, 0) < rules.min_band_share * users for b in rules.bands}
