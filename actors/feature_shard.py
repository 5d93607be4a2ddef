"""FeatureShardActor: owns a set of warehouse buckets through the recompute passes.

A thin shell: it reads its buckets, calls strata/ for every computation, writes its snapshot
buckets and its users into Redis. It keeps pass-1 features between passes as one Arrow IPC
file per bucket in a scratch folder on its node's local disk (not in memory: a shard of 5M
users' features is ~3 GB, and holding one bucket at a time keeps the actor's memory at one
bucket's worth whatever the user count); after a restart (the actor process died) each method
recomputes what it needs from the warehouse, so a retried call returns exactly what the first
attempt would have. :meth:`FeatureShard.close` removes the scratch folder (so does the
shard's garbage collection or its process's normal exit); a folder left by a killed process is
swept by the next shard that starts on that node.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
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

#: scratch folders are ``<tmp>/strata-features-<pid>-<random>``
SCRATCH_PREFIX = "strata-features-"


def _sweep_dead_scratch(tmp: str) -> None:
    """Remove the scratch folders of processes that no longer exist (killed shards)."""
    for folder in Path(tmp).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = folder.name[len(SCRATCH_PREFIX) :].split("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive, someone else's
            pass


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
        #: bucket -> its spilled pass-1 features (None: not computed in this process)
        self._spilled: dict[int, str] | None = None
        self._scratch: str | None = None
        self._cleanup: weakref.finalize[Any, Any] | None = None
        self._last_event_ms: int | None = None

    def _compute_bucket(self, b: int) -> pa.Table:
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
        self._last_event_ms = max_before(events, self.as_of_ms, self._last_event_ms)
        return compute_features(events, users, self.as_of_ms, self.config.features)

    def _bucket_features(self) -> Iterator[tuple[int, pa.Table]]:
        """Each owned bucket's features, one bucket in memory at a time: read back from the
        scratch files, or computed (and spilled) when this process has none yet."""
        if self._spilled is not None:
            for b, path in self._spilled.items():
                with pa.OSFile(path) as f:  # read, not memory-mapped: no pages stay mapped
                    yield b, pa.ipc.open_file(f).read_all()
            return
        self.close()
        _sweep_dead_scratch(tempfile.gettempdir())
        self._scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._scratch, True)
        spilled: dict[int, str] = {}
        self._last_event_ms = None
        for b in self.buckets:
            table = self._compute_bucket(b)
            path = os.path.join(self._scratch, f"{b}.arrow")
            with pa.OSFile(path, "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
                writer.write_table(table)
            spilled[b] = path
            yield b, table
        self._spilled = spilled

    def _compute(self) -> dict[int, pa.Table]:
        """Every owned bucket's features at once (tests and benchmarks on a few buckets)."""
        return dict(self._bucket_features())

    def close(self) -> None:
        """Remove the scratch files of the pass-1 features (the next pass recomputes them)."""
        if self._cleanup is not None:
            self._cleanup()  # rmtree, once
        self._cleanup = None
        self._scratch = None
        self._spilled = None

    def features(self, fresh: bool = False) -> dict[str, Any]:
        """Pass 1: features of every owned bucket; returns their mergeable RFM partials.

        Args:
            fresh: recompute even if this actor already holds the features (benchmarks).
        """
        t0 = time.perf_counter()
        if fresh:
            self.close()
        partials: RfmPartials | None = None
        users = 0
        for _, table in self._bucket_features():
            p = rfm_partials(table, self.config.tiers.measures)
            partials = p if partials is None else partials.merge(p)
            users += table.num_rows
        return {
            "partials": partials,
            "users": users,
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
        histogram = ScoreHistogram.empty(self.config.tiers)
        predict_users = 0
        for b, table in self._bucket_features():
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
                predict_users += table.num_rows
            scored = score_features(
                table, partials, previous, self.as_of_ms, self.config, predictions
            )
            self.snapshots.write_bucket(version, b, n_buckets, scored)
            tiers.append(count_by(scored, "tier"))
            histogram = histogram.merge(ScoreHistogram.of(scored, self.config.tiers))
            stages.append(count_by(scored, "lifecycle_stage"))
            moves.append(transitions(scored))
        return {
            "predict_users": predict_users,
            "tiers": tiers,
            "stages": stages,
            "transitions": moves,
            "score_histogram": histogram,
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
