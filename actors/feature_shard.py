"""FeatureShardActor: owns a set of warehouse buckets through the recompute passes.

A thin shell: it reads its buckets, calls strata/ for every computation, writes its snapshot
buckets and its users into Redis. It keeps pass-1 features in memory between passes; after a
restart (the actor process died) each method recomputes what it needs from the warehouse, so a
retried call returns exactly what the first attempt would have.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from strata.features import (
    DICTIONARY_COLUMNS,
    FEATURE_EVENT_COLUMNS,
    FEATURE_USER_COLUMNS,
    RfmPartials,
    compute_features,
    max_before,
    rfm_partials,
)
from strata.io.models import LoadedModels, ModelRegistry
from strata.io.segment_store import SegmentStore
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from strata.online.codec import RecordLayout, encode
from strata.tiering.scoring import (
    RecomputeConfig,
    align_previous,
    count_by,
    score_features,
    transitions,
)
from strata.tiering.tiers import ScoreHistogram


class FeatureShard:
    """The work of one shard; made a Ray actor by :data:`FeatureShardActor`.

    Args:
        data_root: data root (warehouse and snapshots).
        buckets: the warehouse buckets this shard owns.
        as_of_ms: the as-of instant (epoch ms, UTC).
        config: validated recompute configuration.
        model_version: trained model to score users with (None: no predictions).
    """

    def __init__(
        self,
        data_root: str,
        buckets: list[int],
        as_of_ms: int,
        config: RecomputeConfig,
        model_version: str | None = None,
    ) -> None:
        self.data_root = data_root
        self.buckets = list(buckets)
        self.as_of_ms = as_of_ms
        self.config = config
        self.model_version = model_version
        self._models: LoadedModels | None = None
        self.warehouse = Warehouse(data_root)
        self.snapshots = SnapshotStore(data_root)
        self._features: dict[int, pa.Table] | None = None
        self._last_event_ms: int | None = None

    def _compute(self) -> dict[int, pa.Table]:
        if self._features is None:
            feats = {}
            for b in self.buckets:
                # only the columns the data really has: a column an import did not supply is
                # unknown, and its features stay null rather than read as "none"
                given = set(self.warehouse.bucket_columns("events", b))
                events = self.warehouse.read_bucket(
                    "events",
                    b,
                    [c for c in FEATURE_EVENT_COLUMNS if c in given],
                    read_dictionary=[c for c in DICTIONARY_COLUMNS if c.split(".")[0] in given],
                )
                users = self.warehouse.read_bucket("users", b, list(FEATURE_USER_COLUMNS))
                feats[b] = compute_features(events, users, self.as_of_ms, self.config.features)
                self._last_event_ms = max_before(events, self.as_of_ms, self._last_event_ms)
            self._features = feats
        return self._features

    def features(self, fresh: bool = False) -> dict[str, Any]:
        """Pass 1: features of every owned bucket; returns their mergeable RFM partials.

        Args:
            fresh: recompute even if this actor already holds the features (benchmarks).
        """
        t0 = time.perf_counter()
        if fresh:
            self._features = None
        feats = self._compute()
        partials: RfmPartials | None = None
        for table in feats.values():
            p = rfm_partials(table, self.config.tiers.measures)
            partials = p if partials is None else partials.merge(p)
        return {
            "partials": partials,
            "users": sum(t.num_rows for t in feats.values()),
            "last_event_ms": self._last_event_ms,
            "seconds": time.perf_counter() - t0,
        }

    def score(
        self, partials: RfmPartials, version: str, previous_version: str | None
    ) -> dict[str, Any]:
        """Pass 2: score and tier with the global partials; write this shard's snapshot buckets."""
        t0 = time.perf_counter()
        n_buckets = self.warehouse.n_buckets
        tiers: list[dict[str, int]] = []
        stages: list[dict[str, int]] = []
        moves: list[dict[str, dict[str, int]]] = []
        histograms: list[ScoreHistogram] = []
        for b, table in self._compute().items():
            previous = None
            if previous_version is not None:
                prev = self.snapshots.read_bucket(
                    previous_version, b, n_buckets, ["user_id", "tier"]
                )
                previous = align_previous(table.column("user_id"), prev)
            predictions = None
            if self.model_version is not None:
                if self._models is None:
                    self._models = ModelRegistry(self.data_root).load(self.model_version)
                predictions = self._models.predict(table)
            scored = score_features(
                table, partials, previous, self.as_of_ms, self.config, predictions
            )
            self.snapshots.write_bucket(version, b, n_buckets, scored)
            tiers.append(count_by(scored, "tier"))
            histograms.append(ScoreHistogram.of(scored, self.config.tiers))
            stages.append(count_by(scored, "lifecycle_stage"))
            moves.append(transitions(scored))
        return {
            "predict_users": sum(t.num_rows for t in self._compute().values())
            if self.model_version is not None
            else 0,
            "tiers": tiers,
            "stages": stages,
            "transitions": moves,
            "score_histogram": ScoreHistogram.merge_all(histograms, self.config.tiers),
            "seconds": time.perf_counter() - t0,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }

    def publish(
        self,
        redis_url: str,
        namespace: str,
        version: str,
        layout_json: str,
        redis_mode: str | None = None,
    ) -> int:
        """Pass 3: write this shard's users of ``version`` into Redis (not yet visible;
        ``redis_mode``: ``standalone`` or ``cluster``, default ``STRATA_REDIS_MODE``)."""
        store = SegmentStore(redis_url, namespace=namespace, mode=redis_mode)
        layout = RecordLayout.model_validate_json(layout_json)
        n_buckets = self.warehouse.n_buckets
        written = 0
        for b in self.buckets:
            table = self.snapshots.read_bucket(version, b, n_buckets)
            if table is None or table.num_rows == 0:
                continue
            ids = np.asarray(table.column("user_id").to_numpy(), dtype=np.int64)
            store.write_users(version, ids, encode(table, layout))
            written += table.num_rows
        store.close()
        return written

    def ping(self) -> bool:
        return True

    def node_id(self) -> str:
        """The Ray node this shard runs on (a job replaces shards whose node died)."""
        return str(ray.get_runtime_context().get_node_id())


#: The shard as a Ray actor: restarted if its process dies, and the call in flight retried.
FeatureShardActor = ray.remote(max_restarts=3, max_task_retries=3)(FeatureShard)
