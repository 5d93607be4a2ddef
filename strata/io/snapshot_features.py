"""What a live re-score reads from a snapshot: its as-of, its RFM partials and users' rows.

The stream worker scores live orders against the current (published) snapshot
(:class:`strata.realtime.live.LiveScorer`): the snapshot's merged RFM partials are the cut
points, and each user's snapshot row is the base the live deltas are added to. Rows are read
per snapshot bucket file (``SnapshotStore.read_bucket``, only the columns the scorer needs)
and kept in a least-recently-used cache bounded in bytes, so a worker that sees the users of
1/P of the buckets holds about 1/P of the snapshot at most, and never more than the bound.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from strata.features.rfm import RfmPartials
from strata.ids import bucket_of
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from strata.realtime.live import LIVE_FEATURE_COLUMNS

__all__ = ["SnapshotFeatures"]

#: default bound of the bucket cache (Arrow bytes of the cached columns)
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


class SnapshotFeatures:
    """The live scorer's view of one complete snapshot.

    Args:
        data_root: data root (local path or any pyarrow filesystem URI).
        version: snapshot version (the published one, ``SegmentStore.current()``).
        columns: feature columns to read (those the file lacks, e.g. ``churn_p`` of a
            snapshot without a model, are left out of the rows).
        max_cache_bytes: bound of the bucket cache; the least recently used buckets are
            dropped beyond it (one bucket is always kept, however large).

    Raises:
        strata.io.warehouse.WarehouseError: the snapshot is missing or incomplete, or has no
            stored RFM partials (written before they were kept: recompute once).
    """

    def __init__(
        self,
        data_root: str,
        version: str,
        columns: Sequence[str] = LIVE_FEATURE_COLUMNS,
        max_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.store = SnapshotStore(data_root)
        self.version = version
        self.manifest = self.store.manifest(version)
        self.as_of_ms = int(self.manifest["as_of_ms"])
        #: the as-of as the snapshot's manifest (and so the segment API) writes it
        self.as_of_iso = str(self.manifest["as_of"])
        self.config_sha256: str | None = self.manifest.get("config_sha256")
        self.partials: RfmPartials = self.store.read_partials(version)
        #: the snapshot was scored with a trained model (its churn_p decides churn warnings)
        self.with_predictions = bool(self.manifest.get("predictions", {}).get("model_version"))
        stored = self.manifest.get("inputs", {}).get("n_buckets")
        self.n_buckets = int(stored) if stored else Warehouse(data_root).n_buckets
        self.columns = list(dict.fromkeys(["user_id", *columns]))
        self.max_cache_bytes = max_cache_bytes
        self._cache: OrderedDict[int, tuple[np.ndarray, pa.Table]] = OrderedDict()
        self._cached_bytes = 0
        #: bucket files read (cache misses), for tests and the worker's statistics
        self.reads = 0

    def _bucket(self, bucket: int) -> tuple[np.ndarray, pa.Table]:
        hit = self._cache.get(bucket)
        if hit is not None:
            self._cache.move_to_end(bucket)
            return hit
        self.reads += 1
        table = self.store.read_bucket(self.version, bucket, self.n_buckets)
        if table is None:
            table = pa.table({"user_id": pa.array([], pa.int64())})
        else:
            table = table.select([c for c in self.columns if c in table.column_names])
            # timestamps as epoch ms: what the scorer and the overlay use
            for i, field in enumerate(table.schema):
                if pa.types.is_timestamp(field.type):
                    table = table.set_column(i, field.name, pc.cast(table.column(i), pa.int64()))
            table = table.combine_chunks()
        ids = np.asarray(table.column("user_id").to_numpy(), dtype=np.int64)
        entry = (ids, table)
        self._cache[bucket] = entry
        self._cached_bytes += table.nbytes
        while self._cached_bytes > self.max_cache_bytes and len(self._cache) > 1:
            _, (_, old) = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes
        return entry

    def rows(self, user_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Snapshot rows of the users it holds (users it does not hold are absent).

        Args:
            user_ids: pseudonymised user ids.

        Returns:
            user_id -> {column: value}, timestamps as epoch ms, nulls as None.
        """
        ids = np.unique(np.fromiter((int(u) for u in user_ids), dtype=np.int64))
        out: dict[int, dict[str, Any]] = {}
        if len(ids) == 0:
            return out
        buckets = np.asarray(bucket_of(ids, self.n_buckets), dtype=np.int64)
        for b in np.unique(buckets).tolist():
            wanted = ids[buckets == b]
            have, table = self._bucket(int(b))
            if len(have) == 0:
                continue
            pos = np.searchsorted(have, wanted)
            pos_ok = pos < len(have)
            found = pos_ok & (have[np.minimum(pos, len(have) - 1)] == wanted)
            if not found.any():
                continue
            picked = table.take(pa.array(pos[found], pa.int64()))
            values = {name: picked.column(name).to_pylist() for name in picked.column_names}
            names = list(values)
            for i, uid in enumerate(wanted[found].tolist()):
                out[uid] = {name: values[name][i] for name in names}
        return out

    def row(self, user_id: int) -> dict[str, Any] | None:
        """One user's snapshot row, or None when the snapshot does not hold the user."""
        return self.rows([user_id]).get(int(user_id))

    @property
    def cached_bytes(self) -> int:
        """Arrow bytes held by the bucket cache."""
        return self._cached_bytes
