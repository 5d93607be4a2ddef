"""Tombstones of erased users: ``<data root>/privacy/tombstones.parquet``.

One row per erased user: ``audit_id`` (:func:`strata.privacy.audit_id`, the only identifier
strata keeps of an erased user: never the raw id nor the pseudonym), ``bucket`` (the user's
warehouse bucket, so that readers of other buckets need no hashing at all), ``erased_at``,
``by`` (the API key name or ``"cli"``) and ``what`` (JSON filled by the caller: what was
removed per store). Every reader of the warehouse for a derived product (recompute, training,
reports, compaction) drops the rows of tombstoned users through :class:`ErasureFilter`.

Writes are read-modify-write of the whole (small) file, committed atomically (a temporary
file and a rename locally, one write of the key on object stores), so a reader sees the old
or the new file, never half of one. On a local
filesystem concurrent appenders are serialised by a lock file (as the warehouse's commits
are); on object stores (one PUT replaces the object) appenders must take turns.

The methods take the *pseudonymisation* key; the audit key is derived from it
(:func:`strata.privacy.audit_key`), so a key rotation must re-key the tombstones too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from strata.ids import bucket_of
from strata.privacy.audit import audit_id, audit_key

__all__ = ["TOMBSTONES", "TOMBSTONE_SCHEMA", "ErasureFilter", "TombstoneStore"]

PRIVACY_DIR = "privacy"
TOMBSTONES = "tombstones.parquet"
_LOCK = ".tombstones.lock"

TOMBSTONE_SCHEMA = pa.schema(
    [
        pa.field("audit_id", pa.string(), nullable=False),
        pa.field("bucket", pa.int32(), nullable=False),
        pa.field("erased_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("by", pa.string(), nullable=False),
        pa.field("what", pa.string(), nullable=False),
    ]
)


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    from strata.io.warehouse import resolve  # the warehouse imports this module

    return resolve(uri)


class TombstoneStore:
    """The tombstone file of one data root.

    Args:
        data_root: local path or pyarrow filesystem URI of the data root.
    """

    def __init__(self, data_root: str) -> None:
        self.fs, root = _resolve(data_root)
        self.dir = posixpath.join(root, PRIVACY_DIR)
        self.path = posixpath.join(self.dir, TOMBSTONES)
        self._table: pa.Table | None = None
        self._stamp: tuple[int | None, int | None] | None = None
        self._by_bucket: dict[int, set[str]] | None = None
        #: pseudonyms hashed by :meth:`erased_mask` so far (the cost a caller pays)
        self.hashed_ids = 0

    # ------------------------------------------------------------------ reading
    def _info_stamp(self) -> tuple[int | None, int | None] | None:
        info = self.fs.get_file_info(self.path)
        if info.type != pafs.FileType.File:
            return None
        return (info.mtime_ns, info.size)

    def entries(self) -> pa.Table:
        """Every tombstone (re-read when the file changed since the last read)."""
        stamp = self._info_stamp()
        if self._table is None or stamp != self._stamp:
            if stamp is None:
                table = TOMBSTONE_SCHEMA.empty_table()
            else:
                from strata.io.warehouse import read_committed  # it imports this module

                table = read_committed(
                    self.fs, self.path, lambda raw: pq.read_table(pa.BufferReader(raw))
                ).cast(TOMBSTONE_SCHEMA)
            self._table, self._stamp, self._by_bucket = table, stamp, None
        return self._table

    def _buckets_map(self) -> dict[int, set[str]]:
        table = self.entries()
        if self._by_bucket is None:
            out: dict[int, set[str]] = {}
            for b, a in zip(
                table.column("bucket").to_pylist(), table.column("audit_id").to_pylist(),
                strict=True,
            ):  # fmt: skip
                out.setdefault(int(b), set()).add(str(a))
            self._by_bucket = out
        return self._by_bucket

    def buckets(self) -> set[int]:
        """Buckets that hold at least one erased user."""
        return set(self._buckets_map())

    def erased_mask(self, bucket: int, user_ids: np.ndarray, key: bytes) -> np.ndarray:
        """Which of ``user_ids`` (pseudonyms of ``bucket``) are erased.

        Cheap where it matters: a bucket without tombstones costs no hashing at all; otherwise
        only the distinct ids are hashed.

        Args:
            bucket: the warehouse bucket the ids belong to.
            user_ids: int64 pseudonyms.
            key: the pseudonymisation key.

        Returns:
            a bool array, True where the user is erased.
        """
        ids = np.asarray(user_ids, dtype=np.int64)
        erased = self._buckets_map().get(int(bucket))
        if not erased or ids.size == 0:
            return np.zeros(ids.shape, dtype=bool)
        uniq, inverse = np.unique(ids, return_inverse=True)
        self.hashed_ids += int(uniq.size)
        hashed = audit_id(uniq, audit_key(key))
        hit = np.isin(np.asarray(hashed), np.asarray(sorted(erased)))
        return np.asarray(hit[inverse].reshape(ids.shape), dtype=bool)

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise appenders on a local filesystem (a flock, like warehouse commits)."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            yield
            return
        self.fs.create_dir(self.dir, recursive=True)
        with open(os.path.join(self.dir, _LOCK), "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def add(
        self,
        user_ids: np.ndarray,
        *,
        key: bytes,
        n_buckets: int,
        by: str,
        what: str = "{}",
    ) -> list[str]:
        """Tombstone pseudonymous users (idempotent: one already tombstoned is not added again).

        Args:
            user_ids: int64 pseudonyms to erase.
            key: the pseudonymisation key (the audit key is derived from it).
            n_buckets: the warehouse's bucket count.
            by: who erased them (API key name or ``"cli"``).
            what: JSON of what was removed per store (filled by the caller).

        Returns:
            the audit ids of ``user_ids``, in their order (including ones already tombstoned).
        """
        ids = np.asarray(user_ids, dtype=np.int64).ravel()
        aids = [str(a) for a in np.asarray(audit_id(ids, audit_key(key))).tolist()]
        buckets = bucket_of(ids, n_buckets).tolist()
        with self._lock():
            self._table = None
            current = self.entries()
            known = set(current.column("audit_id").to_pylist())
            new_ids: list[str] = []
            new_buckets: list[int] = []
            for a, b in zip(aids, buckets, strict=True):
                if a not in known:
                    known.add(a)
                    new_ids.append(a)
                    new_buckets.append(int(b))
            if new_ids:
                now = pa.scalar(int(time.time() * 1000), pa.timestamp("ms", tz="UTC"))
                added = pa.table(
                    {
                        "audit_id": pa.array(new_ids, pa.string()),
                        "bucket": pa.array(new_buckets, pa.int32()),
                        "erased_at": pa.array([now] * len(new_ids)),
                        "by": pa.array([by] * len(new_ids), pa.string()),
                        "what": pa.array([what] * len(new_ids), pa.string()),
                    },
                    schema=TOMBSTONE_SCHEMA,
                )
                self._replace(pa.concat_tables([current, added]))
        return aids

    def _replace(self, table: pa.Table) -> None:
        from strata.io.warehouse import commit_parquet  # the warehouse imports this module

        self.fs.create_dir(self.dir, recursive=True)
        commit_parquet(self.fs, self.path, table)
        self._table = None


class ErasureFilter:
    """Drops erased users' rows from tables read out of one bucket.

    The one seam every derived product reads through (:meth:`strata.io.warehouse.Warehouse.
    read_bucket` applies it): a bucket without tombstones passes untouched, without hashing;
    the pseudonymisation key is only loaded when a tombstoned bucket is read.

    Args:
        data_root: the data root.
        key: the pseudonymisation key; None loads it from the settings (``STRATA_PSEUDONYM_KEY``
            or the key file) on first need.
    """

    def __init__(self, data_root: str, key: bytes | None = None) -> None:
        self.store = TombstoneStore(data_root)
        self._key = key

    def key(self) -> bytes:
        """The pseudonymisation key (loaded from the settings on first use)."""
        if self._key is None:
            from strata.io.keys import load_pseudonym_key
            from strata.settings import Settings

            self._key = load_pseudonym_key(Settings(), create=False)
        return self._key

    def buckets(self) -> set[int]:
        """Buckets with at least one erased user."""
        return self.store.buckets()

    def mask(self, bucket: int, user_ids: np.ndarray) -> np.ndarray:
        """True where the user of ``bucket`` is erased."""
        if bucket not in self.store.buckets():
            return np.zeros(np.asarray(user_ids).shape, dtype=bool)
        return self.store.erased_mask(bucket, user_ids, self.key())

    def apply(self, bucket: int, table: pa.Table | None) -> pa.Table | None:
        """``table`` without the rows of erased users (the same object when none is erased)."""
        if table is None or table.num_rows == 0 or "user_id" not in table.column_names:
            return table
        if bucket not in self.store.buckets():
            return table
        ids = np.asarray(table.column("user_id").to_numpy(), dtype=np.int64)
        drop = self.mask(bucket, ids)
        if not drop.any():
            return table
        return table.filter(pa.array(~drop))

    def apply_any(self, table: pa.Table, n_buckets: int) -> pa.Table:
        """``table`` (rows of any buckets, e.g. a snapshot or truth file) without erased users."""
        if table.num_rows == 0 or "user_id" not in table.column_names or not self.buckets():
            return table
        ids = np.asarray(table.column("user_id").to_numpy(), dtype=np.int64)
        of = bucket_of(ids, n_buckets)
        drop = np.zeros(ids.shape, dtype=bool)
        for b in self.buckets():
            sel = of == b
            if sel.any():
                drop[sel] = self.store.erased_mask(b, ids[sel], self.key())
        return table.filter(pa.array(~drop)) if drop.any() else table
