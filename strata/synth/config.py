"""configs/generator.yaml as validated models: personas and the generator's shared parameters.

:func:`load_generator_config` reads and validates the file; a typo or an out-of-range value is a
:class:`strata.config.ConfigError` naming the file, the key and what is allowed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from strata.config import StrictModel, config_path, load_yaml
from strata.schema import AGE_BANDS, CATEGORIES, CHANNELS, DEVICES, GENDERS

#: Item ids are ``(category index + 1) * ITEM_ID_STRIDE + popularity rank``.
ITEM_ID_STRIDE = 10**6


def _check_weights(v: dict[str, float], allowed: Sequence[str], what: str) -> dict[str, float]:
    unknown = [k for k in v if k not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; allowed: {list(allowed)}")
    if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
        raise ValueError(f"{what} weights must be >= 0 with a positive sum")
    return v


def _check_range(v: tuple[float, float], lo: float, hi: float) -> tuple[float, float]:
    if not lo <= v[0] <= v[1] <= hi:
        raise ValueError(f"needs [low, high] with {lo} <= low <= high <= {hi}, got {list(v)}")
    return v


class PersonaConfig(StrictModel):
    """One latent persona: how its users sign up, visit, buy, use coupons and leave."""

    description: str = ""
    share: float = Field(ge=0, le=1, description="share of users")
    signup: Literal["before_window", "in_window"] = "before_window"
    signup_days_before: tuple[float, float] = Field(
        default=(30.0, 1095.0), description="signup age range at window start (before_window)"
    )
    trend: Literal["flat", "ramp_up", "decline", "churn"] = "flat"
    ramp_days: float = Field(
        default=21.0, gt=0, description="ramp_up: days from signup to full rate"
    )
    ramp_start: float = Field(default=0.3, ge=0, le=1, description="ramp_up: rate share at signup")
    decline_half_life_days: float = Field(default=30.0, gt=0, description="decline: rate half-life")
    churn_at: tuple[float, float] = Field(
        default=(0.2, 0.7), description="churn: stop day range, as fractions of the window"
    )
    churn_next_prob: float = Field(
        ge=0, le=1, description="chance to stop during the horizon after the window"
    )
    sessions_per_day: float = Field(gt=0, le=50)
    activity_shape: float = Field(default=2.0, gt=0, description="gamma shape of per-user activity")
    buy_prob: float = Field(ge=0, le=1, description="chance that a session ends in an order")
    abandon_prob: float = Field(
        default=0.2, ge=0, le=1, description="cart left in a non-buy session"
    )
    item_views_per_session: float = Field(default=1.0, ge=0)
    weekend_multiplier: float = Field(default=1.0, gt=0)
    festival_sensitivity: float = Field(default=1.0, ge=0, le=5)
    hour_profile: str
    aov_cny: float = Field(gt=0, description="median basket value before discount")
    aov_sigma: float = Field(default=0.45, ge=0, le=2)
    coupon_use_prob: float = Field(ge=0, le=1)
    coupon_claims_per_session: float = Field(default=0.05, ge=0, le=10)
    discount_share: float = Field(
        default=0.1, gt=0, le=0.5, description="typical discount / basket"
    )
    bad_experience_prob: float | None = Field(default=None, ge=0, le=1)
    category_mix: dict[str, float]
    channels: dict[str, float]
    age_bands: dict[str, float] | None = None
    favourite_prob: float = Field(default=0.03, ge=0, le=1)
    share_prob: float = Field(default=0.01, ge=0, le=1)
    community_post_prob: float = Field(default=0.005, ge=0, le=1)

    @field_validator("category_mix")
    @classmethod
    def _categories(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_weights(v, CATEGORIES, "categories")

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_weights(v, CHANNELS, "channels")

    @field_validator("age_bands")
    @classmethod
    def _age_bands(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        return None if v is None else _check_weights(v, AGE_BANDS, "age bands")

    @field_validator("signup_days_before")
    @classmethod
    def _signup_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_range(v, 0.0, 36500.0)

    @field_validator("churn_at")
    @classmethod
    def _churn_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_range(v, 0.0, 1.0)


class City(StrictModel):
    name: str = Field(min_length=1)
    region: str = Field(min_length=1)
    weight: float = Field(gt=0)


class FunnelConfig(StrictModel):
    """Session funnel rates shared by every persona."""

    category_views_per_session: float = Field(default=0.15, ge=0)
    searches_per_session: float = Field(default=0.15, ge=0)
    extra_cart_adds: float = Field(default=0.15, ge=0)
    remove_from_cart_prob: float = Field(default=0.06, ge=0, le=1)
    seconds_per_step: float = Field(default=35.0, gt=0, le=3600)


class OrderConfig(StrictModel):
    avg_item_price_cny: float = Field(default=24.0, gt=0)
    extra_category_prob: float = Field(default=0.35, ge=0, le=1)
    user_spend_sigma: float = Field(default=0.3, ge=0, le=2)
    category_concentration: float = Field(default=25.0, gt=0)


class CatalogueConfig(StrictModel):
    items_per_category: int = Field(default=2000, ge=1, lt=ITEM_ID_STRIDE)
    popularity_zipf: float = Field(default=1.3, gt=1)


class CouponConfig(StrictModel):
    tiers_cny: list[float] = Field(min_length=1)

    @field_validator("tiers_cny")
    @classmethod
    def _ascending(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v) or any(a >= b for a, b in itertools.pairwise(v)):
            raise ValueError("coupon tiers must be positive and strictly ascending")
        return v


def _check_ratings(v: dict[int, float]) -> dict[int, float]:
    if any(k not in range(1, 6) for k in v):
        raise ValueError(f"ratings must be 1..5, got {sorted(v)}")
    if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
        raise ValueError("rating weights must be >= 0 with a positive sum")
    return v


class ExperienceConfig(StrictModel):
    """Bad experiences: how they show in reviews, service contacts and churn."""

    bad_experience_prob: float = Field(default=0.05, ge=0, le=1)
    review_prob_good: float = Field(default=0.1, ge=0, le=1)
    review_prob_bad: float = Field(default=0.55, ge=0, le=1)
    ratings_good: dict[int, float]
    ratings_bad: dict[int, float]
    contact_prob_bad: float = Field(default=0.6, ge=0, le=1)
    contact_prob_good: float = Field(default=0.01, ge=0, le=1)
    churn_boost_after_bad: float = Field(default=0.15, ge=0, le=1)
    recent_bad_days: int = Field(default=30, ge=0)

    @field_validator("ratings_good", "ratings_bad")
    @classmethod
    def _ratings(cls, v: dict[int, float]) -> dict[int, float]:
        return _check_ratings(v)


class SimulatedExperimentConfig(StrictModel):
    """The true effect ``strata generate --experiment NAME`` plants (generator.yaml
    ``experiments.NAME``; the arms, weights, holdout and salt come from experiments.yaml).

    Treated users (``arm``) get their buy probability per session multiplied by a factor
    solved so that the expected conversion (>= 1 order in ``window_days`` after the first
    exposure) is ``1 + relative_effect`` times the untreated one (:mod:`strata.synth.experiment`).
    """

    arm: str = Field(min_length=1, description="the treated arm")
    baseline: str = Field(min_length=1, description="the arm it is compared with")
    metric: Literal["conversion"] = "conversion"
    relative_effect: float = Field(gt=-1.0, le=5.0)
    window_days: int | None = Field(
        default=None,
        ge=1,
        le=365,
        description="the analysis window (default and must-equal: experiments.yaml's "
        "analysis_window_days, which the report measures)",
    )
    start_fraction: float = Field(
        default=0.5, ge=0, lt=1, description="experiment start, as a fraction of the window"
    )
    target_personas: list[str] = Field(
        default_factory=list, description="personas exposed (empty: every user)"
    )


class GeneratorConfig(StrictModel):
    """configs/generator.yaml: personas and the shared parameters of the generator."""

    personas: dict[str, PersonaConfig] = Field(min_length=1)
    hour_profiles: dict[str, list[float]] = Field(min_length=1)
    age_bands: dict[str, float]
    genders: dict[str, float]
    devices: dict[str, float]
    birthday_known_share: float = Field(default=0.85, ge=0, le=1)
    cities: list[City] = Field(min_length=1)
    funnel: FunnelConfig = Field(default_factory=FunnelConfig)
    orders: OrderConfig = Field(default_factory=OrderConfig)
    catalogue: CatalogueConfig = Field(default_factory=CatalogueConfig)
    coupons: CouponConfig
    experience: ExperienceConfig
    experiments: dict[str, SimulatedExperimentConfig] = Field(default_factory=dict)

    @field_validator("age_bands")
    @classmethod
    def _age_bands(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_weights(v, AGE_BANDS, "age bands")

    @field_validator("genders")
    @classmethod
    def _genders(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_weights(v, GENDERS, "genders")

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_weights(v, DEVICES, "devices")

    @field_validator("hour_profiles")
    @classmethod
    def _hours(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, weights in v.items():
            if len(weights) != 24 or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(
                    f"hour profile {name!r} needs 24 weights >= 0 (local hours 0..23) "
                    "with a positive sum"
                )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> GeneratorConfig:
        total = sum(p.share for p in self.personas.values())
        if abs(total - 1.0) > 1e-6:
            shares = ", ".join(f"{k}={p.share:g}" for k, p in self.personas.items())
            raise ValueError(f"persona shares must sum to 1, got {total:g} ({shares})")
        for name, p in self.personas.items():
            if p.hour_profile not in self.hour_profiles:
                raise ValueError(
                    f"persona {name!r}: unknown hour_profile {p.hour_profile!r}; "
                    f"allowed: {sorted(self.hour_profiles)}"
                )
        for name, e in self.experiments.items():
            unknown = [p for p in e.target_personas if p not in self.personas]
            if unknown:
                raise ValueError(
                    f"experiments.{name}.target_personas: unknown persona {unknown[0]!r}; "
                    f"allowed: {sorted(self.personas)}"
                )
        return self


def load_generator_config(config_dir: str | Path | None = None) -> GeneratorConfig:
    """Load and validate ``generator.yaml`` (default: the repository's configs/).

    Raises:
        strata.config.ConfigError: missing file, bad YAML, or invalid content.
    """
    return load_yaml(config_path("generator", config_dir), GeneratorConfig)
