"""The frequentist statistics engine, equal to GrowthBook's gbstats 0.8.0 on the same inputs.

Everything here works on *sufficient statistics*: per arm and metric a few sums that shards or
SQL can compute and :meth:`merge` adds together. The tests then follow gbstats 0.8.0's formulas
line for line (``gbstats/models/statistics.py``, ``gbstats/frequentist/tests.py``,
``gbstats/utils.py``), including its edge cases (a zero baseline or a zero variance gives the
uninformative result ``effect 0, CI [0, 0], p 1`` with an error code), so the numbers agree
with gbstats to floating-point noise; ``tests/unit/test_ab_stats.py`` checks them against
gbstats itself to 1e-9.

* :class:`SampleMeanStatistic` (n, sum, sum of squares), :class:`ProportionStatistic` (n, sum of
  a 0/1 metric) and :class:`RegressionAdjustedStatistic` (CUPED: post and pre statistics and
  their cross sum; theta is fitted on both arms together at test time, as gbstats does).
* :func:`two_sided_ttest`: Welch t-test, absolute or relative (delta method) effect, CI, p-value;
  :func:`sequential_two_sided_ttest`: gbstats' always-valid (mixture sequential) variant.
* :func:`check_srm`: sample-ratio-mismatch chi-square p-value.
* :func:`benjamini_hochberg`: adjusted p-values across a family (gbstats leaves this to the
  GrowthBook front end; the standard step-up procedure).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy.stats import chi2, t

#: gbstats' error codes of an uninformative result (``gbstats/messages.py``)
BASELINE_VARIATION_ZERO = "ZERO_NEGATIVE_BASELINE_VARIATION"
ZERO_NEGATIVE_VARIANCE = "ZERO_NEGATIVE_VARIANCE"

#: gbstats' default tuning of the sequential test (its ``SequentialConfig``)
DEFAULT_SEQUENTIAL_TUNING = 5000.0

DifferenceType = Literal["absolute", "relative"]


@dataclass(frozen=True, slots=True)
class SampleMeanStatistic:
    """A metric's n, sum and sum of squares in one arm (gbstats' ``SampleMeanStatistic``)."""

    n: int
    sum: float
    sum_squares: float

    @property
    def mean(self) -> float:
        return 0.0 if self.n == 0 else self.sum / self.n

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator); 0 for n <= 1."""
        if self.n <= 1:
            return 0.0
        return (self.sum_squares - self.sum**2 / self.n) / (self.n - 1)

    @property
    def unadjusted_mean(self) -> float:
        return self.mean

    @property
    def stddev(self) -> float:
        v = self.variance
        return 0.0 if v <= 0 else math.sqrt(v)

    def merge(self, other: SampleMeanStatistic) -> SampleMeanStatistic:
        """The statistic of both samples together."""
        return SampleMeanStatistic(
            self.n + other.n, self.sum + other.sum, self.sum_squares + other.sum_squares
        )


@dataclass(frozen=True, slots=True)
class ProportionStatistic:
    """A 0/1 metric's n and sum (count of ones) in one arm (gbstats' ``ProportionStatistic``)."""

    n: int
    sum: float

    @property
    def sum_squares(self) -> float:
        return self.sum

    @property
    def mean(self) -> float:
        return 0.0 if self.n == 0 else self.sum / self.n

    @property
    def variance(self) -> float:
        """p (1 - p), without the n / (n - 1) correction (as gbstats)."""
        m = self.mean
        return m * (1 - m)

    @property
    def unadjusted_mean(self) -> float:
        return self.mean

    @property
    def stddev(self) -> float:
        v = self.variance
        return 0.0 if v <= 0 else math.sqrt(v)

    def merge(self, other: ProportionStatistic) -> ProportionStatistic:
        """The statistic of both samples together."""
        return ProportionStatistic(self.n + other.n, self.sum + other.sum)


BaseStatistic = SampleMeanStatistic | ProportionStatistic


@dataclass(frozen=True, slots=True)
class RegressionAdjustedStatistic:
    """CUPED: a metric (post) and its pre-exposure covariate (pre) in one arm.

    ``theta`` is set by the test from both arms (:func:`compute_theta`); a statistic built from
    data or merged has theta 0.
    """

    n: int
    post_statistic: BaseStatistic
    pre_statistic: BaseStatistic
    post_pre_sum_of_products: float
    theta: float = 0.0

    @property
    def mean(self) -> float:
        return self.post_statistic.mean - self.theta * self.pre_statistic.mean

    @property
    def unadjusted_mean(self) -> float:
        return self.post_statistic.mean

    @property
    def covariance(self) -> float:
        if self.n <= 1:
            return 0.0
        return (
            self.post_pre_sum_of_products
            - self.post_statistic.sum * self.pre_statistic.sum / self.n
        ) / (self.n - 1)

    @property
    def variance(self) -> float:
        if self.n <= 1:
            return 0.0
        return (
            self.post_statistic.variance
            + self.theta**2 * self.pre_statistic.variance
            - 2 * self.theta * self.covariance
        )

    @property
    def stddev(self) -> float:
        v = self.variance
        return 0.0 if v <= 0 else math.sqrt(v)

    def merge(self, other: RegressionAdjustedStatistic) -> RegressionAdjustedStatistic:
        """The statistic of both samples together (theta 0: it is fitted at test time)."""
        return RegressionAdjustedStatistic(
            n=self.n + other.n,
            post_statistic=_merge_base(self.post_statistic, other.post_statistic),
            pre_statistic=_merge_base(self.pre_statistic, other.pre_statistic),
            post_pre_sum_of_products=self.post_pre_sum_of_products + other.post_pre_sum_of_products,
        )


