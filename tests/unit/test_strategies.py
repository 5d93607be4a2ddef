"""configs/strategies.yaml (validation against tiers and trigger rules) and what applies to a
user: strategies per tier, stage and tag, eligibility, standing holdout, experiment arms."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from strata.config import CONFIG_DIR, ConfigError
from strata.experiments.assignment import HOLDOUT, assign
from strata.experiments.config import load_experiments_text
from strata.strategies import load_strategies, load_strategies_text, resolve_strategies
from strata.strategies.resolve import resolve_experiments

TIERS = ["high_value", "potential", "ordinary", "churn_warning"]
RULES = ["cart_abandoned", "visit_streak_3d", "negative_review", "festival_eve"]
SHIPPED = load_strategies(CONFIG_DIR)


def _record(tier: str, stage: str = "mature", **extra: Any) -> dict[str, Any]:
    return {
        "tier": tier,
        "lifecycle_stage": stage,
        "monetary_90d": 300.0,
        "frequency_90d": 6,
        "recency_days": 3,
        "price_sensitivity": "coupon_sensitive",
        **extra,
    }


def _names(tier: str, stage: str = "mature", tags: tuple[str, ...] = (), **kw: Any) -> list[str]:
    return [
        m.strategy.name for m in resolve_strategies(_record(tier, stage, **kw), tags, 1, SHIPPED)
    ]


def test_the_playbook_per_tier() -> None:
    assert _names("high_value") == [
        "vip_service_channel",
        "member_day_early_access",
        "birthday_gift_pack",
    ]
    assert _names("potential") == [
        "potential_targeted_coupon",
        "new_product_trial",
        "category_discount",
        "double_checkin_rewards",
    ]
    assert _names("churn_warning") == [
        "smart_winback",
        "churn_reason_survey",
        "large_return_coupon",
        "service_callback",
    ]
    assert _names("ordinary") == ["ordinary_default"]


def test_stage_and_tag_matches_say_why() -> None:
    matches = resolve_strategies(_record("potential", "declining"), ["cart_abandoner"], 1, SHIPPED)
    reasons = {m.strategy.name: m.reason for m in matches}
    assert reasons["smart_winback"] == "lifecycle stage declining"
    assert reasons["ordinary_default"] == "dynamic tag cart_abandoner"
    assert reasons["potential_targeted_coupon"] == "tier potential"


def test_eligibility_is_checked_on_the_record() -> None:
    low = resolve_strategies(_record("churn_warning", monetary_90d=20.0), [], 1, SHIPPED)
    callback = next(m for m in low if m.strategy.name == "service_callback")
    assert not callback.eligible and not callback.applies
    assert callback.why_not[0].startswith("spend over 90 days 20 CNY < 100")
    rich = resolve_strategies(_record("churn_warning"), [], 1, SHIPPED)
    assert next(m for m in rich if m.strategy.name == "service_callback").eligible


def test_standing_holdout_share_and_hash() -> None:
    strategy = SHIPPED.get("potential_targeted_coupon")
    assert strategy is not None and SHIPPED.holdout_of(strategy) == 0.05
    held = 0
    n = 20_000
    for uid in range(n):
        m = resolve_strategies(_record("potential"), [], uid, SHIPPED)[0]
        expected = assign("strata-strategies", m.strategy.name, uid, [("in", 1.0)], holdout=0.05)
        assert m.holdout == (expected == HOLDOUT)
        assert m.applies == (not m.holdout)
        held += m.holdout
    assert abs(held / n - 0.05) < 0.005


def test_running_experiments_give_the_arm() -> None:
    text = """
experiments:
  - name: pcv
    target: {tiers: [potential]}
    arms:
      - {name: control, weight: 1, strategies: [potential_targeted_coupon]}
      - {name: coupon_20, weight: 1, overrides: {coupon_value_cny: 20}}
    control: control
    holdout: 0.1
    start: 2026-01-01
    end: 2026-01-31
    salt: s
    primary_metric: conversion
"""
    config = load_experiments_text(
        text, Path("experiments.yaml"), tier_names=TIERS, strategy_names=SHIPPED.names
    )
    running = dt.date(2026, 1, 15)
    seen = set()
    for uid in range(200):
        (m,) = resolve_experiments(_record("potential"), uid, config, running)
        assert m.arm == config.experiments[0].assign(uid)
        assert m.reason == "targets tier potential"
        if m.arm == "coupon_20":
            assert m.overrides == {"coupon_value_cny": 20}
        seen.add(m.arm)
    assert seen == {"control", "coupon_20", HOLDOUT}
    assert resolve_experiments(_record("ordinary"), 1, config, running) == []
    assert resolve_experiments(_record("potential"), 1, config, dt.date(2026, 2, 1)) == []


BASE = """
strategies:
  - name: s1
    applies_to: {tiers: [potential]}
    actions: [{kind: coupon, params: {value_cny: 10}}]
    trigger_rules: [cart_abandoned]
    channel: app_push
    cost_per_action_cny: 10
"""


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[cart_abandoned]", "[cart_gone]"),
         "strategies.0.trigger_rules: unknown rule 'cart_gone'; rules of triggers.yaml"),
        (("tiers: [potential]", "tiers: [vip]"),
         "strategies.0.applies_to.tiers: unknown tier 'vip'"),
        (("{tiers: [potential]}", "{stages: [zombie]}"), "unknown stage 'zombie'"),
        (("{tiers: [potential]}", "{}"), "needs at least one of tiers, stages, tags"),
        (("kind: coupon", "kind: lottery"), "strategies.0.actions.0.kind"),
        (("channel: app_push", "chanel: app_push"),
         "unknown key 'chanel' (did you mean 'channel'?)"),
        (("cost_per_action_cny: 10", "cost_per_action_cny: -1"), "cost_per_action_cny"),
    ],
)  # fmt: skip
def test_bad_strategies_name_file_and_key(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=r"strategies\.yaml") as err:
        load_strategies_text(
            BASE.replace(*edit), Path("strategies.yaml"), tier_names=TIERS, rule_names=RULES
        )
    assert message in str(err.value)


def test_every_shipped_trigger_rule_link_exists() -> None:
    # the shipped file is loaded against the shipped triggers.yaml (load_strategies)
    linked = {r for s in SHIPPED.strategies for r in s.trigger_rules}
    assert linked <= set(RULES)
    assert SHIPPED.default_holdout == 0.05
