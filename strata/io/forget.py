"""Erasure and retention beyond the warehouse tables: snapshots and the generator's truth.

``strata compact`` runs these after it has rewritten the warehouse buckets
(:meth:`strata.io.warehouse.Warehouse.compact_bucket` drops erased users and old events):
snapshots beyond retention are deleted, the retained ones lose the erased users' rows
(:meth:`strata.io.snapshots.SnapshotStore.drop_erased`), and ``truth/users.parquet`` (one row
per generated user) is rewritten without them, and so are the scratch example shards a
failed training run kept (``models/_work/``; a successful run deletes its own).
"""

from __future__ import annotations

import posixpath
import uuid

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from strata.io.models import WORK_DIR
from strata.io.snapshots import SnapshotStore
from strata.io.tombstones import ErasureFilter
from strata.io.truth import TRUTH_DIR, TRUTH_FILE
from strata.io.warehouse import PARQUET_OPTIONS, commit_parquet, resolve
from strata.privacy.retention import RetentionConfig, snapshots_to_delete

__all__ = ["drop_erased_training_shards", "drop_erased_truth", "expire_snapshots"]


def expire_snapshots(data_root: str, config: RetentionConfig) -> list[str]:
    """Delete the snapshots beyond the newest ``snapshots_keep``; returns the deleted versions.

    The newest snapshot is always kept (compaction cannot know which one Redis publishes).
    """
    store = SnapshotStore(data_root)
    gone = snapshots_to_delete(config, store.versions())
    for version in gone:
        store.delete(version)
    return gone


def drop_erased_truth(data_root: str, erasure: ErasureFilter, n_buckets: int) -> int:
    """Rewrite ``truth/users.parquet`` without erased users (atomically); rows removed."""
    fs, root = resolve(data_root)
    path = posixpath.join(root, TRUTH_DIR, TRUTH_FILE)
    if not erasure.buckets() or fs.get_file_info(path).type != pafs.FileType.File:
        return 0
    table = pq.read_table(path, filesystem=fs)
    kept = erasure.apply_any(table, n_buckets)
    removed = table.num_rows - kept.num_rows
    if removed:
        tmp = posixpath.join(root, TRUTH_DIR, f".{TRUTH_FILE}.{uuid.uuid4().hex}.tmp")
        pq.write_table(kept, tmp, filesystem=fs, **PARQUET_OPTIONS)
        fs.move(tmp, path)
    return removed


def drop_erased_training_shards(data_root: str, erasure: ErasureFilter, n_buckets: int) -> int:
    """Rewrite the kept scratch example shards (``models/_work/``) without erased users; rows
    removed."""
    fs, root = resolve(data_root)
    base = posixpath.join(root, "models", WORK_DIR)
    if not erasure.buckets() or fs.get_file_info(base).type != pafs.FileType.Directory:
        return 0
    removed = 0
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        table = pq.read_table(info.path, filesystem=fs, partitioning=None)
        kept = erasure.apply_any(table, n_buckets)
        if kept.num_rows < table.num_rows:
            commit_parquet(fs, info.path, kept, **PARQUET_OPTIONS)
            removed += table.num_rows - kept.num_rows
    return removed
