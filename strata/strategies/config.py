"""configs/strategies.yaml: the source design's per-tier playbook as data.

Each strategy names what it applies to (tiers, lifecycle stages, dynamic tags: a user matches
when any listed value matches), its actions (kind + parameters), the trigger rules of
configs/triggers.yaml it enables, a channel, the cost of one action in CNY, eligibility on the
segment record, and a standing holdout share that never gets it (assignment hash with the
strategy's name as experiment name and the file's ``holdout_salt``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from strata.config import ConfigError, StrictModel, config_path, parse_yaml
from strata.experiments.assignment import HOLDOUT, assign
from strata.online.codec import LIFECYCLE_STAGES, PRICE_SENSITIVITIES

__all__ = [
    "ACTION_KINDS",
    "DEFAULT_HOLDOUT",
    "AppliesTo",
    "Eligibility",
    "StrategiesConfig",
    "Strategy",
    "StrategyAction",
    "load_strategies",
    "load_strategies_text",
]

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
DEFAULT_HOLDOUT = 0.05
ACTION_KINDS = (
    "coupon",
    "category_discount",
    "service_channel",
    "early_access",
    "priority_purchase",
    "gift_pack",
    "trial_invitation",
    "checkin_multiplier",
    "survey",
    "service_callback",
    "push",
)
_NAME = re.compile(NAME_PATTERN)


class AppliesTo(StrictModel):
    """Whom a strategy is for: any listed tier, lifecycle stage or dynamic tag."""

    tiers: list[str] = Field(default_factory=list)
    stages: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some(self) -> AppliesTo:
        if not (self.tiers or self.stages or self.tags):
            raise ValueError("needs at least one of tiers, stages, tags")
        unknown = [s for s in self.stages if s not in LIFECYCLE_STAGES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; stages: {', '.join(LIFECYCLE_STAGES)}")
        return self


class StrategyAction(StrictModel):
    """One action of a strategy: its kind and free-form parameters (e.g. a coupon's value)."""

    kind: Literal[ACTION_KINDS]  # type: ignore[valid-type]
    params: dict[str, Any] = Field(default_factory=dict)


class Eligibility(StrictModel):
    """Conditions on the user's segment record (all must hold; unset ones are not checked)."""

    min_monetary_90d_cny: float | None = Field(default=None, ge=0)
    min_frequency_90d: int | None = Field(default=None, ge=0)
    max_recency_days: int | None = Field(default=None, ge=0)
    min_churn_p: float | None = Field(default=None, ge=0, le=1)
    price_sensitivity: list[str] = Field(default_factory=list)
    has_birthday: bool = Field(
        default=False,
        description="needs the users table's birthday; checked at delivery when the segment "
        "record does not carry it",
    )

    @model_validator(mode="after")
    def _known(self) -> Eligibility:
        unknown = [p for p in self.price_sensitivity if p not in PRICE_SENSITIVITIES]
        if unknown:
            raise ValueError(
                f"unknown price sensitivity {unknown[0]!r}; "
                f"values: {', '.join(PRICE_SENSITIVITIES)}"
            )
        return self


class Strategy(StrictModel):
    """One playbook entry."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    applies_to: AppliesTo
    actions: list[StrategyAction] = Field(min_length=1)
    trigger_rules: list[str] = Field(default_factory=list)
    channel: Literal["app_push", "sms", "service_agent", "in_app", "phone", "wechat"]
    cost_per_action_cny: float = Field(ge=0)
    eligibility: Eligibility = Field(default_factory=Eligibility)
    holdout: float | None = Field(
        default=None, ge=0, lt=1, description="standing holdout share; default: the file's"
    )


class StrategiesConfig(StrictModel):
    """configs/strategies.yaml."""

    default_holdout: float = Field(default=DEFAULT_HOLDOUT, ge=0, lt=1)
    holdout_salt: str = Field(default="strata-strategies", min_length=1)
    strategies: list[Strategy] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> StrategiesConfig:
        seen: set[str] = set()
        for s in self.strategies:
            if s.name in seen:
                raise ValueError(f"strategy {s.name!r} is listed twice")
            seen.add(s.name)
        return self

    def holdout_of(self, strategy: Strategy) -> float:
        """The strategy's standing holdout share."""
        return self.default_holdout if strategy.holdout is None else strategy.holdout

    def in_holdout(self, strategy: Strategy, user_id: int) -> bool:
        """Whether the user is in the strategy's standing holdout (the assignment hash with
        the strategy's name as experiment name and :attr:`holdout_salt`)."""
        share = self.holdout_of(strategy)
        arm = assign(self.holdout_salt, strategy.name, user_id, [("in", 1.0)], holdout=share)
        return share > 0 and arm == HOLDOUT

    def get(self, name: str) -> Strategy | None:
        """The strategy called ``name``, else None."""
        return next((s for s in self.strategies if s.name == name), None)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.strategies]


def load_strategies_text(
    text: str,
    path: str | Path,
    *,
    tier_names: Sequence[str],
    rule_names: Sequence[str],
) -> StrategiesConfig:
    """Strategies from YAML text read from ``path`` (named in errors).

    Args:
        tier_names: the tiers of configs/tiers.yaml.
        rule_names: the trigger rules of configs/triggers.yaml.

    Raises:
        ConfigError: bad YAML, an invalid key, or an unknown tier or trigger rule.
    """
    config = parse_yaml(text, path, StrategiesConfig)
    for i, s in enumerate(config.strategies):
        for tier in s.applies_to.tiers:
            if tier not in tier_names:
                raise ConfigError(
                    f"invalid config {path}: strategies.{i}.applies_to.tiers: unknown tier "
                    f"{tier!r}; tiers of tiers.yaml: {', '.join(tier_names)}"
                )
        for rule in s.trigger_rules:
            if rule not in rule_names:
                raise ConfigError(
                    f"invalid config {path}: strategies.{i}.trigger_rules: unknown rule "
                    f"{rule!r}; rules of triggers.yaml: {', '.join(rule_names)}"
                )
    return config


def load_strategies(config_dir: str | Path | None = None) -> StrategiesConfig:
    """configs/strategies.yaml, checked against tiers.yaml and triggers.yaml.

    Raises:
        ConfigError: missing file, bad YAML or an invalid strategy (names the file and key).
    """
    from strata.realtime.triggers import load_triggers
    from strata.tiering.tiers import load_tier_rules

    path = config_path("strategies", config_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    tiers = load_tier_rules(config_dir).tier_names
    rules = [r.name for r in load_triggers(config_dir, tier_names=tiers).rules]
    return load_strategies_text(text, path, tier_names=tiers, rule_names=rules)


def valid_name(name: str) -> bool:
    """Whether ``name`` is a valid strategy / experiment name."""
    return bool(_NAME.match(name))
