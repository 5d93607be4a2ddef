"""One user's rows in every retained snapshot on disk (``GET /v1/users/{id}/history``).

A snapshot holds one Parquet file per warehouse bucket, rows sorted by user_id
(:class:`strata.io.snapshots.SnapshotStore`), so a user's row in a snapshot is found by reading
only the file of their bucket (:func:`strata.ids.bucket_of`), filtered to the user's row: row
groups whose ``user_id`` statistics exclude the id are skipped and the id column of the others
is binary-searched. Snapshot manifests do not change once written and are cached.

An erased (tombstoned) user has no history from the moment of the tombstone, before `strata
compact` rewrites the files (:class:`strata.io.tombstones.ErasureFilter`; a bucket without
tombstones costs one stat of the tombstone file per lookup).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from strata.ids import bucket_of
from strata.io.snapshots import SnapshotStore
from strata.io.tombstones import ErasureFilter
from strata.io.warehouse import Warehouse

__all__ = ["HISTORY_COLUMNS", "SnapshotInfo", "SnapshotRow", "UserHistoryReader"]

#: what an entry shows (the RFM base bands only where the snapshot has them)
HISTORY_COLUMNS: tuple[str, ...] = (
    "user_id",
    "tier",
    "tier_rule",
    "tier_explanation",
    "previous_tier",
    "lifecycle_stage",
    "rfm_score",
    "recency_band",
    "frequency_band",
    "spend_level",
)


@dataclass(frozen=True)
class SnapshotInfo:
    """A complete snapshot as the history lists it."""

    version: str
    as_of: str | None
    as_of_ms: int
    n_buckets: int


@dataclass(frozen=True)
class SnapshotRow:
    """A user's row in one snapshot (the :data:`HISTORY_COLUMNS` it has)."""

    snapshot: SnapshotInfo
    row: dict[str, Any]


class UserHistoryReader:
    """Reads a user's rows across the snapshots of one data root.

    Args:
        data_root: data root (local path or any pyarrow filesystem URI).
        key: the pseudonymisation key (tombstone checks); None loads it when first needed.
    """

    def __init__(self, data_root: str, key: bytes | None = None) -> None:
        self.data_root = data_root
        self.store = SnapshotStore(data_root)
        self.erasure = ErasureFilter(data_root, key)
        self._infos: dict[str, SnapshotInfo] = {}
        self._default_buckets: int | None = None
        self._warehouse_buckets: int | None = None

    def _info(self, version: str) -> SnapshotInfo:
        info = self._infos.get(version)
        if info is None:
            m = self.store.manifest(version)
            stored = m.get("inputs", {}).get("n_buckets")
            if not stored and self._default_buckets is None:
                self._default_buckets = Warehouse(self.data_root).n_buckets
            info = SnapshotInfo(
                version=version,
                as_of=m.get("as_of"),
                as_of_ms=int(m.get("as_of_ms", 0)),
                n_buckets=int(stored or self._default_buckets or 1),
            )
            self._infos[version] = info
        return info

    def snapshots(self) -> list[SnapshotInfo]:
        """Complete snapshots, newest as-of first (ties: the newer version first)."""
        infos = [self._info(v) for v in self.store.versions()]
        return sorted(infos, key=lambda i: (i.as_of_ms, i.version), reverse=True)

    def _row(self, info: SnapshotInfo, user_id: int) -> dict[str, Any] | None:
        bucket = int(bucket_of(user_id, info.n_buckets))
        path = self.store.bucket_path(info.version, bucket, info.n_buckets)
        try:
            with self.store.fs.open_input_file(path) as fh:
                return _find(pq.ParquetFile(fh), int(user_id))
        except FileNotFoundError:
            return None  # no user of this bucket then (or the snapshot was just deleted)

    def rows(self, user_id: int) -> list[SnapshotRow]:
        """The user's row in each snapshot that holds them, newest first.

        Args:
            user_id: the pseudonymised id.
        """
        if self.erased(user_id):
            return []
        out = []
        for info in self.snapshots():
            row = self._row(info, user_id)
            if row is not None:
                out.append(SnapshotRow(info, row))
        return out

    def erased(self, user_id: int) -> bool:
        """True when the user is tombstoned (erased), even before compaction."""
        if not self.erasure.buckets():
            return False
        if self._warehouse_buckets is None:
            self._warehouse_buckets = Warehouse(self.data_root).n_buckets
        bucket = int(bucket_of(user_id, self._warehouse_buckets))
        return bool(self.erasure.mask(bucket, np.array([user_id], dtype=np.int64))[0])

    def newest(self) -> SnapshotInfo | None:
        """The newest complete snapshot, or None."""
        found = self.snapshots()
        return found[0] if found else None


def _find(f: pq.ParquetFile, user_id: int) -> dict[str, Any] | None:
    """The row of ``user_id`` in a file sorted by user_id: row groups whose statistics exclude
    the id are skipped; in the others the id column is binary-searched, and only the found row
    of the :data:`HISTORY_COLUMNS` is kept (cheaper than a dataset filter: ~1.5 ms a file)."""
    schema = f.schema_arrow
    columns = [c for c in HISTORY_COLUMNS if schema.get_field_index(c) >= 0]
    at = schema.get_field_index("user_id")
    meta = f.metadata
    for rg in range(meta.num_row_groups):
        stats = meta.row_group(rg).column(at).statistics
        if stats is not None and stats.has_min_max and not stats.min <= user_id <= stats.max:
            continue
        ids = np.asarray(f.read_row_group(rg, columns=["user_id"]).column(0).to_numpy())
        i = int(np.searchsorted(ids, user_id))
        if i < len(ids) and int(ids[i]) == user_id:
            row: dict[str, Any] = f.read_row_group(rg, columns=columns).slice(i, 1).to_pylist()[0]
            return row
    return None
