"""BG/NBD ("buy till you die", Fader, Hardie & Lee 2005): fit and closed-form predictions.

A customer buys as a Poisson process with rate ``lambda ~ Gamma(r, alpha)`` and drops out right
after each purchase with probability ``p ~ Beta(a, b)``. Per customer the sufficient summary is
``(x, t_x, T)``: repeat purchase days, the day of the last purchase and the length of the
observation, both counted from the first purchase (``btyd_frequency``, ``btyd_recency``,
``btyd_t`` of :func:`strata.features.compute_features`; lifetimes' conventions, days).

* :func:`fit_bgnbd` estimates ``(r, alpha, a, b)`` by maximum likelihood (lifetimes'
  ``BetaGeoFitter``) over distinct summaries with counts as weights (the same likelihood).
* :func:`p_alive`, :func:`expected_purchases`, :func:`p_no_purchase` are the conditional
  closed forms, vectorised numpy (plus ``scipy.special.hyp2f1``): no lifetimes at scoring time.

A customer without a summary (no order) has no BG/NBD prediction: NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from strata.config import StrictModel

__all__ = [
    "BgnbdParams",
    "bgnbd_patterns",
    "bgnbd_scores",
    "expected_purchases",
    "fit_bgnbd",
    "merge_patterns",
    "p_alive",
    "p_no_purchase",
]

#: lifetimes' default-ish ridge on the parameters; keeps the fit finite on thin data.
PENALIZER = 0.001


class BgnbdParams(StrictModel):
    """Fitted BG/NBD parameters (``alpha`` in days)."""

    r: float
    alpha: float
    a: float
    b: float
    n_customers: int = 0

    def as_tuple(self) -> tuple[float, float, float, float]:
        """``(r, alpha, a, b)``."""
        return (self.r, self.alpha, self.a, self.b)


def _summary(
    x: ArrayLike, t_x: ArrayLike, big_t: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Float64 arrays with 0 in place of a missing summary, and the mask of valid rows."""
    xs = np.asarray(x, dtype=np.float64)
    txs = np.asarray(t_x, dtype=np.float64)
    ts = np.asarray(big_t, dtype=np.float64)
    ok = np.isfinite(xs) & np.isfinite(txs) & np.isfinite(ts)
    return np.where(ok, xs, 0.0), np.where(ok, txs, 0.0), np.where(ok, ts, 0.0), ok


def p_alive(params: BgnbdParams, x: ArrayLike, t_x: ArrayLike, big_t: ArrayLike) -> np.ndarray:
    """P(alive at T | x, t_x, T) = 1 / (1 + [x > 0] a / (b + x - 1) ((alpha + T) /
    (alpha + t_x)) ** (r + x)); NaN where the summary is missing."""
    r, alpha, a, b = params.as_tuple()
    xs, txs, ts, ok = _summary(x, t_x, big_t)
    with np.errstate(all="ignore"):
        log_ratio = np.log(a) - np.log(b + np.maximum(xs, 1.0) - 1.0)
        log_ratio += (r + xs) * (np.log(alpha + ts) - np.log(alpha + txs))
        odds = np.where(xs > 0, np.exp(np.minimum(log_ratio, 700.0)), 0.0)
        out = 1.0 / (1.0 + odds)
    return np.where(ok, out, np.nan)


def p_no_purchase(
    params: BgnbdParams, t: float, x: ArrayLike, t_x: ArrayLike, big_t: ArrayLike
) -> np.ndarray:
    """P(no purchase in (T, T + t] | x, t_x, T) = 1 - P_alive + P_alive ((alpha + T) /
    (alpha + T + t)) ** (r + x): an alive customer keeps a Gamma(r + x, alpha + T) rate and
    only drops out right after a purchase. NaN where the summary is missing."""
    r, alpha, _, _ = params.as_tuple()
    xs, _, ts, ok = _summary(x, t_x, big_t)
    alive = p_alive(params, x, t_x, big_t)
    with np.errstate(all="ignore"):
        stay = np.exp((r + xs) * (np.log(alpha + ts) - np.log(alpha + ts + float(t))))
    return np.where(ok, 1.0 - alive + alive * stay, np.nan)


def expected_purchases(
    params: BgnbdParams, t: float, x: ArrayLike, t_x: ArrayLike, big_t: ArrayLike
) -> np.ndarray:
    """E[purchases in (T, T + t] | x, t_x, T] (eq. 10 of Fader, Hardie & Lee 2005, as
    lifetimes' ``conditional_expected_number_of_purchases_up_to_time``); NaN where missing
    and where the closed form has no finite value."""
    r, alpha, a, b = params.as_tuple()
    xs, txs, ts, ok = _summary(x, t_x, big_t)
    t = float(t)
    with np.errstate(all="ignore"):
        z = t / (alpha + ts + t)
        c = a + b + xs - 1.0
        # head * tail = (c - K * c * 2F1(r + x, b + x; c; z)) / (a - 1), with c * 2F1 taken
        # through its finite limit where c ~ 0 (x = 1 on a fit with a, b ~ 0: scipy's 2F1
        # is inf there, and inf * 0 was the "inf" of short histories)
        c_hyp = _c_times_hyp2f1(r + xs, b + xs, c, z)
        k = np.exp((r + xs) * (np.log(alpha + ts) - np.log(alpha + ts + t)))
        out = (c - k * c_hyp) / (a - 1.0) * p_alive(params, xs, txs, ts)
    # a value the closed form cannot give (a = 1 exactly, overflow) is missing, never inf
    return np.where(ok & np.isfinite(out) & (out >= 0.0), out, np.nan)


