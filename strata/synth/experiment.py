"""A simulated experiment with a known effect (``strata generate --experiment NAME``).

The experiment (arms, weights, holdout, salt: configs/experiments.yaml) starts on the local
day ``floor(start_fraction x days)`` of the generated window (the YAML's start/end dates are
ignored). It is a campaign: on that day every user of a targeted persona (generator.yaml
``experiments.NAME.target_personas``; empty: everyone) who has signed up by then is sent the
arm's offer at a random moment between 09:00 and 21:00 local time — that send is the user's
first exposure (``t0``, source ``"action"``) — and assigned with the shared hash
(:func:`strata.experiments.assignment.assign_many` on the pseudonymised id). The start day
must leave ``window_days`` after it inside the window, so every analysis window
``[t0, t0 + window_days)`` is complete. (Exposing at a user's first session instead would make
that session's own buy chance part of every conversion: active personas would convert ~95% of
the time with no room for a treatment effect.)

The true effect: sessions of treated users (the configured ``arm``) that start in their window
buy with probability ``min(1, k x p)`` instead of the persona's ``p``; nothing else changes, so
which users are exposed, and when, never depends on the arm. ``k`` is solved per bucket, from
the exposed users' sessions (``m_i`` sessions in the window, buy probability ``p_i``), so that

    sum_i 1 - (1 - min(1, k p_i))^m_i  =  (1 + relative_effect) x sum_i 1 - (1 - p_i)^m_i,

i.e. the expected conversion (>= 1 order in the window) of a treated user is ``1 +
relative_effect`` times an untreated one's, given the simulated sessions. Summed over buckets
the equality holds for the whole population too, so the relative effect in expectation is
exactly the configured one; when no ``k`` reaches it (users already nearly certain to convert)
``k`` is the largest useful one and :class:`ExperimentTruth` holds the smaller effect really
planted. (Edges left out, each minutes wide against a 14-day window: a session starting just
before the window ends whose order falls after it, or just before the send whose order falls
after it.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from strata.experiments.assignment import assign_many
from strata.experiments.config import ExperimentsConfig
from strata.schema import EXPOSURES_SCHEMA, TIMESTAMP
from strata.synth.config import GeneratorConfig
from strata.timeutil import DAY_MS, HOUR_MS

__all__ = [
    "EXPOSURE_SOURCE",
    "BucketExposures",
    "ExperimentPlan",
    "ExperimentTruth",
    "expected_conversions",
    "plan_experiment",
    "simulate_exposures",
    "solve_buy_multiplier",
]

#: generated exposures are logged as if at a first action
EXPOSURE_SOURCE = "action"
#: the offer is sent between these local times of the start day
_SEND_FROM_MS = 9 * HOUR_MS
_SEND_TO_MS = 21 * HOUR_MS


@dataclass(frozen=True)
class ExperimentPlan:
    """What one bucket's simulation needs to run the experiment (picklable, small)."""

    name: str
    salt: str
    weights: tuple[tuple[str, float], ...]
    holdout: float
    arm: str
    baseline: str
    metric: str
    relative_effect: float
    window_days: int
    start_day: int  # window day index of the send (the experiment's start)
    target_personas: tuple[str, ...]  # empty: every persona


