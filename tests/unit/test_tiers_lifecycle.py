"""Tier rules (bands, churn warning, hysteresis, explanations) and lifecycle stages."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from strata.config import ConfigError, load_yaml
from strata.features import RfmMeasures, compute_features, rfm_partials
from strata.tiering.lifecycle import LifecycleRules, assign_lifecycle, load_lifecycle_rules
from strata.tiering.scoring import (
    RecomputeConfig,
    align_previous,
    merge_counts,
    score_features,
    transitions,
)
from strata.tiering.tiers import (
    Band,
    ScoreHistogram,
    TierRules,
    assign_tiers,
    band_index,
    band_warnings,
    empty_bands,
    histogram_rows,
    load_tier_rules,
)

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


# ------------------------------------------------------------------ score histogram, warnings
def _rules(**update: object) -> TierRules:
    return load_tier_rules().model_copy(update=update)


def test_score_histogram_bins_bands_and_merge() -> None:
    rules = load_tier_rules()
    scores = np.array([0.0, 0.05, 0.1, 0.1000001, 0.5, 0.55, 0.8, 0.81, 1.0])
    h = ScoreHistogram.of(scores, rules)
    # (lo, hi] bins, the first [0, 0.1]: 0.1 is in bin 0, 0.5 in bin 4, 0.8 in bin 7
    assert h.bins == (3, 1, 0, 0, 1, 1, 0, 1, 1, 1)
    assert h.bands == (2, 2, 5)  # > 0.8, (0.5, 0.8], <= 0.5: like band_index
    halves = ScoreHistogram.of(scores[:4], rules).merge(ScoreHistogram.of(scores[4:], rules))
    assert halves == h == ScoreHistogram.merge_all([h, ScoreHistogram.empty(rules)], rules)
    table = pa.table({"rfm_score": scores})
    assert ScoreHistogram.of(table, rules) == h
    js = h.to_json(rules)
    assert js["counts"] == list(h.bins) and len(js["edges"]) == 11
    assert js["bands"] == {"high_value": 2, "potential": 2, "ordinary": 5}


def test_band_under_one_percent_is_a_warning_naming_band_and_keys() -> None:
    rules = load_tier_rules()
    # two clumps, nothing in (0.5, 0.8]: the CDNOW shape
    scores = np.concatenate([np.full(800, 0.2), np.full(199, 0.9), [0.6]])
    (warning,) = band_warnings(ScoreHistogram.of(scores, rules), rules)
    assert "'potential'" in warning and "0.5 < rfm_score <= 0.8" in warning
    assert "1 of 1,000 scored users (0.1%" in warning
    assert "bands[1].min_score / bands[0].min_score" in warning
    assert "measures.frequency.window / measures.monetary.window" in warning
    # 1% exactly is enough; long windows are not suggested again once chosen
    scores[-10:] = 0.6
    assert band_warnings(ScoreHistogram.of(scores, rules), rules) == []
    long = rules.model_copy(
        update={
            "measures": RfmMeasures.model_validate(
                {"frequency": {"window": "lifetime"}, "monetary": {"window": "365d"}}
            ),
            "min_band_share": 0.2,
        }
    )
    warnings = band_warnings(ScoreHistogram.of(scores, long), long)
    assert [w.split("'")[1] for w in warnings] == ["high_value", "potential"]
    assert all("measures." not in w for w in warnings)
    assert "(tiers.yaml bands[0].min_score)" in warnings[0]
    assert band_warnings(ScoreHistogram.empty(rules), rules) == []


def test_histogram_rows_mark_band_boundaries() -> None:
    rules = load_tier_rules()
    rows = histogram_rows(ScoreHistogram.of(np.array([0.05, 0.95, 0.95]), rules), rules)
    labels = [r[0] or r[3] for r in rows]
    assert labels[0] == "(0.9, 1.0]" and labels[-1] == "[0.0, 0.1]"
    i = labels.index("-- 0.8: high_value above, potential below --")
    assert labels[i - 1] == "(0.8, 0.9]" and labels[i + 1] == "(0.7, 0.8]"
    assert rows[i][:3] == ("", "", "")
    assert "-- 0.5: potential above, ordinary below --" in labels
    assert rows[0][1:3] == ("2", "66.7%") and rows[0][3] == "#" * 30
    odd = _rules(bands=[Band(name="a", min_score=0.45), Band(name="b", min_score=0.0)])
    inside = [r for r in histogram_rows(ScoreHistogram.of(np.array([0.3]), odd), odd)]
    assert inside[5][0] == "(0.4, 0.5]" and "<- 0.45: a above, b below" in inside[5][3]


def test_empty_bands() -> None:
    rules = load_tier_rules()
    got = empty_bands({"high_value": 30, "potential": 0}, 1000, rules)
    assert got == {"high_value": False, "potential": True, "ordinary": True}
    assert empty_bands({}, 0, rules) == {"high_value": False, "potential": False, "ordinary": False}


def test_tiers_yaml_measures_default_to_the_grocery_setting(tmp_path: Path) -> None:
    rules = load_tier_rules()
    assert rules.measures == RfmMeasures() and rules.min_band_share == 0.01
    text = (Path(__file__).resolve().parents[2] / "configs" / "tiers.yaml").read_text()
    bad = tmp_path / "tiers.yaml"
    bad.write_text(text.replace("per: window", "per: weekly"))
    with pytest.raises(
        ConfigError, match=r"measures\.frequency\.per: .*'window' or 'active_month'"
    ):
        load_yaml(bad, TierRules)


# ------------------------------------------------------------------ CDNOW: a sparse category
def _cdnow() -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """The CDNOW master log as order events (local noon of each day), with per-row user,
    day (days since 1970) and amount."""
    lifetimes = pytest.importorskip("lifetimes")
    path = Path(lifetimes.__file__).parent / "datasets" / "CDNOW_master.txt"
    raw = np.loadtxt(path, skiprows=1)
    user = raw[:, 0].astype(np.int64)
    ymd = raw[:, 1].astype(np.int64)
    day = np.array(
        [(dt.date(d // 10_000, d // 100 % 100, d % 100) - dt.date(1970, 1, 1)).days for d in ymd]
    )
    amount = raw[:, 3]
    ts = day * DAY + 4 * 3_600_000  # 12:00 UTC+8
    events = pa.table(
        {
            "user_id": user,
            "ts": pa.array(ts).cast(TS),
            "event_type": pa.array(["order"] * len(user)),
            "amount_cny": amount,
        }
    )
    return events, user, ts, amount


def _cdnow_bands(measures: dict[str, object]) -> tuple[list[int], list[float], list[str]]:
    """Users per score band, next-90-day spend per user per band, and the warnings at
    as-of 1997-10-01 (local) for one ``measures`` setting."""
    events, user, ts, amount = _cdnow()
    as_of = int(dt.datetime(1997, 10, 1, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp())
    as_of_ms = as_of * 1000
    base = RecomputeConfig.load()
    rules = base.tiers.model_copy(update={"measures": RfmMeasures.model_validate(measures)})
    config = RecomputeConfig(base.features, base.lifecycle, rules, base.options)
    feats = compute_features(events, None, as_of_ms, config.features)
    scored = score_features(feats, rfm_partials(feats, rules.measures), None, as_of_ms, config)
    hist = ScoreHistogram.of(scored, rules)
    future = (ts >= as_of_ms) & (ts < as_of_ms + 90 * DAY)
    spend = np.bincount(user[future], weights=amount[future], minlength=int(user.max()) + 1)
    band = band_index(scored.column("rfm_score").to_numpy(), rules)
    per_user = spend[feats.column("user_id").to_numpy()]
    means = [float(per_user[band == i].mean()) if (band == i).any() else 0.0 for i in range(3)]
    return list(hist.bands), means, band_warnings(hist, rules)


def test_cdnow_default_measures_leave_potential_empty_and_say_so() -> None:
    counts, spend, warnings = _cdnow_bands({})
    assert sum(counts) == 23_570 and counts[1] == 0
    assert spend[0] > 5 * spend[2]  # the tiers still rank future value
    assert len(warnings) == 1 and "'potential'" in warnings[0]
    assert "measures.frequency.window" in warnings[0]


def test_cdnow_lifetime_measures_fill_potential_between_its_neighbours() -> None:
    counts, spend, warnings = _cdnow_bands(
        {"frequency": {"window": "lifetime"}, "monetary": {"window": "lifetime"}}
    )
    assert warnings == []
    assert counts[1] > 0.1 * sum(counts)
    assert spend[0] > spend[1] > 2 * spend[2]
