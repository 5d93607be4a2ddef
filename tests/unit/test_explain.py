"""Tier explanations from the online record (strata.tiering.explain) against assign_tiers."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from strata.tiering.explain import (
    Condition,
    Explanation,
    TierThreshold,
    explain,
    rules_from_meta,
    tier_definitions,
)
from strata.tiering.tiers import RULE_BAND, RULE_CHURN, RULE_HOLD, TierRules, assign_tiers

RULES = TierRules.model_validate(
    {
        "weights": {"recency": 0.4, "frequency": 0.3, "monetary": 0.3},
        "bands": [
            {"name": "high_value", "min_score": 0.8},
            {"name": "potential", "min_score": 0.5},
            {"name": "ordinary", "min_score": 0.0},
        ],
        "churn_warning": {
            "name": "churn_warning",
            "lifecycle_stages": ["declining", "churned"],
            "min_ltv_cny": 100.0,
            "churn_p_min": 0.6,
        },
        "hysteresis_margin": 0.02,
    }
)
STAGES = ["new", "growing", "mature", "declining", "churned"]


def _record(score: float, tier: str, rule: str | None = RULE_BAND, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "tier": tier,
        "lifecycle_stage": "mature",
        "rfm_r": 0.9,
        "rfm_f": 0.7,
        "rfm_m": 0.6,
        "rfm_score": score,
        "recency_days": 3,
        "frequency_90d": 5,
        "monetary_90d": 420.5,
    }
    if rule is not None:
        record["tier_rule"] = rule
    return record | extra


def _by_condition(e: Explanation) -> dict[str, Condition]:
    return {c.condition: c for c in e.conditions}


def test_band_explanation() -> None:
    e = explain(_record(0.65, "potential"), RULES)
    assert e.tier == "potential" and e.rule == RULE_BAND
    assert e.summary == "rfm_score 0.65 > 0.5 -> potential"
    assert e.score_formula == "rfm_score = 0.4*rfm_r + 0.3*rfm_f + 0.3*rfm_m"
    assert e.features["rfm_score"] == 0.65 and e.features["lifecycle_stage"] == "mature"
    assert "churn_p" not in e.features
    conds = _by_condition(e)
    assert conds["rfm_score > 0.5"] == Condition(
        condition="rfm_score > 0.5", value=0.65, threshold=0.5, met=True
    )
    assert conds["rfm_score <= 0.8"].met
    # without a model the lifecycle stage decides the churn warning; it did not fire
    assert conds["lifecycle_stage in [declining, churned]"].met is False
    assert "ltv_cny >= 100" not in conds
    assert e.next_tier == "high_value"
    assert e.distance_to_next_tier == pytest.approx(0.8 + 0.02 - 0.65)
    assert e.tier_without_override is None and e.precision_note is None
    assert e.thresholds == tier_definitions(RULES)


def test_top_band_has_no_next_tier() -> None:
    e = explain(_record(0.9, "high_value"), RULES)
    assert e.summary == "rfm_score 0.9 > 0.8 -> high_value"
    assert [c.condition for c in e.conditions][:1] == ["rfm_score > 0.8"]
    assert e.next_tier is None and e.distance_to_next_tier is None


def test_lowest_band() -> None:
    e = explain(_record(0.3, "ordinary"), RULES)
    assert e.summary == "rfm_score 0.3 <= 0.5 -> ordinary"
    assert _by_condition(e)["rfm_score <= 0.5"].met
    assert e.next_tier == "potential"
    assert e.distance_to_next_tier == pytest.approx(0.22)


def test_hysteresis_hold_distance_includes_margin() -> None:
    # held below: the score is in high_value's band but not past 0.8 by the margin
    e = explain(_record(0.81, "potential", RULE_HOLD), RULES)
    assert e.rule == RULE_HOLD
    assert e.summary == (
        "held at potential: rfm_score 0.81 is in high_value's band but not past the threshold "
        "by the hysteresis margin 0.02"
    )
    conds = _by_condition(e)
    assert conds["rfm_score <= 0.8 + margin 0.02"].threshold == pytest.approx(0.82)
    assert conds["rfm_score > 0.5 - margin 0.02"].threshold == pytest.approx(0.48)
    assert all(c.met for c in e.conditions if c.condition.startswith("rfm_score"))
    assert e.next_tier == "high_value"
    assert e.distance_to_next_tier == pytest.approx(0.01)
    # held above: fell below high_value's threshold, not by the margin
    e = explain(_record(0.79, "high_value", RULE_HOLD), RULES)
    assert e.summary.startswith("held at high_value: rfm_score 0.79 is in potential's band")
    assert e.next_tier is None and e.distance_to_next_tier is None


def test_churn_warning_by_model() -> None:
    record = _record(0.9, "churn_warning", RULE_CHURN, churn_p=0.72, repurchase_p=0.1)
    e = explain(record, RULES)
    assert e.rule == RULE_CHURN
    assert e.summary == "churn_p 0.72 >= 0.6 with ltv_cny >= 100 -> churn_warning"
    assert e.conditions == [
        Condition(condition="churn_p >= 0.6", value=0.72, threshold=0.6, met=True),
        Condition(condition="ltv_cny >= 100", value=None, threshold=100.0, met=True),
    ]
    assert e.features["churn_p"] == 0.72
    assert e.next_tier is None and e.distance_to_next_tier is None
    assert e.tier_without_override == "high_value"


def test_churn_warning_by_lifecycle() -> None:
    record = _record(0.3, "churn_warning", RULE_CHURN, lifecycle_stage="declining")
    e = explain(record, RULES)
    assert e.summary == "lifecycle declining with ltv_cny >= 100 -> churn_warning"
    assert e.conditions[0] == Condition(
        condition="lifecycle_stage in [declining, churned]",
        value="declining",
        threshold="[declining, churned]",
        met=True,
    )
    assert e.conditions[1].condition == "ltv_cny >= 100" and e.conditions[1].met
    assert e.tier_without_override == "ordinary"


def test_band_user_flagged_but_below_min_ltv() -> None:
    e = explain(_record(0.9, "high_value", churn_p=0.7), RULES)
    conds = _by_condition(e)
    assert conds["churn_p >= 0.6"].met and conds["ltv_cny >= 100"].met is False


def test_rule_is_inferred_without_tier_rule() -> None:
    assert explain(_record(0.9, "high_value", None), RULES).rule == RULE_BAND
    assert explain(_record(0.81, "potential", None), RULES).rule == RULE_HOLD
    assert explain(_record(0.79, "high_value", None), RULES).rule == RULE_HOLD
    churn = _record(0.9, "churn_warning", None, lifecycle_stage="churned")
    assert explain(churn, RULES).rule == RULE_CHURN
    # no hysteresis, no hold: a mismatch can only be rounding
    no_margin = RULES.model_copy(update={"hysteresis_margin": 0.0})
    assert explain(_record(0.8, "high_value", None), no_margin).rule == RULE_BAND


def test_precision_note_near_a_threshold() -> None:
    # exact 0.8012 was stored as 0.8: the tier stays high_value, flagged as rounded
    e = explain(_record(0.8, "high_value"), RULES)
    assert e.tier == "high_value" and e.rule == RULE_BAND
    assert e.summary == "rfm_score ~0.8 > 0.8 -> high_value"
    assert e.precision_note is not None and "0.8" in e.precision_note
    assert "1/200" in e.precision_note or "0.005" in e.precision_note
    assert explain(_record(0.515, "potential"), RULES).precision_note is not None  # 0.52
    assert explain(_record(0.65, "potential"), RULES).precision_note is None


def test_unknown_tier_or_missing_tier() -> None:
    with pytest.raises(ValueError, match="gold"):
        explain(_record(0.9, "gold"), RULES)
    with pytest.raises(ValueError, match="no tier"):
        explain({"rfm_score": 0.5}, RULES)


def test_missing_score() -> None:
    e = explain(_record(0.5, "potential") | {"rfm_score": None}, RULES)
    assert e.tier == "potential" and e.distance_to_next_tier is None
    assert e.next_tier == "high_value" and e.precision_note is None


def test_tier_definitions() -> None:
    defs = tier_definitions(RULES)
    assert [d.tier for d in defs] == ["high_value", "potential", "ordinary", "churn_warning"]
    assert [d.min_score for d in defs] == [0.8, 0.5, 0.0, None]
    assert [d.rule for d in defs] == [RULE_BAND, RULE_BAND, RULE_BAND, RULE_CHURN]
    assert defs[1].description.startswith("rfm_score > 0.5 and <= 0.8")
    assert defs[2].description.startswith("rfm_score <= 0.5")
    assert "churn_p >= 0.6" in defs[3].description
    assert "ltv_cny >= 100" in defs[3].description
    no_cw = RULES.model_copy(update={"churn_warning": None})
    assert [d.tier for d in tier_definitions(no_cw)] == ["high_value", "potential", "ordinary"]
    assert isinstance(defs[0], TierThreshold)


def test_rules_from_meta_round_trip() -> None:
    meta = {"as_of": "2026-10-01", "tier_rules": RULES.model_dump(mode="json")}
    # the meta hash is stored as JSON
    back = rules_from_meta(json.loads(json.dumps(meta)))
    assert back == RULES
    assert rules_from_meta({"tier_rules": json.dumps(RULES.model_dump(mode="json"))}) == RULES
    assert rules_from_meta({"as_of": "2026-10-01"}) is None


def _assigned(
    n: int, seed: int, *, with_model: bool
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray | None]:
    """``n`` users tiered by assign_tiers; their exact scores and records (exact values)."""
    rng = np.random.default_rng(seed)
    # a share of scores right at the thresholds and margins, where the rules disagree most
    edges = np.array([0.48, 0.5, 0.52, 0.78, 0.8, 0.82])
    score = np.where(
        rng.random(n) < 0.3,
        np.clip(rng.choice(edges, n) + rng.uniform(-0.004, 0.004, n), 0, 1),
        rng.random(n),
    )
    stage = rng.choice(STAGES, n)
    ltv = np.where(rng.random(n) < 0.7, rng.uniform(0, 500, n), 0.0)
    prev_names = np.array(["high_value", "potential", "ordinary", "churn_warning", None])
    prev = rng.choice(prev_names, n)
    churn_p = rng.random(n) if with_model else None
    tier, rule, _ = assign_tiers(score, pa.array(stage), ltv, pa.array(prev), RULES, churn_p)
    records = [
        {
            "tier": t,
            "tier_rule": r,
            "rfm_score": float(s),
            "lifecycle_stage": str(st),
            **({"churn_p": float(churn_p[i])} if churn_p is not None else {}),
        }
        for i, (t, r, s, st) in enumerate(
            zip(tier.to_pylist(), rule.to_pylist(), score, stage, strict=True)
        )
    ]
    return score, records, churn_p


@pytest.mark.parametrize("with_model", [False, True])
def test_consistent_with_assign_tiers(with_model: bool) -> None:
    score, records, _ = _assigned(400, seed=7 if with_model else 3, with_model=with_model)
    seen_rules = set()
    for s, record in zip(score, records, strict=True):
        e = explain(record, RULES)
        assert (e.tier, e.rule) == (record["tier"], record["tier_rule"])
        seen_rules.add(e.rule)
        # with the exact score every check the explanation states holds, and inference agrees
        for c in e.conditions:
            if c.condition.startswith("rfm_score") and c.value is not None:
                assert isinstance(c.value, float) and isinstance(c.threshold, float)
                ok = c.value <= c.threshold if " <= " in c.condition else c.value > c.threshold
                assert ok and c.met, (s, record, c)
            if not c.met:
                assert record["tier"] != "churn_warning"
        inferred = explain({k: v for k, v in record.items() if k != "tier_rule"}, RULES)
        assert inferred.rule == record["tier_rule"], (s, record)
        if e.distance_to_next_tier is not None:
            assert e.distance_to_next_tier >= 0
            assert e.next_tier is not None
            band_of_next = next(b for b in RULES.bands if b.name == e.next_tier)
            # one step past the distance (and the margin) reaches the next tier's band
            reached = s + e.distance_to_next_tier + 1e-6 - RULES.hysteresis_margin
            assert reached > band_of_next.min_score
    assert seen_rules == {RULE_BAND, RULE_HOLD, RULE_CHURN}


def test_rounded_online_records_never_contradict_the_stored_tier() -> None:
    score, records, _ = _assigned(400, seed=11, with_model=True)
    for s, record in zip(score, records, strict=True):
        online = record | {
            "rfm_score": round(s * 200) / 200,
            "churn_p": round(record["churn_p"] * 10_000) / 10_000,
        }
        e = explain(online, RULES)
        assert (e.tier, e.rule) == (record["tier"], record["tier_rule"])
        inferred = explain({k: v for k, v in online.items() if k != "tier_rule"}, RULES)
        assert inferred.tier == record["tier"]
        if inferred.rule != record["tier_rule"]:
            # only rounding near a threshold can mislead the inference, and it says so
            assert inferred.precision_note is not None, (s, record)
