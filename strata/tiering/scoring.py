"""Second pass of the recompute: RFM scores from global cut points, lifecycle, tiers.

Pure functions over one shard's features; the actor calls them after the driver has merged
every shard's :class:`strata.features.RfmPartials`. Nothing here depends on how users were
spread over shards, so 1, 2 or 4 actors give identical rows.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from strata.config import StrictModel, config_path, load_yaml
from strata.features import FeatureConfig, RfmPartials, load_feature_config, rfm_scores
from strata.schema import MODEL_PREDICTION_COLUMNS
from strata.tiering.bands import assign_bands
from strata.tiering.lifecycle import LifecycleRules, assign_lifecycle, load_lifecycle_rules
from strata.tiering.tiers import TierRules, assign_tiers, load_tier_rules

NEW_USER = "(new)"
PREDICTION_COLUMNS: tuple[str, ...] = tuple(MODEL_PREDICTION_COLUMNS.values())


class RecomputeOptions(StrictModel):
    """configs/recompute.yaml: how trained models are used."""

    predictions: Literal["auto", "required", "off"] = "auto"
    on_model_error: Literal["fail", "continue"] = "fail"


def load_recompute_options(config_dir: str | Path | None = None) -> RecomputeOptions:
    return load_yaml(config_path("recompute", config_dir), RecomputeOptions)


@dataclass(frozen=True)
class RecomputeConfig:
    """Every configuration the recompute depends on, validated before any work."""

    features: FeatureConfig
    lifecycle: LifecycleRules
    tiers: TierRules
    options: RecomputeOptions

    @classmethod
    def load(cls, config_dir: str | Path | None = None) -> RecomputeConfig:
        """Load and validate configs/features.yaml, lifecycle.yaml, tiers.yaml, recompute.yaml.

        Raises:
            strata.config.ConfigError: naming the file and key at fault.
        """
        return cls(
            features=load_feature_config(config_dir),
            lifecycle=load_lifecycle_rules(config_dir),
            tiers=load_tier_rules(config_dir),
            options=load_recompute_options(config_dir),
        )

    def digest(self) -> str:
        """sha256 of the canonical JSON of every config (recorded in the manifest)."""
        blob = json.dumps(
            {
                "features": self.features.model_dump(mode="json"),
                "lifecycle": self.lifecycle.model_dump(mode="json"),
                "tiers": self.tiers.model_dump(mode="json"),
                "options": self.options.model_dump(mode="json"),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


def score_features(
    features: pa.Table,
    partials: RfmPartials,
    previous_tier: pa.Array | pa.ChunkedArray | None,
    as_of_ms: int,
    config: RecomputeConfig,
    predictions: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """Add rfm_r/f/m, rfm_score, predictions, lifecycle, tier and RFM band columns
    (recency_band, frequency_band, spend_level) to one shard's features.

    Args:
        features: per-user features of one bucket, sorted by user_id.
        partials: the merged (global) RFM partials of every shard.
        previous_tier: each user's tier in the previous snapshot (aligned with ``features``),
            null for users it did not have; None when there is no previous snapshot.
        as_of_ms: the as-of instant.
        config: all recompute configuration.
        predictions: model outputs per user (``PREDICTION_COLUMNS``), None without a model
            (the columns are then null).

    Returns:
        ``features`` with the scoring columns appended.
    """
    rules = config.tiers
    w = rules.weights
    r, f, m, score = rfm_scores(
        features, partials, (w.recency, w.frequency, w.monetary), config.tiers.measures
    )
    stage, stage_rule = assign_lifecycle(features, as_of_ms, config.lifecycle)
    ltv = features.column("ltv_cny").to_numpy(zero_copy_only=False).astype("float64")
    churn_p = predictions["churn_p"] if predictions is not None else None
    tier, tier_rule, explanation = assign_tiers(
        score, stage, ltv, previous_tier, config.tiers, churn_p=churn_p
    )
    prev = (
        previous_tier.cast(pa.string())
        if previous_tier is not None
        else pa.nulls(features.num_rows, pa.string())
    )
    columns = {
        "rfm_r": pa.array(np.round(r, 6)),
        "rfm_f": pa.array(np.round(f, 6)),
        "rfm_m": pa.array(np.round(m, 6)),
        "rfm_score": pa.array(np.round(score, 6)),
        **{
            name: (
                pa.array(np.round(predictions[name], 6), pa.float64())
                if predictions is not None
                else pa.nulls(features.num_rows, pa.float64())
            )
            for name in PREDICTION_COLUMNS
        },
        "lifecycle_stage": stage,
        "lifecycle_rule": stage_rule,
        "tier": tier,
        "tier_rule": tier_rule,
        "tier_explanation": explanation,
        "previous_tier": prev,
        **assign_bands(
            features, partials, as_of_ms, rules.rfm_bands, rules.measures.monetary.window
        ),
    }
    out = features
    for name, col in columns.items():
        out = out.append_column(name, col)
    return out


def align_previous(user_ids: pa.Array | pa.ChunkedArray, previous: pa.Table | None) -> pa.Array:
    """Previous tier of each user (null when absent), from a previous snapshot bucket."""
    if previous is None or previous.num_rows == 0:
        return pa.nulls(len(user_ids), pa.string())
    idx = pc.index_in(user_ids, previous.column("user_id"))
    return previous.column("tier").take(idx).combine_chunks()


def count_by(table: pa.Table, column: str) -> dict[str, int]:
    """Rows per value of a string column (nulls counted as "null")."""
    counts = pc.value_counts(pc.fill_null(table.column(column), "null"))
    return {
        str(v): int(c)
        for v, c in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
    }


def transitions(scored: pa.Table) -> dict[str, dict[str, int]]:
    """Transition counts previous tier -> tier; users new to the snapshot come from "(new)"."""
    prev = pc.fill_null(scored.column("previous_tier"), NEW_USER).to_pylist()
    now = scored.column("tier").to_pylist()
    out: dict[str, dict[str, int]] = {}
    for (a, b), c in Counter(zip(prev, now, strict=True)).items():
        out.setdefault(str(a), {})[str(b)] = c
    return out


def merge_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum nested count dictionaries (transition matrices, per-tier counts)."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict):
                out[key] = merge_counts([out.get(key, {}), value])
            else:
                out[key] = out.get(key, 0) + value
    return out
