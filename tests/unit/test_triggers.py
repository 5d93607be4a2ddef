"""configs/triggers.yaml: the shipped rules load; malformed rules fail naming file and key."""

from __future__ import annotations

import datetime as dt
import shutil
import textwrap
from pathlib import Path

import pytest

from strata.config import CONFIG_DIR, ConfigError, load_calendar
from strata.realtime.triggers import (
    TriggerConfig,
    campaigns_due,
    load_triggers,
    load_triggers_text,
    parse_duration,
    target_tiers,
)
from strata.tiering.tiers import load_tier_rules

TIERS = load_tier_rules().tier_names
PATH = Path("conf/triggers.yaml")

GOOD_RULE = """
  - name: big_order
    kind: event
    on: order
    where: {amount_cny: {gte: 100}}
    actions:
      - push: {template: thanks}
"""


PUSH = "{push: {template: t}}"


def _one(fields: str, actions: str = PUSH) -> str:
    """A file with one rule ``x`` of these fields and actions."""
    return f"rules:\n  - {{name: x, {fields}, actions: [{actions}]}}"


def _load(text: str) -> TriggerConfig:
    return load_triggers_text(textwrap.dedent(text), PATH, tier_names=TIERS)


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        _load(text)
    message = str(err.value)
    assert str(PATH) in message, message
    return message


def test_the_shipped_rules_load_with_the_four_scenarios() -> None:
    config = load_triggers()
    kinds = {r.name: r.kind for r in config.rules}
    assert kinds == {
        "cart_abandoned": "absence",
        "visit_streak_3d": "streak",
        "negative_review": "event",
        "festival_eve": "calendar",
    }
    cart = config.rule("cart_abandoned")
    assert cart is not None
    assert (cart.start, cart.stop, cart.key) == ("add_to_cart", "order", "category")
    assert cart.within == dt.timedelta(minutes=30)
    assert cart.cooldown == dt.timedelta(hours=24)
    assert cart.tag is not None and cart.tag.name == "cart_abandoner"
    assert cart.tag.ttl == dt.timedelta(hours=24)
    coupon = cart.actions[0].coupon
    assert coupon is not None and coupon.category == "$event"
    assert coupon.valid_for == dt.timedelta(hours=2)
    streak = config.rule("visit_streak_3d")
    assert streak is not None and (streak.on, streak.days) == ("app_visit", 3)
    assert streak.actions[0].coupon is not None
    assert streak.actions[0].coupon.category == "$top_category"
    review = config.rule("negative_review")
    assert review is not None and review.where == {"rating": {"lte": 2}}
    assert review.action_kinds[:2] == ["service_task", "coupon"]
    eve = config.rule("festival_eve")
    assert eve is not None and eve.festival_offset_days == -1
    assert target_tiers(eve, TIERS) == ["high_value", "potential"]
    assert eve.actions[0].gift_pack is not None and eve.actions[0].gift_pack.pack == "$festival"
    summary = config.summary()
    assert [s["name"] for s in summary] == [r.name for r in config.rules]
    assert summary[0] == {
        "name": "cart_abandoned",
        "kind": "absence",
        "priority": cart.priority,
        "actions": ["coupon", "push"],
    }


def test_yaml_on_key_is_the_event_type_not_a_boolean() -> None:
    config = _load("rules:" + GOOD_RULE)
    assert config.rules[0].on == "order"
    assert config.rules[0].attribution_window == dt.timedelta(hours=72)
    assert config.rules[0].enabled


def test_disabled_rules_are_not_active() -> None:
    config = _load("rules:" + GOOD_RULE + "    enabled: false\n")
    assert config.active == [] and config.summary() == []


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("90s", dt.timedelta(seconds=90)),
        ("30m", dt.timedelta(minutes=30)),
        ("2h", dt.timedelta(hours=2)),
        ("7d", dt.timedelta(days=7)),
    ],
)
def test_durations(text: str, want: dt.timedelta) -> None:
    assert parse_duration(text) == want


