"""Per-user features of one user bucket, and their global R, F, M normalisation.

What it offers:

* :mod:`strata.features.compute` — :func:`compute_features` (one bucket's events and users, sorted
  by ``(user_id, ts)``, to one row per user: RFM windows, BTYD summary, category and time
  preferences, price sensitivity, funnel counts, value), :data:`FEATURES_SCHEMA`, and
  :class:`FeatureConfig` (``configs/features.yaml``);
* :mod:`strata.features.rfm` — mergeable :class:`RfmPartials`, :func:`rfm_partials`,
  :func:`rfm_scores` and the configurable :class:`RfmMeasures`.
"""

from strata.features.compute import (
    DAYTYPE_LABELS,
    DICTIONARY_COLUMNS,
    FEATURE_COLUMNS,
    FEATURE_EVENT_COLUMNS,
    FEATURE_USER_COLUMNS,
    FEATURES_SCHEMA,
    PRICE_SENSITIVITY_LABELS,
    SLOTS,
    FeatureConfig,
    compute_features,
    int64_values,
    load_feature_config,
    max_before,
)
from strata.features.rfm import (
    MONEY_BINS,
    FrequencyMeasure,
    IntHistogram,
    LogHistogram,
    MonetaryMeasure,
    RecencyMeasure,
    RfmMeasures,
    RfmPartials,
    money_bin,
    percentile_rank,
    rfm_partials,
    rfm_scores,
)

__all__ = [
    "DAYTYPE_LABELS",
    "DICTIONARY_COLUMNS",
    "FEATURES_SCHEMA",
    "FEATURE_COLUMNS",
    "FEATURE_EVENT_COLUMNS",
    "FEATURE_USER_COLUMNS",
    "MONEY_BINS",
    "PRICE_SENSITIVITY_LABELS",
    "SLOTS",
    "FeatureConfig",
    "FrequencyMeasure",
    "IntHistogram",
    "LogHistogram",
    "MonetaryMeasure",
    "RecencyMeasure",
    "RfmMeasures",
    "RfmPartials",
    "compute_features",
    "int64_values",
    "load_feature_config",
    "max_before",
    "money_bin",
    "percentile_rank",
    "rfm_partials",
    "rfm_scores",
]
