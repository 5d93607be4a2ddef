"""``<data>/truth/``: the generator's ground truth, written next to a warehouse commit.

``users.parquet`` (one row per user: persona, next-period orders and spend, churn) is merged
from the per-bucket parts the shards wrote into a staging folder, into a temporary file first;
:meth:`TruthFiles.publish` moves it in place after the commit and writes (or removes) the
simulated experiment's ``experiments.json``. :meth:`TruthFiles.cleanup` removes what is left.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from strata.io.warehouse import PARQUET_OPTIONS, commit_file

__all__ = ["EXPERIMENTS_TRUTH_FILE", "TRUTH_DIR", "TRUTH_FILE", "TruthFiles"]

TRUTH_DIR = "truth"
TRUTH_FILE = "users.parquet"
EXPERIMENTS_TRUTH_FILE = "experiments.json"


class TruthFiles:
    """The truth folder of one generator run.

    Args:
        fs: the data root's filesystem.
        root: the data root's path on ``fs``.
        write_id: the run's unique id (names its staging folder and temporary files).
    """

    def __init__(self, fs: pafs.FileSystem, root: str, write_id: str) -> None:
        self.fs = fs
        self.dir = posixpath.join(root, TRUTH_DIR)
        fs.create_dir(self.dir, recursive=True)
        self.write_id = write_id
        self.staging = posixpath.join(self.dir, f"_staging-{write_id}")
        self.users_path = posixpath.join(self.dir, TRUTH_FILE)
        self.experiments_path = posixpath.join(self.dir, EXPERIMENTS_TRUTH_FILE)
        self._users_tmp = posixpath.join(self.dir, f".{TRUTH_FILE}.{write_id}.tmp")

    def merge_parts(
        self, part_of: Callable[[str, int], str], buckets: Sequence[int], schema: pa.Schema
    ) -> None:
        """Concatenate the buckets' parts (``part_of(staging, bucket)``, bucket order) into the
        temporary users file, one part in memory at a time."""
        fs = self.fs
        with pq.ParquetWriter(self._users_tmp, schema, filesystem=fs, **PARQUET_OPTIONS) as writer:
            for b in buckets:
                writer.write_table(pq.read_table(part_of(self.staging, b), filesystem=fs))

    def publish(self, experiments: dict[str, Any] | None) -> None:
        """Move the users file in place; write ``experiments`` (or remove a stale file: the
        exposures it described were just replaced)."""
        fs = self.fs
        # a rename locally; on object stores a server-side copy, which replaces the key whole
        fs.move(self._users_tmp, self.users_path)
        if experiments is not None:
            data = json.dumps(experiments, indent=2, sort_keys=True).encode() + b"\n"
            commit_file(fs, self.experiments_path, data)
        elif fs.get_file_info(self.experiments_path).type == pafs.FileType.File:
            fs.delete_file(self.experiments_path)

    def cleanup(self) -> None:
        """Remove the staging folder and a temporary file a failed run left."""
        fs = self.fs
        if fs.get_file_info(self.staging).type == pafs.FileType.Directory:
            fs.delete_dir(self.staging)
        if fs.get_file_info(self._users_tmp).type == pafs.FileType.File:
            fs.delete_file(self._users_tmp)
