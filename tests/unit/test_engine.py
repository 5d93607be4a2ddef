"""The rule engine: state transitions, every rule kind, every suppression reason, attribution,
old events, replays and undo (pure: no Redis, no Ray)."""

from __future__ import annotations

import copy
import datetime as dt
import textwrap
from typing import Any

import pytest

from strata.config import load_calendar
from strata.realtime.engine import ORDER_IDS_KEPT, TriggerEngine, coupon_id, undo
from strata.realtime.model import (
    UNKNOWN_TIER,
    Outcome,
    Segment,
    Timer,
    UserState,
    action_key,
)
from strata.realtime.triggers import load_triggers, load_triggers_text
from strata.realtime.wire import CAMPAIGN_EVENT
from strata.tiering.tiers import load_tier_rules
from strata.timeutil import DAY_MS, HOUR_MS, local_day, local_midnight_ms

MIN = 60_000
MAX_AGE = DAY_MS
USER = 42
#: 2026-12-01 10:00 local time (a Tuesday)
T0 = local_midnight_ms(dt.date(2026, 12, 1)) + 10 * HOUR_MS
POTENTIAL = Segment(tier="potential", lifecycle_stage="growing", top_category="seafood")
CALENDAR = load_calendar()
TIERS = load_tier_rules().tier_names


def _engine(text: str | None = None) -> TriggerEngine:
    config = (
        load_triggers()
        if text is None
        else load_triggers_text(textwrap.dedent(text), "test.yaml", tier_names=TIERS)
    )
    return TriggerEngine(config, CALENDAR, max_event_age_ms=MAX_AGE)


SHIPPED = _engine()
_ids = iter(range(1_000_000))


def ev(event_type: str, ts: int, **fields: Any) -> dict[str, Any]:
    """A wire event of USER."""
    event_id = fields.pop("event_id", f"e{next(_ids)}")
    return {"event_id": event_id, "user_id": USER, "event_type": event_type, "ts": ts, **fields}


def feed(
    engine: TriggerEngine,
    state: UserState,
    event: dict[str, Any],
    segment: Segment | None = POTENTIAL,
    now_ms: int | None = None,
) -> Outcome:
    """Apply an event ``now_ms`` (default: at its own time)."""
    return engine.on_event(state, event, segment, event["ts"] if now_ms is None else now_ms)


def fired(out: Outcome) -> list[str]:
    return [f.rule for f in out.firings]


def suppressed(out: Outcome) -> list[tuple[str, str]]:
    return [(s.rule, s.reason) for s in out.suppressions]


# ---------------------------------------------------------------------------- event rules
def test_negative_review_opens_a_task_and_a_compensation_coupon() -> None:
    state = UserState(USER)
    ok = feed(SHIPPED, state, ev("review", T0, rating=3, category="fruit"))
    assert ok.firings == [] and ok.suppressions == []
    event = ev("review", T0 + MIN, rating=2, category="fruit", event_id="r1")
    out = feed(SHIPPED, state, event, segment=None)
    assert fired(out) == ["negative_review"]
    firing = out.firings[0]
    assert firing.key == action_key("negative_review", USER, "r1") == "negative_review:42:r1"
    assert firing.instance == "r1"
    assert firing.tier == UNKNOWN_TIER
    assert firing.trigger == {"event_id": "r1", "event_type": "review", "ts": T0 + MIN}
    assert firing.issued_ms == T0 + MIN and firing.day == "2026-12-01"
    task, coupon = firing.actions
    assert (task.action, task.params) == (
        "service_task",
        {"queue": "customer_care", "reason": "negative_review"},
    )
    assert coupon.action == "coupon"
    assert coupon.params == {
        "coupon_id": coupon_id(firing.key, 1),
        "value_cny": 10.0,
        "min_spend_cny": 0.0,
        "category": "fruit",  # $event: the review's category
        "valid_until": "2026-12-08T10:01:00+08:00",  # 7 days
    }
    assert firing.cost_cny == 10.0
    assert (firing.budget_count, firing.budget_cny) == (2000, 20000.0)
    assert state.neg_reviews == [T0 + MIN]


