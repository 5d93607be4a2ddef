"""Response and request models of the API (``*Public``: what callers see)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from strata.realtime.wire import EVENT_ID_PATTERN
from strata.reports.whatif import WhatIfResult
from strata.schema import CATEGORIES, EVENT_TYPES
from strata.serving.config import RAW_ID_PATTERN
from strata.tiering.explain import Explanation, TierThreshold


class TagsPublic(BaseModel):
    top_category: str | None = Field(description="Category with the most spend (90 days).")
    price_sensitivity: str | None = Field(
        description="coupon_sensitive / quality_sensitive / price_insensitive / unknown "
        "(features.yaml rules on coupon use and price level)."
    )
    active_slot: str | None = Field(description="Time of day with most activity (UTC+8).")
    channel: str | None = Field(description="Acquisition channel.")


class ScoresPublic(BaseModel):
    rfm_r: float | None = Field(description="Recency score, percentile rank in [0, 1].")
    rfm_f: float | None = Field(description="Frequency score, percentile rank in [0, 1].")
    rfm_m: float | None = Field(description="Monetary score, percentile rank in [0, 1].")
    rfm_score: float | None = Field(description="Weighted RFM score in [0, 1] (tiers.yaml).")
    recency_days: int | None = Field(description="Days since the last order.")
    frequency_90d: int | None = Field(description="Orders in the last 90 days.")
    monetary_90d_cny: float | None = Field(description="Spend in the last 90 days, CNY.")


class PredictionsPublic(BaseModel):
    churn_p: float | None = Field(description="P(no order in the label horizon, 30 days).")
    repurchase_p: float | None = Field(description="P(an order within 7 days).")
    predicted_spend_cny: float | None = Field(description="Expected spend in 30 days, CNY.")


# --- tag groups (issue 14, part D): the four groups of the source design's tag system


class BasicTagsPublic(BaseModel):
    """Basic attributes (null for logs without user attributes, e.g. orders-only imports)."""

    age_band: str | None = Field(description="18-24 / 25-34 / 35-44 / 45-54 / 55+ / unknown.")
    gender: str | None = Field(description="female / male / unknown.")
    region: str | None = Field(
        description="north / northeast / east / central / south / southwest / northwest; "
        "`other` for any region outside that fixed list."
    )
    device: str | None = Field(description="ios / android / mini_program / web / other.")


class BehaviourTagsPublic(BaseModel):
    """RFM scores and base bands, and behaviour tags."""

    rfm_r: float | None = Field(description="Recency score, percentile rank in [0, 1].")
    rfm_f: float | None = Field(description="Frequency score, percentile rank in [0, 1].")
    rfm_m: float | None = Field(description="Monetary score, percentile rank in [0, 1].")
    rfm_score: float | None = Field(description="Weighted RFM score in [0, 1] (tiers.yaml).")
    recency_band: str | None = Field(
        description="within_30d / lapsed_30d / lapsed_90d / lapsed_180d / no_order "
        "(tiers.yaml rfm_bands.recency_days)."
    )
    frequency_band: str | None = Field(
        description="weekly / monthly / quarterly / rarer: orders per 30 days "
        "(tiers.yaml rfm_bands.frequency)."
    )
    spend_level: str | None = Field(
        description="high / mid / low: percentile among buyers of the spend rfm_m ranks "
        "(tiers.yaml rfm_bands.spend_level)."
    )
    top_category: str | None = Field(description="Category with the most spend.")
    price_sensitivity: str | None = Field(
        description="coupon_sensitive / quality_sensitive / price_insensitive / unknown."
    )
    active_slot: str | None = Field(description="Time of day with most activity (UTC+8).")
    active_daytype: str | None = Field(description="weekday / weekend: when the user is active.")
    channel: str | None = Field(
        description="Acquisition channel: organic / ads / social_share / offline_referral / other."
    )


class ValueTagsPublic(BaseModel):
    """What the user is worth (whole CNY online; exact values in the snapshot)."""

    ltv_cny: float | None = Field(description="Spend to date, CNY (clipped at 65,534).")
    arpu_30d_cny: float | None = Field(description="Spend in the last 30 days, CNY.")
    discount_sensitivity: float | None = Field(
        description="0-1: coupon order share and discount depth (features.yaml)."
    )


class PredictiveTagsPublic(BaseModel):
    """Model outputs; all null when the snapshot was published without a model."""

    churn_p: float | None = Field(description="P(no order in the label horizon), 1/200 steps.")
    repurchase_p: float | None = Field(description="P(an order within 7 days), 1/200 steps.")
    predicted_spend_cny: float | None = Field(description="Expected spend in 30 days, CNY.")


class TagGroupsPublic(BaseModel):
    """The whole tag system, grouped as operators group it."""

    basic: BasicTagsPublic
    behaviour: BehaviourTagsPublic
    value: ValueTagsPublic
    predictive: PredictiveTagsPublic


# --- end of the tag groups


class SegmentPublic(BaseModel):
    """One user's segment, from exactly one snapshot version."""

    user_id: str = Field(description="The platform user id as sent.")
    found: Literal[True] = True
    tier: str
    lifecycle_stage: str | None
    version: str = Field(description="Snapshot version the whole answer comes from.")
    as_of: str | None = Field(description="As-of time of that snapshot (ISO 8601).")
    tags: TagsPublic
    scores: ScoresPublic
    predictions: PredictionsPublic | None = Field(
        description="Model predictions; null when the snapshot was published without a model."
    )
    tag_groups: TagGroupsPublic = Field(
        description="All four tag groups (basic, behaviour, value, predictive); the keys "
        "above stay for existing clients."
    )
    dynamic_tags: list[str] = Field(
        default_factory=list,
        description="Unexpired tags set by live behaviour (trigger rules, e.g. "
        "`cart_abandoner`), sorted.",
    )
    source: Literal["snapshot", "live"] = Field(
        default="snapshot",
        description="`live`: tier, lifecycle stage, scores, RFM bands, LTV and ARPU 30d come "
        "from the live overlay the stream workers keep from orders since the snapshot (based "
        "on this same version); "
        "`snapshot`: from the snapshot alone.",
    )
    last_event_at: str | None = Field(
        default=None,
        description="With `source: live`: local time (ISO 8601) of the user's newest event "
        "the live state has seen; else null.",
    )


