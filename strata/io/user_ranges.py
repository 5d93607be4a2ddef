"""Scratch files of ``strata generate``'s first stage: each id range's users, sorted by bucket.

One file per range, ``<staging>/users/range-000007.bin``: fixed 16-byte records (little-endian
int64 pseudonym, int64 raw id), the range's rows in bucket order
(:func:`strata.synth.range_by_bucket`). There is no header or index in the file: the driver
keeps each range's per-bucket counts, so a bucket's rows are one byte range of each file
(:class:`BucketSlices`), read with a single ranged read (a ranged GET on object stores), never
the whole file. The files live in the run's truth staging folder on the data root's
filesystem, so every node (and an ``s3://`` root) sees them, and the cleanup that removes the
staging folder at the end of a run, or of a failed one, removes them too.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

__all__ = ["RECORD", "BucketSlices", "UserRangeFiles", "UserRangeFilesError"]

#: One user of a range file: pseudonym, raw id.
RECORD = np.dtype([("user_id", "<i8"), ("raw_id", "<i8")])

_RANGES_DIR = "users"

#: Range files a bucket reads at once (:meth:`BucketSlices.read`).
_READ_THREADS = 8


class UserRangeFilesError(RuntimeError):
    """A range file is missing or shorter than its counts say."""


@dataclass(frozen=True)
class BucketSlices:
    """Where one bucket's users lie in the range files: ``(path, first row, rows)`` for each
    range that has any, in range order."""

    bucket: int
    slices: tuple[tuple[str, int, int], ...]

    @property
    def users(self) -> int:
        """Users of the bucket over all ranges."""
        return sum(rows for _, _, rows in self.slices)

    def read(self, fs: pafs.FileSystem) -> tuple[np.ndarray, np.ndarray]:
        """The bucket's ``(user_ids, raw_ids)`` (int64), ranges concatenated in order.

        Raises:
            UserRangeFilesError: a file is missing or holds fewer rows than expected.
        """
        size = RECORD.itemsize

        def read_one(where: tuple[str, int, int]) -> np.ndarray:
            path, first, rows = where
            try:
                with fs.open_input_file(path) as f:
                    data = f.read_at(rows * size, first * size)
            except OSError as exc:  # FileNotFoundError included
                raise UserRangeFilesError(f"{path}: cannot read users range: {exc}") from exc
            if len(data) != rows * size:
                raise UserRangeFilesError(
                    f"{path}: bucket {self.bucket} needs rows {first}..{first + rows - 1}, "
                    f"the file ends before (truncated scratch file)"
                )
            return np.frombuffer(data, dtype=RECORD)

        # one small ranged read per range file: on an object store each is a GET whose
        # latency, not its bytes, is the cost, so they go out a few at a time
        with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
            parts = list(pool.map(read_one, self.slices))
        rec = np.concatenate(parts) if parts else np.empty(0, dtype=RECORD)
        return rec["user_id"].astype(np.int64), rec["raw_id"].astype(np.int64)


class UserRangeFiles:
    """The range files of one generator run, in ``<staging>/users/``.

    Args:
        fs: the data root's filesystem.
        staging: the run's staging folder on ``fs`` (:attr:`strata.io.truth.TruthFiles.staging`).
    """

    def __init__(self, fs: pafs.FileSystem, staging: str) -> None:
        self.fs = fs
        self.dir = posixpath.join(staging, _RANGES_DIR)

    def path(self, index: int) -> str:
        """The file of range ``index``."""
        return posixpath.join(self.dir, f"range-{index:06d}.bin")

    def write(self, index: int, user_ids: np.ndarray, raw_ids: np.ndarray) -> None:
        """Write range ``index``'s rows (already in bucket order)."""
        rec = np.empty(len(user_ids), dtype=RECORD)
        rec["user_id"], rec["raw_id"] = user_ids, raw_ids
        self.fs.create_dir(self.dir, recursive=True)
        with self.fs.open_output_stream(self.path(index)) as f:
            f.write(rec.tobytes())

    def bucket(self, bucket: int, counts: np.ndarray, offsets: np.ndarray) -> BucketSlices:
        """Where ``bucket``'s users are, from the ranges' per-bucket ``counts`` and their
        ``offsets`` (:func:`strata.synth.bucket_offsets`), both ``(ranges, buckets)``."""
        col, first = counts[:, bucket], offsets[:, bucket]
        return BucketSlices(
            bucket,
            tuple((self.path(r), int(first[r]), int(col[r])) for r in np.flatnonzero(col).tolist()),
        )

    def remove(self) -> None:
        """Delete the range files (nothing if there are none)."""
        if self.fs.get_file_info(self.dir).type == pafs.FileType.Directory:
            self.fs.delete_dir(self.dir)