@pytest.mark.parametrize("text", ["0m", "30", "2 weeks", "1.5h", "-1h", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("rule", "key", "what"),
    [
        ("    priorty: 3\n", "rules.0", "unknown key 'priorty' (did you mean 'priority'?)"),
        ("    cooldown: 24 hours\n", "rules.0.cooldown", "not a duration"),
        ("    exclusion_group: coupons\n", "exclusion_group", "unknown group 'coupons'"),
        ("    segment: {tier: {in: [vip]}}\n", "rules.0.segment.tier.in", "unknown tier 'vip'"),
        ("    segment: {tir: {in: [potential]}}\n", "rules.0.segment", "tir: unknown field"),
        ("    segment: {rating: {lte: 2}}\n", "rules.0.segment", "rating: unknown field"),
        ("    segment: {lifecycle_stage: {eq: sleepy}}\n", "rules.0.segment", "'sleepy'"),
        ("    segment: {tier: {about: x}}\n", "rules.0.segment", "unknown operator"),
        ("    segment: {tier: {in: potential}}\n", "rules.0.segment", "non-empty list"),
        ("    days: 3\n", "rules.0", "days: not a key of event rules"),
        ("    caps: {per_month: 3}\n", "rules.0.caps", "unknown key 'per_month'"),
        ("    budget: {daily_count: 0}\n", "rules.0.budget.daily_count", "greater than"),
        ("    tag: {name: Cart, ttl: 1h}\n", "rules.0.tag.name", "pattern"),
    ],
)
def test_malformed_rules_name_the_file_and_key(rule: str, key: str, what: str) -> None:
    message = _error("rules:" + GOOD_RULE + rule)
    assert key in message, message
    assert what in message, message


@pytest.mark.parametrize(
    ("text", "key", "what"),
    [
        (_one("kind: event, on: ordr"),
         "rules.0.on", "unknown event type 'ordr'"),
        (_one("kind: absence, start: add_to_cart"),
         "rules.0", "needs stop, within"),
        (_one("kind: sometimes"),
         "rules.0.kind", "'event', 'absence', 'streak' or 'calendar'"),
        (_one("kind: event, on: order").replace("name: x", "name: Bad-Name"),
         "rules.0.name", "pattern"),
        (_one("kind: event, on: order", ""),
         "rules.0.actions", "at least 1"),
        (_one("kind: event, on: order", "{push: {template: t}, gift_pack: {pack: p}}"),
         "rules.0.actions.0", "exactly one"),
        (_one("kind: event, on: order", "{coupon: {value_cny: 5, category: toys}}"),
         "rules.0.actions.0.coupon.category", "unknown category 'toys'"),
        (_one("kind: event, on: order", "{gift_pack: {pack: $festival}}"),
         "rules.0", "$festival needs a calendar rule"),
        (_one("kind: event, on: order, where: {ratng: {lte: 2}}"),
         "rules.0.where", "ratng: unknown field"),
        (_one("kind: event, on: order, where: {rating: {lte: two}}"),
         "rules.0.where", "rating.lte: needs a number"),
        (_one("kind: absence, start: add_to_cart, stop: order, within: 30m, key: colour"),
         "rules.0.key", "unknown event field 'colour'"),
        (_one("kind: calendar, festival_offset_days: -1, where: {tier: {eq: potential}}"),
         "rules.0", "where: not a key of calendar rules"),
        ("exclusion_groups: {coupons: {window: forever}}\nrules: []",
         "exclusion_groups.coupons.window", "not a duration"),
        ("rulez: []", "rulez: ", "unknown key 'rulez' (did you mean 'rules'?)"),
        ("rules: [", "not valid YAML", ""),
    ],
)  # fmt: skip
def test_malformed_files_name_the_file_and_key(text: str, key: str, what: str) -> None:
    message = _error(text)
    assert key in message, message
    assert what in message, message


def test_duplicate_rule_names_fail() -> None:
    message = _error("rules:" + GOOD_RULE + GOOD_RULE)
    assert "rules.1.name: duplicate rule name 'big_order' (also rules.0)" in message


def test_tiers_in_where_are_checked_too() -> None:
    rule = GOOD_RULE.replace("{amount_cny: {gte: 100}}", "{tier: {eq: gold}}")
    assert "rules.0.where.tier.eq: unknown tier 'gold'" in _error("rules:" + rule)


def test_load_triggers_reads_the_config_dir_and_names_the_file(tmp_path: Path) -> None:
    shutil.copy(CONFIG_DIR / "tiers.yaml", tmp_path / "tiers.yaml")
    path = tmp_path / "triggers.yaml"
    path.write_text("rules:" + GOOD_RULE)
    assert [r.name for r in load_triggers(tmp_path).rules] == ["big_order"]
    # a bad edit raises (the worker keeps its old rules)
    path.write_text("rules:" + GOOD_RULE.replace("on: order", "on: orders"))
    with pytest.raises(ConfigError, match=r"triggers\.yaml: rules\.0\.on: .*'orders'"):
        load_triggers(tmp_path)
    path.unlink()
    with pytest.raises(ConfigError, match="not found"):
        load_triggers(tmp_path)


def test_campaigns_due_on_the_eve_of_each_festival() -> None:
    config = load_triggers()
    calendar = load_calendar()
    assert campaigns_due(config, calendar, dt.date(2026, 11, 10)) == [
        ("festival_eve", "double_11", dt.date(2026, 11, 11))
    ]
    assert campaigns_due(config, calendar, dt.date(2026, 11, 11)) == []
    # spring festival 2026-02-17: its eve is 2026-02-16
    assert ("festival_eve", "spring_festival", dt.date(2026, 2, 17)) in campaigns_due(
        config, calendar, dt.date(2026, 2, 16)
    )


def test_target_tiers() -> None:
    config = _load("rules:" + GOOD_RULE)
    assert target_tiers(config.rules[0], TIERS) is None
    rule = GOOD_RULE.replace("{amount_cny: {gte: 100}}", "{tier: {ne: ordinary}}")
    assert target_tiers(_load("rules:" + rule).rules[0], TIERS) == [
        t for t in TIERS if t != "ordinary"
    ]
