"""An experiment's analysis from per-arm sufficient statistics: :func:`analyse`.

The warehouse-based report and ``strata report experiment --from FILE`` both end here: they
reduce their data to one :data:`~strata.experiments.stats.Statistic` per arm and metric (shards
merge theirs) and call :func:`analyse`, which runs gbstats' tests of every treatment arm
against the control, the SRM check and (optionally) Benjamini-Hochberg across the comparisons.
:func:`unit_statistics` builds those statistics from one row per unit (numpy arrays).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from strata.experiments.stats import (
    ProportionStatistic,
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
    Statistic,
    TestResult,
    benjamini_hochberg,
    check_srm,
    sequential_two_sided_ttest,
    two_sided_ttest,
)

#: below this many users in an arm the report says "not enough traffic"
MIN_USERS_PER_ARM = 8
#: an SRM p-value below this flags a broken split
SRM_P_THRESHOLD = 0.001

Correction = Literal["none", "bh"]


@dataclass(frozen=True, slots=True)
class MetricSummary:
    """A metric's unadjusted mean and standard deviation in one arm."""

    mean: float
    stddev: float


@dataclass(frozen=True, slots=True)
class ArmSummary:
    """One arm: its users and each metric's mean and stddev."""

    arm: str
    users: int
    metrics: dict[str, MetricSummary]


@dataclass(frozen=True, slots=True)
class Comparison:
    """One treatment arm against the baseline on one metric.

    ``absolute`` and ``relative`` hold gbstats' results; ``*_p_adjusted`` the
    Benjamini-Hochberg p-values across all comparisons of the analysis (same difference type).
    """

    arm: str
    baseline: str
    metric: str
    cuped: bool
    absolute: TestResult
    relative: TestResult
    absolute_p_adjusted: float
    relative_p_adjusted: float


@dataclass(frozen=True, slots=True)
class ExperimentAnalysis:
    """The whole analysis; :meth:`to_json` is the report's ``--json`` document."""

    experiment: str
    control: str
    srm_p_value: float
    arms: list[ArmSummary]
    comparisons: list[Comparison]
    sequential: bool
    correction: Correction
    warnings: list[str] = field(default_factory=list)

    @property
    def srm_mismatch(self) -> bool:
        """The split differs from the expected weights (SRM p-value below 0.001)."""
        return self.srm_p_value < SRM_P_THRESHOLD

    @property
    def low_traffic_arms(self) -> list[str]:
        """Arms with fewer than :data:`MIN_USERS_PER_ARM` users."""
        return [a.arm for a in self.arms if a.users < MIN_USERS_PER_ARM]

    def to_json(self) -> dict[str, Any]:
        """``{"experiment", "srm_p_value", "arms", "comparisons"}``, the issue's exact shape.

        The p-values are gbstats' own, or Benjamini-Hochberg's when the correction is "bh".
        """

        def result(r: TestResult, p_adjusted: float) -> dict[str, float]:
            p = p_adjusted if self.correction == "bh" else r.p_value
            return {"effect": r.effect, "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": p}

        return {
            "experiment": self.experiment,
            "srm_p_value": self.srm_p_value,
            "arms": [
                {
                    "arm": a.arm,
                    "users": a.users,
                    "metrics": {
                        name: {"mean": m.mean, "stddev": m.stddev} for name, m in a.metrics.items()
                    },
                }
                for a in self.arms
            ],
            "comparisons": [
                {
                    "arm": c.arm,
                    "baseline": c.baseline,
                    "metric": c.metric,
                    "cuped": c.cuped,
                    "absolute": result(c.absolute, c.absolute_p_adjusted),
                    "relative": result(c.relative, c.relative_p_adjusted),
                }
                for c in self.comparisons
            ],
        }


def _summary(stat: Statistic) -> MetricSummary:
    base = stat.post_statistic if isinstance(stat, RegressionAdjustedStatistic) else stat
    return MetricSummary(mean=base.mean, stddev=base.stddev)