RULES_ON_ORDERS = """
exclusion_groups:
  coupons: {window: 24h}
rules:
  - name: big_basket
    kind: event
    on: order
    where:
      amount_cny: {gte: 100}
      category: {in: [seafood, meat_poultry]}
      tier: {in: [potential, ordinary]}
    priority: 20
    actions: [{coupon: {value_cny: 8, min_spend_cny: 80, category: $top_category}}]
    exclusion_group: coupons
  - name: any_order
    kind: event
    on: order
    priority: 10
    actions: [{coupon: {value_cny: 2}}]
    exclusion_group: coupons
  - name: thanks
    kind: event
    on: order
    segment:
      tag.cart_abandoner: {eq: true}
    actions: [{push: {template: thanks}}]
"""


def test_event_conditions_on_the_event_and_the_user() -> None:
    engine = _engine(RULES_ON_ORDERS)

    def big(amount: float, category: str, segment: Segment | None) -> list[str]:
        state = UserState(USER)
        event = ev("order", T0, amount_cny=amount, category=category)
        return fired(feed(engine, state, event, segment))

    assert big(120, "seafood", POTENTIAL) == ["big_basket"]
    assert big(99.9, "seafood", POTENTIAL) == ["any_order"]
    assert big(120, "fruit", POTENTIAL) == ["any_order"]
    assert big(120, "seafood", Segment(tier="high_value")) == ["any_order"]
    assert big(120, "seafood", None) == ["any_order"]  # unknown tier is not in the list
    state = UserState(USER)
    out = feed(engine, state, ev("order", T0, amount_cny=150, category="meat_poultry"))
    assert out.firings[0].actions[0].params["category"] == "seafood"  # $top_category


def test_a_condition_on_a_missing_or_mistyped_field_does_not_match() -> None:
    engine = _engine(RULES_ON_ORDERS)
    state = UserState(USER)
    assert fired(feed(engine, state, ev("order", T0, category="seafood"))) == ["any_order"]
    state = UserState(USER)
    event = ev("order", T0, amount_cny=150, category=7)
    assert fired(feed(engine, state, event)) == ["any_order"]


def test_an_order_without_a_numeric_amount_is_a_poison_entry() -> None:
    with pytest.raises(ValueError, match="amount_cny"):
        feed(SHIPPED, UserState(USER), ev("order", T0, amount_cny="lots"))


def test_dynamic_tags_in_conditions_expire() -> None:
    engine = _engine(RULES_ON_ORDERS)
    state = UserState(USER, tags={"cart_abandoner": T0 + HOUR_MS})
    assert "thanks" in fired(feed(engine, state, ev("order", T0, amount_cny=10)))
    state = UserState(USER, tags={"cart_abandoner": T0 + HOUR_MS})
    later = ev("order", T0 + 2 * HOUR_MS, amount_cny=10)
    assert "thanks" not in fired(feed(engine, state, later))
    assert state.tags == {}  # expired tags are dropped
    # a snapshot tag of the segment counts too
    state = UserState(USER)
    tagged = Segment(tier="potential", tags={"cart_abandoner": True})
    assert "thanks" in fired(feed(engine, state, ev("order", T0, amount_cny=10), tagged))


# ---------------------------------------------------------------------------- absence rules
def _cart(state: UserState, ts: int, category: str = "fruit", **kw: Any) -> Outcome:
    return feed(SHIPPED, state, ev("add_to_cart", ts, category=category, **kw))