def plan_experiment(
    name: str,
    salt: str,
    weights: Sequence[tuple[str, float]],
    holdout: float,
    cfg: GeneratorConfig,
    days: int,
    analysis_window_days: int | None = None,
) -> ExperimentPlan:
    """The plan of experiment ``name`` over a ``days``-day window.

    Args:
        name, salt, weights, holdout: the experiment's definition (experiments.yaml).
        analysis_window_days: the window the report measures (experiments.yaml); the true
            effect is planted for it. None: generator.yaml's ``window_days`` (else 14).
        cfg: the generator config, whose ``experiments[name]`` holds the true effect.
        days: the generated window's length.

    Raises:
        ValueError: no true effect configured for ``name``, arms that are not the
            experiment's, a ``window_days`` other than the analysis window, or a window too
            short for the start and the analysis window.
    """
    sim = cfg.experiments.get(name)
    if sim is None:
        known = ", ".join(sorted(cfg.experiments)) or "(none)"
        raise ValueError(
            f"generator.yaml has no experiments.{name} (its true effect); configured: {known}"
        )
    arms = [a for a, _ in weights]
    for key, arm in (("arm", sim.arm), ("baseline", sim.baseline)):
        if arm not in arms:
            raise ValueError(
                f"generator.yaml experiments.{name}.{key}: {arm!r} is not an arm of the "
                f"experiment; arms: {', '.join(arms)}"
            )
    if sim.arm == sim.baseline:
        raise ValueError(f"generator.yaml experiments.{name}: arm and baseline are the same")
    if (
        sim.window_days is not None
        and analysis_window_days is not None
        and sim.window_days != analysis_window_days
    ):
        raise ValueError(
            f"generator.yaml experiments.{name}.window_days is {sim.window_days} but the "
            f"experiment's analysis_window_days (experiments.yaml) is {analysis_window_days}: "
            "the effect would be planted for another window than the report measures"
        )
    window_days = sim.window_days or analysis_window_days or 14
    start_day = int(np.floor(sim.start_fraction * days))
    if start_day + window_days >= days:
        raise ValueError(
            f"a {days}-day window is too short for experiment {name}: it starts on day "
            f"{start_day} (start_fraction {sim.start_fraction:g}) and its {window_days}-day "
            f"analysis window must end inside the generated window; generate more --days or "
            f"lower generator.yaml experiments.{name}.start_fraction / window_days"
        )
    return ExperimentPlan(
        name=name,
        salt=salt,
        weights=tuple((a, float(w)) for a, w in weights),
        holdout=float(holdout),
        arm=sim.arm,
        baseline=sim.baseline,
        metric=sim.metric,
        relative_effect=sim.relative_effect,
        window_days=window_days,
        start_day=start_day,
        target_personas=tuple(sim.target_personas),
    )


def expected_conversions(p: np.ndarray, m: np.ndarray, k: float = 1.0) -> float:
    """``sum_i 1 - (1 - min(1, k p_i))^m_i``: expected converters among users with ``m_i``
    sessions of buy probability ``p_i`` each (multiplied by ``k``)."""
    q = 1.0 - np.minimum(k * np.asarray(p, dtype=np.float64), 1.0)
    return float(np.sum(1.0 - q ** np.asarray(m, dtype=np.float64)))