class NotFoundPublic(BaseModel):
    """A batch entry for a user the current snapshot does not hold."""

    user_id: str
    found: Literal[False] = False


class LookupRequest(BaseModel):
    user_ids: list[Annotated[str, StringConstraints(pattern=RAW_ID_PATTERN)]] = Field(
        min_length=1,
        description="Platform user ids, at most `max_batch` (1,000 by default; more: 413).",
    )


class LookupPublic(BaseModel):
    version: str | None = Field(description="Snapshot version of every result.")
    as_of: str | None
    results: list[SegmentPublic | NotFoundPublic] = Field(description="One per id, in order.")


class ExplainPublic(Explanation):
    """Why the user is in the tier: the rule, feature values, thresholds, distance to the
    next tier, as of the snapshot the record comes from (its own tier rules)."""

    user_id: str
    version: str
    as_of: str | None


class TierPublic(TierThreshold):
    members: int | None = Field(description="Users in the tier in this snapshot.")


class TiersPublic(BaseModel):
    version: str
    as_of: str | None
    users: int | None
    tiers: list[TierPublic]
    lifecycle_stages: dict[str, int]
    model_version: str | None


class HealthPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: Literal["ok", "down", "not_checked"]
    version: str | None = None
    breaker: str


class ErrorPublic(BaseModel):
    detail: str


