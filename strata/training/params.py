"""Training configuration (``configs/train.yaml``) and the booster parameters of each model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from strata.config import StrictModel, config_path, load_yaml
from strata.training.targets import Target

__all__ = [
    "MONOTONE_CHURN",
    "SplitFractions",
    "TrainConfig",
    "XgbParams",
    "horizon_problem",
    "load_train_config",
    "monotone_constraints",
    "xgb_params",
]


class SplitFractions(StrictModel):
    """Shares of users in train / validation / test (by user hash); they sum to 1."""

    train: float = Field(default=0.7, gt=0, lt=1)
    validation: float = Field(default=0.15, ge=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"split fractions must sum to 1, got train={self.train:g} + "
                f"validation={self.validation:g} + test={self.test:g} = {total:g}"
            )
        return self


class XgbParams(StrictModel):
    """Booster parameters of the three models (xgboost names)."""

    max_depth: int = Field(default=4, ge=1, le=32)
    eta: float = Field(default=0.05, gt=0, le=1)
    subsample: float = Field(default=0.8, gt=0, le=1)
    colsample_bytree: float = Field(default=0.8, gt=0, le=1)
    min_child_weight: float = Field(default=20.0, ge=0)
    reg_lambda: float = Field(default=5.0, ge=0)
    num_boost_round: int = Field(default=400, ge=1, le=100_000)
    early_stopping_rounds: int = Field(default=30, ge=0, le=100_000)  # 0: no early stopping
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class TrainConfig(StrictModel):
    """configs/train.yaml: label windows, stacked cutoffs, population, split and boosters."""

    horizon_days: int = Field(default=30, ge=1, le=365)
    repurchase_days: int = Field(default=7, ge=1, le=364)
    cutoffs: int = Field(default=4, ge=1, le=12)
    cutoff_step_days: int = Field(default=30, ge=1, le=365)
    min_orders: int = Field(default=1, ge=1, le=10_000)
    split: SplitFractions = Field(default_factory=SplitFractions)
    xgboost: XgbParams = Field(default_factory=XgbParams)
    bgnbd_sample_users: int = Field(default=50_000, ge=100, le=10_000_000)
    #: monotone constraints where the direction is known (:func:`monotone_constraints`)
    monotone: bool = True
    #: also check the model on the newest cutoff held out by time (needs older cutoffs whose
    #: label windows end by it); the model must win there too to be the champion
    time_holdout: bool = True
    #: boost from BG/NBD: its prediction is each model's base margin, the trees learn the
    #: correction (so an early-stopped model starts no worse than BG/NBD)
    boost_from_bgnbd: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.repurchase_days >= self.horizon_days:
            raise ValueError(
                f"repurchase_days ({self.repurchase_days}) must be smaller than horizon_days "
                f"({self.horizon_days}): repurchase looks at the first days of the label window"
            )
        if self.split.validation == 0 and self.xgboost.early_stopping_rounds > 0:
            raise ValueError(
                "split.validation is 0 but xgboost.early_stopping_rounds > 0: early stopping "
                "needs validation users (set early_stopping_rounds: 0 to train without)"
            )
        return self


def load_train_config(config_dir: str | Path | None = None) -> TrainConfig:
    """Load and validate ``train.yaml`` (default: the repository's configs/).

    Raises:
        ConfigError: the file is missing or invalid (the message names the key).
    """
    return load_yaml(config_path("train", config_dir), TrainConfig)


def horizon_problem(cfg: TrainConfig, horizon: int) -> str | None:
    """Why a label window of ``horizon`` days cannot be used with ``cfg`` (None: it can)."""
    if horizon < 1:
        return f"--horizon must be at least 1 day, got {horizon}"
    if cfg.repurchase_days >= horizon:
        return (
            f"repurchase_days ({cfg.repurchase_days}) in train.yaml must be smaller than the "
            f"horizon ({horizon} days)"
        )
    return None


#: Features whose effect has a known direction: +1 = more of it, more churn (and less
#: repurchase). Recency is the classic one (more recent => less churn).
MONOTONE_CHURN: dict[str, int] = {
    "recency_days": 1,
    "overdue_ratio": 1,
    "bgnbd_p_churn": 1,
    "bgnbd_p_alive": -1,
    "bgnbd_expected": -1,
}


def monotone_constraints(features: Sequence[str], task: str) -> str | None:
    """xgboost ``monotone_constraints`` for ``task`` over ``features`` (None: unconstrained).

    Churn follows :data:`MONOTONE_CHURN`, repurchase the opposite signs; spend is left free.
    """
    sign = {"churn": 1, "repurchase": -1}.get(task)
    if sign is None:
        return None
    values = [sign * MONOTONE_CHURN.get(f, 0) for f in features]
    if not any(values):
        return None
    return "(" + ",".join(str(v) for v in values) + ")"


def xgb_params(
    cfg: TrainConfig, target: Target, features: list[str] | None = None
) -> dict[str, Any]:
    """The xgboost parameters of one model (objective and metrics are added by the trainer);
    with ``features``, the monotone constraints where the direction is known
    (``monotone`` in train.yaml, :func:`monotone_constraints`)."""
    x = cfg.xgboost
    out = {
        "max_depth": x.max_depth,
        "eta": x.eta,
        "subsample": x.subsample,
        "colsample_bytree": x.colsample_bytree,
        "min_child_weight": x.min_child_weight,
        "lambda": x.reg_lambda,
        "seed": x.seed,
        "tree_method": "hist",
        **dict(target.extra_params),
    }
    if cfg.monotone and features is not None:
        constraints = monotone_constraints(features, target.label.removeprefix("label_"))
        if constraints is not None:
            out["monotone_constraints"] = constraints
    return out
