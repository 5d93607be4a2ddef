"""Test helpers shared by several test modules: deterministic segment records and a publish."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from strata.ids import pseudonymise_many
from strata.io.segment_store import SegmentStore
from strata.online.codec import (
    ACTIVE_SLOTS,
    DAYTYPES,
    LIFECYCLE_STAGES,
    REGIONS,
    TIER_RULES,
    TIERS,
    RecordLayout,
    encode,
    n_groups_for,
    snapshot_layout,
)
from strata.tiering.bands import FREQUENCY_BANDS, RECENCY_BANDS, SPEND_LEVELS

FULL = snapshot_layout(predictions=True)
BASE = snapshot_layout()


def segment_columns(ids: np.ndarray, marker: int, layout: RecordLayout = FULL) -> dict[str, Any]:
    """Deterministic records of ``ids``; ``frequency_90d`` carries the version's marker."""
    ids = np.asarray(ids, dtype=np.int64)
    cols: dict[str, Any] = {
        "tier": pa.array(np.array(TIERS)[ids % len(TIERS)]),
        "lifecycle_stage": pa.array(np.array(LIFECYCLE_STAGES)[(ids // 7) % 5]),
        "top_category": pa.array(
            [None if i % 9 == 0 else "fruit" if i % 2 else "seafood" for i in ids.tolist()],
            pa.string(),
        ),
        "price_sensitivity": pa.array(["unknown"] * len(ids)),
        "active_slot": pa.array(np.array(ACTIVE_SLOTS)[ids % 5]),
        "channel": pa.array(["ads"] * len(ids)),
        "rfm_r": (ids % 200) / 200,
        "rfm_f": (ids % 100) / 100,
        "rfm_m": (ids % 50) / 50,
        "rfm_score": (ids % 10_000) / 10_000,
        "recency_days": np.where(ids % 11 == 0, np.nan, ids % 365),
        "frequency_90d": np.full(len(ids), marker),
        "monetary_90d": (ids % 100_000) / 100 + 0.5,
        "churn_p": (ids % 9_999) / 10_000,
        "repurchase_p": ((ids + 1) % 9_999) / 10_000,
        "predicted_spend": (ids % 3_000) / 10,
        "tier_rule": pa.array(np.array(TIER_RULES)[ids % len(TIER_RULES)]),
        "recency_band": pa.array(np.array(RECENCY_BANDS)[ids % len(RECENCY_BANDS)]),
        "frequency_band": pa.array(np.array(FREQUENCY_BANDS)[ids % len(FREQUENCY_BANDS)]),
        "spend_level": pa.array(np.array(SPEND_LEVELS)[ids % len(SPEND_LEVELS)]),
        "active_daytype": pa.array(np.array(DAYTYPES)[ids % len(DAYTYPES)]),
        "age_band": pa.array(["25-34"] * len(ids)),
        "gender": pa.array(["female" if i % 2 else "male" for i in ids.tolist()]),
        "region": pa.array(np.array(REGIONS)[ids % len(REGIONS)]),
        "device": pa.array(["ios"] * len(ids)),
        "ltv_cny": (ids % 20_000).astype(np.float64),
        "arpu_30d_cny": (ids % 500).astype(np.float64),
        "discount_sensitivity": (ids % 200) / 200,
    }
    return {k: v for k, v in cols.items() if k in layout.names}


def publish_raw_users(
    url: str,
    version: str,
    raw_ids: Sequence[str],
    key: str,
    *,
    marker: int = 1,
    layout: RecordLayout = FULL,
    meta: Mapping[str, Any] | None = None,
    namespace: str = "strata",
    keep: int = 3,
) -> np.ndarray:
    """Publish ``raw_ids`` (pseudonymised with ``key``) as ``version``; returns their ids."""
    ids = pseudonymise_many(list(raw_ids), key.encode())
    store = SegmentStore(url, namespace=namespace)
    try:
        store.begin_version(
            version,
            layout,
            n_groups_for(len(ids)),
            {"job": "test", "as_of": "2026-11-01T00:00:00+08:00", **(meta or {})},
        )
        store.write_users(version, ids, encode(segment_columns(ids, marker, layout), layout))
        store.publish(version, keep=keep, expected_users=len(ids))
    finally:
        store.close()
    return ids


def rt_stats(client: Any, namespace: str = "strata") -> dict[bytes, bytes]:
    """The rule statistics of every stream partition merged (``{ns}:rt:{pP}:stats``), as the
    API and ``strata rules stats`` read them."""
    from strata.io.realtime_store import RealtimeStore
    from strata.realtime.stream_config import StreamConfig

    return RealtimeStore(client, namespace, StreamConfig()).read_rule_stats()[1]