Statistic = SampleMeanStatistic | ProportionStatistic | RegressionAdjustedStatistic


def _merge_base(a: BaseStatistic, b: BaseStatistic) -> BaseStatistic:
    if isinstance(a, ProportionStatistic) and isinstance(b, ProportionStatistic):
        return a.merge(b)
    if isinstance(a, SampleMeanStatistic) and isinstance(b, SampleMeanStatistic):
        return a.merge(b)
    raise ValueError("a metric's statistics must be of one type in every arm")


def merge_statistics(a: Statistic, b: Statistic) -> Statistic:
    """Merge two partial statistics of one metric and arm (e.g. from two shards)."""
    if isinstance(a, RegressionAdjustedStatistic) and isinstance(b, RegressionAdjustedStatistic):
        return a.merge(b)
    if isinstance(a, RegressionAdjustedStatistic) or isinstance(b, RegressionAdjustedStatistic):
        raise ValueError("a metric's statistics must be of one type in every arm")
    return _merge_base(a, b)


def compute_theta(a: RegressionAdjustedStatistic, b: RegressionAdjustedStatistic) -> float:
    """CUPED's theta from both arms pooled: cov(post, pre) / var(pre); 0 if either variance is 0.

    As gbstats' ``compute_theta`` (the pooled sample is ``create_joint_statistic``).
    """
    n = a.n + b.n
    post = _merge_base(a.post_statistic, b.post_statistic)
    pre = _merge_base(a.pre_statistic, b.pre_statistic)
    post = replace(post, n=n)
    pre = replace(pre, n=n)
    if pre.variance == 0 or post.variance == 0:
        return 0.0
    joint = RegressionAdjustedStatistic(
        n=n,
        post_statistic=post,
        pre_statistic=pre,
        post_pre_sum_of_products=a.post_pre_sum_of_products + b.post_pre_sum_of_products,
    )
    return joint.covariance / pre.variance


@dataclass(frozen=True, slots=True)
class TestResult:
    """One comparison of a treatment arm with its baseline, for one difference type.

    Attributes:
        effect: the point estimate (absolute difference of means, or relative to the baseline).
        ci_low, ci_high: the confidence interval (1 - alpha).
        p_value: two-sided p-value of "no effect".
        stddev: the estimate's standard error.
        cuped: whether CUPED was applied (a covariate was given and theta is not 0).
        error: gbstats' error code when the result is the uninformative default, else None.
    """

    __test__ = False  # not a pytest test class

    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    stddev: float
    cuped: bool = False
    error: str | None = None


def _prepare(stat_a: Statistic, stat_b: Statistic) -> tuple[Statistic, Statistic, bool]:
    """Fit CUPED's theta on both arms (gbstats' ``BaseABTest.__init__``)."""
    if isinstance(stat_a, RegressionAdjustedStatistic) and isinstance(
        stat_b, RegressionAdjustedStatistic
    ):
        theta = compute_theta(stat_a, stat_b)
        if theta == 0:
            # no variance to regress on: the plain test of the post statistics
            return stat_a.post_statistic, stat_b.post_statistic, False
        return replace(stat_a, theta=theta), replace(stat_b, theta=theta), True
    if isinstance(stat_a, RegressionAdjustedStatistic) or isinstance(
        stat_b, RegressionAdjustedStatistic
    ):
        raise ValueError("both arms need a covariate for CUPED, or neither")
    return stat_a, stat_b, False


def _point_estimate(a: Statistic, b: Statistic, relative: bool) -> float:
    if relative:
        # gbstats falls back to the adjusted mean when the unadjusted one is 0
        denominator = a.unadjusted_mean or a.mean
        return (b.mean - a.mean) / denominator
    return b.mean - a.mean


def _variance(a: Statistic, b: Statistic, relative: bool) -> float:
    if relative:
        ma, mb = a.unadjusted_mean, b.unadjusted_mean
        return b.variance / (ma**2 * b.n) + a.variance * mb**2 / (ma**4 * a.n)
    return b.variance / b.n + a.variance / a.n


def _welch_dof(a: Statistic, b: Statistic) -> float:
    va, vb = a.variance, b.variance
    return (vb / b.n + va / a.n) ** 2 / (
        vb**2 / (b.n**2 * (b.n - 1)) + va**2 / (a.n**2 * (a.n - 1))
    )