# ------------------------------------------------------------------ live events (POST /v1/events)
class EventIn(BaseModel):
    """One live event (documentation of the body; the endpoint validates plain JSON itself).
    Unknown keys are refused. Fields are the warehouse's event columns (docs/data-model.md)."""

    user_id: Annotated[str, StringConstraints(pattern=RAW_ID_PATTERN)] | int = Field(
        description="The platform's user id (pseudonymised on arrival)."
    )
    event_type: str = Field(
        description=f"One of {', '.join(EVENT_TYPES)} (or an importer alias such as `buy`)."
    )
    ts: str | int | None = Field(
        default=None,
        description="Event time: ISO 8601 with `Z` or an offset, or epoch ms; default: "
        "arrival time. Accepted from 1970-01-01T00:00:00.001Z to now + 1 day (exclusive).",
    )
    event_id: Annotated[str, StringConstraints(pattern=EVENT_ID_PATTERN)] | None = Field(
        default=None,
        description="Client id for dedupe (default: a hash of the content, so the same event "
        "posted twice with the same `ts` is appended once).",
    )
    category: str | None = Field(default=None, description=f"One of {', '.join(CATEGORIES)}.")
    amount_cny: float | None = Field(default=None, ge=0, description="Required for `order`.")
    order_id: str | None = Field(default=None, max_length=128)
    coupon_id: str | None = Field(default=None, max_length=128)
    rating: int | None = Field(default=None, ge=1, le=5, description="Required for `review`.")
    item_id: int | None = Field(default=None, ge=0)
    session_id: int | None = Field(default=None, ge=0)
    query: str | None = Field(default=None, max_length=256)
    discount_cny: float | None = Field(default=None, ge=0)
    item_count: int | None = Field(default=None, ge=0, le=32767)
    categories: list[str] | None = Field(
        default=None, description="Categories of an order (default: `[category]`)."
    )


class EventsAcceptedPublic(BaseModel):
    accepted: int = Field(description="Events appended to the streams.")
    duplicates: int = Field(
        description="Events whose `event_id` was already appended (within the dedupe TTL)."
    )


class EventErrorPublic(BaseModel):
    index: int = Field(description="0-based position of the event in `events`.")
    field: str
    reason: str


class EventErrorsPublic(BaseModel):
    """A refused batch: nothing was appended."""

    detail: str
    errors: list[EventErrorPublic] = Field(description="Every problem of every bad event.")


# ------------------------------------------------------------------ actions and rules
class ActionPublic(BaseModel):
    rule: str = Field(description="The trigger rule that issued it.")
    action: str = Field(description="coupon, service_task, gift_pack or push.")
    params: dict[str, Any] = Field(description="The action's parameters (coupon value, ...).")
    key: str = Field(description="Idempotency key: rule, user and trigger instance.")
    issued_at: str = Field(description="Local time (ISO 8601) of the decision.")
    trigger: dict[str, Any] = Field(description="What triggered it (event id, type, time).")


class ActionsPublic(BaseModel):
    user_id: str = Field(description="The platform user id as sent.")
    actions: list[ActionPublic] = Field(description="Newest first.")


class SuppressedPublic(BaseModel):
    cooldown: int
    cap: int
    budget: int
    exclusion: int


class RuleCountersPublic(BaseModel):
    fired: int = Field(description="Firings that issued their actions.")
    suppressed: SuppressedPublic = Field(description="Matches that did not act, by reason.")
    converted: int = Field(description="Firings followed by an attributed order (last touch).")
    revenue_cny: float = Field(description="Revenue of the attributed orders, CNY.")
    coupon_cost_cny: float = Field(description="Face value of coupons used by them, CNY.")


class RuleStatsPublic(RuleCountersPublic):
    name: str
    kind: str | None = Field(description="event, absence, streak or calendar (null: inactive).")
    active: bool = Field(description="Whether the workers run it now.")
    priority: int | None
    by_tier: dict[str, RuleCountersPublic] = Field(
        description="The same counters per tier the user was in when it fired."
    )


class RulesPublic(BaseModel):
    rules: list[RuleStatsPublic] = Field(
        description="Active rules in the order the workers list them, then inactive rules that "
        "have statistics, by name."
    )


# ------------------------------------------------------------ strategies and experiments
class StrategyActionPublic(BaseModel):
    kind: str = Field(description="Action kind (coupon, gift_pack, service_callback, ...).")
    params: dict[str, Any] = Field(description="The action's parameters from strategies.yaml.")


class StrategyPublic(BaseModel):
    name: str
    description: str
    applies: bool = Field(description="True when eligible and not in the standing holdout.")
    reason: str = Field(description="What matched: tier, lifecycle stage or dynamic tag.")
    eligible: bool = Field(description="Whether the segment record passes the eligibility.")
    holdout: bool = Field(description="In the strategy's standing holdout (never gets it).")
    why_not: list[str] = Field(description="What keeps the strategy from the user, if any.")
    channel: str
    cost_per_action_cny: float
    trigger_rules: list[str] = Field(description="Trigger rules of triggers.yaml it enables.")
    actions: list[StrategyActionPublic]


