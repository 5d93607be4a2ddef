"""Training data and evaluation of the predictive models: churn, repurchase, next-period spend.

Leakage rule: the features of a training example are computed as of a past **cutoff** with the
very function the recompute job uses (:func:`strata.features.compute_features`, which ignores
every event with ``ts >= cutoff``), and its labels come only from the window after it:
``cutoff_ms <= ts < end_ms`` (``end_ms = cutoff + horizon``). Every event lies on exactly one
side. Several past cutoffs can be stacked (:func:`cutoffs_for`), each obeying the same rule.

Split: users go to train / validation / test by a stable hash of their (pseudonymous) id
(:func:`split_of`), so one user never sits on two sides, at any cutoff.

Model inputs: :func:`model_features` turns a features table into numeric float32 columns
(:data:`MODEL_FEATURES`; null stays null, NaN for xgboost via :func:`feature_matrix`), the
same function at training and at scoring time. Evaluation: rank/probability metrics
(:func:`classification_metrics`, :func:`regression_metrics`) and two baselines on the same
users, a recency rule (:func:`recency_rule`) and BG/NBD (:func:`bgnbd_baseline`).
``docs/models.md`` explains every choice.

BG/NBD enters three ways (:mod:`strata.training.bgnbd`, fitted per cutoff on the train users by the
train job): as model features (:func:`add_bgnbd_features`), as the base margin the models boost
from (:func:`bgnbd_margins`), and as the baseline the champion rule compares with
(:func:`bgnbd_predictions_by_cutoff`, :func:`choose_champion`).

Pure: numpy, pyarrow and pydantic (scipy and ``lifetimes``/pandas are imported lazily by
:mod:`strata.training.bgnbd` and :func:`bgnbd_baseline`).

What it offers (every name below is importable from ``strata.training`` itself):

* :mod:`strata.training.targets` — the one model list :data:`TARGETS` (:class:`Target`: label,
  objective, kind), :data:`MODEL_NAMES`, :data:`LABEL_COLUMNS`, :data:`PREDICTION_COLUMNS`,
  :data:`MARGIN_COLUMNS` and the compared :data:`METHODS`;
* :mod:`strata.training.params` — :class:`TrainConfig` (``configs/train.yaml``,
  :func:`load_train_config`, :func:`horizon_problem`), :func:`xgb_params` and
  :func:`monotone_constraints`;
* :mod:`strata.training.labels` — :func:`labels`;
* :mod:`strata.training.examples` — model features, cutoffs, split, training examples,
  :func:`data_hash` and the mergeable :class:`ExamplePartials`;
* :mod:`strata.training.metrics` — metrics, :func:`evaluate`, winner, parity and champion rules,
  :func:`importance`;
* :mod:`strata.training.baselines` — the recency rule, BG/NBD baselines, features and margins;
* :mod:`strata.training.bgnbd` — BG/NBD closed forms and the fit (:class:`BgnbdParams`).

:mod:`strata.training.evaluation` (imported from itself) assembles the train job's evaluation
and ``meta.json`` blocks from these, given the models' predictions.
"""

from strata.training.baselines import (
    add_bgnbd_features,
    apply_bgnbd_by_cutoff,
    bgnbd_baseline,
    bgnbd_margins,
    bgnbd_meta,
    bgnbd_predictions,
    bgnbd_predictions_by_cutoff,
    fit_bgnbd_by_cutoff,
    params_by_cutoff,
    recency_rule,
)
from strata.training.bgnbd import (
    BgnbdParams,
    bgnbd_patterns,
    bgnbd_scores,
    expected_purchases,
    fit_bgnbd,
    merge_patterns,
    p_alive,
    p_no_purchase,
)
from strata.training.examples import (
    BASELINE_COLUMNS,
    BEHAVIOUR_COLUMNS,
    BGNBD_FEATURES,
    CATEGORICAL_FEATURES,
    DERIVED_FEATURES,
    EXAMPLES_SCHEMA,
    KEY_COLUMNS,
    MODEL_FEATURES,
    MODEL_FEATURES_SCHEMA,
    SPLITS,
    ExamplePartials,
    cutoff_iso,
    cutoffs_for,
    data_hash,
    feature_matrix,
    holdout_by_time,
    model_features,
    select_features,
    split_of,
    stacked_examples,
    train_patterns,
    training_examples,
    valid_counts,
)
from strata.training.history import (
    MIN_HISTORY_DAYS,
    CutoffPlan,
    history_start_ms,
    plan_cutoffs,
)
from strata.training.labels import (
    labels,
)
from strata.training.metrics import (
    IMPORTANCE_TOP,
    PARITY_MAX_AUC_GAP,
    PUBLISHABLE_BASELINES,
    best_method,
    choose_champion,
    classification_metrics,
    evaluate,
    fill_missing_scores,
    importance,
    parity,
    regression_metrics,
    winner,
    without_calibration,
)
from strata.training.params import (
    MONOTONE_CHURN,
    SplitFractions,
    TrainConfig,
    XgbParams,
    horizon_problem,
    load_train_config,
    monotone_constraints,
    xgb_params,
)
from strata.training.targets import (
    LABEL_COLUMNS,
    MARGIN_COLUMNS,
    METHODS,
    MODEL_NAMES,
    PREDICTION_COLUMNS,
    TARGETS,
    Target,
)

__all__ = [
    "BASELINE_COLUMNS",
    "BEHAVIOUR_COLUMNS",
    "BGNBD_FEATURES",
    "CATEGORICAL_FEATURES",
    "DERIVED_FEATURES",
    "EXAMPLES_SCHEMA",
    "IMPORTANCE_TOP",
    "KEY_COLUMNS",
    "LABEL_COLUMNS",
    "MARGIN_COLUMNS",
    "METHODS",
    "MIN_HISTORY_DAYS",
    "MODEL_FEATURES",
    "MODEL_FEATURES_SCHEMA",
    "MODEL_NAMES",
    "MONOTONE_CHURN",
    "PARITY_MAX_AUC_GAP",
    "PREDICTION_COLUMNS",
    "PUBLISHABLE_BASELINES",
    "SPLITS",
    "TARGETS",
    "BgnbdParams",
    "CutoffPlan",
    "ExamplePartials",
    "SplitFractions",
    "Target",
    "TrainConfig",
    "XgbParams",
    "add_bgnbd_features",
    "apply_bgnbd_by_cutoff",
    "best_method",
    "bgnbd_baseline",
    "bgnbd_margins",
    "bgnbd_meta",
    "bgnbd_patterns",
    "bgnbd_predictions",
    "bgnbd_predictions_by_cutoff",
    "bgnbd_scores",
    "choose_champion",
    "classification_metrics",
    "cutoff_iso",
    "cutoffs_for",
    "data_hash",
    "evaluate",
    "expected_purchases",
    "feature_matrix",
    "fill_missing_scores",
    "fit_bgnbd",
    "fit_bgnbd_by_cutoff",
    "history_start_ms",
    "holdout_by_time",
    "horizon_problem",
    "importance",
    "labels",
    "load_train_config",
    "merge_patterns",
    "model_features",
    "monotone_constraints",
    "p_alive",
    "p_no_purchase",
    "params_by_cutoff",
    "parity",
    "plan_cutoffs",
    "recency_rule",
    "regression_metrics",
    "select_features",
    "split_of",
    "stacked_examples",
    "train_patterns",
    "training_examples",
    "valid_counts",
    "winner",
    "without_calibration",
    "xgb_params",
]
