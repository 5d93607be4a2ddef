"""Experiments: definitions (configs/experiments.yaml, :mod:`strata.experiments.config`),
assignment of users to arms (:mod:`strata.experiments.assignment`), outcomes per exposed user
(:mod:`strata.experiments.outcomes`) and a pure A/B statistics engine over mergeable
sufficient statistics: :mod:`strata.experiments.stats` holds the statistics and tests (equal to
gbstats 0.8.0's); :func:`analyse` turns per-arm statistics into an experiment's report.
"""

from strata.experiments.analysis import (
    MIN_USERS_PER_ARM,
    SRM_P_THRESHOLD,
    ExperimentAnalysis,
    analyse,
    unit_statistics,
)
from strata.experiments.stats import (
    ProportionStatistic,
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
    Statistic,
    TestResult,
    benjamini_hochberg,
    check_srm,
    merge_statistics,
    sequential_two_sided_ttest,
    two_sided_ttest,
)

__all__ = [
    "MIN_USERS_PER_ARM",
    "SRM_P_THRESHOLD",
    "ExperimentAnalysis",
    "ProportionStatistic",
    "RegressionAdjustedStatistic",
    "SampleMeanStatistic",
    "Statistic",
    "TestResult",
    "analyse",
    "benjamini_hochberg",
    "check_srm",
    "merge_statistics",
    "sequential_two_sided_ttest",
    "two_sided_ttest",
    "unit_statistics",
]
