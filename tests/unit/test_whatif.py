"""What-if simulation (strata.reports.whatif): overrides, the weights rule, moves and costs."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from strata.experiments.assignment import unit_of
from strata.reports.whatif import (
    WhatIfError,
    WhatIfInputs,
    adjustable_keys,
    hash_units,
    parse_overrides,
    simulate,
    tiers_after,
)
from strata.strategies.config import load_strategies
from strata.tiering.lifecycle import STAGES
from strata.tiering.tiers import assign_tiers, load_tier_rules

RULES = load_tier_rules()
STRATEGIES = load_strategies()


def _inputs(n: int = 3000, seed: int = 3, with_model: bool = True) -> WhatIfInputs:
    """Synthetic snapshot rows tiered by the recompute's own assign_tiers."""
    rng = np.random.default_rng(seed)
    r, f, m = (np.round(rng.random(n), 6) for _ in range(3))
    w = RULES.weights
    score = np.round(w.recency * r + w.frequency * f + w.monetary * m, 6)
    stage = pa.array(np.asarray(STAGES)[rng.integers(0, len(STAGES), n)])
    ltv = np.round(rng.gamma(2.0, 120.0, n), 2)
    prev = pa.array(
        [None if x == 4 else RULES.tier_names[x] for x in rng.integers(0, 5, n)], pa.string()
    )
    churn = np.round(rng.random(n), 6) if with_model else None
    tier, _, _ = assign_tiers(score, stage, ltv, prev, RULES, churn_p=churn)
    return WhatIfInputs(
        version="v1",
        as_of="2026-10-01T00:00:00+08:00",
        rules=RULES,
        strategies=STRATEGIES,
        user_id=rng.integers(1, 2**62, n, dtype=np.int64),
        tier=tier,
        rfm_r=r,
        rfm_f=f,
        rfm_m=m,
        rfm_score=score,
        lifecycle_stage=stage,
        ltv_cny=ltv,
        previous_tier=prev,
        churn_p=churn,
        columns={
            "monetary_90d": pa.array(np.round(rng.gamma(1.5, 60.0, n), 2)),
            "frequency_90d": pa.array(rng.integers(0, 12, n)),
            "recency_days": pa.array(rng.integers(0, 200, n)),
        },
    )


INPUTS = _inputs()


