"""Each tunable has one value: a config model's defaults equal its shipped YAML, so code that
builds the model without the file (tests, library callers) behaves as the shipped config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from strata.config import StrictModel
from strata.features import FeatureConfig, load_feature_config
from strata.privacy import RetentionConfig, load_retention_config
from strata.realtime.stream_config import StreamConfig, load_stream_config
from strata.serving.config import ApiConfig, load_api_config
from strata.tiering.lifecycle import LifecycleRules, load_lifecycle_rules
from strata.tiering.scoring import RecomputeOptions, load_recompute_options
from strata.training import TrainConfig, load_train_config

CASES: list[tuple[type[StrictModel], Callable[[], Any]]] = [
    (LifecycleRules, load_lifecycle_rules),
    (ApiConfig, load_api_config),
    (RecomputeOptions, load_recompute_options),
    (FeatureConfig, load_feature_config),
    (TrainConfig, load_train_config),
    (StreamConfig, load_stream_config),
    (RetentionConfig, load_retention_config),
]


@pytest.mark.parametrize(("model", "load"), CASES, ids=[m.__name__ for m, _ in CASES])
def test_model_defaults_equal_the_shipped_yaml(
    model: type[StrictModel], load: Callable[[], Any]
) -> None:
    assert model().model_dump() == load().model_dump()
