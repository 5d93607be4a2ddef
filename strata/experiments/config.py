"""configs/experiments.yaml: experiment definitions.

An experiment targets users by tier and/or lifecycle stage (a user is targeted when any listed
tier or stage matches; none listed: everyone), splits them into arms by weight after taking a
holdout share (:func:`strata.experiments.assignment.assign` with the experiment's salt), runs
from ``start`` to ``end`` (local dates, both included), and names its primary, secondary and
guardrail metrics. An arm is a set of strategies of configs/strategies.yaml and/or parameter
overrides (e.g. ``coupon_value_cny: 20``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from strata.config import ConfigError, StrictModel, config_path, parse_yaml
from strata.experiments.assignment import HOLDOUT, assign
from strata.online.codec import LIFECYCLE_STAGES

__all__ = [
    "METRICS",
    "Arm",
    "Experiment",
    "ExperimentsConfig",
    "Guardrail",
    "Target",
    "load_experiments",
    "load_experiments_text",
]

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
#: the per-user metrics the analysis computes (issue 13, section 3)
METRICS = (
    "conversion",
    "orders_per_user",
    "revenue_per_user",
    "coupon_cost_per_user",
    "margin_per_user",
)
Metric = Literal[METRICS]  # type: ignore[valid-type]
Status = Literal["scheduled", "running", "ended"]


class Target(StrictModel):
    """Whom an experiment is for: any listed tier or stage (both empty: every user)."""

    tiers: list[str] = Field(default_factory=list)
    stages: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _stages(self) -> Target:
        unknown = [s for s in self.stages if s not in LIFECYCLE_STAGES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; stages: {', '.join(LIFECYCLE_STAGES)}")
        return self

    def matches(self, tier: str | None, stage: str | None) -> bool:
        """Whether a user of ``tier`` / ``stage`` is targeted."""
        if not self.tiers and not self.stages:
            return True
        return tier in self.tiers or stage in self.stages


class Arm(StrictModel):
    """One arm: its share (relative weight), strategies and parameter overrides."""

    name: str = Field(pattern=NAME_PATTERN)
    weight: float = Field(gt=0)
    strategies: list[str] = Field(default_factory=list)
    overrides: dict[str, float | int | str | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_holdout(self) -> Arm:
        if self.name == HOLDOUT:
            raise ValueError(f"{HOLDOUT!r} is reserved for the holdout share")
        return self


class Guardrail(StrictModel):
    """A metric that must stay within a bound (e.g. coupon cost per user <= 8 CNY)."""

    metric: Metric
    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _bound(self) -> Guardrail:
        if self.max is None and self.min is None:
            raise ValueError("a guardrail needs max or min")
        return self


class Experiment(StrictModel):
    """One experiment definition."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    target: Target = Field(default_factory=Target)
    arms: list[Arm] = Field(min_length=2)
    control: str
    holdout: float = Field(default=0.0, ge=0, lt=1)
    start: dt.date
    end: dt.date
    salt: str = Field(min_length=1)
    primary_metric: Metric
    secondary_metrics: list[Metric] = Field(default_factory=list)
    guardrails: list[Guardrail] = Field(default_factory=list)
    #: outcomes count in this many days after a user's first exposure
    analysis_window_days: int = Field(default=14, ge=1, le=365)
    #: the CUPED covariate: spend in this many days before the first exposure
    pre_window_days: int = Field(default=28, ge=1, le=730)
    #: gross margin on revenue (margin per user = revenue x rate - coupon cost)
    margin_rate: float = Field(default=0.25, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        if self.control not in names:
            raise ValueError(f"control {self.control!r} is not an arm; arms: {', '.join(names)}")
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self

    @property
    def weights(self) -> list[tuple[str, float]]:
        """``(arm, weight)`` in listed order."""
        return [(a.name, a.weight) for a in self.arms]

    def arm(self, name: str) -> Arm | None:
        """The arm called ``name`` (None for the holdout or an unknown name)."""
        return next((a for a in self.arms if a.name == name), None)

    def status(self, today: dt.date) -> Status:
        """``scheduled`` before ``start``, ``running`` until ``end`` (included), then
        ``ended``."""
        if today < self.start:
            return "scheduled"
        return "running" if today <= self.end else "ended"

    def assign(self, user_id: int) -> str:
        """The user's arm (or ``"holdout"``), per the shared assignment contract."""
        return assign(self.salt, self.name, user_id, self.weights, holdout=self.holdout)


class ExperimentsConfig(StrictModel):
    """configs/experiments.yaml."""

    experiments: list[Experiment] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ExperimentsConfig:
        seen: set[str] = set()
        for e in self.experiments:
            if e.name in seen:
                raise ValueError(f"experiment {e.name!r} is listed twice")
            seen.add(e.name)
        return self

    def get(self, name: str) -> Experiment | None:
        """The experiment called ``name``, else None."""
        return next((e for e in self.experiments if e.name == name), None)


def load_experiments_text(
    text: str,
    path: str | Path,
    *,
    tier_names: Sequence[str],
    strategy_names: Sequence[str],
) -> ExperimentsConfig:
    """Experiments from YAML text read from ``path`` (named in errors).

    Raises:
        ConfigError: bad YAML, an invalid key, an unknown tier or strategy.
    """
    config = parse_yaml(text, path, ExperimentsConfig)
    for i, e in enumerate(config.experiments):
        for tier in e.target.tiers:
            if tier not in tier_names:
                raise ConfigError(
                    f"invalid config {path}: experiments.{i}.target.tiers: unknown tier "
                    f"{tier!r}; tiers of tiers.yaml: {', '.join(tier_names)}"
                )
        for j, arm in enumerate(e.arms):
            for s in arm.strategies:
                if s not in strategy_names:
                    raise ConfigError(
                        f"invalid config {path}: experiments.{i}.arms.{j}.strategies: unknown "
                        f"strategy {s!r}; strategies of strategies.yaml: "
                        f"{', '.join(strategy_names) or '(none)'}"
                    )
    return config


def load_experiments(config_dir: str | Path | None = None) -> ExperimentsConfig:
    """configs/experiments.yaml, checked against tiers.yaml and strategies.yaml.

    Raises:
        ConfigError: missing file, bad YAML or an invalid experiment (names file and key).
    """
    from strata.strategies.config import load_strategies
    from strata.tiering.tiers import load_tier_rules

    path = config_path("experiments", config_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    tiers = load_tier_rules(config_dir).tier_names
    strategies = load_strategies(config_dir).names
    return load_experiments_text(text, path, tier_names=tiers, strategy_names=strategies)