def _default_result(error: str, cuped: bool) -> TestResult:
    return TestResult(0.0, 0.0, 0.0, 1.0, 0.0, cuped=cuped, error=error)


def _degenerate(a: Statistic, b: Statistic) -> str | None:
    if a.mean == 0 or a.unadjusted_mean == 0:
        return BASELINE_VARIATION_ZERO
    if a.variance <= 0 or b.variance <= 0:
        return ZERO_NEGATIVE_VARIANCE
    return None


def two_sided_ttest(
    stat_a: Statistic,
    stat_b: Statistic,
    difference: DifferenceType = "relative",
    alpha: float = 0.05,
    test_value: float = 0.0,
) -> TestResult:
    """Welch's two-sided t-test of arm b against baseline a, as gbstats' ``TwoSidedTTest``.

    Args:
        stat_a: the baseline (control) arm's statistic.
        stat_b: the treatment arm's statistic (same kind as stat_a).
        difference: ``"absolute"`` (mean_b - mean_a) or ``"relative"`` ((mean_b - mean_a) /
            mean_a, variance by the delta method).
        alpha: 1 - the CI's coverage.
        test_value: the effect under the null hypothesis.

    Returns:
        The :class:`TestResult`; the uninformative default (with ``error``) when the baseline
        mean is 0 or a variance is not positive.
    """
    a, b, cuped = _prepare(stat_a, stat_b)
    error = _degenerate(a, b)
    if error is not None:
        return _default_result(error, cuped)
    relative = difference == "relative"
    estimate = _point_estimate(a, b, relative)
    variance = _variance(a, b, relative)
    dof = _welch_dof(a, b)
    critical = (estimate - test_value) / np.sqrt(variance)
    p_value = 2 * (1 - t.cdf(abs(critical), dof))
    width = t.ppf(1 - alpha / 2, dof) * np.sqrt(variance)
    return TestResult(
        effect=float(estimate),
        ci_low=float(estimate - width),
        ci_high=float(estimate + width),
        p_value=float(p_value),
        stddev=float(np.sqrt(variance)),
        cuped=cuped,
    )


def sequential_two_sided_ttest(
    stat_a: Statistic,
    stat_b: Statistic,
    difference: DifferenceType = "relative",
    alpha: float = 0.05,
    tuning: float = DEFAULT_SEQUENTIAL_TUNING,
    test_value: float = 0.0,
) -> TestResult:
    """The always-valid sequential test, as gbstats' ``SequentialTwoSidedTTest``.

    Its CI and p-value stay valid however often the experiment is looked at (Waudby-Smith et
    al. 2023, eq. 9 and 155); ``tuning`` is the sample size it is tightest at.
    """
    a, b, cuped = _prepare(stat_a, stat_b)
    error = _degenerate(a, b)
    if error is not None:
        return _default_result(error, cuped)
    relative = difference == "relative"
    estimate = _point_estimate(a, b, relative)
    variance = _variance(a, b, relative)
    n_total = a.n + b.n
    rho = np.sqrt((-2 * np.log(alpha) + np.log(-2 * np.log(alpha) + 1)) / tuning)
    s2 = variance * n_total
    width = np.sqrt(s2) * np.sqrt(
        (2 * (n_total * np.power(rho, 2) + 1))
        * np.log(np.sqrt(n_total * np.power(rho, 2) + 1) / alpha)
        / np.power(n_total * rho, 2)
    )
    st2 = np.power(estimate - test_value, 2) * n_total / variance
    tr2p1 = n_total * np.power(rho, 2) + 1
    evalue = np.exp(np.power(rho, 2) * st2 / (2 * tr2p1)) / np.sqrt(tr2p1)
    return TestResult(
        effect=float(estimate),
        ci_low=float(estimate - width),
        ci_high=float(estimate + width),
        p_value=float(min(1 / evalue, 1)),
        stddev=float(np.sqrt(variance)),
        cuped=cuped,
    )


def check_srm(users: Sequence[int], weights: Sequence[float]) -> float:
    """Sample-ratio-mismatch p-value: chi-square of observed users against expected weights.

    As gbstats' ``check_srm``: arms with weight <= 0 are skipped, the degrees of freedom are
    ``len(users) - 1``, and no users at all give 1.
    """
    if len(users) != len(weights):
        raise ValueError("check_srm needs one weight per arm")
    total_observed = sum(users)
    if not total_observed:
        return 1.0
    total_weight = sum(weights)
    x = 0.0
    for o, w in zip(users, weights, strict=True):
        if w <= 0:
            continue
        e = w / total_weight * total_observed
        x += (o - e) ** 2 / e
    return float(chi2.sf(x, len(users) - 1))


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (step-up, capped at 1), in the input's order."""
    m = len(p_values)
    if m == 0:
        return []
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    adjusted_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted_sorted, 1.0)
    return [float(x) for x in out]
