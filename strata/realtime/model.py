"""What the rule engine reads and decides: live per-user state and the decisions it returns.

Pure data; the engine (:mod:`strata.realtime.engine`) fills them, the stream worker writes them
to Redis (:mod:`strata.io.realtime_store`), the API and ``strata rules stats`` read them back.

Suppression reasons (the ``suppressed`` keys of the rule statistics) are exactly
:data:`SUPPRESSION_REASONS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "ACTION_KINDS",
    "SUPPRESSION_REASONS",
    "ActionSpec",
    "Conversion",
    "Firing",
    "Outcome",
    "Segment",
    "Suppression",
    "Timer",
    "UserState",
    "action_key",
]

ACTION_KINDS: tuple[str, ...] = ("coupon", "service_task", "gift_pack", "push")
#: ``holdout``: the user is in the standing holdout of every strategy enabling the rule, or in
#: an experiment's holdout (strata.strategies.delivery)
SUPPRESSION_REASONS: tuple[str, ...] = ("cooldown", "cap", "budget", "exclusion", "holdout")
#: the segment record's static tags a rule may condition on (``tag.NAME``)
SEGMENT_TAGS: tuple[str, ...] = ("price_sensitivity", "active_slot", "channel")
#: the tier of a user unknown to the snapshot (in statistics' by_tier)
UNKNOWN_TIER = "unknown"


def action_key(rule: str, user_id: int, instance: str) -> str:
    """The idempotency key of one trigger instance of a rule for a user."""
    return f"{rule}:{user_id}:{instance}"


@dataclass(frozen=True)
class Segment:
    """What the engine may condition on from the published snapshot (None fields: unknown).

    Built by the worker from the current snapshot record (or the live overlay)."""

    tier: str | None = None
    lifecycle_stage: str | None = None
    top_category: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, record: Mapping[str, Any] | None) -> Segment | None:
        """The segment of a (live-merged) segment record, None for no record."""
        if record is None:
            return None
        return cls(
            tier=record.get("tier"),
            lifecycle_stage=record.get("lifecycle_stage"),
            top_category=record.get("top_category"),
            tags={k: record[k] for k in SEGMENT_TAGS if record.get(k) is not None},
        )


@dataclass(frozen=True)
class ActionSpec:
    """One action of a firing: ``action`` in :data:`ACTION_KINDS` and its parameters."""

    action: str
    params: dict[str, Any]


@dataclass
class Firing:
    """A rule acting for one user on one trigger instance (before the daily budget check).

    Attributes:
        rule: rule name.
        user_id: pseudonymised user.
        instance: the trigger instance (event id, cart, streak day, festival date).
        key: :func:`action_key` of (rule, user, instance): idempotency key.
        tier: the user's tier when it fired (:data:`UNKNOWN_TIER` if none).
        issued_ms: event time of the decision (the trigger's ts, or the timer's due time).
        day: local date (YYYY-MM-DD) of ``issued_ms``: the budget day.
        actions: what to issue.
        trigger: what triggered it (JSON-able), e.g. ``{"event_id", "event_type", "ts"}``.
        cost_cny: face value of its coupons (counts against the CNY budget).
        budget_count: the rule's daily count budget (None: unlimited).
        budget_cny: the rule's daily CNY budget (None: unlimited).
        tag: dynamic tag and its expiry epoch ms, or None.
        tag_prev_ms: the tag's expiry before this firing (None: it had none); lets
            :func:`strata.realtime.engine.undo` restore it.
        replay: the state already holds this firing (the same trigger processed again, e.g.
            a redelivered entry): the worker's idempotency key decides, nothing is counted.
    """

    rule: str
    user_id: int
    instance: str
    key: str
    tier: str
    issued_ms: int
    day: str
    actions: list[ActionSpec]
    trigger: dict[str, Any]
    cost_cny: float = 0.0
    budget_count: int | None = None
    budget_cny: float | None = None
    tag: tuple[str, int] | None = None
    tag_prev_ms: int | None = None
    replay: bool = False


@dataclass(frozen=True)
class Suppression:
    """A rule that matched but did not act; ``reason`` in :data:`SUPPRESSION_REASONS`."""

    rule: str
    user_id: int
    key: str
    tier: str
    reason: str


@dataclass(frozen=True)
class Conversion:
    """An order attributed (last touch) to an earlier firing."""

    rule: str
    user_id: int
    key: str
    tier: str
    revenue_cny: float
    coupon_cost_cny: float
    order_ms: int


@dataclass(frozen=True)
class Timer:
    """An absence timer in a partition's due-queue: fires when the wall clock passes
    ``due_ms`` (event time of the opening event + the rule's window)."""

    due_ms: int
    rule: str
    user_id: int
    instance: str
    data: dict[str, Any] = field(default_factory=dict)

    def member(self) -> bytes:
        """The due-queue member (unique per rule, user and instance)."""
        return orjson.dumps(
            {
                "rule": self.rule,
                "user_id": self.user_id,
                "instance": self.instance,
                "due_ms": self.due_ms,
                "data": self.data,
            },
            option=orjson.OPT_SORT_KEYS,
        )

    @classmethod
    def from_member(cls, raw: bytes) -> Timer:
        d = orjson.loads(raw)
        return cls(
            int(d["due_ms"]),
            str(d["rule"]),
            int(d["user_id"]),
            str(d["instance"]),
            dict(d.get("data") or {}),
        )


@dataclass
class Outcome:
    """Everything one event, timer or campaign entry caused."""

    firings: list[Firing] = field(default_factory=list)
    suppressions: list[Suppression] = field(default_factory=list)
    conversions: list[Conversion] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    #: the event was an order (the live tier needs refreshing)
    ordered: bool = False

    def extend(self, other: Outcome) -> None:
        self.firings.extend(other.firings)
        self.suppressions.extend(other.suppressions)
        self.conversions.extend(other.conversions)
        self.timers.extend(other.timers)
        self.ordered = self.ordered or other.ordered


@dataclass
class UserState:
    """Live per-user state, kept in Redis as JSON with a TTL (one key per user).

    Only the worker owning the user's partition changes it. Fields (times are epoch ms, days
    are local calendar days since the epoch, :func:`strata.timeutil.local_day`):

    Attributes:
        user_id: pseudonymised id.
        carts: open carts, category (or ``"*"``) -> ts of the add_to_cart that opened it.
        visit_days: local days with an app_visit (the last ~14 kept).
        last_order_ms: newest order's ts.
        first_order_ms: oldest live order's ts (orders seen by the stream).
        orders: local day -> [orders, spend CNY] of live orders (the last ~370 days kept).
        order_ids: recent order ids (dedupes an order re-sent under a new event id).
        neg_reviews: ts of recent negative reviews.
        fired: recent firings ``[rule, issued_ms, exclusion group or "", key]`` (cooldowns,
            caps, exclusion windows are computed from these; the key recognises a replay).
        touches: open attribution touches ``[rule, key, tier, issued_ms, until_ms, coupon
            value, min spend]``.
        tags: dynamic tag -> expiry epoch ms.
        last_event_ms: newest event's ts.
        extra: room for rule kinds to keep more (JSON-able): ``"absence"``: rule ->
            ``{"open": {key value: start ts}, "stop": newest stop ts}``; ``"days"``: event
            type -> local days (streaks of types other than app_visit).
    """

    user_id: int
    carts: dict[str, int] = field(default_factory=dict)
    visit_days: list[int] = field(default_factory=list)
    last_order_ms: int | None = None
    first_order_ms: int | None = None
    orders: dict[int, list[float]] = field(default_factory=dict)
    order_ids: list[str] = field(default_factory=list)
    neg_reviews: list[int] = field(default_factory=list)
    fired: list[list[Any]] = field(default_factory=list)
    touches: list[list[Any]] = field(default_factory=list)
    tags: dict[str, int] = field(default_factory=dict)
    last_event_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        d = self.__dict__.copy()
        d["orders"] = {str(k): v for k, v in self.orders.items()}
        return orjson.dumps(d)

    @classmethod
    def from_bytes(cls, raw: bytes | None, user_id: int) -> UserState:
        """The stored state, or a fresh one for ``user_id`` when ``raw`` is None."""
        if raw is None:
            return cls(user_id)
        d = orjson.loads(raw)
        d["orders"] = {int(k): v for k, v in d.get("orders", {}).items()}
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)
