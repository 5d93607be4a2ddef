"""Evaluation: classification and regression metrics, the winner and champion rules, parity.

* :func:`classification_metrics`, :func:`regression_metrics`: metrics of one method;
  :func:`evaluate`: of every method predicting one target.
* :func:`winner` (generic) and :func:`best_method` (the contest between the model and the
  baselines), :func:`choose_champion` (champion / challenger: what the recompute publishes).
* :func:`parity`: distributed vs single-node model (:data:`PARITY_MAX_AUC_GAP`).
* :func:`importance`: top features by gain; :func:`fill_missing_scores` for baseline scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from strata.training.targets import METHODS, TARGETS, Target

__all__ = [
    "IMPORTANCE_TOP",
    "PARITY_MAX_AUC_GAP",
    "PUBLISHABLE_BASELINES",
    "best_method",
    "choose_champion",
    "classification_metrics",
    "evaluate",
    "fill_missing_scores",
    "importance",
    "parity",
    "regression_metrics",
    "winner",
    "without_calibration",
]

#: Production parity check: |AUC(distributed) - AUC(single node)| on the test split.
PARITY_MAX_AUC_GAP = 0.005
IMPORTANCE_TOP = 15


def _binary(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    yy = np.asarray(y, dtype=np.float64).ravel()
    pp = np.asarray(p, dtype=np.float64).ravel()
    if yy.shape != pp.shape:
        raise ValueError(f"y and p differ in length: {len(yy)} vs {len(pp)}")
    if not np.isin(yy, (0.0, 1.0)).all():
        raise ValueError("y must be binary (0/1)")
    if not np.isfinite(pp).all():
        raise ValueError("p has NaN or infinite values")
    return yy, pp


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    start = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
    end = np.append(start[1:], len(xs))
    mean_rank = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, end - start)
    return ranks


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    r = _midranks(p)
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_precision(y: np.ndarray, p: np.ndarray) -> float | None:
    """sum over distinct thresholds (high to low) of (recall step) x precision; tied scores
    enter together (scikit-learn's definition)."""
    n_pos = float(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.append(np.flatnonzero(ps[1:] != ps[:-1]), len(ps) - 1)  # end of each tie group
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    steps = np.diff(np.concatenate(([0.0], recall)))
    return float((steps * precision).sum())


def classification_metrics(y: ArrayLike, p: ArrayLike) -> dict[str, Any]:
    """Metrics of predicted probabilities ``p`` for binary labels ``y``.

    Returns:
        ``auc`` (rank-based, tied scores count half; None with one class only), ``pr_auc``
        (average precision; None without positives), ``log_loss`` (p clipped to
        [1e-15, 1 - 1e-15]), ``brier``, ``base_rate``, ``n`` and ``calibration``: 10 bins of
        equal size by increasing p (``{bin, n, mean_p, observed}``; empty bins have n 0 and
        None values). Plain Python numbers (JSON-ready); None where undefined (n = 0).
    """
    yy, pp = _binary(y, p)
    n = len(yy)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        out.update(auc=None, pr_auc=None, log_loss=None, brier=None, base_rate=None)
        out["calibration"] = [
            {"bin": i, "n": 0, "mean_p": None, "observed": None} for i in range(10)
        ]
        return out
    q = np.clip(pp, 1e-15, 1 - 1e-15)
    out["auc"] = _auc(yy, pp)
    out["pr_auc"] = _average_precision(yy, pp)
    out["log_loss"] = float(-np.mean(yy * np.log(q) + (1 - yy) * np.log1p(-q)))
    out["brier"] = float(np.mean((pp - yy) ** 2))
    out["base_rate"] = float(yy.mean())
    calibration = []
    for i, part in enumerate(np.array_split(np.argsort(pp, kind="mergesort"), 10)):
        k = len(part)
        calibration.append(
            {
                "bin": i,
                "n": k,
                "mean_p": float(pp[part].mean()) if k else None,
                "observed": float(yy[part].mean()) if k else None,
            }
        )
    out["calibration"] = calibration
    return out


def regression_metrics(y: ArrayLike, yhat: ArrayLike) -> dict[str, Any]:
    """``mae``, ``rmse``, ``r2`` (1 - SS_res / SS_tot; None when y is constant), ``mean_y``,
    ``mean_yhat`` and ``n`` (plain Python numbers; None where undefined)."""
    yy = np.asarray(y, dtype=np.float64).ravel()
    yh = np.asarray(yhat, dtype=np.float64).ravel()
    if yy.shape != yh.shape:
        raise ValueError(f"y and yhat differ in length: {len(yy)} vs {len(yh)}")
    if not (np.isfinite(yy).all() and np.isfinite(yh).all()):
        raise ValueError("y or yhat has NaN or infinite values")
    n = len(yy)
    if n == 0:
        return {"mae": None, "rmse": None, "r2": None, "mean_y": None, "mean_yhat": None, "n": 0}
    err = yh - yy
    ss_tot = float(((yy - yy.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else None,
        "mean_y": float(yy.mean()),
        "mean_yhat": float(yh.mean()),
        "n": n,
    }


def winner(
    results: Mapping[str, Mapping[str, Any]], metric: str = "auc", higher_is_better: bool = True
) -> str:
    """Name of the model with the best ``metric`` (ties: the first listed; NaN never wins).

    Args:
        results: metrics per model name.
        metric: e.g. ``auc`` (classification) or ``rmse`` (regression).
        higher_is_better: False for errors such as ``rmse``.

    Raises:
        ValueError: no entry has a defined value of ``metric``.
    """
    best: str | None = None
    best_value = -np.inf
    for name, metrics in results.items():
        value = metrics.get(metric)
        if value is None or not np.isfinite(value):
            continue
        score = float(value) if higher_is_better else -float(value)
        if score > best_value:
            best, best_value = name, score
    if best is None:
        raise ValueError(f"no model with a defined {metric} among {list(results)}")
    return best


#: Baselines that can stand in for a model at scoring time (they need no training).
PUBLISHABLE_BASELINES: tuple[str, ...] = ("bgnbd", "recency_rule")


def choose_champion(
    metrics: Mapping[str, Mapping[str, Any]],
    classification: bool,
    time_holdout: Mapping[str, Mapping[str, Any]] | None = None,
    model: str = "distributed",
) -> dict[str, Any]:
    """Champion / challenger: the model is published only if it is at least as good as the
    best baseline (``bgnbd``, ``recency_rule``) on the users held out, and, where a check on
    a cutoff held out by time exists, there too. Otherwise the best baseline is.

    Args:
        metrics: test metrics per method (``model`` and the baselines present).
        classification: AUC decides (higher is better); else RMSE (lower is better).
        time_holdout: metrics per method on the cutoff held out by time (or None).
        model: the method name of the model.

    Returns:
        ``method`` (``model`` or a baseline name), ``reason`` (one sentence), and the numbers
        compared: ``metric``, ``model``, ``best_baseline``, ``baseline``; ``time_holdout`` with
        the same numbers when checked.
    """
    key = "auc" if classification else "rmse"

    def value(m: Mapping[str, Any] | None) -> float | None:
        v = None if m is None else m.get(key)
        return None if v is None or not np.isfinite(v) else float(v)

    def better_or_equal(a: float, b: float) -> bool:
        return a >= b if classification else a <= b

    def contest(
        block: Mapping[str, Mapping[str, Any]],
    ) -> tuple[float | None, str | None, float | None]:
        base = {b: value(block.get(b)) for b in PUBLISHABLE_BASELINES}
        valid = {b: v for b, v in base.items() if v is not None}
        if not valid:
            return value(block.get(model)), None, None
        best = (max if classification else min)(valid, key=lambda b: valid[b])
        return value(block.get(model)), best, valid[best]

    m, best, b = contest(metrics)
    out: dict[str, Any] = {"metric": key, "model": m, "best_baseline": best, "baseline": b}
    if best is None or b is None:
        out.update(method="model", reason="no baseline could be measured")
        return out
    if m is None or not better_or_equal(m, b):
        out.update(
            method=best,
            reason=f"the model's test {key} {_num(m)} is worse than {best}'s {b:.4f} on the "
            "held-out users",
        )
        return out
    if time_holdout:
        tm, tbest, tb = contest(time_holdout)
        out["time_holdout"] = {"model": tm, "best_baseline": tbest, "baseline": tb}
        if tbest is not None and tb is not None and (tm is None or not better_or_equal(tm, tb)):
            out.update(
                method=tbest,
                reason=f"the model's {key} {_num(tm)} is worse than {tbest}'s {tb:.4f} on the "
                "cutoff held out by time",
            )
            return out
    out.update(
        method="model",
        reason=f"the model's test {key} {m:.4f} is at least {best}'s {b:.4f}"
        + (" (and on the cutoff held out by time)" if "time_holdout" in out else ""),
    )
    return out


def _num(v: float | None) -> str:
    return "undefined" if v is None else f"{v:.4f}"


def fill_missing_scores(p: np.ndarray) -> np.ndarray:
    """Baseline scores with NaN (no BTYD summary) replaced by their mean: a neutral score."""
    p = np.asarray(p, dtype=np.float64)
    bad = ~np.isfinite(p)
    if bad.any():
        p = np.where(bad, np.nanmean(np.where(bad, np.nan, p)) if (~bad).any() else 0.0, p)
    return p


def evaluate(
    target: Target, y: np.ndarray, predictions: dict[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """Test metrics of every method that predicts this target."""
    score = classification_metrics if target.kind == "classification" else regression_metrics
    return {m: score(y, np.asarray(p, dtype=np.float64)) for m, p in predictions.items()}


def best_method(target: Target, metrics: dict[str, dict[str, Any]]) -> str:
    """Best method: highest AUC (classification) or lowest RMSE (regression); NaN never wins.

    The contest is between the model (``distributed``) and the baselines; the single-node
    model is the same model trained another way (a parity reference), so it does not compete.
    """
    contenders = {m: metrics[m] for m in METHODS if m in metrics and m != "single_node"}
    classification = target.kind == "classification"
    try:
        return winner(
            contenders, "auc" if classification else "rmse", higher_is_better=classification
        )
    except ValueError:
        return next(iter(contenders))  # nothing measurable: the model, listed first


def importance(booster: Any, top: int = IMPORTANCE_TOP) -> list[tuple[str, float]]:
    """Top features by xgboost's ``gain`` (average loss reduction of the splits using it)."""
    scores = booster.get_score(importance_type="gain")
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(name, float(v)) for name, v in ranked[:top]]


def parity(
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The production parity check: distributed vs single-node model on the test split.

    Classifiers: |AUC(distributed) - AUC(single node)| against :data:`PARITY_MAX_AUC_GAP`;
    the regression records both RMSEs.

    Returns:
        the check per target, and the problems found (an undefined AUC, a model no better
        than chance): each makes the version ``failed``.
    """
    problems: list[str] = []
    checks: dict[str, dict[str, Any]] = {}
    for name, target in TARGETS.items():
        if target.kind != "classification":
            d, s = metrics[name]["distributed"]["rmse"], metrics[name]["single_node"]["rmse"]
            checks[name] = {"distributed_rmse": d, "single_node_rmse": s}
            continue
        d, s = metrics[name]["distributed"]["auc"], metrics[name]["single_node"]["auc"]
        if d is None or s is None:  # one class only in the test split
            problems.append(f"{name}: AUC undefined, the test split has one class only")
            checks[name] = {"distributed_auc": d, "single_node_auc": s, "ok": False}
            continue
        gap = abs(float(d) - float(s))
        checks[name] = {
            "distributed_auc": d,
            "single_node_auc": s,
            "auc_gap": gap,
            "max_auc_gap": PARITY_MAX_AUC_GAP,
            "ok": bool(gap <= PARITY_MAX_AUC_GAP),
        }
        if float(d) <= 0.5:
            problems.append(f"{name}: test AUC {d:.4f} is no better than chance")
    return checks, problems


def without_calibration(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Metrics per method without their calibration deciles (the compact checks of meta.json)."""
    return {m: {k: v for k, v in d.items() if k != "calibration"} for m, d in metrics.items()}
