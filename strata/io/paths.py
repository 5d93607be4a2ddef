"""Data-root URIs: one rule for "is this remote?" and for the local path of a local root.

A data root is a local path, a ``file://`` URI (local too), or any other pyarrow filesystem
URI (``s3://bucket/strata``, ``gs://...``, ``hdfs://...``), which is remote.
"""

from __future__ import annotations

import os
import posixpath

import pyarrow.fs as pafs

__all__ = [
    "bucket_dir_name",
    "bucket_part_file",
    "complete_folders",
    "is_remote",
    "local_path",
    "worker_root",
]


def is_remote(uri: str) -> bool:
    """True for a URI with a scheme other than ``file`` (``s3://...``)."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme.lower() != "file"


def local_path(uri: str) -> str:
    """The absolute local path of a local data root (a path or a ``file://`` URI).

    Raises:
        ValueError: ``uri`` is remote.
    """
    if is_remote(uri):
        raise ValueError(f"{uri!r} is a remote URI, not a local path")
    path = uri[len("file://") :] if uri.lower().startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path))


def worker_root(uri: str) -> str:
    """The data root as Ray workers get it: a remote URI as it is, a local root as its
    absolute path (workers may run in another working directory)."""
    return uri if is_remote(uri) else local_path(uri)


def bucket_dir_name(bucket: int, n_buckets: int) -> str:
    """The Hive-style folder of one bucket in a bucketed dataset (warehouse tables, snapshot
    features): ``bucket=007``, zero-padded to the width of the largest bucket (at least 3)."""
    width = max(3, len(str(n_buckets - 1)))
    return f"bucket={bucket:0{width}d}"


def bucket_part_file(folder: str, bucket: int) -> str:
    """The one part file of one bucket in a job's scratch folder (training example shards,
    the generator's ground-truth staging): ``<folder>/part-00007.parquet``."""
    return f"{folder.rstrip('/')}/part-{bucket:05d}.parquet"


def complete_folders(fs: pafs.FileSystem, root: str, marker: str) -> list[str]:
    """Names of the folders directly under ``root`` that hold the file ``marker`` (written
    last by a writer, so a folder without it is incomplete), sorted; [] when ``root`` is
    missing."""
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    out = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type != pafs.FileType.Directory:
            continue
        if fs.get_file_info(posixpath.join(info.path, marker)).type == pafs.FileType.File:
            out.append(posixpath.basename(info.path))
    return sorted(out)
