"""Why a user is in its tier, from the online record alone.

The online API has a user's decoded segment record (:func:`strata.online.codec.snapshot_layout`)
and the published version's meta, which holds the tier rules (:func:`rules_from_meta`). From
those, :func:`explain` gives the rule that fired, the feature values and thresholds it used, and
how far the user is from the next better tier; :func:`tier_definitions` lists every tier.

The stored ``tier`` and ``tier_rule`` are the truth: they were decided at recompute with exact
values, while the online ``rfm_score`` is rounded to 1/200. Conditions that the stored tier
implies are therefore reported as met, and a ``precision_note`` says when the rounded score is
close enough to a threshold that it may look as if the tier were wrong.

Pure: pydantic and the stdlib only (plus :mod:`strata.tiering.tiers` for the rules and
:mod:`strata.tiering.bands` for the band thresholds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from strata.tiering.bands import BAND_COLUMNS, band_conditions, spend_column
from strata.tiering.tiers import RULE_BAND, RULE_CHURN, RULE_HOLD, ChurnWarning, TierRules

__all__ = [
    "BandExplanation",
    "Condition",
    "Explanation",
    "TierThreshold",
    "explain",
    "rules_from_meta",
    "tier_definitions",
]

#: ``rfm_score`` is stored online in steps of 1/200 (``unit8``): up to half a step off.
_SCORE_STEP = 1 / 200
#: A rounded score this close to a threshold may sit on the other side of it.
_NEAR_THRESHOLD = 0.005
_EPS = 1e-9
_RULES = (RULE_BAND, RULE_HOLD, RULE_CHURN)
_FEATURES = (
    "rfm_r",
    "rfm_f",
    "rfm_m",
    "rfm_score",
    "recency_days",
    "frequency_90d",
    "monetary_90d",
    "lifecycle_stage",
)


class Condition(BaseModel):
    """One check of the tier rules, with the record's value and the rule's threshold.

    Attributes:
        condition: the check as text, e.g. ``rfm_score > 0.8``.
        value: the record's value (None where the online record does not hold it).
        threshold: the threshold it is compared with (a list as text for set membership).
        met: whether the check held at recompute (implied by the stored tier and rule).
    """

    condition: str
    value: float | str | None
    threshold: float | str | None
    met: bool


class BandExplanation(BaseModel):
    """One RFM base band of the user, with the thresholds that put them there.

    Attributes:
        band: the band column: ``recency_band``, ``frequency_band`` or ``spend_level``.
        label: the user's band (None where the record's version has no bands).
        condition: the condition of that band, e.g. ``30 < recency_days <= 90``.
        inputs: the record's values the band is computed from (None where the online record
            does not hold one; the band was decided at recompute with exact values).
        thresholds: every band's condition, in order (tiers.yaml ``rfm_bands``).
    """

    band: str
    label: str | None
    condition: str | None
    inputs: dict[str, float | int | None]
    thresholds: dict[str, str]


class TierThreshold(BaseModel):
    """How a user gets one tier.

    Attributes:
        tier: the tier name.
        min_score: the band's ``min_score`` (the score must exceed it, except in the lowest
            band); None for the churn-warning tier.
        rule: ``score_band`` for bands, ``churn_warning`` for the override tier.
        description: the condition as text.
    """

    tier: str
    min_score: float | None
    rule: str
    description: str


class Explanation(BaseModel):
    """Why a user is in its tier (see :func:`explain`).

    Attributes:
        tier: the stored tier.
        rule: ``score_band``, ``hysteresis_hold`` or ``churn_warning``.
        summary: one sentence, e.g. ``rfm_score 0.835 > 0.8 -> high_value``.
        score_formula: how ``rfm_score`` is computed from the percentile ranks.
        features: the record's values that the rules use.
        conditions: the checks that put the user in the tier (and, for band tiers, the
            churn-warning checks that did not fire).
        thresholds: every tier's definition (:func:`tier_definitions`).
        next_tier: the next better band; None in the top band and in the churn-warning tier.
        distance_to_next_tier: ``rfm_score`` points still needed for ``next_tier``, hysteresis
            margin included (the score must exceed ``min_score + margin``); None without a
            next tier or a score.
        tier_without_override: for churn-warning users, the band their score gives.
        precision_note: set when the rounded online score is within 0.005 of a threshold.
        bands: the user's RFM base bands (recency, frequency, spend) and their thresholds.
    """

    tier: str
    rule: str
    summary: str
    score_formula: str
    features: dict[str, float | int | str | None]
    conditions: list[Condition]
    thresholds: list[TierThreshold]
    next_tier: str | None
    distance_to_next_tier: float | None
    tier_without_override: str | None
    precision_note: str | None
    bands: list[BandExplanation] = []


def rules_from_meta(meta: Mapping[str, Any]) -> TierRules | None:
    """The tier rules a version was published with, from its meta (``tier_rules``).

    Returns:
        The rules, or None for versions published without them.

    Raises:
        pydantic.ValidationError: ``tier_rules`` is not a valid rule set.
    """
    raw = meta.get("tier_rules")
    if raw is None:
        return None
    if isinstance(raw, str | bytes):
        return TierRules.model_validate(json.loads(raw))
    return TierRules.model_validate(raw)


def tier_definitions(rules: TierRules) -> list[TierThreshold]:
    """Every tier, best band first and the churn-warning tier (if any) last."""
    bands = rules.bands
    lowest = len(bands) - 1
    margin = rules.hysteresis_margin
    out: list[TierThreshold] = []
    for i, band in enumerate(bands):
        if i == lowest:
            text = f"rfm_score <= {bands[i - 1].min_score:g}" if i > 0 else "every user"
        else:
            text = f"rfm_score > {band.min_score:g}"
            if i > 0:
                text += f" and <= {bands[i - 1].min_score:g}"
        if margin > 0 and lowest > 0:
            text += f" (hysteresis margin {margin:g})"
        out.append(
            TierThreshold(
                tier=band.name, min_score=band.min_score, rule=RULE_BAND, description=text
            )
        )
    cw = rules.churn_warning
    if cw is not None:
        stages = _stage_list(cw)
        if cw.churn_p_min is not None:
            flag = (
                f"churn_p >= {cw.churn_p_min:g} "
                f"(churn model; without one: lifecycle_stage in {stages})"
            )
        else:
            flag = f"lifecycle_stage in {stages}"
        out.append(
            TierThreshold(
                tier=cw.name,
                min_score=None,
                rule=RULE_CHURN,
                description=f"{flag} and {_ltv_text(cw)}; overrides the score bands",
            )
        )
    return out


def explain(record: Mapping[str, Any], rules: TierRules) -> Explanation:
    """Why the user of ``record`` is in its tier.

    Args:
        record: a decoded segment record (``tier``, ``rfm_score``...; ``tier_rule`` may be
            missing in versions published before it was stored, and is then inferred).
        rules: the tier rules of the record's version (:func:`rules_from_meta`).

    Returns:
        The explanation. It never contradicts the stored tier.

    Raises:
        ValueError: the record has no tier, or a tier that ``rules`` does not define.
    """
    tier = record.get("tier")
    names = rules.tier_names
    if tier is None:
        raise ValueError("the record has no tier")
    if tier not in names:
        raise ValueError(f"tier {tier!r} is not defined by the tier rules; tiers: {names}")
    bands = rules.bands
    cw = rules.churn_warning
    is_churn = cw is not None and tier == cw.name
    score = _number(record.get("rfm_score"))
    raw = _band_of(score, rules) if score is not None else None
    rule = _rule_of(record, tier, is_churn, raw, rules)

    features: dict[str, float | int | str | None] = {k: record.get(k) for k in _FEATURES}
    if "churn_p" in record:
        features["churn_p"] = record["churn_p"]

    conditions: list[Condition] = []
    next_tier: str | None = None
    distance: float | None = None
    without: str | None = None
    if is_churn:
        assert cw is not None
        summary = _churn(record, cw, conditions, is_churn=True)
        without = bands[raw].name if raw is not None else None
    else:
        t = next(i for i, b in enumerate(bands) if b.name == tier)
        if rule == RULE_HOLD:
            summary = _hold(score, t, raw, rules, conditions)
        else:
            summary = _band(score, t, rules, conditions)
        if cw is not None:
            _churn(record, cw, conditions, is_churn=False)
        if t > 0:
            next_tier = bands[t - 1].name
            if score is not None:
                need = bands[t - 1].min_score + rules.hysteresis_margin - score
                # rounded up to 4 decimals, so the distance is always enough
                distance = max(0.0, math.ceil(round(need * 10_000, 6)) / 10_000)

    w = rules.weights
    return Explanation(
        tier=tier,
        rule=rule,
        summary=summary,
        score_formula=(
            f"rfm_score = {w.recency:g}*rfm_r + {w.frequency:g}*rfm_f + {w.monetary:g}*rfm_m"
        ),
        features=features,
        conditions=conditions,
        thresholds=tier_definitions(rules),
        next_tier=next_tier,
        distance_to_next_tier=distance,
        tier_without_override=without,
        precision_note=_precision_note(score, rules),
        bands=explain_bands(record, rules),
    )


def explain_bands(record: Mapping[str, Any], rules: TierRules) -> list[BandExplanation]:
    """The user's RFM base bands with the thresholds (``rules.rfm_bands``) behind them.

    Args:
        record: a decoded segment record (live-merged or not).
        rules: the tier rules of the record's version.
    """
    window = rules.measures.monetary.window
    texts = band_conditions(rules.rfm_bands, window)
    freq = f"frequency_{rules.rfm_bands.frequency.window}"
    inputs: dict[str, tuple[str, ...]] = {
        "recency_band": ("recency_days",),
        "frequency_band": (freq,),
        "spend_level": (spend_column(window), "rfm_m"),
    }
    out = []
    for band in BAND_COLUMNS:
        label = record.get(band)
        shown = texts[band]
        out.append(
            BandExplanation(
                band=band,
                label=label,
                condition=shown.get(label) if isinstance(label, str) else None,
                inputs={name: _input(record.get(name)) for name in inputs[band]},
                thresholds=shown,
            )
        )
    return out


def _input(value: Any) -> float | int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    x = float(value)
    return None if x != x else x


# ------------------------------------------------------------------------------------ helpers


def _number(value: Any) -> float | None:
    if value is None:
        return None
    x = float(value)
    return None if x != x else x  # NaN is unknown


def _fmt(x: float) -> str:
    """A value as :func:`strata.tiers._explain` writes it (3 decimals, no trailing zeros)."""
    return f"{round(x, 3):g}"


def _band_of(score: float, rules: TierRules) -> int:
    """Index of the band ``score`` falls in, as :func:`strata.tiers.band_index` computes it."""
    bands = rules.bands
    for i, band in enumerate(bands[:-1]):
        if score > band.min_score:
            return i
    return len(bands) - 1


def _rule_of(
    record: Mapping[str, Any], tier: str, is_churn: bool, raw: int | None, rules: TierRules
) -> str:
    """The stored rule, or (for records without one) the rule inferred from tier and score."""
    stored = record.get("tier_rule")
    if stored in _RULES and (stored == RULE_CHURN) == is_churn:
        return str(stored)
    if is_churn:
        return RULE_CHURN
    if raw is None or rules.hysteresis_margin == 0:
        return RULE_BAND
    return RULE_HOLD if rules.bands[raw].name != tier else RULE_BAND


def _band(score: float | None, t: int, rules: TierRules, out: list[Condition]) -> str:
    """Conditions of a plain score band; returns the summary."""
    bands = rules.bands
    lowest = len(bands) - 1
    name = bands[t].name
    if t < lowest:
        out.append(_implied(f"rfm_score > {bands[t].min_score:g}", score, bands[t].min_score))
    if t > 0:
        out.append(
            _implied(f"rfm_score <= {bands[t - 1].min_score:g}", score, bands[t - 1].min_score)
        )
    if lowest == 0:
        out.append(_implied("rfm_score >= 0", score, 0.0))
    if score is None:
        return f"score band -> {name} (rfm_score is not in the record)"
    if lowest == 0:
        thr, holds, op = 0.0, True, " >= "
    elif t == lowest:
        thr, holds, op = bands[t - 1].min_score, score <= bands[t - 1].min_score, " <= "
    else:
        thr, holds, op = bands[t].min_score, score > bands[t].min_score, " > "
    # the rounded score may sit on the wrong side of the threshold: the stored tier is right
    shown = _fmt(score) if holds else f"~{_fmt(score)}"
    return f"rfm_score {shown}{op}{thr:g} -> {name}"


def _hold(
    score: float | None, t: int, raw: int | None, rules: TierRules, out: list[Condition]
) -> str:
    """Conditions of a hysteresis hold: the band widened by the margin; returns the summary."""
    bands = rules.bands
    lowest = len(bands) - 1
    m = rules.hysteresis_margin
    name = bands[t].name
    if t < lowest:
        thr = round(bands[t].min_score - m, 6)
        out.append(_implied(f"rfm_score > {bands[t].min_score:g} - margin {m:g}", score, thr))
    if t > 0:
        thr = round(bands[t - 1].min_score + m, 6)
        out.append(_implied(f"rfm_score <= {bands[t - 1].min_score:g} + margin {m:g}", score, thr))
    if score is None:
        return f"held at {name} by the hysteresis margin {m:g} (rfm_score is not in the record)"
    if raw is not None and raw != t:
        return (
            f"held at {name}: rfm_score {_fmt(score)} is in {bands[raw].name}'s band but not past "
            f"the threshold by the hysteresis margin {m:g}"
        )
    return (
        f"held at {name}: rfm_score ~{_fmt(score)} is just outside {name}'s band, within the "
        f"hysteresis margin {m:g}"
    )


def _churn(
    record: Mapping[str, Any], cw: ChurnWarning, out: list[Condition], *, is_churn: bool
) -> str:
    """Conditions of the churn-warning override (met for churn-warning users; for the others
    the check that did not fire); returns the churn-warning summary."""
    churn_p = _number(record.get("churn_p"))
    # the model decides when the version had one (its records carry churn_p), as at recompute
    by_model = (
        cw.churn_p_min is not None and "churn_p" in record and not (is_churn and churn_p is None)
    )
    ltv = _ltv_text(cw)
    if by_model:
        assert cw.churn_p_min is not None
        flagged = churn_p is not None and churn_p >= cw.churn_p_min
        out.append(
            Condition(
                condition=f"churn_p >= {cw.churn_p_min:g}",
                value=churn_p,
                threshold=cw.churn_p_min,
                met=is_churn or flagged,
            )
        )
        shown = _fmt(churn_p) if churn_p is not None else "unknown"
        summary = f"churn_p {shown} >= {cw.churn_p_min:g} with {ltv} -> {cw.name}"
    else:
        stage = record.get("lifecycle_stage")
        stages = _stage_list(cw)
        flagged = stage in cw.lifecycle_stages
        out.append(
            Condition(
                condition=f"lifecycle_stage in {stages}",
                value=stage,
                threshold=stages,
                met=is_churn or flagged,
            )
        )
        summary = f"lifecycle {stage or 'unknown'} with {ltv} -> {cw.name}"
    if is_churn or flagged:
        # ltv_cny is not in the online record; recompute checked it (it failed for a flagged
        # user who did not get the churn-warning tier)
        out.append(Condition(condition=ltv, value=None, threshold=cw.min_ltv_cny, met=is_churn))
    return summary


def _implied(condition: str, value: float | None, threshold: float) -> Condition:
    """A check that the stored tier implies (met at recompute, whatever the rounding)."""
    return Condition(condition=condition, value=value, threshold=threshold, met=True)


def _stage_list(cw: ChurnWarning) -> str:
    return "[" + ", ".join(cw.lifecycle_stages) + "]"


def _ltv_text(cw: ChurnWarning) -> str:
    # assign_tiers also needs ltv > 0: with min_ltv_cny 0 that is the whole condition
    return f"ltv_cny >= {cw.min_ltv_cny:g}" if cw.min_ltv_cny > 0 else "ltv_cny > 0"


def _precision_note(score: float | None, rules: TierRules) -> str | None:
    """A note when the rounded score is within 0.005 of a threshold, else None."""
    if score is None:
        return None
    m = rules.hysteresis_margin
    thresholds: set[float] = set()
    for band in rules.bands[:-1]:
        thresholds.add(band.min_score)
        if m > 0:
            thresholds.update((round(band.min_score - m, 6), round(band.min_score + m, 6)))
    near = [x for x in thresholds if abs(score - x) <= _NEAR_THRESHOLD + _EPS]
    if not near:
        return None
    closest = min(near, key=lambda x: (abs(score - x), x))
    return (
        f"rfm_score is stored online in steps of 1/200 ({_SCORE_STEP:g}), so {_fmt(score)} may "
        f"be up to {_SCORE_STEP / 2:g} off the exact score, and it is within "
        f"{_NEAR_THRESHOLD:g} of the threshold {closest:g}; the tier was decided at recompute "
        "with the exact score"
    )