#: Below this |c|, ``c * 2F1(A, B; c; z)`` is taken as its limit at c = 0 (error O(c)).
_C_TINY = 1e-8


def _c_times_hyp2f1(
    big_a: np.ndarray, big_b: np.ndarray, c: np.ndarray, z: np.ndarray
) -> np.ndarray:
    """``c * 2F1(A, B; c; z)``, finite as ``c -> 0`` (limit ``A B z 2F1(A+1, B+1; 2; z)``)."""
    from scipy.special import hyp2f1

    big_a, big_b, c, z = np.broadcast_arrays(big_a, big_b, c, z)
    tiny = np.abs(c) < _C_TINY
    with np.errstate(all="ignore"):
        direct = c * hyp2f1(big_a, big_b, np.where(tiny, 1.0, c), z)
        limit = big_a * big_b * z * hyp2f1(big_a + 1.0, big_b + 1.0, 2.0, z)
    return np.where(tiny, limit, direct)


def bgnbd_patterns(x: ArrayLike, t_x: ArrayLike, big_t: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Distinct valid summaries ``(x, t_x, T)`` (rows of a float64 matrix) and their counts.

    Mergeable: shards return patterns, :func:`merge_patterns` adds them up, the fit reads
    the merged ones (the likelihood is a weighted sum over distinct summaries).
    """
    xs = np.asarray(x, dtype=np.float64)
    txs = np.asarray(t_x, dtype=np.float64)
    ts = np.asarray(big_t, dtype=np.float64)
    ok = np.isfinite(xs) & np.isfinite(txs) & np.isfinite(ts) & (xs >= 0) & (txs >= 0)
    ok &= txs <= ts
    if not ok.any():
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    patterns, counts = np.unique(
        np.stack([xs[ok], txs[ok], ts[ok]], axis=1), axis=0, return_counts=True
    )
    return patterns, counts.astype(np.int64)


def merge_patterns(
    parts: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Sum the counts of the same summary across shards (order-independent)."""
    parts = [(np.asarray(p, dtype=np.float64).reshape(-1, 3), np.asarray(c)) for p, c in parts]
    parts = [(p, c) for p, c in parts if len(p)]
    if not parts:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    allp = np.concatenate([p for p, _ in parts])
    allc = np.concatenate([c for _, c in parts]).astype(np.int64)
    patterns, inverse = np.unique(allp, axis=0, return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=allc, minlength=len(patterns))
    return patterns, counts.astype(np.int64)


def fit_bgnbd(patterns: np.ndarray, counts: np.ndarray) -> BgnbdParams:
    """Maximum-likelihood BG/NBD parameters of weighted summaries (lifetimes' BetaGeoFitter,
    penalizer :data:`PENALIZER`).

    Raises:
        ValueError: fewer than 10 customers, or none observed for a positive time.
        RuntimeError: the fit failed or gave non-finite / non-positive parameters.
    """
    from lifetimes import BetaGeoFitter

    patterns = np.asarray(patterns, dtype=np.float64).reshape(-1, 3)
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n < 10:
        raise ValueError(f"BG/NBD needs at least 10 customers with orders, got {n}")
    if not (patterns[:, 2] > 0).any():
        raise ValueError("BG/NBD needs some customers observed for more than a day (T > 0)")
    fitter = BetaGeoFitter(penalizer_coef=PENALIZER)
    try:
        # lifetimes changes the global warning filters inside its likelihood: contain it
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            fitter.fit(patterns[:, 0], patterns[:, 1], patterns[:, 2], weights=counts)
    except Exception as exc:
        raise RuntimeError(
            f"BG/NBD fit failed on {n} customers ({len(patterns)} patterns): {exc}"
        ) from exc
    values = np.asarray(fitter.params_[["r", "alpha", "a", "b"]], dtype=np.float64)
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise RuntimeError(f"BG/NBD fit gave unusable parameters r, alpha, a, b = {values}")
    r, alpha, a, b = (float(v) for v in values)
    return BgnbdParams(r=r, alpha=alpha, a=a, b=b, n_customers=n)


def bgnbd_scores(
    params: BgnbdParams | Mapping[str, Any],
    horizon_days: float,
    repurchase_days: float,
    x: ArrayLike,
    t_x: ArrayLike,
    big_t: ArrayLike,
) -> dict[str, np.ndarray]:
    """Every BG/NBD score of one set of summaries: ``p_alive``, ``expected_purchases``
    (in the horizon), ``churn`` (= P(no purchase in the horizon)) and ``repurchase``
    (= 1 - P(no purchase in the first ``repurchase_days``)); NaN where missing."""
    p = params if isinstance(params, BgnbdParams) else BgnbdParams.model_validate(dict(params))
    return {
        "p_alive": p_alive(p, x, t_x, big_t),
        "expected_purchases": expected_purchases(p, horizon_days, x, t_x, big_t),
        "churn": p_no_purchase(p, horizon_days, x, t_x, big_t),
        "repurchase": 1.0 - p_no_purchase(p, repurchase_days, x, t_x, big_t),
    }
