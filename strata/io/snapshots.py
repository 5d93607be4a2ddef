"""Versioned recompute snapshots: ``<data root>/snapshots/<version>/``.

A snapshot is a Parquet dataset ``features/bucket=NNN/part-0.parquet`` (one file per warehouse
bucket, rows sorted by user_id, so the files do not depend on how buckets were spread over
actors) plus ``manifest.json``. The manifest is written last and marks the snapshot complete:
readers ignore folders without one, so a failed job leaves no half snapshot behind in view.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from strata.io.paths import bucket_dir_name
from strata.io.warehouse import PARQUET_OPTIONS, WarehouseError, resolve

MANIFEST = "manifest.json"


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
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        pq.write_table(table, path, filesystem=self.fs, **PARQUET_OPTIONS)
        return path

    def write_manifest(self, version: str, manifest: dict[str, Any]) -> None:
        """Write the manifest last: from now on the snapshot is complete."""
        tmp = posixpath.join(self.path(version), f".{MANIFEST}.{uuid.uuid4().hex}.tmp")
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(manifest, indent=1, sort_keys=True, default=str).encode())
        self.fs.move(tmp, posixpath.join(self.path(version), MANIFEST))

    def manifest(self, version: str) -> dict[str, Any]:
        path = posixpath.join(self.path(version), MANIFEST)
        try:
            with self.fs.open_input_stream(path) as f:
                result: dict[str, Any] = json.loads(f.read().decode())
                return result
        except FileNotFoundError as exc:
            raise WarehouseError(f"snapshot {version} is missing or incomplete ({path})") from exc

    def versions(self) -> list[str]:
        """Complete snapshot versions, oldest first (version names sort by creation time)."""
        if self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            return []
        out = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.root)):
            if info.type != pafs.FileType.Directory:
                continue
            name = posixpath.basename(info.path)
            marker = self.fs.get_file_info(posixpath.join(info.path, MANIFEST))
            if marker.type == pafs.FileType.File:
                out.append(name)
        return sorted(out)

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
