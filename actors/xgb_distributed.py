"""Distributed XGBoost on Ray: the one module that imports ``xgboost_ray``.

xgboost-ray is in maintenance mode upstream (and works only with xgboost 2.0.x, see
DESIGN.md), so everything that touches it lives here: a move to ``ray.train.xgboost`` changes
this module and nothing else. :func:`train_distributed` trains over sharded Parquet files (each
training actor reads its own share of the files, no central load); :func:`train_single` trains
the same model with plain xgboost in this process, the accuracy and time baseline.
:func:`train_target_distributed`, :func:`train_single_targets`, :func:`single_node_fit_predict`
and :func:`predict` apply them to the train job's targets (:data:`strata.training.TARGETS`).

Both return a booster cut to its best iteration (early stopping on the validation set), so a
saved model predicts exactly what was evaluated, with no ``iteration_range`` to remember.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import xgboost as xgb

from strata.training import TARGETS, TrainConfig, xgb_params
from strata.training.evaluation import FitPredict, Split, margin_column

__all__ = [
    "eval_metrics_for",
    "predict",
    "released_on_failure",
    "single_node_fit_predict",
    "train_distributed",
    "train_single",
    "train_single_targets",
    "train_target_distributed",
]

#: Evaluation metrics per objective; xgboost early-stops on the LAST one.
_EVAL_METRICS: dict[str, list[str]] = {
    "binary:logistic": ["auc", "logloss"],
    "reg:squarederror": ["mae", "rmse"],
    "reg:tweedie": ["rmse", "tweedie-nloglik@{power}"],
}


def eval_metrics_for(objective: str, params: dict[str, Any]) -> list[str]:
    """Validation metrics of an objective; early stopping watches the last one.

    Classifiers stop on log loss (a proper score: it also keeps probabilities calibrated),
    regressions on the objective's own loss.
    """
    if objective not in _EVAL_METRICS:
        raise ValueError(f"unsupported objective {objective!r}; known: {sorted(_EVAL_METRICS)}")
    power = params.get("tweedie_variance_power", 1.5)
    return [m.format(power=power) for m in _EVAL_METRICS[objective]]


def _params(objective: str, params: dict[str, Any]) -> dict[str, Any]:
    out = {"tree_method": "hist", **params, "objective": objective}
    out["eval_metric"] = eval_metrics_for(objective, out)
    return out


def _best(booster: xgb.Booster, early_stopping_rounds: int) -> xgb.Booster:
    """The booster cut to its best iteration (all rounds when early stopping never ran)."""
    if early_stopping_rounds <= 0:
        return booster
    try:
        best = int(booster.best_iteration)
    except AttributeError:
        return booster
    if best + 1 >= booster.num_boosted_rounds():
        return booster
    return booster[: best + 1]


def _last_scores(evals_result: dict[str, Any], booster_rounds: int) -> dict[str, float]:
    """Validation metric values at the kept (last) iteration of the booster."""
    scores: dict[str, float] = {}
    for metrics in evals_result.values():
        for name, values in metrics.items():
            if values:
                scores[name] = float(values[min(booster_rounds, len(values)) - 1])
    return scores


@contextlib.contextmanager
def released_on_failure() -> Iterator[None]:
    """Kill what xgboost-ray created when its ``train`` raises inside this block.

    xgboost-ray (0.1.x, maintenance mode) shuts its training actors, its queue and stop-event
    actors and its placement group down only after a successful run: when an actor fails
    (an ``XGBoostError`` such as "Input data contains inf", a crash) and the restarts are
    spent, it raises with all of them alive, the actors and the placement group holding one
    CPU each, and the next job in the same Ray waits for CPUs forever. Here its three
    creators are wrapped for the duration of the block to record what they create; on any
    exception every recorded actor is killed and every placement group removed, then the
    exception goes on. A successful run is left to xgboost-ray's own shutdown.
    """
    import ray
    from ray.util.placement_group import remove_placement_group
    from xgboost_ray import main as xgbr

    actors: list[Any] = []
    groups: list[Any] = []
    create_actor = xgbr._create_actor
    create_group = xgbr._create_placement_group
    create_comms = xgbr._create_communication_processes

    def actor(*args: Any, **kwargs: Any) -> Any:
        handle = create_actor(*args, **kwargs)
        actors.append(handle)
        return handle

    def group(*args: Any, **kwargs: Any) -> Any:
        pg = create_group(*args, **kwargs)
        groups.append(pg)
        return pg

    def comms(*args: Any, **kwargs: Any) -> Any:
        queue, event = create_comms(*args, **kwargs)
        actors.extend(x.actor for x in (queue, event) if getattr(x, "actor", None) is not None)
        return queue, event

    xgbr._create_actor, xgbr._create_placement_group = actor, group
    xgbr._create_communication_processes = comms
    try:
        yield
    except BaseException:
        for handle in actors:
            with contextlib.suppress(Exception):  # already dead is fine
                ray.kill(handle, no_restart=True)
        for pg in groups:
            with contextlib.suppress(Exception):
                remove_placement_group(pg)
        raise
    finally:
        xgbr._create_actor, xgbr._create_placement_group = create_actor, create_group
        xgbr._create_communication_processes = create_comms


def train_distributed(
    train_files: list[str],
    valid_files: list[str],
    features: list[str],
    label: str,
    objective: str,
    params: dict[str, Any],
    num_actors: int,
    num_boost_round: int,
    early_stopping_rounds: int,
    filesystem: pafs.FileSystem | None = None,
    base_margin: str | None = None,
) -> tuple[xgb.Booster, dict[str, Any]]:
    """Train one model with xgboost-ray over sharded Parquet files.

    Each training actor loads its share of the files itself (files are dealt to actors
    round robin, so pass them in a stable order for reproducible shards), reading only
    ``features`` and ``label``. Nulls are read as NaN, which xgboost treats as missing.

    Args:
        train_files: Parquet files of the training split (paths on ``filesystem``).
        valid_files: Parquet files of the validation split (early stopping).
        features: feature columns, in model order.
        label: label column.
        objective: xgboost objective (``binary:logistic``, ``reg:squarederror``,
            ``reg:tweedie``).
        params: xgboost parameters (depth, eta, seed, ...); objective and metrics are set here.
        num_actors: training actors (1 CPU each); capped at the number of files per split.
        num_boost_round: maximum boosting rounds.
        early_stopping_rounds: stop after this many rounds without validation improvement
            (0: never).
        filesystem: pyarrow filesystem of the files (None: local paths).
        base_margin: column holding each row's starting margin (None: xgboost's base score).

    Returns:
        The booster (cut to the best iteration) and a dict with ``best_iteration``,
        ``rounds``, ``validation`` (metric values), ``train_seconds`` (pure boosting time),
        ``total_seconds`` (with actor start and data loading), ``n_train`` and ``num_actors``.
    """
    from xgboost_ray import RayDMatrix, RayFileType, RayParams
    from xgboost_ray import train as ray_train

    if not train_files or not valid_files:
        raise ValueError("distributed training needs at least one train and one validation file")
    # distributed loading shards by file: every actor needs at least one file of each split
    n_actors = max(1, min(num_actors, len(train_files), len(valid_files)))
    columns = [*features, label] + ([base_margin] if base_margin else [])
    read_kwargs: dict[str, Any] = {"columns": columns}
    if filesystem is not None:
        read_kwargs["filesystem"] = filesystem
    if base_margin:
        read_kwargs["base_margin"] = base_margin
    dtrain = RayDMatrix(list(train_files), label=label, filetype=RayFileType.PARQUET, **read_kwargs)
    dvalid = RayDMatrix(list(valid_files), label=label, filetype=RayFileType.PARQUET, **read_kwargs)
    evals_result: dict[str, Any] = {}
    additional: dict[str, Any] = {}
    t0 = time.perf_counter()
    with released_on_failure():
        booster = ray_train(
            _params(objective, params),
            dtrain,
            num_boost_round=num_boost_round,
            evals=[(dvalid, "validation")],
            evals_result=evals_result,
            additional_results=additional,
            early_stopping_rounds=early_stopping_rounds or None,
            verbose_eval=False,
            ray_params=RayParams(num_actors=n_actors, cpus_per_actor=1, verbose=False),
        )
    total = time.perf_counter() - t0
    if booster.feature_names is not None and list(booster.feature_names) != list(features):
        raise RuntimeError(
            f"distributed booster features {booster.feature_names} != requested {features}"
        )
    booster.feature_names = list(features)
    best = _best(booster, early_stopping_rounds)
    rounds = best.num_boosted_rounds()
    return best, {
        "best_iteration": rounds - 1,
        "rounds": rounds,
        "validation": _last_scores(evals_result, rounds),
        "train_seconds": float(additional.get("training_time_s", total)),
        "total_seconds": total,
        "n_train": int(additional.get("total_n", 0)),
        "num_actors": n_actors,
    }


def train_single(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    objective: str,
    params: dict[str, Any],
    nthread: int,
    num_boost_round: int,
    early_stopping_rounds: int,
    feature_names: list[str] | None = None,
    margin_train: np.ndarray | None = None,
    margin_valid: np.ndarray | None = None,
) -> tuple[xgb.Booster, dict[str, Any]]:
    """Train one model with plain xgboost in this process (the single-node baseline).

    Same parameters, rounds and early stopping as :func:`train_distributed`.

    Args:
        X_train: float32 feature matrix (NaN = missing).
        y_train: labels.
        X_valid: validation features (early stopping).
        y_valid: validation labels.
        objective: xgboost objective.
        params: xgboost parameters.
        nthread: threads for training.
        num_boost_round: maximum boosting rounds.
        early_stopping_rounds: patience on the validation set (0: never stop early).
        feature_names: names given to the booster's features.
        margin_train: starting margin of each train row (None: xgboost's base score).
        margin_valid: the same for the validation rows.

    Returns:
        The booster (cut to the best iteration) and a dict with ``best_iteration``,
        ``rounds``, ``validation``, ``train_seconds`` (boosting only), ``total_seconds``
        (with DMatrix construction), ``n_train`` and ``nthread``.
    """
    t0 = time.perf_counter()
    dtrain = xgb.DMatrix(
        X_train, label=y_train, feature_names=feature_names, nthread=nthread,
        base_margin=margin_train,
    )  # fmt: skip
    dvalid = xgb.DMatrix(
        X_valid, label=y_valid, feature_names=feature_names, nthread=nthread,
        base_margin=margin_valid,
    )  # fmt: skip
    evals_result: dict[str, Any] = {}
    t1 = time.perf_counter()
    booster = xgb.train(
        {**_params(objective, params), "nthread": nthread},
        dtrain,
        num_boost_round=num_boost_round,
        evals=[(dvalid, "validation")],
        evals_result=evals_result,
        early_stopping_rounds=early_stopping_rounds or None,
        verbose_eval=False,
    )
    t2 = time.perf_counter()
    best = _best(booster, early_stopping_rounds)
    rounds = best.num_boosted_rounds()
    return best, {
        "best_iteration": rounds - 1,
        "rounds": rounds,
        "validation": _last_scores(evals_result, rounds),
        "train_seconds": t2 - t1,
        "total_seconds": t2 - t0,
        "n_train": int(X_train.shape[0]),
        "nthread": nthread,
    }


def train_target_distributed(
    train_files: list[str],
    valid_files: list[str],
    features: list[str],
    name: str,
    cfg: TrainConfig,
    num_actors: int,
    filesystem: pafs.FileSystem | None,
    base_margin: str | None = None,
) -> tuple[xgb.Booster, dict[str, Any]]:
    """:func:`train_distributed` of the target ``name`` with train.yaml's parameters."""
    target = TARGETS[name]
    return train_distributed(
        train_files,
        valid_files,
        features,
        target.label,
        target.objective,
        xgb_params(cfg, target, features),
        num_actors=num_actors,
        num_boost_round=cfg.xgboost.num_boost_round,
        early_stopping_rounds=cfg.xgboost.early_stopping_rounds,
        filesystem=filesystem,
        base_margin=base_margin,
    )


def train_single_targets(
    train: Split,
    valid: Split,
    features: list[str],
    cfg: TrainConfig,
    nthread: int,
    meta: Mapping[str, Any],
    names: Iterable[str] = tuple(TARGETS),
) -> tuple[dict[str, xgb.Booster], dict[str, dict[str, Any]]]:
    """:func:`train_single` of each target in ``names`` (boosted from BG/NBD when ``meta``
    says so), with train.yaml's parameters.

    Returns:
        the boosters and their training info, per target.
    """
    boosters: dict[str, xgb.Booster] = {}
    infos: dict[str, dict[str, Any]] = {}
    for name in names:
        target, margin = TARGETS[name], margin_column(meta, name)
        boosters[name], infos[name] = train_single(
            train.X, train.label(target.label), valid.X, valid.label(target.label),
            target.objective, xgb_params(cfg, target, features), nthread=nthread,
            num_boost_round=cfg.xgboost.num_boost_round,
            early_stopping_rounds=cfg.xgboost.early_stopping_rounds, feature_names=features,
            margin_train=train.margin(margin), margin_valid=valid.margin(margin),
        )  # fmt: skip
    return boosters, infos


def predict(booster: xgb.Booster, split: Split, base_margin: str | None) -> np.ndarray:
    """The booster's predictions on a split's rows (from the ``base_margin`` column if any)."""
    return np.asarray(booster.inplace_predict(split.X, base_margin=split.margin(base_margin)))


def single_node_fit_predict(
    features: list[str], cfg: TrainConfig, nthread: int, meta: Mapping[str, Any]
) -> FitPredict:
    """A :data:`strata.training.evaluation.FitPredict` training with :func:`train_single`."""

    def fit_predict(name: str, train: Split, valid: Split, test: Split) -> np.ndarray:
        boosters, _ = train_single_targets(train, valid, features, cfg, nthread, meta, [name])
        return predict(boosters[name], test, margin_column(meta, name))

    return fit_predict
