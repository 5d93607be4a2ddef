"""The tier report document: what `strata report tiers` computes, writes and prints.

The same document is ``report.json`` of a versioned report (:class:`strata.io.reports.
ReportStore`), the output of ``strata report tiers --json`` and what the dashboard renders,
so every number the dashboard shows equals the command's.

Counts are exact here; the dashboard suppresses cells under k users when it shows them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TierMetrics(_Doc):
    """One tier in one snapshot."""

    users: int
    share: float = Field(description="users / all users of the snapshot")
    arpu_cny: float | None = Field(
        description="revenue of the tier's users in the period / users in the tier"
    )
    orders_per_user: float | None = Field(description="orders in the period / users")
    ltv_cny: float | None = Field(description="mean spend to date (ltv_cny) of the tier's users")
    coupon_cost_cny: float | None = Field(
        default=None, description="coupon cost of the tier's users in the period"
    )
    new_users: int | None = Field(default=None, description="users new to this snapshot")
    lost_users: int | None = Field(
        default=None, description="users of this tier in the previous snapshot who churned since"
    )
    returning_users: int | None = Field(
        default=None, description="churned in the previous snapshot, active again in this one"
    )


class StrategyMetrics(_Doc):
    """One strategy's reach among one tier's users in one snapshot's period."""

    reach: int = Field(description="users exposed to the strategy")
    converted: int = Field(description="exposed users with an order after exposure")
    conversion: float | None = Field(description="converted / reach")


class SnapshotReport(_Doc):
    """Shares and per-tier metrics of one retained snapshot."""

    version: str
    as_of: str = Field(description="as-of instant of the snapshot, ISO 8601")
    users: int
    period_days: int | None = Field(
        default=None, description="length of the period the revenue metrics cover"
    )
    tiers: dict[str, TierMetrics]
    lifecycle: dict[str, int] = Field(default_factory=dict, description="users per stage")
    bands: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="users per RFM base band: {recency_band|frequency_band|spend_level: "
        "{label: users}} (empty for snapshots written before the bands)",
    )
    strategies: dict[str, dict[str, StrategyMetrics]] = Field(
        default_factory=dict, description="{tier: {strategy: metrics}} when exposures exist"
    )


class Transition(_Doc):
    """Tier movement between two consecutive snapshots (users in both)."""

    from_version: str
    to_version: str
    matrix: dict[str, dict[str, int]] = Field(description="{from_tier: {to_tier: users}}")
    rates: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="{from_tier: {to_tier: users / users of from_tier}}"
    )
    by_rule: dict[str, dict[str, dict[str, int]]] = Field(
        default_factory=dict,
        description="{from_tier: {to_tier: {tier_rule: users}}}: the rule (score_band, "
        "hysteresis_hold, churn_warning; unknown when the snapshot has none) that gave the "
        "users their new tier",
    )


class TiersReport(_Doc):
    """The whole report over the retained snapshots, oldest first."""

    report_version: str = Field(default="", description="set when the report is written")
    generated_at: str = Field(default="", description="ISO 8601, set when written")
    tier_order: list[str] = Field(default_factory=list, description="tiers, best first")
    stage_order: list[str] = Field(default_factory=list, description="lifecycle stages")
    snapshots: list[SnapshotReport]
    transitions: list[Transition]