def test_cart_abandoned_fires_when_no_order_follows_within_30_minutes() -> None:
    state = UserState(USER)
    out = _cart(state, T0)
    assert out.firings == []
    (timer,) = out.timers
    assert timer.due_ms == T0 + 30 * MIN
    assert (timer.rule, timer.user_id, timer.instance) == ("cart_abandoned", USER, f"fruit:{T0}")
    timer = Timer.from_member(timer.member())  # through the due-queue
    assert SHIPPED.on_timer(state, timer, POTENTIAL, T0 + 29 * MIN).firings == []  # not due
    out = SHIPPED.on_timer(state, timer, POTENTIAL, T0 + 31 * MIN)
    assert fired(out) == ["cart_abandoned"]
    firing = out.firings[0]
    assert firing.key == f"cart_abandoned:{USER}:fruit:{T0}"
    assert firing.issued_ms == T0 + 30 * MIN
    assert firing.trigger == {"timer": "cart_abandoned", "opened_ts": T0, "due_ms": T0 + 30 * MIN}
    coupon, push = firing.actions
    assert coupon.params["category"] == "fruit"
    assert coupon.params["valid_until"] == "2026-12-01T12:30:00+08:00"  # issued + 2h
    assert coupon.params["coupon_id"] == coupon_id(firing.key)
    assert (coupon.params["value_cny"], coupon.params["min_spend_cny"]) == (5.0, 39.0)
    assert push.params == {"template": "cart_reminder_coupon"}
    assert firing.tag == ("cart_abandoner", T0 + 30 * MIN + DAY_MS)
    assert state.tags == {"cart_abandoner": T0 + 30 * MIN + DAY_MS}
    # the same timer again (a redelivery after the state was saved): a replay, no new decision
    again = SHIPPED.on_timer(state, timer, POTENTIAL, T0 + 32 * MIN)
    assert [f.replay for f in again.firings] == [True] and again.suppressions == []
    assert again.firings[0].key == firing.key


def test_an_order_or_removing_the_item_closes_the_cart() -> None:
    state = UserState(USER)
    timer = _cart(state, T0).timers[0]
    feed(SHIPPED, state, ev("order", T0 + 10 * MIN, amount_cny=60.0, order_id="o1"))
    assert SHIPPED.on_timer(state, timer, POTENTIAL, T0 + 31 * MIN).firings == []
    assert state.carts == {}

    state = UserState(USER)
    fruit = _cart(state, T0, "fruit").timers[0]
    dairy = _cart(state, T0 + MIN, "dairy_eggs").timers[0]
    feed(SHIPPED, state, ev("remove_from_cart", T0 + 5 * MIN, category="fruit"))
    assert SHIPPED.on_timer(state, fruit, POTENTIAL, T0 + 40 * MIN).firings == []
    out = SHIPPED.on_timer(state, dairy, POTENTIAL, T0 + 40 * MIN)
    assert fired(out) == ["cart_abandoned"]
    assert out.firings[0].actions[0].params["category"] == "dairy_eggs"


def test_an_order_processed_before_its_earlier_cart_event_closes_it() -> None:
    state = UserState(USER)
    _cart(state, T0 - HOUR_MS, "meat_poultry")  # opens the rule's state
    feed(SHIPPED, state, ev("order", T0 + 5 * MIN, amount_cny=60.0))
    assert _cart(state, T0, "fruit").timers == []  # the order came 5 minutes after it


def test_one_open_cart_per_category() -> None:
    state = UserState(USER)
    first = _cart(state, T0).timers
    assert _cart(state, T0 + 5 * MIN).timers == []  # still open: same instance
    assert _cart(state, T0, event_id="again").timers == first  # same start: same timer
    later = _cart(state, T0 + 31 * MIN).timers  # the first window is over: a new instance
    assert [t.instance for t in later] == [f"fruit:{T0 + 31 * MIN}"]
    # the first instance was replaced: its timer no longer fires
    assert SHIPPED.on_timer(state, first[0], POTENTIAL, T0 + 32 * MIN).firings == []
    assert fired(SHIPPED.on_timer(state, later[0], POTENTIAL, T0 + 62 * MIN)) == ["cart_abandoned"]


def test_a_timer_run_much_later_than_due_fires_nothing() -> None:
    state = UserState(USER)
    timer = _cart(state, T0).timers[0]
    out = SHIPPED.on_timer(state, timer, POTENTIAL, timer.due_ms + MAX_AGE + 1)
    assert out.firings == [] and out.suppressions == []
    assert state.extra["absence"]["cart_abandoned"]["open"] == {}


def test_a_timer_checks_the_user() -> None:
    state = UserState(USER)
    timer = _cart(state, T0).timers[0]
    with pytest.raises(ValueError, match="user"):
        SHIPPED.on_timer(UserState(USER + 1), timer, POTENTIAL, T0 + HOUR_MS)


# ---------------------------------------------------------------------------- streak rules
def _visit(state: UserState, ts: int, segment: Segment | None = POTENTIAL) -> Outcome:
    return feed(SHIPPED, state, ev("app_visit", ts), segment)


