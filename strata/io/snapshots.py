"""Versioned recompute snapshots: ``<data root>/snapshots/<version>/``.

A snapshot is a Parquet dataset ``features/bucket=NNN/part-0.parquet`` (one file per warehouse
bucket, rows sorted by user_id, so the files do not depend on how buckets were spread over
actors), ``partials.json`` (the merged RFM partials it was scored with: the cut points a live
re-score ranks against) and ``manifest.json``. The manifest is written last and marks the
snapshot complete: readers ignore folders without one, so a failed job leaves no half
snapshot behind in view.

Erasure (:meth:`SnapshotStore.drop_erased`, run by ``strata compact``) rewrites a retained
snapshot's bucket files without the erased users and lowers the manifest's user, tier and
lifecycle counts to match. Such a snapshot is no longer byte-identical to a fresh recompute
over the data it was made from (its score histogram, transitions and RFM partials still count
the erased users, as aggregates); the manifest's ``erasure`` entry says so.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from strata.features.rfm import RfmPartials
from strata.io.paths import bucket_dir_name, complete_folders
from strata.io.warehouse import (
    PARQUET_OPTIONS,
    WarehouseError,
    commit_file,
    commit_parquet,
    read_committed,
    resolve,
    write_failed,
)

if TYPE_CHECKING:
    from strata.io.tombstones import ErasureFilter

MANIFEST = "manifest.json"
PARTIALS = "partials.json"


class SnapshotStore:
    """Reader and writer of the snapshots under one data root."""

    def __init__(self, data_root: str) -> None:
        self.fs, root = resolve(data_root)
        self.root = posixpath.join(root, "snapshots")

    def path(self, version: str) -> str:
        return posixpath.join(self.root, version)

    def bucket_path(self, version: str, bucket: int, n_buckets: int) -> str:
        return posixpath.join(
            self.path(version), "features", bucket_dir_name(bucket, n_buckets), "part-0.parquet"
        )

    def write_bucket(self, version: str, bucket: int, n_buckets: int, table: pa.Table) -> str:
        """Write one bucket's rows (deterministic bytes for the same table)."""
        path = self.bucket_path(version, bucket, n_buckets)
        try:
            self.fs.create_dir(posixpath.dirname(path), recursive=True)
            pq.write_table(table, path, filesystem=self.fs, **PARQUET_OPTIONS)
        except OSError as exc:  # disk full: the error names the file (no manifest: unseen)
            raise write_failed(exc, path) from exc
        return path

    def write_manifest(self, version: str, manifest: dict[str, Any]) -> None:
        """Write the manifest last: from now on the snapshot is complete."""
        self._write_json(version, MANIFEST, manifest)

    def write_partials(self, version: str, partials: RfmPartials) -> None:
        """Store the merged RFM partials the snapshot was scored with (before the manifest)."""
        self._write_json(version, PARTIALS, partials.to_json(), indent=None)

    def read_partials(self, version: str) -> RfmPartials:
        """The merged RFM partials of a snapshot.

        Raises:
            WarehouseError: the snapshot has none (written before partials were kept) or they
                do not parse.
        """
        path = posixpath.join(self.path(version), PARTIALS)
        try:
            with self.fs.open_input_stream(path) as f:
                return RfmPartials.from_json(json.loads(f.read().decode()))
        except FileNotFoundError as exc:
            raise WarehouseError(
                f"snapshot {version} has no RFM partials ({path}); recompute to write them"
            ) from exc
        except ValueError as exc:
            raise WarehouseError(f"snapshot {version}: bad RFM partials in {path}: {exc}") from exc

    def _write_json(
        self, version: str, name: str, data: dict[str, Any], indent: int | None = 1
    ) -> None:
        """Write a JSON file of a snapshot atomically (:func:`strata.io.warehouse.commit_file`)."""
        self.fs.create_dir(self.path(version), recursive=True)
        data_bytes = json.dumps(data, indent=indent, sort_keys=True, default=str).encode()
        commit_file(self.fs, posixpath.join(self.path(version), name), data_bytes)

    def manifest(self, version: str) -> dict[str, Any]:
        path = posixpath.join(self.path(version), MANIFEST)
        try:  # rewritten after the publish and by erasure: a read may tear on object stores
            result: dict[str, Any] = read_committed(self.fs, path, lambda raw: json.loads(raw))
            return result
        except FileNotFoundError as exc:
            raise WarehouseError(f"snapshot {version} is missing or incomplete ({path})") from exc

    def versions(self) -> list[str]:
        """Complete snapshot versions, oldest first (version names sort by creation time)."""
        return complete_folders(self.fs, self.root, MANIFEST)

    def latest_before(self, as_of_ms: int) -> str | None:
        """The newest complete snapshot whose as-of is strictly earlier than ``as_of_ms``.

        Re-running the same as-of therefore compares against the same previous snapshot and
        reproduces the same bytes.
        """
        best: tuple[int, str] | None = None
        for v in self.versions():
            m = self.manifest(v)
            at = int(m["as_of_ms"])
            if at < as_of_ms and (best is None or (at, v) > best):
                best = (at, v)
        return best[1] if best else None

    def read_bucket(
        self, version: str, bucket: int, n_buckets: int, columns: list[str] | None = None
    ) -> pa.Table | None:
        """One bucket of a snapshot, or None when that bucket had no users then."""
        path = self.bucket_path(version, bucket, n_buckets)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        return pq.read_table(path, filesystem=self.fs, columns=columns)

    def read(self, version: str, columns: list[str] | None = None) -> pa.Table:
        """A whole snapshot (reports, tests; small data)."""
        base = posixpath.join(self.path(version), "features")
        files = sorted(
            i.path
            for i in self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
            if i.type == pafs.FileType.File and i.path.endswith(".parquet")
        )
        tables = [pq.read_table(p, filesystem=self.fs, columns=columns) for p in files]
        return pa.concat_tables(tables)

    def delete(self, version: str) -> None:
        if self.fs.get_file_info(self.path(version)).type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(version))

    def n_buckets(self, version: str, default: int) -> int:
        """The warehouse bucket count a snapshot was written with (``default`` if unrecorded)."""
        stored = self.manifest(version).get("inputs", {}).get("n_buckets")
        return int(stored) if stored else default

    def drop_erased(self, version: str, erasure: ErasureFilter, n_buckets: int) -> int:
        """Rewrite the tombstoned buckets of a snapshot without the erased users.

        Each changed bucket file replaces the old one atomically (a temporary file and a
        rename locally, one write of the key on object stores);
        the manifest's ``outputs`` counts (users, tiers, lifecycle stages) are lowered by the
        rows removed and an ``erasure`` entry records it.

        Returns:
            the number of rows removed.
        """
        n_buckets = self.n_buckets(version, n_buckets)
        removed = 0
        tiers: Counter[str] = Counter()
        stages: Counter[str] = Counter()
        for b in sorted(erasure.buckets()):
            path = self.bucket_path(version, b, n_buckets)
            if self.fs.get_file_info(path).type != pafs.FileType.File:
                continue
            table = pq.read_table(path, filesystem=self.fs)
            ids = np.asarray(table.column("user_id").to_numpy(), dtype=np.int64)
            drop = erasure.mask(b, ids)
            if not drop.any():
                continue
            gone = table.filter(pa.array(drop))
            for name, counter in (("tier", tiers), ("lifecycle_stage", stages)):
                if name in gone.column_names:
                    counter.update(str(v) for v in gone.column(name).to_pylist())
            commit_parquet(self.fs, path, table.filter(pa.array(~drop)), **PARQUET_OPTIONS)
            removed += int(drop.sum())
        if removed:
            manifest = self.manifest(version)
            outputs = manifest.get("outputs", {})
            if isinstance(outputs.get("users"), int):
                outputs["users"] -= removed
            for key, counter in (("tiers", tiers), ("lifecycle_stages", stages)):
                counts = outputs.get(key)
                if isinstance(counts, dict):
                    for name, n in counter.items():
                        if name in counts:
                            counts[name] = max(0, int(counts[name]) - n)
            entry = manifest.setdefault("erasure", {"rows_removed": 0})
            entry["rows_removed"] = int(entry.get("rows_removed", 0)) + removed
            entry["rewritten_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            entry["note"] = (
                "rewritten without erased users: not byte-identical to a fresh recompute; "
                "score_histogram, transitions and partials still include them as aggregates"
            )
            self.write_manifest(version, manifest)
        return removed