def solve_buy_multiplier(p: np.ndarray, m: np.ndarray, relative_effect: float) -> float:
    """The ``k`` with ``expected_conversions(p, m, k) = (1 + relative_effect) x
    expected_conversions(p, m)`` (bisection, to 1e-12 relative); the largest useful ``k``
    (every ``k p_i >= 1``) when the target is out of reach, 0 for an effect of -1."""
    p = np.asarray(p, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    base = expected_conversions(p, m)
    positive = p > 0
    if base <= 0 or relative_effect == 0 or not positive.any():
        return 1.0
    # few distinct (p, m) pairs: bisect on their counts instead of on every user
    pairs, counts = np.unique(np.stack([p[positive], m[positive]]), axis=1, return_counts=True)
    pp, mm = pairs

    def conv(k: float) -> float:
        return float(np.sum(counts * (1.0 - (1.0 - np.minimum(k * pp, 1.0)) ** mm)))

    target = (1.0 + relative_effect) * base
    lo, hi = (1.0, 1.0 / float(pp.min())) if relative_effect > 0 else (0.0, 1.0)
    if relative_effect > 0 and conv(hi) <= target:
        return hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if conv(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class ExperimentTruth:
    """Mergeable truth of one bucket (or of all): expected converters among the exposed
    users, untreated and treated (``sum c_i`` and ``sum c'_i``), and the exposed count."""

    exposed: int = 0
    expected_control: float = 0.0
    expected_treated: float = 0.0

    def merge(self, other: ExperimentTruth) -> ExperimentTruth:
        """The truth of both parts."""
        return ExperimentTruth(
            self.exposed + other.exposed,
            self.expected_control + other.expected_control,
            self.expected_treated + other.expected_treated,
        )

    @property
    def relative_effect(self) -> float:
        """The relative conversion effect planted, in expectation (0 without exposures)."""
        if self.expected_control <= 0:
            return 0.0
        return self.expected_treated / self.expected_control - 1.0


def merge_outcomes(
    parts: Sequence[tuple[ExperimentTruth, Mapping[str, int]]],
) -> tuple[ExperimentTruth, dict[str, int]]:
    """The truth and the exposed users per arm of all buckets, from each bucket's."""
    truth = ExperimentTruth()
    exposed: dict[str, int] = {}
    for part, by_arm in parts:
        truth = truth.merge(part)
        for arm, count in by_arm.items():
            exposed[arm] = exposed.get(arm, 0) + count
    return truth, exposed


def plan_from_config(
    name: str, experiments: ExperimentsConfig, cfg: GeneratorConfig, days: int
) -> ExperimentPlan:
    """The plan of experiment ``name`` of experiments.yaml with its true effect
    (generator.yaml).

    Raises:
        ValueError: an unknown experiment, or one that does not fit the window.
    """
    experiment = experiments.get(name)
    if experiment is None:
        known = ", ".join(e.name for e in experiments.experiments) or "(none)"
        raise ValueError(f"not in experiments.yaml; experiments: {known}")
    return plan_experiment(
        name,
        experiment.salt,
        experiment.weights,
        experiment.holdout,
        cfg,
        days,
        experiment.analysis_window_days,
    )


def truth_document(plan: ExperimentPlan, truth: ExperimentTruth) -> dict[str, Any]:
    """The ``truth/experiments.json`` document of one simulated experiment."""
    return {
        plan.name: {
            "arm": plan.arm,
            "baseline": plan.baseline,
            "metric": plan.metric,
            "relative_effect": truth.relative_effect,
        }
    }


@dataclass(frozen=True)
class BucketExposures:
    """One bucket's exposures and the per-session buy multiplier of the treatment."""

    exposures: pa.Table  # EXPOSURES_SCHEMA, sorted by user_id
    buy_multiplier: np.ndarray  # per session: k for treated sessions in their window, else 1
    truth: ExperimentTruth
    k: float


def simulate_exposures(
    plan: ExperimentPlan,
    rng: np.random.Generator,
    window_start_ms: int,
    user_ids: np.ndarray,
    user_persona: Sequence[str] | np.ndarray,
    user_signup_ms: np.ndarray,
    user_buy_prob: np.ndarray,
    session_user: np.ndarray,
    session_start_ms: np.ndarray,
) -> BucketExposures:
    """Expose, assign and treat the users of one bucket (before their sessions buy).

    Args:
        plan: the experiment (:func:`plan_experiment`).
        rng: draws the send times (a stream of its own: the behaviour's draws stay put).
        window_start_ms: local midnight of the window's first day (UTC ms).
        user_ids: the bucket's pseudonymised ids, ascending.
        user_persona: each user's persona name.
        user_signup_ms: each user's signup time.
        user_buy_prob: each user's untreated buy probability per session.
        session_user: per session, the index of its user.
        session_start_ms: per session, its start (UTC ms).
    """
    n = len(user_ids)
    persona = np.asarray(user_persona, dtype=object)
    day_ms = window_start_ms + plan.start_day * DAY_MS
    send = day_ms + _SEND_FROM_MS + (rng.random(n) * (_SEND_TO_MS - _SEND_FROM_MS)).astype(np.int64)
    targeted = (
        np.isin(persona, list(plan.target_personas))
        if plan.target_personas
        else np.ones(n, dtype=bool)
    )
    exposed = np.flatnonzero(targeted & (np.asarray(user_signup_ms) < send))
    arms = np.asarray(
        assign_many(
            plan.salt, plan.name, user_ids[exposed].tolist(), plan.weights, holdout=plan.holdout
        ),
        dtype=object,
    )
    is_exposed = np.zeros(n, dtype=bool)
    is_exposed[exposed] = True
    t0 = send[session_user]
    in_window = (
        is_exposed[session_user]
        & (session_start_ms >= t0)
        & (session_start_ms < t0 + plan.window_days * DAY_MS)
    )
    m = np.bincount(session_user[in_window], minlength=n)[exposed]
    p = np.asarray(user_buy_prob, dtype=np.float64)[exposed]
    k = solve_buy_multiplier(p, m, plan.relative_effect)
    treated_user = np.zeros(n, dtype=bool)
    treated_user[exposed[arms == plan.arm]] = True
    multiplier = np.where(in_window & treated_user[session_user], k, 1.0)
    truth = ExperimentTruth(
        exposed=len(exposed),
        expected_control=expected_conversions(p, m),
        expected_treated=expected_conversions(p, m, k),
    )
    table = pa.Table.from_arrays(
        [
            pa.array(user_ids[exposed], pa.int64()),
            pa.array(send[exposed], TIMESTAMP),
            pa.array([plan.name] * len(exposed), pa.string()),
            pa.array(arms.tolist(), pa.string()),
            pa.array([EXPOSURE_SOURCE] * len(exposed), pa.string()),
        ],
        schema=EXPOSURES_SCHEMA,
    )
    return BucketExposures(table, multiplier, truth, k)