def test_visit_streak_fires_on_the_third_consecutive_local_day() -> None:
    state = UserState(USER)
    assert fired(_visit(state, T0)) == []
    assert fired(_visit(state, T0 + 3 * HOUR_MS)) == []  # same day
    assert fired(_visit(state, T0 + DAY_MS)) == []
    out = _visit(state, T0 + 2 * DAY_MS)
    assert fired(out) == ["visit_streak_3d"]
    firing = out.firings[0]
    assert firing.instance == "2026-12-03"
    assert firing.key == f"visit_streak_3d:{USER}:2026-12-03"
    assert firing.actions[0].params["category"] == "seafood"  # the user's top category
    assert fired(_visit(state, T0 + 2 * DAY_MS + HOUR_MS)) == []  # again that day: no
    assert fired(_visit(state, T0 + 3 * DAY_MS)) == []  # day 4 of the streak: no


def test_streak_days_are_local_calendar_days() -> None:
    midnight = local_midnight_ms(dt.date(2026, 12, 2))
    state = UserState(USER)
    _visit(state, midnight - 30 * MIN)  # 12-01 23:30 local
    _visit(state, midnight + 30 * MIN)  # 12-02 00:30 local (the same UTC day)
    assert fired(_visit(state, midnight + DAY_MS + 30 * MIN)) == ["visit_streak_3d"]
    day = local_day(midnight)
    assert state.visit_days == [day - 1, day, day + 1]


def test_a_gap_breaks_the_streak_and_a_late_visit_can_complete_it() -> None:
    state = UserState(USER)
    _visit(state, T0)
    _visit(state, T0 + 2 * DAY_MS)  # gap on day 2
    assert fired(_visit(state, T0 + 3 * DAY_MS)) == []
    # the missing day 2 arrives late: the streak day 1..3 reached 3 on day 3 (12-03)
    out = _visit(state, T0 + DAY_MS, segment=POTENTIAL)
    assert [f.instance for f in out.firings] == ["2026-12-03"]


def test_streak_segment_condition() -> None:
    state = UserState(USER)
    top = Segment(tier="high_value")
    for d in range(3):
        out = _visit(state, T0 + d * DAY_MS, top)
    assert out.firings == [] and out.suppressions == []


def test_visit_days_stay_bounded() -> None:
    state = UserState(USER)
    for d in range(40):
        _visit(state, T0 + d * DAY_MS, None)
    assert len(state.visit_days) == 14 and state.visit_days[-1] == local_day(T0) + 39
    _visit(state, T0, None)  # far older than the days kept: not stored
    assert len(state.visit_days) == 14 and state.visit_days[0] == local_day(T0) + 26


# ---------------------------------------------------------------------------- calendar rules
def _campaign(date: str, ts: int, **kw: Any) -> dict[str, Any]:
    entry = {"event_type": CAMPAIGN_EVENT, "rule": "festival_eve", "date": date}
    return {**entry, "user_id": USER, "ts": ts, **kw}


def test_festival_eve_gift_pack_for_valuable_and_promising_users() -> None:
    ts = local_midnight_ms(dt.date(2026, 11, 10)) + MIN
    assert SHIPPED.campaigns_due(dt.date(2026, 11, 10)) == [
        ("festival_eve", "double_11", dt.date(2026, 11, 11))
    ]
    state = UserState(USER)
    out = feed(SHIPPED, state, _campaign("2026-11-10", ts))
    assert fired(out) == ["festival_eve"]
    firing = out.firings[0]
    assert firing.instance == "double_11:2026-11-11"
    assert firing.key == f"festival_eve:{USER}:double_11:2026-11-11"
    assert firing.trigger == {"campaign": "double_11", "date": "2026-11-11"}
    assert [(a.action, a.params) for a in firing.actions] == [
        ("gift_pack", {"pack": "double_11"}),
        ("push", {"template": "festival_eve_gift"}),
    ]
    assert state.last_event_ms is None  # an internal entry is not user activity
    # the same campaign run twice: a replay, nothing new
    again = feed(SHIPPED, state, _campaign("2026-11-10", ts + MIN))
    assert [f.replay for f in again.firings] == [True]
    # ordinary users and unknown users are not targeted
    for segment in (Segment(tier="ordinary"), None):
        assert feed(SHIPPED, UserState(USER), _campaign("2026-11-10", ts), segment).firings == []
    # no festival tomorrow, an unknown rule: nothing
    assert feed(SHIPPED, UserState(USER), _campaign("2026-11-11", ts)).firings == []
    entry = _campaign("2026-11-10", ts, rule="gone")
    assert feed(SHIPPED, UserState(USER), entry).firings == []