class ExperimentArmPublic(BaseModel):
    experiment: str
    arm: str = Field(description="The user's arm, or 'holdout'.")
    reason: str = Field(description="Why the experiment targets the user.")
    strategies: list[str] = Field(description="Strategies of the arm (none for the holdout).")
    overrides: dict[str, Any] = Field(description="Parameter overrides of the arm.")


class UserStrategiesPublic(BaseModel):
    user_id: str
    version: str = Field(description="Snapshot version the segment was read from.")
    tier: str
    lifecycle_stage: str | None
    dynamic_tags: list[str]
    source: Literal["snapshot", "live"] = Field(
        description="'live' when the tier comes from the real-time loop's overlay."
    )
    strategies: list[StrategyPublic] = Field(
        description="Strategies matching the tier, stage or tags, in strategies.yaml order."
    )
    experiments: list[ExperimentArmPublic] = Field(
        description="Running experiments that target the user, with the user's arm."
    )


class ArmDefinitionPublic(BaseModel):
    name: str
    weight: float
    strategies: list[str]
    overrides: dict[str, Any]
    exposed: int = Field(description="Users exposed to this arm so far.")


class GuardrailPublic(BaseModel):
    metric: str
    max: float | None
    min: float | None


class ExperimentPublic(BaseModel):
    name: str
    description: str
    status: Literal["scheduled", "running", "ended"] = Field(
        description="By today's local date (UTC+8) against start and end (both included)."
    )
    target: dict[str, list[str]] = Field(description="Targeted tiers and stages.")
    arms: list[ArmDefinitionPublic]
    control: str
    holdout: float = Field(description="Share of targeted users kept out of every arm.")
    holdout_exposed: int = Field(description="Holdout users seen so far.")
    start: str
    end: str
    primary_metric: str
    secondary_metrics: list[str]
    guardrails: list[GuardrailPublic]


class ExperimentsPublic(BaseModel):
    experiments: list[ExperimentPublic]


# --------------------------------------------------------------------------- what-if, history
# (issue 14, part C: api/routers/whatif.py, api/routers/history.py)
class WhatIfRequest(BaseModel):
    """Tier settings to try: dotted keys of configs/tiers.yaml prefixed ``tiers.``."""

    set: dict[str, float | str | list[str] | None] = Field(
        default_factory=dict,
        description="key -> value, e.g. {'tiers.bands.high_value.min_score': 0.75, "
        "'tiers.weights.recency': 0.5}; unset weights are scaled so the three sum to 1.",
        examples=[{"tiers.bands.high_value.min_score": 0.75, "tiers.weights.recency": 0.5}],
    )


class WhatIfRefusedPublic(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="The refused key and what is allowed (a list: the body is not an object "
        "of the documented shape)."
    )


class WhatIfPublic(WhatIfResult):
    """The outcome of a what-if simulation: the same document as ``strata whatif --json``."""


class WhatIfKeyPublic(BaseModel):
    key: str
    value: float | None = Field(description="The current setting.")
    min: float
    max: float
    step: float


class WhatIfKeysPublic(BaseModel):
    keys: list[WhatIfKeyPublic]
    version: str = Field(description="The snapshot the what-if runs on.")


class HistoryEntryPublic(BaseModel):
    source: Literal["snapshot", "live"]
    version: str = Field(description="The snapshot (for a live entry: the one it is based on).")
    as_of: str | None = Field(description="The snapshot's as-of, or the last live event's time.")
    tier: str | None
    tier_rule: str | None
    tier_explanation: str | None
    lifecycle_stage: str | None
    rfm_score: float | None
    recency_band: str | None = None
    frequency_band: str | None = None
    spend_level: str | None = None
    from_tier: str | None = Field(description="The tier of the older entry (None: unknown).")
    changed: bool | None = Field(description="Whether the tier changed from the older entry.")
    changed_by: str | None = Field(description="The rule that gave the new tier, if changed.")


class HistoryPublic(BaseModel):
    user_id: str
    snapshots: int = Field(description="Retained snapshots on disk.")
    live_available: bool = Field(description="False when Redis (the live overlay) is down.")
    entries: list[HistoryEntryPublic] = Field(description="Newest first.")
