"""Tier rules (bands, churn warning, hysteresis, explanations) and lifecycle stages."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from strata.config import ConfigError, load_yaml
from strata.tiering.lifecycle import LifecycleRules, assign_lifecycle, load_lifecycle_rules
from strata.tiering.scoring import align_previous, merge_counts, transitions
from strata.tiering.tiers import TierRules, assign_tiers, band_index, load_tier_rules

AS_OF = int(dt.datetime(2026, 10, 1, tzinfo=dt.UTC).timestamp() * 1000)
DAY = 86_400_000
TS = pa.timestamp("ms", tz="UTC")


def _tiers(
    score: list[float],
    prev: list[str | None] | None = None,
    stage: list[str] | None = None,
    ltv: list[float] | None = None,
):
    rules = load_tier_rules()
    n = len(score)
    return assign_tiers(
        np.asarray(score),
        pa.array(stage or ["mature"] * n),
        np.asarray(ltv or [0.0] * n),
        None if prev is None else pa.array(prev, pa.string()),
        rules,
    )


def test_bands_are_strict_thresholds() -> None:
    rules = load_tier_rules()
    assert band_index(np.array([0.81, 0.8, 0.51, 0.5, 0.0]), rules).tolist() == [0, 1, 1, 2, 2]
    tier, rule, why = _tiers([0.81, 0.8, 0.5])
    assert tier.to_pylist() == ["high_value", "potential", "ordinary"]
    assert rule.to_pylist() == ["score_band"] * 3
    assert why.to_pylist() == [
        "rfm_score 0.81 > 0.8 -> high_value",
        "rfm_score 0.8 > 0.5 -> potential",
        "rfm_score 0.5 <= 0.5 -> ordinary",
    ]


def test_churn_warning_needs_stage_and_past_value() -> None:
    tier, rule, why = _tiers(
        [0.9, 0.9, 0.2, 0.2],
        stage=["declining", "churned", "churned", "mature"],
        ltv=[500.0, 50.0, 100.0, 900.0],
    )
    assert tier.to_pylist() == ["churn_warning", "high_value", "churn_warning", "ordinary"]
    assert rule.to_pylist()[0] == "churn_warning"
    assert "lifecycle declining with ltv_cny 500" in why.to_pylist()[0]


def test_hysteresis_holds_within_margin_and_moves_beyond() -> None:
    # margin 0.02 around 0.8 and 0.5
    tier, rule, why = _tiers(
        [0.81, 0.83, 0.79, 0.77, 0.49, 0.2, 0.85, 0.6],
        prev=[
            "potential",
            "potential",
            "high_value",
            "high_value",
            "potential",
            "high_value",
            "ordinary",
            None,
        ],
    )
    assert tier.to_pylist() == [
        "potential",
        "high_value",
        "high_value",
        "potential",
        "potential",
        "ordinary",
        "high_value",
        "potential",
    ]
    assert rule.to_pylist()[:4] == [
        "hysteresis_hold",
        "score_band",
        "hysteresis_hold",
        "score_band",
    ]
    assert "hysteresis margin 0.02" in why.to_pylist()[0]
    # a user never flips back and forth around a threshold
    prev: str | None = None
    seen = []
    for s in [0.79, 0.81, 0.79, 0.81, 0.83, 0.79, 0.77]:
        t = _tiers([s], prev=[prev])[0].to_pylist()[0]
        seen.append(t)
        prev = t
    assert seen == [
        "potential",
        "potential",
        "potential",
        "potential",
        "high_value",
        "high_value",
        "potential",
    ]


def test_tier_config_validation(tmp_path: Path) -> None:
    base = Path(__file__).resolve().parents[2] / "configs" / "tiers.yaml"
    text = base.read_text()
    cases = {
        "recency: 0.4": ("recency: 0.3", "sum to 1"),
        "min_score: 0.5": ("min_score: 0.85", "decreasing"),
        "min_score: 0.0": ("min_score: 0.1", "min_score 0"),
        "lifecycle_stages: [declining, churned]": ("lifecycle_stages: [dying]", "dying"),
        "hysteresis_margin": ("hysteresis_margn", "unknown key 'hysteresis_margn'"),
    }
    for old, (new, msg) in cases.items():
        f = tmp_path / "tiers.yaml"
        f.write_text(text.replace(old, new, 1))
        with pytest.raises(ConfigError, match=msg):
            load_yaml(f, TierRules)


def _features(rows: list[dict]) -> pa.Table:
    def ts(days: float | None):
        return None if days is None else AS_OF - int(days * DAY)

    return pa.table(
        {
            "first_order_ts": pa.array([ts(r.get("first")) for r in rows], TS),
            "last_order_ts": pa.array([ts(r.get("last")) for r in rows], TS),
            "signup_ts": pa.array([ts(r.get("signup")) for r in rows], TS),
            "orders_total": pa.array([r.get("orders", 0) for r in rows], pa.int32()),
            "frequency_30d": pa.array([r.get("f30", 0) for r in rows], pa.int32()),
            "frequency_prev_30d": pa.array([r.get("prev30", 0) for r in rows], pa.int32()),
            "frequency_90d": pa.array([r.get("f90", 0) for r in rows], pa.int32()),
            "frequency_prev_90d": pa.array([r.get("prev90", 0) for r in rows], pa.int32()),
        }
    )


def test_lifecycle_stages_follow_the_rules_in_order() -> None:
    rules = load_lifecycle_rules()
    assert rules.declining_window_days == 30
    feats = _features(
        [
            {"first": 400, "last": 120, "orders": 10, "signup": 500},  # churned
            {"signup": 200},  # never, old
            {"first": 10, "last": 2, "orders": 2, "f30": 2, "signup": 12},  # new buyer
            {"signup": 5},  # new signup
            {"first": 300, "last": 20, "orders": 12, "f30": 1, "prev30": 4},  # declining
            {"first": 300, "last": 3, "orders": 12, "f30": 4, "prev30": 4},  # mature
            {"first": 60, "last": 3, "orders": 3, "f30": 2},  # growing
            {"first": 50, "last": 3, "orders": 8, "f30": 4, "signup": 400},  # mature by signup
            {"first": 50, "last": 3, "orders": 8, "f30": 4},  # growing: no signup
        ]
    )
    stage, rule = assign_lifecycle(feats, AS_OF, rules)
    assert stage.to_pylist() == [
        "churned",
        "churned",
        "new",
        "new",
        "declining",
        "mature",
        "growing",
        "mature",
        "growing",
    ]
    assert rule.to_pylist()[0] == "no order for >= 90 days"
    assert rule.to_pylist()[4] == "orders last 30d <= 0.35 x previous 30d (>= 3)"
    # the 90-day comparison reads the 90-day columns instead
    ninety = rules.model_copy(update={"declining_window_days": 90})
    feats = _features(
        [
            {"first": 300, "last": 20, "orders": 12, "f30": 1, "prev30": 4, "f90": 5, "prev90": 6},
            {"first": 300, "last": 20, "orders": 12, "f30": 4, "prev30": 4, "f90": 2, "prev90": 6},
        ]
    )
    assert assign_lifecycle(feats, AS_OF, ninety)[0].to_pylist() == ["mature", "declining"]


def test_lifecycle_validation(tmp_path: Path) -> None:
    f = tmp_path / "lifecycle.yaml"
    f.write_text("new_within_days: 100\nchurned_after_days: 90\n")
    with pytest.raises(ConfigError, match="below"):
        load_yaml(f, LifecycleRules)
    f.write_text("declining_ratio: 1.5\n")
    with pytest.raises(ConfigError, match="declining_ratio"):
        load_yaml(f, LifecycleRules)


def test_previous_alignment_transitions_and_merge() -> None:
    prev = pa.table({"user_id": [3, 1], "tier": ["ordinary", "high_value"]})
    aligned = align_previous(pa.array([1, 2, 3]), prev)
    assert aligned.to_pylist() == ["high_value", None, "ordinary"]
    scored = pa.table({"previous_tier": aligned, "tier": ["potential", "ordinary", "ordinary"]})
    moves = transitions(scored)
    assert moves == {
        "high_value": {"potential": 1},
        "(new)": {"ordinary": 1},
        "ordinary": {"ordinary": 1},
    }
    assert merge_counts([moves, {"(new)": {"ordinary": 2}}])["(new)"] == {"ordinary": 3}


def test_churn_warning_from_model_probability() -> None:
    rules = load_tier_rules()
    cw = rules.churn_warning
    assert cw is not None and cw.churn_p_min is not None
    stage = pa.array(["mature", "declining", "mature", "mature"])
    ltv = np.array([500.0, 500.0, 50.0, 500.0])
    churn_p = np.array([cw.churn_p_min + 0.05, 0.1, 0.95, np.nan])
    tier, _, why = assign_tiers(np.full(4, 0.9), stage, ltv, None, rules, churn_p=churn_p)
    # the model decides (not the lifecycle stage); past value still required; unknown p: no
    assert tier.to_pylist() == ["churn_warning", "high_value", "high_value", "high_value"]
    assert why.to_pylist()[0].startswith(f"churn_p {round(cw.churn_p_min + 0.05, 3):g} >= ")
    # without predictions the lifecycle rule applies
    assert assign_tiers(np.full(4, 0.9), stage, ltv, None, rules)[0].to_pylist()[1] == (
        "churn_warning"
    )