def test_a_campaign_entry_without_a_date_is_a_poison_entry() -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        feed(SHIPPED, UserState(USER), _campaign("11/10/2026", T0))


# ---------------------------------------------------------------------------- suppressions
def test_cooldown() -> None:
    state = UserState(USER)
    assert fired(feed(SHIPPED, state, ev("review", T0, rating=1))) == ["negative_review"]
    out = feed(SHIPPED, state, ev("review", T0 + 23 * HOUR_MS, rating=2))
    assert out.firings == []
    assert suppressed(out) == [("negative_review", "cooldown")]
    assert out.suppressions[0].tier == "potential"
    assert fired(feed(SHIPPED, state, ev("review", T0 + 24 * HOUR_MS, rating=2))) == [
        "negative_review"
    ]


CAPPED = """
rules:
  - name: daily_push
    kind: event
    on: item_view
    actions: [{push: {template: hello}}]
    caps: {per_day: 2, per_week: 3}
"""


def test_caps_per_local_day_and_week() -> None:
    engine = _engine(CAPPED)
    state = UserState(USER)
    monday = local_midnight_ms(dt.date(2026, 11, 30))  # a Monday, 00:00 local

    def view(ts: int) -> Outcome:
        return feed(engine, state, ev("item_view", ts))

    assert fired(view(monday + HOUR_MS)) == ["daily_push"]
    assert fired(view(monday + 2 * HOUR_MS)) == ["daily_push"]
    assert suppressed(view(monday + 3 * HOUR_MS)) == [("daily_push", "cap")]  # 3rd that day
    assert fired(view(monday + DAY_MS + MIN)) == ["daily_push"]  # Tuesday: 3rd that week
    assert suppressed(view(monday + 2 * DAY_MS)) == [("daily_push", "cap")]  # 4th that week
    assert suppressed(view(monday + 7 * DAY_MS - MIN)) == [("daily_push", "cap")]  # Sunday
    assert fired(view(monday + 7 * DAY_MS)) == ["daily_push"]  # next Monday


def test_exclusion_one_coupon_per_group_window() -> None:
    state = UserState(USER)
    _visit(state, T0 - 2 * DAY_MS)
    _visit(state, T0 - DAY_MS)
    timer = _cart(state, T0 - 5 * HOUR_MS).timers[0]
    assert fired(SHIPPED.on_timer(state, timer, POTENTIAL, T0)) == ["cart_abandoned"]
    out = _visit(state, T0)  # the streak's 3rd day, 4.5 h after the cart coupon
    assert out.firings == []
    assert suppressed(out) == [("visit_streak_3d", "exclusion")]
    # a streak 24 h or more after the coupon is not excluded
    state = UserState(USER)
    timer = _cart(state, T0 - DAY_MS - 30 * MIN).timers[0]
    SHIPPED.on_timer(state, timer, POTENTIAL, T0 - DAY_MS)
    for d in (2, 1, 0):
        out = _visit(state, T0 - d * DAY_MS)
    assert fired(out) == ["visit_streak_3d"]


def test_rules_matching_one_event_highest_priority_wins_its_group() -> None:
    engine = _engine(RULES_ON_ORDERS)
    state = UserState(USER, tags={"cart_abandoner": T0 + HOUR_MS})
    event = ev("order", T0, amount_cny=150, category="seafood")
    out = feed(engine, state, event)
    assert fired(out) == ["big_basket", "thanks"]  # thanks is in no group
    assert suppressed(out) == [("any_order", "exclusion")]


def test_suppression_order_cooldown_before_cap_before_exclusion() -> None:
    engine = _engine(
        """
        exclusion_groups: {g: {window: 7d}}
        rules:
          - name: r
            kind: event
            on: share
            actions: [{push: {template: t}}]
            cooldown: 2h
            caps: {per_day: 1}
            exclusion_group: g
        """
    )
    state = UserState(USER)
    feed(engine, state, ev("share", T0))
    assert suppressed(feed(engine, state, ev("share", T0 + HOUR_MS))) == [("r", "cooldown")]
    assert suppressed(feed(engine, state, ev("share", T0 + 3 * HOUR_MS))) == [("r", "cap")]
    assert suppressed(feed(engine, state, ev("share", T0 + DAY_MS))) == [("r", "exclusion")]


