"""The rule engine: live per-user state transitions and trigger decisions (pure).

:class:`TriggerEngine` compiles the rules of configs/triggers.yaml once (conditions become
small predicates, rules are indexed by event type) so that an event costs a few dict lookups
and comparisons. The stream worker owns the I/O: it loads a user's :class:`UserState`, calls
:meth:`TriggerEngine.on_event` / :meth:`TriggerEngine.on_timer`, checks each firing against
the rule's daily budget (a shared counter), calls :func:`undo` for refused ones, and writes
state, actions, timers and statistics back.

Decisions run on event time: cooldowns, caps (local calendar day / week, Monday first) and
exclusion windows compare the trigger's ``ts`` (a timer's due time, a campaign entry's ``ts``)
with earlier firings; ``now_ms`` only decides whether an event is too old to act on. The same
state and input always give the same outcome.

Suppression order after a rule matches: cooldown, cap, exclusion (a rule of the same group
fired within the group's window; rules matching one event are decided by priority, highest
first, so a winner excludes the rest of its group). A firing records itself in the state at
once (``fired``, ``touches``, ``tags``).

Replays: a trigger whose action key the state already holds (an entry redelivered after its
state was saved) gives the same firing again marked ``replay`` and changes nothing, so the
worker's idempotency key decides and no statistic counts twice. Known approximations: an
order closes an absence instance only if it is processed before the instance's timer; a
firing refused by the budget (undone) does not give its exclusion slot back to a lower
priority rule that the same event suppressed.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from strata.config import CalendarConfig
from strata.realtime.model import (
    UNKNOWN_TIER,
    ActionSpec,
    Conversion,
    Firing,
    Outcome,
    Segment,
    Suppression,
    Timer,
    UserState,
    action_key,
)
from strata.realtime.triggers import (
    EVENT_CATEGORY,
    FESTIVAL,
    TAG_PREFIX,
    TOP_CATEGORY,
    USER_FIELDS,
    Coupon,
    GiftPack,
    Push,
    ServiceTask,
    TriggerConfig,
    TriggerRule,
)
from strata.realtime.wire import CAMPAIGN_EVENT
from strata.timeutil import DAY_MS, LOCAL_OFFSET_MS, local_iso

__all__ = [
    "NEGATIVE_RATING_MAX",
    "TriggerEngine",
    "coupon_id",
    "undo",
]

#: a review rated at most this is negative (kept in ``UserState.neg_reviews``)
NEGATIVE_RATING_MAX = 2
#: state bounds (the state stays small: it is read and written per event batch)
ORDER_DAYS_KEPT = 370
ORDER_IDS_KEPT = 50
VISIT_DAYS_KEPT = 14
NEG_REVIEWS_KEPT_MS = 30 * DAY_MS
NEG_REVIEWS_KEPT = 20
CARTS_KEPT = 20
CARTS_KEPT_MS = 7 * DAY_MS
FIRED_KEPT = 100
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()

Test = Callable[[Any], bool]


def _day_of(ms: int) -> int:
    return (ms + LOCAL_OFFSET_MS) // DAY_MS


def _week_of(day: int) -> int:
    # day 0 (1970-01-01) was a Thursday: weeks start on Monday
    return (day + 3) // 7


def _date_iso(day: int) -> str:
    return dt.date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


def coupon_id(key: str, index: int = 0) -> str:
    """The coupon id of a firing's ``index``-th coupon: a hash of its action key (the same
    trigger always issues the same coupon id)."""
    text = key if index == 0 else f"{key}#{index}"
    return "rt" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _test(op: str, operand: Any) -> Test:
    """A predicate for one operator; a missing value (None) meets only ne and not_in."""
    if op == "eq":
        return lambda v: v is not None and v == operand
    if op == "ne":
        return lambda v: v != operand
    if op in ("in", "not_in"):
        values = frozenset(operand)
        inside = op == "in"

        def member(v: Any) -> bool:
            try:
                return (v in values) is inside
            except TypeError:  # unhashable value
                return not inside

        return member
    compare = {
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
    }[op]

    def ordered(v: Any) -> bool:
        if v is None or isinstance(v, bool):
            return False
        try:
            return bool(compare(v, operand))
        except TypeError:  # a string compared with a number
            return False

    return ordered


def _tests(conditions: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Test]]:
    return [(name, _test(op, operand)) for name, ops in conditions.items()
            for op, operand in ops.items()]  # fmt: skip


def _ms(value: dt.timedelta | None) -> int:
    return 0 if value is None else int(value.total_seconds() * 1000)


@dataclass(frozen=True, slots=True)
class _Rule:
    """A rule compiled for the hot path."""

    name: str
    kind: str
    priority: int
    event_tests: tuple[tuple[str, Test], ...]
    user_tests: tuple[tuple[str, Test], ...]
    actions: tuple[tuple[str, Coupon | ServiceTask | GiftPack | Push, int], ...]
    cost_cny: float
    coupon_value_cny: float
    coupon_min_spend_cny: float
    cooldown_ms: int
    per_day: int
    per_week: int
    group: str
    group_ms: int
    attribution_ms: int
    tag: tuple[str, int] | None
    budget_count: int | None
    budget_cny: float | None
    within_ms: int
    key_field: str | None
    days: int
    offset_days: int

    @classmethod
    def compile(cls, rule: TriggerRule, config: TriggerConfig) -> _Rule:
        where_user: dict[str, Mapping[str, Any]] = {}
        where_event: dict[str, Mapping[str, Any]] = {}
        for name, ops in rule.where.items():
            is_user = name in USER_FIELDS or name.startswith(TAG_PREFIX)
            (where_user if is_user else where_event)[name] = ops
        actions = []
        coupons = []
        for a in rule.actions:
            spec = a.spec
            valid_ms = _ms(spec.valid_for) if isinstance(spec, Coupon) else 0
            actions.append((a.kind, spec, valid_ms))
            if isinstance(spec, Coupon):
                coupons.append(spec)
        group = rule.exclusion_group or ""
        caps = rule.caps
        return cls(
            name=rule.name,
            kind=rule.kind,
            priority=rule.priority,
            event_tests=tuple(_tests(where_event)),
            user_tests=tuple(_tests({**where_user, **rule.segment})),
            actions=tuple(actions),
            cost_cny=float(sum(c.value_cny for c in coupons)),
            coupon_value_cny=float(coupons[0].value_cny) if coupons else 0.0,
            coupon_min_spend_cny=float(coupons[0].min_spend_cny) if coupons else 0.0,
            cooldown_ms=_ms(rule.cooldown),
            per_day=(caps.per_day or 0) if caps else 0,
            per_week=(caps.per_week or 0) if caps else 0,
            group=group,
            group_ms=_ms(config.exclusion_groups[group].window) if group else 0,
            attribution_ms=_ms(rule.attribution_window),
            tag=(rule.tag.name, _ms(rule.tag.ttl)) if rule.tag else None,
            budget_count=rule.budget.daily_count if rule.budget else None,
            budget_cny=rule.budget.daily_cny if rule.budget else None,
            within_ms=_ms(rule.within),
            key_field=rule.key,
            days=rule.days or 0,
            offset_days=rule.festival_offset_days or 0,
        )


@dataclass
class _TypeRules:
    """The rules one event type concerns."""

    candidates: list[_Rule]  # event and streak rules, highest priority first
    starts: list[_Rule]
    stops: list[_Rule]
    cancels: list[_Rule]

    @property
    def has_streak(self) -> bool:
        return any(r.kind == "streak" for r in self.candidates)


class TriggerEngine:
    """Evaluates the active trigger rules for one user's events, timers and campaign entries.

    Args:
        config: the trigger rules.
        calendar: festivals (calendar rules).
        max_event_age_ms: events older than this (``now_ms - ts``) update the state but fire
            nothing and schedule no timers; a timer that runs this long after its due time
            fires nothing either.
    """

    def __init__(
        self, config: TriggerConfig, calendar: CalendarConfig, *, max_event_age_ms: int
    ) -> None:
        self.config = config
        self.max_event_age_ms = int(max_event_age_ms)
        specs = sorted(config.active, key=lambda r: (-r.priority, r.name))
        rules = [_Rule.compile(spec, config) for spec in specs]
        self._absence = {r.name: r for r in rules if r.kind == "absence"}
        self._calendar = {r.name: r for r in rules if r.kind == "calendar"}
        self._by_type: dict[str, _TypeRules] = {}
        for spec, rule in zip(specs, rules, strict=True):
            if rule.kind in ("event", "streak"):
                self._type(spec.on).candidates.append(rule)
            elif rule.kind == "absence":
                self._type(spec.start).starts.append(rule)
                self._type(spec.stop).stops.append(rule)
                if spec.cancel is not None:
                    self._type(spec.cancel).cancels.append(rule)
        # calendar rule -> run date -> [(festival, festival date)]
        self._campaigns: dict[str, dict[dt.date, list[tuple[str, dt.date]]]] = {}
        for rule in self._calendar.values():
            by_day: dict[dt.date, list[tuple[str, dt.date]]] = {}
            for festival in calendar.festivals:
                for fdate in festival.dates:
                    run = fdate + dt.timedelta(days=rule.offset_days)
                    by_day.setdefault(run, []).append((festival.name, fdate))
            self._campaigns[rule.name] = {d: sorted(v) for d, v in by_day.items()}
        horizon = [DAY_MS]
        for r in rules:
            horizon += [r.cooldown_ms, r.group_ms, 8 * DAY_MS if r.per_week else 0]
        self._fired_horizon_ms = max(horizon)
        self._visit_days_kept = max([VISIT_DAYS_KEPT] + [r.days + 1 for r in rules])

    def _type(self, event_type: str | None) -> _TypeRules:
        assert event_type is not None
        return self._by_type.setdefault(event_type, _TypeRules([], [], [], []))

    # ------------------------------------------------------------------ public entry points
    def campaigns_due(self, date: dt.date) -> list[tuple[str, str, dt.date]]:
        """``(rule, festival, festival_date)`` of the calendar campaigns to run on ``date``."""
        return sorted(
            (rule, festival, fdate)
            for rule, by_day in self._campaigns.items()
            for festival, fdate in by_day.get(date, ())
        )

    def on_event(
        self, state: UserState, event: dict[str, Any], segment: Segment | None, now_ms: int
    ) -> Outcome:
        """Apply one event (wire format) of ``state``'s user: update the state in place, then
        decide the rules of its type. Campaign entries (``_campaign``) decide their calendar
        rule.

        Raises:
            ValueError: an entry it cannot act on (an order whose amount is not a number, a
                campaign entry without a date): a poison entry. The state may then have its
                ``last_event_ms`` and expired tags updated only; the worker drops it anyway.
        """
        etype = event["event_type"]
        ts = int(event["ts"])
        if etype == CAMPAIGN_EVENT:
            return self._on_campaign(state, event, segment, now_ms)
        out = Outcome()
        live = now_ms - ts <= self.max_event_age_ms
        if state.last_event_ms is None or ts > state.last_event_ms:
            state.last_event_ms = ts
        if state.tags:
            expired = [name for name, expiry in state.tags.items() if expiry <= ts]
            for name in expired:
                del state.tags[name]
        if etype == "order":
            if not self._order(state, event, ts, out):
                return out  # an order already counted: nothing else happens
        elif etype == "add_to_cart":
            self._cart_add(state, event, ts)
        elif etype == "remove_from_cart":
            state.carts.pop(self._cart_key(event), None)
        elif etype == "review":
            rating = event.get("rating")
            if isinstance(rating, int) and rating <= NEGATIVE_RATING_MAX:
                self._neg_review(state, ts)
        rules = self._by_type.get(etype)
        streak: tuple[list[int], int, bool] | None = None
        if etype == "app_visit" or (rules is not None and rules.has_streak):
            streak = self._add_day(state, etype, _day_of(ts))
        if rules is None:
            return out
        for rule in rules.stops:
            self._absence_stop(state, rule, ts)
        for rule in rules.cancels:
            self._absence_cancel(state, rule, event, ts)
        if not live:
            return out
        for rule in rules.starts:
            self._absence_start(state, rule, event, ts, out)
        for rule in rules.candidates:
            if rule.kind == "event":
                if not self._matches(rule, event, segment, state, ts):
                    continue
                instance = str(event["event_id"])
            else:
                assert streak is not None
                reached = self._streak_day(rule, *streak)
                if reached is None or not self._matches(rule, event, segment, state, ts):
                    continue
                instance = _date_iso(reached)
            trigger = {"event_id": event.get("event_id"), "event_type": etype, "ts": ts}
            self._decide(state, rule, instance, ts, trigger, segment, out,
                         category=event.get("category"))  # fmt: skip
        return out

    def on_timer(
        self, state: UserState, timer: Timer, segment: Segment | None, now_ms: int
    ) -> Outcome:
        """Run a due absence timer: the rule fires if its instance is still open (no stop or
        cancel since the start event). A timer not yet due (``now_ms < due_ms``) does
        nothing; a closed or stale instance is dropped."""
        out = Outcome()
        if timer.user_id != state.user_id:
            raise ValueError(f"timer of user {timer.user_id} applied to user {state.user_id}")
        rule = self._absence.get(timer.rule)
        if rule is None or now_ms < timer.due_ms:
            return out
        trigger = {"timer": rule.name, "opened_ts": timer.data.get("opened_ts"),
                   "due_ms": timer.due_ms}  # fmt: skip
        category = timer.data.get("category")
        key = action_key(rule.name, state.user_id, timer.instance)
        if not any(rec[3] == key for rec in state.fired):
            absence = state.extra.get("absence", {}).get(rule.name)
            kv = timer.data.get("key")
            opened = absence["open"].get(kv) if absence is not None and kv is not None else None
            if opened is None or opened != timer.data.get("opened_ts"):
                return out
            assert absence is not None
            del absence["open"][kv]
            if now_ms - timer.due_ms > self.max_event_age_ms:
                return out
            if not self._matches(rule, {}, segment, state, timer.due_ms):
                return out
        self._decide(state, rule, timer.instance, timer.due_ms, trigger, segment, out,
                     category=category)  # fmt: skip
        return out

    def undo(self, state: UserState, firing: Firing) -> None:
        """See :func:`undo`."""
        undo(state, firing)

    # ------------------------------------------------------------------ state transitions
    def _order(self, state: UserState, event: dict[str, Any], ts: int, out: Outcome) -> bool:
        """Count an order (False: its order_id was counted before) and attribute it."""
        amount = event.get("amount_cny") or 0.0
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise ValueError(f"order amount_cny {amount!r} is not a number")
        amount = float(amount)
        order_id = event.get("order_id")
        if order_id is not None:
            if order_id in state.order_ids:
                return False
            state.order_ids.append(order_id)
            if len(state.order_ids) > ORDER_IDS_KEPT:
                del state.order_ids[: len(state.order_ids) - ORDER_IDS_KEPT]
        day = _day_of(ts)
        bucket = state.orders.get(day)
        if bucket is None:
            state.orders[day] = [1, amount]
            if len(state.orders) > ORDER_DAYS_KEPT:
                newest = max(state.orders)
                for d in [d for d in state.orders if d <= newest - ORDER_DAYS_KEPT]:
                    del state.orders[d]
        else:
            bucket[0] += 1
            bucket[1] += amount
        if state.last_order_ms is None or ts > state.last_order_ms:
            state.last_order_ms = ts
        if state.first_order_ms is None or ts < state.first_order_ms:
            state.first_order_ms = ts
        if state.carts:
            for cart in [c for c, opened in state.carts.items() if opened <= ts]:
                del state.carts[cart]
        out.ordered = True
        if state.touches:
            self._attribute(state, amount, ts, out)
        return True

    @staticmethod
    def _attribute(state: UserState, amount: float, ts: int, out: Outcome) -> None:
        """Last touch: the newest open touch with issued <= ts <= until converts, once."""
        best = -1
        for i, touch in enumerate(state.touches):
            if touch[3] <= ts <= touch[4] and (best < 0 or touch[3] >= state.touches[best][3]):
                best = i
        if best >= 0:
            rule, key, tier, _issued, _until, value, min_spend = state.touches.pop(best)
            cost = float(value) if value and amount >= min_spend else 0.0
            out.conversions.append(Conversion(rule, state.user_id, key, tier, amount, cost, ts))
        state.touches = [t for t in state.touches if t[4] >= ts]

    def _cart_key(self, event: dict[str, Any]) -> str:
        category = event.get("category")
        return "*" if category is None else str(category)

    def _cart_add(self, state: UserState, event: dict[str, Any], ts: int) -> None:
        carts = state.carts
        cart = self._cart_key(event)
        opened = carts.get(cart)
        if opened is None or opened > ts:
            carts[cart] = ts
            if len(carts) > CARTS_KEPT or any(v < ts - CARTS_KEPT_MS for v in carts.values()):
                kept = sorted(carts.items(), key=lambda kv: kv[1])[-CARTS_KEPT:]
                state.carts = {k: v for k, v in kept if v >= ts - CARTS_KEPT_MS}

    @staticmethod
    def _neg_review(state: UserState, ts: int) -> None:
        reviews = state.neg_reviews
        bisect.insort(reviews, ts)
        newest = reviews[-1]
        state.neg_reviews = [t for t in reviews if t >= newest - NEG_REVIEWS_KEPT_MS][
            -NEG_REVIEWS_KEPT:
        ]

    def _add_day(self, state: UserState, etype: str, day: int) -> tuple[list[int], int, bool]:
        """Add a local day to the event type's day list: (days, day, newly added)."""
        if etype == "app_visit":
            days = state.visit_days
        else:
            days = state.extra.setdefault("days", {}).setdefault(etype, [])
        i = bisect.bisect_left(days, day)
        if i < len(days) and days[i] == day:
            return days, day, False
        days.insert(i, day)
        if days[-1] - days[0] >= self._visit_days_kept:
            cut = days[-1] - self._visit_days_kept
            del days[: bisect.bisect_right(days, cut)]
            if day <= cut:
                return days, day, False  # older than the days kept
        return days, day, True

    @staticmethod
    def _streak_day(rule: _Rule, days: list[int], day: int, added: bool) -> int | None:
        """The day the streak containing ``day`` reached the rule's length, if adding ``day``
        made it reach it; else None."""
        if not added:
            return None
        i = bisect.bisect_left(days, day)
        first = i
        while first > 0 and days[first - 1] == days[first] - 1:
            first -= 1
        last = i
        while last + 1 < len(days) and days[last + 1] == days[last] + 1:
            last += 1
        start = days[first]
        if day - start < rule.days <= days[last] - start + 1:
            return start + rule.days - 1
        return None

    # ------------------------------------------------------------------ absence rules
    @staticmethod
    def _absence_state(state: UserState, rule: _Rule) -> dict[str, Any]:
        by_rule = state.extra.setdefault("absence", {})
        return by_rule.setdefault(rule.name, {"open": {}, "stop": None})

    def _absence_start(
        self, state: UserState, rule: _Rule, event: dict[str, Any], ts: int, out: Outcome
    ) -> None:
        absence = self._absence_state(state, rule)
        value = event.get(rule.key_field) if rule.key_field else None
        kv = "*" if value is None else str(value)
        stop = absence["stop"]
        if stop is not None and ts <= stop <= ts + rule.within_ms:
            return  # a stop event at or after the start was processed first
        opened = absence["open"]
        current = opened.get(kv)
        if current is not None and (current >= ts or ts <= current + rule.within_ms):
            if current == ts:  # the same start again: the same (idempotent) timer
                out.timers.append(self._timer(state, rule, kv, ts, event))
            return  # one open instance per key
        stale = ts - rule.within_ms - self.max_event_age_ms
        for k in [k for k, v in opened.items() if v < stale]:
            del opened[k]
        opened[kv] = ts
        out.timers.append(self._timer(state, rule, kv, ts, event))

    @staticmethod
    def _timer(state: UserState, rule: _Rule, kv: str, ts: int, event: dict[str, Any]) -> Timer:
        data: dict[str, Any] = {"key": kv, "opened_ts": ts}
        if event.get("category") is not None:
            data["category"] = event["category"]
        return Timer(ts + rule.within_ms, rule.name, state.user_id, f"{kv}:{ts}", data)

    @staticmethod
    def _absence_stop(state: UserState, rule: _Rule, ts: int) -> None:
        absence = state.extra.get("absence", {}).get(rule.name)
        if absence is None:
            return
        opened = absence["open"]
        for k in [k for k, v in opened.items() if v <= ts]:
            del opened[k]
        if absence["stop"] is None or ts > absence["stop"]:
            absence["stop"] = ts

    @staticmethod
    def _absence_cancel(state: UserState, rule: _Rule, event: dict[str, Any], ts: int) -> None:
        absence = state.extra.get("absence", {}).get(rule.name)
        if absence is None:
            return
        value = event.get(rule.key_field) if rule.key_field else None
        kv = "*" if value is None else str(value)
        opened = absence["open"].get(kv)
        if opened is not None and opened <= ts:
            del absence["open"][kv]

    # ------------------------------------------------------------------ calendar rules
    def _on_campaign(
        self, state: UserState, entry: dict[str, Any], segment: Segment | None, now_ms: int
    ) -> Outcome:
        out = Outcome()
        rule = self._calendar.get(str(entry.get("rule")))
        if rule is None:
            return out  # not (or no longer) an active calendar rule
        ts = int(entry["ts"])
        try:
            date = dt.date.fromisoformat(str(entry["date"]))
        except (KeyError, ValueError):
            raise ValueError("a campaign entry needs its run date as YYYY-MM-DD") from None
        if now_ms - ts > self.max_event_age_ms:
            return out
        if not self._matches(rule, {}, segment, state, ts):
            return out
        only = entry.get("festival")
        for festival, fdate in self._campaigns[rule.name].get(date, ()):
            if only is not None and festival != only:
                continue
            trigger = {"campaign": festival, "date": fdate.isoformat()}
            self._decide(state, rule, f"{festival}:{fdate.isoformat()}", ts, trigger, segment,
                         out, festival=festival)  # fmt: skip
        return out

    # ------------------------------------------------------------------ decisions
    @staticmethod
    def _user_value(name: str, segment: Segment | None, state: UserState, ts: int) -> Any:
        if name == "tier":
            return segment.tier if segment is not None else None
        if name == "lifecycle_stage":
            return segment.lifecycle_stage if segment is not None else None
        if name == "top_category":
            return segment.top_category if segment is not None else None
        tag = name[len(TAG_PREFIX) :]
        if segment is not None:
            value = segment.tags.get(tag)
            if value is not None:
                return value
        expiry = state.tags.get(tag)
        return True if expiry is not None and expiry > ts else None

    def _matches(
        self,
        rule: _Rule,
        event: dict[str, Any],
        segment: Segment | None,
        state: UserState,
        ts: int,
    ) -> bool:
        for name, test in rule.event_tests:
            if not test(event.get(name)):
                return False
        for name, test in rule.user_tests:
            if not test(self._user_value(name, segment, state, ts)):
                return False
        return True

    def _suppressed(self, state: UserState, rule: _Rule, issued_ms: int) -> str | None:
        """The reason the rule may not act now, checked in order, or None."""
        fired = state.fired
        if rule.cooldown_ms:
            for name, at, _group, _key in fired:
                if name == rule.name and abs(issued_ms - at) < rule.cooldown_ms:
                    return "cooldown"
        if rule.per_day or rule.per_week:
            day = _day_of(issued_ms)
            week = _week_of(day)
            n_day = n_week = 0
            for name, at, _group, _key in fired:
                if name == rule.name:
                    d = _day_of(at)
                    n_day += d == day
                    n_week += _week_of(d) == week
            if (rule.per_day and n_day >= rule.per_day) or (
                rule.per_week and n_week >= rule.per_week
            ):
                return "cap"
        if rule.group:
            for _name, at, group, _key in fired:
                if group == rule.group and abs(issued_ms - at) < rule.group_ms:
                    return "exclusion"
        return None

    def _decide(
        self,
        state: UserState,
        rule: _Rule,
        instance: str,
        issued_ms: int,
        trigger: dict[str, Any],
        segment: Segment | None,
        out: Outcome,
        *,
        category: Any = None,
        festival: str | None = None,
    ) -> None:
        key = action_key(rule.name, state.user_id, instance)
        tier = (segment.tier if segment is not None else None) or UNKNOWN_TIER
        replay = any(rec[3] == key for rec in state.fired)
        if not replay:
            reason = self._suppressed(state, rule, issued_ms)
            if reason is not None:
                out.suppressions.append(Suppression(rule.name, state.user_id, key, tier, reason))
                return
        firing = Firing(
            rule=rule.name,
            user_id=state.user_id,
            instance=instance,
            key=key,
            tier=tier,
            issued_ms=issued_ms,
            day=_date_iso(_day_of(issued_ms)),
            actions=self._actions(rule, key, issued_ms, category, segment, festival),
            trigger=trigger,
            cost_cny=rule.cost_cny,
            budget_count=rule.budget_count,
            budget_cny=rule.budget_cny,
            replay=replay,
        )
        if rule.tag is not None:
            name, ttl_ms = rule.tag
            previous = state.tags.get(name)
            expiry = issued_ms + ttl_ms
            if previous is not None and previous > expiry:
                expiry = previous
            firing.tag = (name, expiry)
            firing.tag_prev_ms = previous
            if not replay:
                state.tags[name] = expiry
        if not replay:
            self._record(state, rule, firing)
        out.firings.append(firing)

    def _record(self, state: UserState, rule: _Rule, firing: Firing) -> None:
        issued = firing.issued_ms
        oldest = issued - self._fired_horizon_ms
        fired = [rec for rec in state.fired if rec[1] >= oldest]
        fired.append([rule.name, issued, rule.group, firing.key])
        state.fired = fired[-FIRED_KEPT:]
        touches = [t for t in state.touches if t[4] >= issued]
        touches.append([rule.name, firing.key, firing.tier, issued, issued + rule.attribution_ms,
                        rule.coupon_value_cny, rule.coupon_min_spend_cny])  # fmt: skip
        state.touches = touches

    @staticmethod
    def _actions(
        rule: _Rule,
        key: str,
        issued_ms: int,
        category: Any,
        segment: Segment | None,
        festival: str | None,
    ) -> list[ActionSpec]:
        actions = []
        for i, (kind, spec, valid_ms) in enumerate(rule.actions):
            params: dict[str, Any]
            if isinstance(spec, Coupon):
                cat: Any = spec.category
                if cat == EVENT_CATEGORY:
                    cat = category
                elif cat == TOP_CATEGORY:
                    cat = segment.top_category if segment is not None else None
                params = {
                    "coupon_id": coupon_id(key, i),
                    "value_cny": spec.value_cny,
                    "min_spend_cny": spec.min_spend_cny,
                    "category": cat,
                    "valid_until": local_iso(issued_ms + valid_ms),
                }
            elif isinstance(spec, ServiceTask):
                params = {"queue": spec.queue, "reason": spec.reason}
            elif isinstance(spec, GiftPack):
                params = {"pack": festival if spec.pack == FESTIVAL else spec.pack}
            else:
                params = {"template": spec.template}
            actions.append(ActionSpec(kind, params))
        return actions


def undo(state: UserState, firing: Firing) -> None:
    """Remove a firing's traces from the state (the worker's budget check refused it): its
    record (cooldowns, caps, exclusion), its attribution touch and the tag it set. A replayed
    firing changed nothing, so undoing it changes nothing either."""
    if firing.replay:
        return
    state.fired = [rec for rec in state.fired if rec[3] != firing.key]
    state.touches = [t for t in state.touches if t[1] != firing.key]
    if firing.tag is not None:
        name, expiry = firing.tag
        if state.tags.get(name) == expiry:
            if firing.tag_prev_ms is None:
                del state.tags[name]
            else:
                state.tags[name] = firing.tag_prev_ms