def analyse(
    stats_by_arm: Mapping[str, Mapping[str, Statistic]],
    control: str,
    *,
    experiment: str = "",
    users: Mapping[str, int] | None = None,
    weights: Mapping[str, float] | None = None,
    alpha: float = 0.05,
    sequential_tuning: float | None = None,
    correction: Correction = "none",
) -> ExperimentAnalysis:
    """Analyse an experiment from per-arm, per-metric sufficient statistics.

    Args:
        stats_by_arm: arm -> metric -> statistic; every arm has the same metrics, each of one
            kind in every arm (a :class:`RegressionAdjustedStatistic` for CUPED). The order of
            the arms is the report's (the control is moved first).
        control: the baseline arm.
        experiment: the experiment's name.
        users: arm -> users (exposed units); default: the largest n of the arm's statistics.
        weights: arm -> expected share for the SRM check; default equal shares.
        alpha: 1 - the CIs' coverage.
        sequential_tuning: when set, gbstats' sequential test with this tuning parameter.
        correction: ``"bh"`` makes :meth:`ExperimentAnalysis.to_json` report
            Benjamini-Hochberg p-values (the comparisons always carry both).

    Raises:
        ValueError: an unknown control, arms without the same metrics, weights not naming the
            arms exactly.
    """
    if control not in stats_by_arm:
        raise ValueError(f"control arm {control!r} is not among the arms {sorted(stats_by_arm)}")
    arms = [control, *(a for a in stats_by_arm if a != control)]
    metrics = list(stats_by_arm[control])
    for arm in arms:
        if list(stats_by_arm[arm]) != metrics:
            raise ValueError(
                f"arm {arm!r} has metrics {list(stats_by_arm[arm])}, the control {metrics}"
            )
    if weights is not None and set(weights) != set(arms):
        raise ValueError(f"weights name arms {sorted(weights)}, the data has {sorted(arms)}")

    counts = {
        arm: (
            users[arm]
            if users is not None
            else max((s.n for s in stats_by_arm[arm].values()), default=0)
        )
        for arm in arms
    }
    expected = [1.0] * len(arms) if weights is None else [weights[a] for a in arms]
    srm_p = check_srm([counts[a] for a in arms], expected)

    summaries = [
        ArmSummary(arm, counts[arm], {m: _summary(stats_by_arm[arm][m]) for m in metrics})
        for arm in arms
    ]

    raw: list[tuple[str, str, TestResult, TestResult]] = []
    for arm in arms[1:]:
        for metric in metrics:
            a, b = stats_by_arm[control][metric], stats_by_arm[arm][metric]
            if sequential_tuning is None:
                absolute = two_sided_ttest(a, b, "absolute", alpha)
                relative = two_sided_ttest(a, b, "relative", alpha)
            else:
                absolute = sequential_two_sided_ttest(a, b, "absolute", alpha, sequential_tuning)
                relative = sequential_two_sided_ttest(a, b, "relative", alpha, sequential_tuning)
            raw.append((arm, metric, absolute, relative))
    adj_abs = benjamini_hochberg([r[2].p_value for r in raw])
    adj_rel = benjamini_hochberg([r[3].p_value for r in raw])
    comparisons = [
        Comparison(arm, control, metric, absolute.cuped, absolute, relative, pa, pr)
        for (arm, metric, absolute, relative), pa, pr in zip(raw, adj_abs, adj_rel, strict=True)
    ]

    analysis = ExperimentAnalysis(
        experiment=experiment,
        control=control,
        srm_p_value=srm_p,
        arms=summaries,
        comparisons=comparisons,
        sequential=sequential_tuning is not None,
        correction=correction,
    )
    if analysis.srm_mismatch:
        analysis.warnings.append(
            f"sample ratio mismatch: SRM p-value {srm_p:.2g} < {SRM_P_THRESHOLD} — the split "
            "differs from the expected weights; do not trust the effects"
        )
    for arm in analysis.low_traffic_arms:
        analysis.warnings.append(
            f"not enough traffic: arm {arm!r} has {counts[arm]} users (< {MIN_USERS_PER_ARM})"
        )
    for c in comparisons:
        if c.relative.error is not None:
            analysis.warnings.append(
                f"{c.arm} vs {c.baseline}, {c.metric}: no test ({c.relative.error})"
            )
    return analysis


def is_binary(values: npt.NDArray[np.float64]) -> bool:
    """Whether a metric column holds only 0 and 1 (a proportion)."""
    return bool(np.all((values == 0) | (values == 1)))


def unit_statistics(
    arm_codes: npt.NDArray[np.integer[Any]],
    arm_names: Sequence[str],
    metrics: Mapping[str, npt.NDArray[np.float64]],
    covariate: npt.NDArray[np.float64] | None = None,
) -> dict[str, dict[str, Statistic]]:
    """Per-arm sufficient statistics from one row per unit.

    Args:
        arm_codes: each unit's arm as an index into ``arm_names``.
        arm_names: the arms.
        metrics: metric name -> one value per unit (no NaN); a column of only 0/1 becomes a
            :class:`ProportionStatistic`, any other a :class:`SampleMeanStatistic`.
        covariate: the pre-exposure value per unit; when given every metric is a
            :class:`RegressionAdjustedStatistic` (CUPED).

    Returns:
        arm -> metric -> statistic, arms in ``arm_names`` order.
    """
    k = len(arm_names)
    n = np.bincount(arm_codes, minlength=k)

    def base(values: npt.NDArray[np.float64]) -> list[SampleMeanStatistic | ProportionStatistic]:
        sums = np.bincount(arm_codes, weights=values, minlength=k)
        if is_binary(values):
            return [ProportionStatistic(int(n[i]), float(sums[i])) for i in range(k)]
        squares = np.bincount(arm_codes, weights=values * values, minlength=k)
        return [SampleMeanStatistic(int(n[i]), float(sums[i]), float(squares[i])) for i in range(k)]

    pre = base(covariate) if covariate is not None else None
    out: dict[str, dict[str, Statistic]] = {name: {} for name in arm_names}
    for metric, values in metrics.items():
        post = base(values)
        if covariate is None or pre is None:
            for i, name in enumerate(arm_names):
                out[name][metric] = post[i]
            continue
        cross = np.bincount(arm_codes, weights=values * covariate, minlength=k)
        for i, name in enumerate(arm_names):
            out[name][metric] = RegressionAdjustedStatistic(
                n=int(n[i]),
                post_statistic=post[i],
                pre_statistic=pre[i],
                post_pre_sum_of_products=float(cross[i]),
            )
    return out