# ---------------------------------------------------------------------------- budget: undo
def test_undo_removes_a_refused_firing_and_a_replay_fires_again() -> None:
    state = UserState(USER, tags={"cart_abandoner": T0 + 5 * MIN})
    before = copy.deepcopy(state)
    timer = _cart(state, T0).timers[0]
    after_cart = copy.deepcopy(state)
    out = SHIPPED.on_timer(state, timer, POTENTIAL, T0 + 31 * MIN)
    (firing,) = out.firings
    assert state.fired and state.touches and state.tags["cart_abandoner"] > T0 + HOUR_MS
    # the worker's daily budget refuses it
    undo(state, firing)
    assert state.fired == [] and state.touches == []
    assert state.tags == before.tags  # the earlier tag expiry is back
    assert state.extra == {"absence": {"cart_abandoned": {"open": {}, "stop": None}}}
    assert state.carts == after_cart.carts

    # a review refused by the budget, then the same event again: it fires again (same key),
    # not "cooldown" against a firing that never happened
    state = UserState(USER)
    event = ev("review", T0, rating=1, event_id="r9")
    first = feed(SHIPPED, state, event).firings[0]
    SHIPPED.undo(state, first)
    again = feed(SHIPPED, state, event)
    assert [f.key for f in again.firings] == [first.key] and not again.firings[0].replay
    assert again.suppressions == []


def test_a_replayed_event_gives_the_same_firing_marked_replay() -> None:
    state = UserState(USER)
    event = ev("review", T0, rating=1, category="fruit")
    first = feed(SHIPPED, state, event)
    saved = copy.deepcopy(state)
    again = feed(SHIPPED, state, event, now_ms=T0 + 5 * MIN)
    assert again.suppressions == []
    (replay,) = again.firings
    assert replay.replay and replay.key == first.firings[0].key
    assert replay.actions == first.firings[0].actions
    assert state.fired == saved.fired and state.touches == saved.touches
    undo(state, replay)  # undoing a replay changes nothing
    assert state.fired == saved.fired


# ---------------------------------------------------------------------------- attribution
def test_orders_convert_the_last_open_touch_once() -> None:
    state = UserState(USER)
    timer = _cart(state, T0).timers[0]
    cart = SHIPPED.on_timer(state, timer, POTENTIAL, T0 + 30 * MIN).firings[0]
    review = feed(SHIPPED, state, ev("review", T0 + HOUR_MS, rating=1)).firings[0]
    out = feed(SHIPPED, state, ev("order", T0 + 2 * HOUR_MS, amount_cny=80.0, order_id="o1"))
    assert out.ordered
    (conversion,) = out.conversions
    assert (conversion.rule, conversion.key) == ("negative_review", review.key)  # last touch
    assert (conversion.revenue_cny, conversion.coupon_cost_cny) == (80.0, 10.0)
    assert conversion.order_ms == T0 + 2 * HOUR_MS and conversion.tier == "potential"
    # the next order converts the older touch; coupon cost 0 below its minimum spend (39)
    out = feed(SHIPPED, state, ev("order", T0 + 3 * HOUR_MS, amount_cny=20.0, order_id="o2"))
    assert [(c.key, c.revenue_cny, c.coupon_cost_cny) for c in out.conversions] == [
        (cart.key, 20.0, 0.0)
    ]
    out = feed(SHIPPED, state, ev("order", T0 + 4 * HOUR_MS, amount_cny=50.0, order_id="o3"))
    assert out.conversions == [] and state.touches == []


def test_attribution_window_and_orders_before_the_touch() -> None:
    state = UserState(USER)
    feed(SHIPPED, state, ev("review", T0, rating=1))
    early = feed(SHIPPED, state, ev("order", T0 - MIN, amount_cny=30.0))
    assert early.conversions == [] and early.ordered
    late = feed(SHIPPED, state, ev("order", T0 + 72 * HOUR_MS + 1, amount_cny=30.0))
    assert late.conversions == [] and state.touches == []
    state = UserState(USER)
    feed(SHIPPED, state, ev("review", T0, rating=1))
    edge = feed(SHIPPED, state, ev("order", T0 + 72 * HOUR_MS, amount_cny=30.0))
    assert len(edge.conversions) == 1


