"""The synthetic grocery generator: configuration, per-bucket simulation, synthetic users.

What it offers (every name below is also importable from ``strata.synth`` itself):

* :mod:`strata.synth.config` — :class:`GeneratorConfig` and its :class:`PersonaConfig`
  entries, loaded and validated from ``configs/generator.yaml`` by
  :func:`load_generator_config`;
* :mod:`strata.synth.simulate` — :func:`generate_bucket`, the vectorised simulation of one
  warehouse bucket into :class:`BucketData` (events, users, and ground truth of
  :func:`truth_schema`), the window helpers :func:`window_start` and :data:`MAX_DAYS`, and the
  transaction-log view :func:`orders_only` with its :data:`ORDER_LOG_COLUMNS`;
* :mod:`strata.synth.experiment` — a simulated experiment with a known effect
  (``strata generate --experiment``): :func:`plan_experiment` builds the
  :class:`ExperimentPlan` that :func:`generate_bucket` takes, whose bucket yields exposures and
  a mergeable :class:`ExperimentTruth` (the effect planted); the true effects live in
  generator.yaml as :class:`SimulatedExperimentConfig`;
* :mod:`strata.synth.users` — :func:`raw_user_ids` (from :data:`FIRST_RAW_ID`) and
  :func:`users_by_bucket`, the synthetic users grouped by warehouse bucket; the same in
  stages: :func:`id_ranges`, :func:`range_by_bucket` and :func:`bucket_offsets`.

:func:`local_midnight_ms` is :func:`strata.timeutil.local_midnight_ms`, re-exported for the
callers that bound the window next to :func:`window_start`.
"""

from strata.synth.config import (
    GeneratorConfig,
    PersonaConfig,
    SimulatedExperimentConfig,
    load_generator_config,
)
from strata.synth.experiment import ExperimentPlan, ExperimentTruth, plan_experiment
from strata.synth.simulate import (
    MAX_DAYS,
    ORDER_LOG_COLUMNS,
    BucketData,
    generate_bucket,
    orders_only,
    truth_schema,
    window_start,
)
from strata.synth.users import (
    FIRST_RAW_ID,
    RANGE_USERS,
    bucket_offsets,
    id_ranges,
    range_by_bucket,
    raw_user_ids,
    users_by_bucket,
)
from strata.timeutil import local_midnight_ms

__all__ = [
    "FIRST_RAW_ID",
    "MAX_DAYS",
    "ORDER_LOG_COLUMNS",
    "RANGE_USERS",
    "BucketData",
    "ExperimentPlan",
    "ExperimentTruth",
    "GeneratorConfig",
    "PersonaConfig",
    "SimulatedExperimentConfig",
    "bucket_offsets",
    "generate_bucket",
    "id_ranges",
    "load_generator_config",
    "local_midnight_ms",
    "orders_only",
    "plan_experiment",
    "range_by_bucket",
    "raw_user_ids",
    "truth_schema",
    "users_by_bucket",
    "window_start",
]
