"""What applies to one user now, and why: the strategies of their tier, lifecycle stage and
dynamic tags (with eligibility and standing holdout), and the running experiments that target
them (with their arm). Pure: the caller reads the (live-merged) segment record."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from strata.experiments.assignment import HOLDOUT
from strata.experiments.config import ExperimentsConfig
from strata.strategies.config import Eligibility, StrategiesConfig, Strategy

__all__ = [
    "ExperimentMatch",
    "StrategyMatch",
    "rearm",
    "resolve_experiments",
    "resolve_strategies",
]


@dataclass(frozen=True)
class StrategyMatch:
    """One strategy that applies to the user's segment.

    ``applies`` is True when the user is eligible and not in the standing holdout; ``reason``
    says which tier / stage / tag matched, and ``why_not`` what keeps it from the user.
    """

    strategy: Strategy
    reason: str
    eligible: bool
    holdout: bool
    why_not: list[str] = field(default_factory=list)

    @property
    def applies(self) -> bool:
        return self.eligible and not self.holdout


@dataclass(frozen=True)
class ExperimentMatch:
    """A running experiment that targets the user, and the user's arm."""

    experiment: str
    arm: str
    reason: str
    strategies: list[str]
    overrides: dict[str, Any]

    @property
    def in_holdout(self) -> bool:
        return self.arm == HOLDOUT


def _match_reason(strategy: Strategy, tier: Any, stage: Any, tags: Sequence[str]) -> str | None:
    target = strategy.applies_to
    parts = []
    if tier in target.tiers:
        parts.append(f"tier {tier}")
    if stage in target.stages:
        parts.append(f"lifecycle stage {stage}")
    parts.extend(f"dynamic tag {t}" for t in tags if t in target.tags)
    return ", ".join(parts) if parts else None


def _ineligible(rules: Eligibility, record: Mapping[str, Any]) -> list[str]:
    """Why the record fails the eligibility rules (empty: eligible)."""
    out = []

    def num(name: str) -> float | None:
        value = record.get(name)
        return float(value) if isinstance(value, int | float) else None

    spend, freq, recency = num("monetary_90d"), num("frequency_90d"), num("recency_days")
    if rules.min_monetary_90d_cny is not None and (spend or 0.0) < rules.min_monetary_90d_cny:
        out.append(f"spend over 90 days {spend or 0:g} CNY < {rules.min_monetary_90d_cny:g}")
    if rules.min_frequency_90d is not None and (freq or 0.0) < rules.min_frequency_90d:
        out.append(f"orders over 90 days {freq or 0:g} < {rules.min_frequency_90d}")
    if rules.max_recency_days is not None and (recency is None or recency > rules.max_recency_days):
        out.append(f"days since last order {recency} > {rules.max_recency_days}")
    if rules.min_churn_p is not None:
        churn = num("churn_p")
        if churn is None or churn < rules.min_churn_p:
            out.append(f"churn probability {churn} < {rules.min_churn_p:g}")
    if rules.price_sensitivity and record.get("price_sensitivity") not in rules.price_sensitivity:
        out.append(
            f"price sensitivity {record.get('price_sensitivity')} not in "
            f"{', '.join(rules.price_sensitivity)}"
        )
    if rules.has_birthday and "birthday_md" in record and not record["birthday_md"]:
        out.append("no birthday on file")
    return out


def resolve_strategies(
    record: Mapping[str, Any],
    tags: Sequence[str],
    user_id: int,
    config: StrategiesConfig,
) -> list[StrategyMatch]:
    """The strategies whose ``applies_to`` matches the user's tier, stage or dynamic tags, in
    file order, each with its reason, eligibility and standing-holdout status.

    Args:
        record: the user's segment record (live overlay merged in).
        tags: the user's unexpired dynamic tags.
        user_id: the pseudonymised user id (standing holdout hash).
        config: configs/strategies.yaml.
    """
    tier, stage = record.get("tier"), record.get("lifecycle_stage")
    out = []
    for strategy in config.strategies:
        reason = _match_reason(strategy, tier, stage, tags)
        if reason is None:
            continue
        share = config.holdout_of(strategy)
        held = config.in_holdout(strategy, user_id)
        failed = _ineligible(strategy.eligibility, record)
        why_not = list(failed)
        if held:
            why_not.append(f"in the strategy's standing holdout ({share:.0%} of users)")
        out.append(
            StrategyMatch(
                strategy=strategy,
                reason=reason,
                eligible=not failed,
                holdout=held,
                why_not=why_not,
            )
        )
    return out


def resolve_experiments(
    record: Mapping[str, Any],
    user_id: int,
    config: ExperimentsConfig,
    today: dt.date,
) -> list[ExperimentMatch]:
    """The experiments running on local date ``today`` whose target matches the user, with the
    user's arm (``"holdout"`` for the holdout share)."""
    tier, stage = record.get("tier"), record.get("lifecycle_stage")
    out = []
    for e in config.experiments:
        if e.status(today) != "running":
            continue
        if not e.target.matches(tier, stage):
            continue
        if e.target.tiers or e.target.stages:
            hits = [f"tier {tier}"] if tier in e.target.tiers else []
            hits += [f"lifecycle stage {stage}"] if stage in e.target.stages else []
            reason = "targets " + ", ".join(hits)
        else:
            reason = "targets every user"
        arm_name = e.assign(user_id)
        arm = e.arm(arm_name)
        out.append(
            ExperimentMatch(
                experiment=e.name,
                arm=arm_name,
                reason=reason,
                strategies=list(arm.strategies) if arm else [],
                overrides=dict(arm.overrides) if arm else {},
            )
        )
    return out


def rearm(match: ExperimentMatch, config: ExperimentsConfig, arm: str) -> ExperimentMatch:
    """``match`` with the user's arm set to ``arm`` (the arm of their first exposure, when it
    differs from today's hash after a weight change), its strategies and overrides included."""
    if arm == match.arm:
        return match
    experiment = config.get(match.experiment)
    definition = experiment.arm(arm) if experiment is not None else None
    return ExperimentMatch(
        experiment=match.experiment,
        arm=arm,
        reason=match.reason,
        strategies=list(definition.strategies) if definition else [],
        overrides=dict(definition.overrides) if definition else {},
    )