def test_parse_overrides_and_messages() -> None:
    got = parse_overrides(["tiers.weights.recency=0.5", " tiers.hysteresis_margin = 0.01"])
    assert got == {"tiers.weights.recency": "0.5", "tiers.hysteresis_margin": "0.01"}
    with pytest.raises(WhatIfError, match="expected KEY=VALUE"):
        parse_overrides(["tiers.weights.recency"])
    with pytest.raises(WhatIfError, match=r"tiers\.hysteresis_margin: set twice"):
        parse_overrides(["tiers.hysteresis_margin=0", "tiers.hysteresis_margin=0.1"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tiers.bands.vip.min_score": "0.9"}, r"tiers.bands.vip.min_score: unknown key; allowed"),
        ({"weights.recency": "0.5"}, r"weights.recency: unknown key; allowed: tiers.weights"),
        ({"tiers.measures.recency.window": "90d"}, r"measures.*needs a warehouse pass"),
        ({"tiers.bands.high_value.min_score": "high"}, r"min_score: 'high' is not a number"),
        ({"tiers.bands.high_value.min_score": "1.5"}, r"high_value.min_score=1.5: .*\[0, 1\]"),
        ({"tiers.bands.high_value.min_score": "0.4"}, r"min_score=0.4: bands must be listed"),
        ({"tiers.bands.ordinary.min_score": "0.1"}, r"ordinary.min_score=0.1: the last band"),
        ({"tiers.hysteresis_margin": "0.6"}, r"tiers.hysteresis_margin=0.6: .*\[0, 0.5\)"),
        ({"tiers.weights.recency": "1.2"}, r"tiers.weights.recency: 1.2 is not in \[0, 1\]"),
        (
            {"tiers.weights.recency": "0.7", "tiers.weights.frequency": "0.5"},
            r"sum to 1.2 > 1, leaving nothing for tiers.weights.monetary",
        ),
        (
            {f"tiers.weights.{w}": "0.5" for w in ("recency", "frequency", "monetary")},
            r"three weights sum to 1.5; they must sum to 1",
        ),
        ({"tiers.churn_warning.lifecycle_stages": "dormant"}, r"unknown lifecycle stage"),
        ({"tiers.churn_warning.churn_p_min": "1"}, r"churn_p_min=1: .*\(0, 1\)"),
        ({"tiers.churn_warning.min_ltv_cny": "-5"}, r"min_ltv_cny=-5: .*>= 0"),
    ],
)
def test_refused_overrides_name_the_key(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(WhatIfError, match=message):
        simulate(INPUTS, overrides)


def test_unchanged_settings_move_nobody() -> None:
    for overrides in ({}, {"tiers.bands.high_value.min_score": "0.8"}):
        res = simulate(INPUTS, overrides)
        assert res.before == res.after and res.moved_users == 0
        assert res.unreproduced_users == 0
        assert res.cost_change_cny == 0 and res.cost_before_cny == res.cost_after_cny > 0
        off = {(a, b) for a, row in res.moves.items() for b, c in row.items() if a != b and c}
        assert off == set()


def test_moves_sum_to_users_and_rows_match_before_and_after() -> None:
    res = simulate(INPUTS, {"tiers.weights.recency": "0.6", "tiers.hysteresis_margin": "0"})
    assert sum(sum(row.values()) for row in res.moves.values()) == res.users == INPUTS.users
    assert {t: sum(row.values()) for t, row in res.moves.items()} == res.before
    cols = {t: sum(res.moves[a][t] for a in res.moves) for t in res.after}
    assert cols == res.after and res.moved_users > 0
    assert res.tier_order == RULES.tier_names


def test_weights_rule_scales_the_unset_weights() -> None:
    res = simulate(INPUTS, {"tiers.weights.recency": "0.5"})
    assert res.weights == pytest.approx({"recency": 0.5, "frequency": 0.25, "monetary": 0.25})
    two = simulate(INPUTS, {"tiers.weights.recency": "0.2", "tiers.weights.monetary": "0.2"})
    assert two.weights == pytest.approx({"recency": 0.2, "frequency": 0.6, "monetary": 0.2})
    one = simulate(INPUTS, {"tiers.weights.recency": "1"})
    assert one.weights == pytest.approx({"recency": 1.0, "frequency": 0.0, "monetary": 0.0})
    # with the recency weight at 1 the tiers are those of the recency rank alone
    rules = RULES.model_copy(
        update={"weights": RULES.weights.model_copy(update={"recency": 1.0, "frequency": 0.0,
                                                              "monetary": 0.0})}
    )  # fmt: skip
    want, _, _ = assign_tiers(
        INPUTS.rfm_r, INPUTS.lifecycle_stage, INPUTS.ltv_cny, INPUTS.previous_tier, rules,
        churn_p=INPUTS.churn_p,
    )  # fmt: skip
    counts = {t: want.to_pylist().count(t) for t in RULES.tier_names}
    assert one.after == counts


def test_raising_a_threshold_moves_users_down_only() -> None:
    res = simulate(INPUTS, {"tiers.bands.high_value.min_score": "0.9"})
    order = {t: i for i, t in enumerate(RULES.tier_names)}
    moved = {(a, b): c for a, row in res.moves.items() for b, c in row.items() if a != b and c}
    assert moved and all(order[b] > order[a] for a, b in moved)
    assert set(moved) == {("high_value", "potential")}
    assert res.after["high_value"] < res.before["high_value"]
    assert res.after["churn_warning"] == res.before["churn_warning"]


def test_cost_definition() -> None:
    """cost = cost_per_action x users matched by tier or stage, eligible, outside the holdout,
    summed over the strategies that follow tiers; computed here user by user."""
    res = simulate(INPUTS, {"tiers.bands.potential.min_score": "0.4"})
    assert res.moved_users > 0
    after_tier = _tiers_after(res)
    stage = INPUTS.lifecycle_stage.to_pylist()
    spend = INPUTS.columns["monetary_90d"].to_pylist()
    for label, tiers, key in (
        ("before", INPUTS.tier.to_pylist(), "cost_before_cny"),
        ("after", after_tier, "cost_after_cny"),
    ):
        total = 0.0
        for s in STRATEGIES.strategies:
            if not s.applies_to.tiers:
                continue
            n = 0
            for i, uid in enumerate(INPUTS.user_id.tolist()):
                match = tiers[i] in s.applies_to.tiers or stage[i] in s.applies_to.stages
                floor = s.eligibility.min_monetary_90d_cny
                ok = floor is None or spend[i] >= floor
                if match and ok and not STRATEGIES.in_holdout(s, uid):
                    n += 1
            users = getattr(res.strategies[s.name], f"users_{label}")
            assert users == n, (s.name, label)
            total += n * s.cost_per_action_cny
        assert getattr(res, key) == pytest.approx(total)
    assert res.cost_change_cny == pytest.approx(res.cost_after_cny - res.cost_before_cny)
    assert res.cost_change_cny > 0  # ordinary users became potential: a costlier playbook


def _tiers_after(res: object) -> list[str]:
    """The after tier of each user of INPUTS under potential.min_score 0.4, by assign_tiers."""
    rules = RULES.model_copy(
        update={"bands": [RULES.bands[0], RULES.bands[1].model_copy(update={"min_score": 0.4}),
                          RULES.bands[2]]}
    )  # fmt: skip
    tier, _, _ = assign_tiers(
        INPUTS.rfm_score, INPUTS.lifecycle_stage, INPUTS.ltv_cny, INPUTS.previous_tier, rules,
        churn_p=INPUTS.churn_p,
    )  # fmt: skip
    return [str(t) for t in tier.to_pylist()]


def test_churn_settings_and_no_model() -> None:
    res = simulate(INPUTS, {"tiers.churn_warning.churn_p_min": "0.9"})
    assert res.after["churn_warning"] < res.before["churn_warning"]
    no_model = _inputs(with_model=False)
    base = simulate(no_model, {})
    assert base.moved_users == 0 and base.unreproduced_users == 0
    fewer = simulate(no_model, {"tiers.churn_warning.lifecycle_stages": "churned"})
    assert fewer.after["churn_warning"] < base.after["churn_warning"]
    moved = {(a, b) for a, row in fewer.moves.items() for b, c in row.items() if a != b and c}
    assert all(a == "churn_warning" for a, _ in moved)
    keys = [k.key for k in adjustable_keys(RULES, with_predictions=False)]
    assert "tiers.churn_warning.churn_p_min" not in keys


def test_adjustable_keys_are_the_current_settings() -> None:
    keys = {k.key: k for k in adjustable_keys(RULES)}
    assert keys["tiers.bands.high_value.min_score"].value == 0.8
    assert keys["tiers.weights.recency"].value == 0.4
    assert keys["tiers.churn_warning.churn_p_min"].value == 0.6
    assert keys["tiers.hysteresis_margin"].value == 0.02
    assert "tiers.bands.ordinary.min_score" not in keys  # fixed at 0
    for k in keys.values():
        assert k.min <= (k.value if k.value is not None else k.min) <= k.max and k.step > 0
        simulate(INPUTS, {k.key: str(k.value)})  # every listed key is accepted as is


def test_hash_units_equal_the_assignment_hash() -> None:
    ids = INPUTS.user_id[:200]
    got = hash_units("salt", "exp", ids)
    assert got.tolist() == [unit_of("salt", "exp", int(u)) for u in ids]


def test_a_million_users_in_seconds() -> None:
    """Vectorised: one simulation over 1M rows (the first one pays the hashes) in seconds."""
    big = _inputs(n=1_000_000, seed=5)
    t0 = time.perf_counter()
    res = simulate(
        big, {"tiers.bands.high_value.min_score": "0.75", "tiers.weights.recency": "0.5"}
    )
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    simulate(big, {"tiers.bands.high_value.min_score": "0.7"})
    again = time.perf_counter() - t0
    print(f"1M users: first simulation {first:.2f} s, next {again:.2f} s")
    assert res.users == 1_000_000 and first < 20 and again < 10


def test_users_the_change_does_not_affect_keep_their_stored_tier() -> None:
    """A stored tier the unchanged settings do not reproduce (other settings at recompute, or
    a score on a threshold after rounding) is counted and kept unless the change moves it."""
    tiers = INPUTS.tier.to_pylist()
    score = INPUTS.rfm_score
    i = next(k for k, t in enumerate(tiers) if t == "ordinary" and 0.41 < score[k] < 0.45)
    tiers[i] = "potential"  # as if recompute had decided otherwise
    odd = _inputs()
    odd.tier = pa.array(tiers, pa.string())
    same = simulate(odd, {})
    assert same.unreproduced_users == 1 and same.moved_users == 0
    assert tiers_after(odd, {}).to_pylist() == tiers
    # the change leaves the user's re-applied tier as it was: the stored one stays
    assert tiers_after(odd, {"tiers.bands.high_value.min_score": "0.85"})[i].as_py() == "potential"
    # the change does move them: they take the what-if tier
    moved = {
        "tiers.bands.high_value.min_score": "0.4",
        "tiers.bands.potential.min_score": "0.3",
        "tiers.hysteresis_margin": "0",
    }
    assert tiers_after(odd, moved)[i].as_py() == "high_value"
    assert tiers_after(INPUTS, moved)[i].as_py() == "high_value"


def test_tiers_after_is_what_simulate_counts() -> None:
    overrides = {"tiers.weights.monetary": "0.6", "tiers.churn_warning.min_ltv_cny": "300"}
    res = simulate(INPUTS, overrides)
    after = tiers_after(INPUTS, overrides).to_pylist()
    assert res.after == {t: after.count(t) for t in res.tier_order}
    pairs = list(zip(INPUTS.tier.to_pylist(), after, strict=True))
    assert res.moves == {
        a: {b: pairs.count((a, b)) for b in res.tier_order} for a in res.tier_order
    }