def test_an_order_id_counts_once() -> None:
    state = UserState(USER)
    feed(SHIPPED, state, ev("review", T0, rating=1))
    first = feed(SHIPPED, state, ev("order", T0 + MIN, amount_cny=30.0, order_id="o1"))
    assert first.ordered and len(first.conversions) == 1
    dup = feed(SHIPPED, state, ev("order", T0 + 2 * MIN, amount_cny=30.0, order_id="o1"))
    assert dup == Outcome()
    assert state.orders == {local_day(T0): [1, 30.0]}
    assert state.last_order_ms == T0 + MIN


# ---------------------------------------------------------------------------- old events
def test_old_events_update_the_state_but_fire_nothing() -> None:
    state = UserState(USER)
    now = T0 + MAX_AGE + 1
    for event in (
        ev("add_to_cart", T0, category="fruit"),
        ev("review", T0, rating=1),
        ev("app_visit", T0 - 2 * DAY_MS),
        ev("app_visit", T0 - DAY_MS),
        ev("app_visit", T0),
        ev("order", T0, amount_cny=45.5, order_id="o1"),
    ):
        out = feed(SHIPPED, state, event, now_ms=now)
        assert out.firings == [] and out.timers == [] and out.suppressions == []
    assert state.orders == {local_day(T0): [1, 45.5]}
    assert len(state.visit_days) == 3 and state.neg_reviews == [T0]
    assert state.last_event_ms == T0
    # an event exactly max_event_age old still acts
    out = feed(SHIPPED, state, ev("review", T0 + DAY_MS, rating=1), now_ms=T0 + 2 * DAY_MS)
    assert fired(out) == ["negative_review"]
    old_entry = _campaign("2026-11-10", T0)
    assert feed(SHIPPED, UserState(USER), old_entry, now_ms=now).firings == []


# ---------------------------------------------------------------------------- state
def test_order_state_buckets_by_local_day() -> None:
    state = UserState(USER)
    midnight = local_midnight_ms(dt.date(2026, 12, 2))
    feed(SHIPPED, state, ev("order", midnight - MIN, amount_cny=10.0))
    feed(SHIPPED, state, ev("order", midnight + MIN, amount_cny=20.0))
    feed(SHIPPED, state, ev("order", midnight + HOUR_MS, amount_cny=5.5))
    day = local_day(midnight)
    assert state.orders == {day - 1: [1, 10.0], day: [2, 25.5]}
    assert (state.first_order_ms, state.last_order_ms) == (midnight - MIN, midnight + HOUR_MS)
    restored = UserState.from_bytes(state.to_bytes(), USER)
    assert restored == state


def test_state_stays_small() -> None:
    state = UserState(USER)
    for i in range(400):
        ts = T0 + i * DAY_MS
        feed(SHIPPED, state, ev("order", ts, amount_cny=1.0, order_id=f"o{i}"), now_ms=ts)
        feed(SHIPPED, state, ev("review", ts, rating=1), now_ms=ts)
        feed(SHIPPED, state, ev("add_to_cart", ts, category="fruit"), now_ms=ts)
    assert len(state.orders) <= 371 and min(state.orders) > local_day(T0) + 399 - 371
    assert len(state.order_ids) == ORDER_IDS_KEPT
    assert len(state.neg_reviews) <= 31
    assert len(state.fired) <= 10 and len(state.touches) <= 5
    assert len(state.to_bytes()) < 16_000


def test_same_state_and_input_give_the_same_outcome() -> None:
    events = [
        ev("add_to_cart", T0, category="fruit"),
        ev("review", T0 + MIN, rating=2),
        ev("app_visit", T0 + 2 * MIN),
        ev("order", T0 + 3 * MIN, amount_cny=70.0, order_id="o1"),
    ]
    runs = []
    for _ in range(2):
        state = UserState(USER)
        outs = [feed(SHIPPED, state, e) for e in events]
        runs.append((outs, state.to_bytes()))
    assert runs[0] == runs[1]
