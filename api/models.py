"""Response and request models of the API (``*Public``: what callers see)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

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
    dynamic_tags: list[str] = Field(
        default_factory=list,
        description="Tags set by live behaviour (real-time rules); empty until they run.",
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
