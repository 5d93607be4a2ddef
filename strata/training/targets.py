"""The three models, once: their names, label columns, xgboost objectives and output columns.

:data:`TARGETS` is the one model list (its keys are the model names everywhere: registry
files, meta.json blocks, prediction columns), :data:`METHODS` the methods compared per target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strata.schema import MODEL_PREDICTION_COLUMNS

__all__ = [
    "LABEL_COLUMNS",
    "MARGIN_COLUMNS",
    "METHODS",
    "MODEL_NAMES",
    "PREDICTION_COLUMNS",
    "TARGETS",
    "Target",
]


@dataclass(frozen=True)
class Target:
    """One model: its label column and xgboost objective."""

    label: str
    objective: str
    kind: str  # "classification" | "regression"
    extra_params: tuple[tuple[str, Any], ...] = ()


#: The three models. Spend uses Tweedie (log link, variance power 1.5): next-period spend is
#: zero for most users and right-skewed for the rest (a compound Poisson-gamma shape), which
#: squared error fits poorly; Tweedie also never predicts a negative amount.
TARGETS: dict[str, Target] = {
    "churn": Target("label_churn", "binary:logistic", "classification"),
    "repurchase": Target("label_repurchase", "binary:logistic", "classification"),
    "spend": Target("label_spend", "reg:tweedie", "regression", (("tweedie_variance_power", 1.5),)),
}
#: The models of a version, one per target (the keys of :data:`TARGETS`).
MODEL_NAMES: tuple[str, ...] = tuple(TARGETS)
LABEL_COLUMNS: tuple[str, ...] = tuple(t.label for t in TARGETS.values())
#: Output column of each model in scoring (the snapshot's vocabulary, :mod:`strata.schema`).
PREDICTION_COLUMNS: dict[str, str] = MODEL_PREDICTION_COLUMNS
#: Per task, the column of training examples holding BG/NBD's own prediction on the margin
#: scale (log-odds; log spend for the Tweedie model): the model boosts from it.
MARGIN_COLUMNS: dict[str, str] = {
    "churn": "margin_churn",
    "repurchase": "margin_repurchase",
    "spend": "margin_spend",
}
#: Method names, in the order they are shown (ties in the winner go to the earlier one).
METHODS: tuple[str, ...] = ("distributed", "single_node", "recency_rule", "bgnbd")
