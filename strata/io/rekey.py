"""Pseudonym key rotation on the storage side: re-key the data root without any raw id.

The new key is one more *link* of the key chain (:mod:`strata.ids`): every stored pseudonym
``old`` becomes ``new = rekey_ids(old, link)``, which is exactly what the boundary computes for
a raw id with the extended chain. :func:`rekey_data_root` applies it to everything under the
data root that holds pseudonyms:

* the warehouse tables (events, users, actions, exposures): every row read (erased users'
  rows are dropped on the way, as a compaction would), given its new id, written into the
  bucket of the new id as new part files, then swapped in by **one** manifest commit that
  also records the rotation (``key_rotation``: fingerprints of the old and new chain);
* every retained snapshot (re-partitioned by the new ids, so the next recompute's hysteresis
  finds each user's previous tier), the generator's truth file, import rejects (user ids as
  decimal text) and the tombstones (each re-keyed audit id in its new bucket);
* failed training runs' scratch shards (``models/_work``) are deleted instead.

Atomicity: everything but the warehouse is first written under ``<data root>/rekey/<id>/``
(staging). A failure before the manifest commit leaves the old data root exactly as it was
(the new part files are deleted, staging too). After the commit the staged files are moved
into place, the new key is saved, and a second commit marks the rotation finished; a run that
dies in between is finished by running the same rotation again (same new key: the chain's
fingerprint in the manifest says which one).

Tombstones hold no pseudonym, only ``audit_id(pseudonym)``: one can be re-keyed only while
the erased user's rows are still somewhere in the data root (before ``strata compact``). A
tombstone of a user compacted away is kept (it is the audit record) but can no longer match
anyone: it is counted as *stale* and the report says so (docs/privacy.md, "Key rotation").

Redis (:func:`drop_old_ids`): after the recompute under the new chain has published, every
other segment version is discarded and the real-time keys that carry user ids are deleted.
"""

from __future__ import annotations

import posixpath
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from strata.ids import bucket_of, chain_key, key_links, rekey_ids
from strata.io.keys import key_fingerprint
from strata.io.models import WORK_DIR
from strata.io.paths import bucket_dir_name
from strata.io.redis_client import SyncClient, group_by_slot, sync_client
from strata.io.segment_store import SegmentStore, VersionStateError
from strata.io.snapshots import SnapshotStore
from strata.io.tombstones import TOMBSTONE_SCHEMA, TombstoneStore
from strata.io.truth import TRUTH_DIR, TRUTH_FILE
from strata.io.warehouse import (
    PARQUET_OPTIONS,
    TABLES,
    Warehouse,
    WarehouseError,
    WriteResult,
    resolve,
)
from strata.privacy.audit import audit_id, audit_key
from strata.realtime.keys import split_tag
from strata.schema import TABLE_SCHEMAS

__all__ = [
    "STAGING_DIR",
    "RekeyReport",
    "RotationError",
    "drop_old_ids",
    "rekey_data_root",
    "rotation_state",
]

STAGING_DIR = "rekey"
REJECTS_DIR = "rejects"
#: manifest entry that records the last rotation
ROTATION = "key_rotation"
#: real-time keys (``{ns}:rt:<name>``) that hold no user id and survive a rotation
_RT_KEEP = ("layout", "rules", "workers")
_RT_KEEP_PREFIXES = ("budget:",)
#: ... and of each partition (``{ns}:rt:{pP}:<name>``)
_RT_KEEP_PARTITION = ("stats",)

Progress = Callable[[str, int, int], None]


class RotationError(WarehouseError):
    """A rotation cannot start or resume (wrong key, another rotation pending)."""


@dataclass
class RekeyReport:
    """What one rotation rewrote (counts only: no id, no key)."""

    rotation_id: str = ""
    old_fingerprint: str = ""
    new_fingerprint: str = ""
    resumed: bool = False
    rows: dict[str, int] = field(default_factory=dict)
    erased_rows_dropped: int = 0
    snapshots: int = 0
    snapshot_rows: int = 0
    truth_rows: int = 0
    reject_files: int = 0
    scratch_files_deleted: int = 0
    tombstones_rekeyed: int = 0
    tombstones_stale: int = 0

    def rows_table(self) -> list[tuple[str, Any]]:
        """The report as (what, value) rows for a summary table."""
        out: list[tuple[str, Any]] = [
            ("rotation", self.rotation_id),
            ("key fingerprint before", self.old_fingerprint),
            ("key fingerprint after", self.new_fingerprint),
            ("resumed an interrupted rotation", "yes" if self.resumed else "no"),
        ]
        out += [(f"{t} rows re-keyed", n) for t, n in self.rows.items()]
        out += [
            ("erased users' rows dropped", self.erased_rows_dropped),
            ("snapshots re-keyed", self.snapshots),
            ("snapshot rows re-keyed", self.snapshot_rows),
            ("truth rows re-keyed", self.truth_rows),
            ("reject files re-keyed", self.reject_files),
            ("training scratch files deleted", self.scratch_files_deleted),
            ("tombstones re-keyed", self.tombstones_rekeyed),
            ("tombstones stale (user already compacted)", self.tombstones_stale),
        ]
        return out


def rotation_state(wh: Warehouse) -> dict[str, Any] | None:
    """The manifest's record of the last rotation (None before the first)."""
    entry = wh.manifest.get(ROTATION)
    return dict(entry) if isinstance(entry, dict) else None


def _with_ids(table: pa.Table, ids: np.ndarray, column: str = "user_id") -> pa.Table:
    idx = table.column_names.index(column)
    return table.set_column(idx, column, pa.array(ids, pa.int64()))


def _nothing(stage: str, done: int, total: int) -> None:
    return None


class _Rotation:
    """One rotation of one data root (see the module docstring for the steps)."""

    def __init__(
        self,
        data_root: str,
        old_key: bytes,
        new_link: bytes,
        chunk_rows: int,
        on_progress: Progress,
    ) -> None:
        self.data_root = data_root
        self.old_key = chain_key(key_links(old_key))
        (self.link,) = key_links(new_link)
        self.new_key = chain_key([*key_links(self.old_key), self.link])
        self.fs, self.root = resolve(data_root)
        self.wh = Warehouse(data_root, pseudonym_key=self.old_key)
        self.raw = Warehouse(data_root, pseudonym_key=self.old_key, drop_erased=False)
        self.chunk_rows = chunk_rows
        self.progress = on_progress
        self.report = RekeyReport(
            old_fingerprint=key_fingerprint(self.old_key),
            new_fingerprint=key_fingerprint(self.new_key),
        )

    # ------------------------------------------------------------------ paths
    def staging(self, rid: str) -> str:
        return posixpath.join(self.root, STAGING_DIR, rid)

    def _is_file(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def _is_dir(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.Directory

    def _write(self, table: pa.Table, path: str) -> None:
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        pq.write_table(table, path, filesystem=self.fs, **PARQUET_OPTIONS)

    # ------------------------------------------------------------------ warehouse
    def _given_columns(self, table_name: str, bucket: int) -> list[str] | None:
        """The columns a bucket's parts really carry (None: all of the schema)."""
        names = self.wh.bucket_columns(table_name, bucket)
        return None if len(names) == len(TABLE_SCHEMAS[table_name]) else names

    def _write_chunk(
        self, table_name: str, pending: list[pa.Table], write_id: str, given: list[str] | None
    ) -> WriteResult:
        table = pa.concat_tables(pending, promote_options="permissive")
        ids = np.asarray(table.column("user_id").to_numpy(), dtype=np.int64)
        table = _with_ids(table, rekey_ids(ids, self.link))
        self.report.rows[table_name] = self.report.rows.get(table_name, 0) + table.num_rows
        return self.wh.write_partitioned(table_name, table, write_id, columns=given)

    def rewrite_warehouse(self, rid: str) -> WriteResult:
        """Write every table's rows under their new ids as new part files (uncommitted)."""
        result = WriteResult()
        for table_name in TABLES:
            # buckets grouped by the columns their parts carry (imports may give fewer): each
            # chunk records its group's columns, as the import that wrote them did
            given_of = {b: self._given_columns(table_name, b) for b in self.wh.buckets(table_name)}
            buckets = sorted(given_of, key=lambda b: (str(given_of[b]), b))
            self.report.rows[table_name] = 0
            pending: list[pa.Table] = []
            n_pending = n_chunk = 0
            for i, b in enumerate(buckets):
                given = given_of[b]
                entry = self.wh.manifest["tables"][table_name]["buckets"][str(b)]
                part = self.wh.read_bucket(table_name, b)
                self.report.erased_rows_dropped += (
                    sum(int(p["rows"]) for p in entry["parts"]) - part.num_rows
                )
                pending.append(part)
                n_pending += part.num_rows
                last = i == len(buckets) - 1 or given_of[buckets[i + 1]] != given
                if n_pending >= self.chunk_rows or (last and n_pending):
                    write_id = f"rotate-{rid}-{n_chunk:04d}"
                    result.extend(self._write_chunk(table_name, pending, write_id, given))
                    pending, n_pending, n_chunk = [], 0, n_chunk + 1
                self.progress(f"re-keying {table_name}", i + 1, len(buckets))
        return result

    # ------------------------------------------------------------------ tombstones
    def rekey_tombstones(self, stage: str) -> None:
        """Stage the tombstone file with each erased user's audit id under the new chain."""
        store = TombstoneStore(self.data_root)
        entries = store.entries()
        if entries.num_rows == 0:
            return
        n_buckets = self.wh.n_buckets
        new_audit = audit_key(self.new_key)
        found: dict[str, int] = {}  # old audit id -> new pseudonym
        snapshots = SnapshotStore(self.data_root)
        for b in sorted(store.buckets()):
            seen = [
                np.asarray(self.raw.read_bucket(t, b, ["user_id"]).column("user_id").to_numpy())
                for t in TABLES
            ]
            for version in snapshots.versions():
                nb = snapshots.n_buckets(version, n_buckets)
                part = snapshots.read_bucket(version, b, nb, ["user_id"])
                if part is not None:
                    seen.append(np.asarray(part.column("user_id").to_numpy()))
            ids = np.unique(np.concatenate([np.asarray(s, dtype=np.int64) for s in seen]))
            if ids.size == 0:
                continue
            hit = store.erased_mask(b, ids, self.old_key)
            erased = ids[hit]
            olds = np.asarray(audit_id(erased, audit_key(self.old_key))).tolist()
            for old, new in zip(olds, rekey_ids(erased, self.link).tolist(), strict=True):
                found[str(old)] = int(new)
        aids, buckets = [], []
        for old, bucket in zip(
            entries.column("audit_id").to_pylist(), entries.column("bucket").to_pylist(),
            strict=True,
        ):  # fmt: skip
            new = found.get(str(old))
            if new is None:
                aids.append(str(old))
                buckets.append(int(bucket))
                self.report.tombstones_stale += 1
            else:
                aids.append(str(audit_id(new, new_audit)))
                buckets.append(int(bucket_of(new, n_buckets)))
                self.report.tombstones_rekeyed += 1
        table = entries.set_column(0, "audit_id", pa.array(aids, pa.string()))
        table = table.set_column(1, "bucket", pa.array(buckets, pa.int32())).cast(TOMBSTONE_SCHEMA)
        self._write(table, posixpath.join(stage, "privacy", "tombstones.parquet"))

    # ------------------------------------------------------------------ snapshots and others
    def rekey_snapshots(self, stage: str) -> None:
        """Stage every retained snapshot re-keyed and re-partitioned by the new ids."""
        store = SnapshotStore(self.data_root)
        erasure = self.wh.erasure
        versions = store.versions()
        for i, version in enumerate(versions):
            n_buckets = store.n_buckets(version, self.wh.n_buckets)
            table = store.read(version)
            if erasure is not None:
                table = erasure.apply_any(table, n_buckets)
            ids = rekey_ids(np.asarray(table.column("user_id").to_numpy()), self.link)
            # rows grouped by new bucket, each bucket's rows sorted by user_id (as written)
            order = np.lexsort((ids, bucket_of(ids, n_buckets)))
            table = _with_ids(table.take(pa.array(order)), ids[order])
            of = bucket_of(ids[order], n_buckets)
            for b in np.unique(of).tolist():
                sel = np.flatnonzero(of == b)
                path = posixpath.join(
                    stage, "snapshots", version, "features", bucket_dir_name(b, n_buckets),
                    "part-0.parquet",
                )  # fmt: skip
                self._write(table.slice(int(sel[0]), len(sel)), path)
            self.report.snapshots += 1
            self.report.snapshot_rows += table.num_rows
            self.progress("re-keying snapshots", i + 1, len(versions))

    def rekey_truth(self, stage: str) -> None:
        """Stage the generator's truth file under the new ids."""
        path = posixpath.join(self.root, TRUTH_DIR, TRUTH_FILE)
        if not self._is_file(path):
            return
        table = pq.read_table(path, filesystem=self.fs)
        if self.wh.erasure is not None:
            table = self.wh.erasure.apply_any(table, self.wh.n_buckets)
        ids = rekey_ids(np.asarray(table.column("user_id").to_numpy()), self.link)
        self._write(_with_ids(table, ids), posixpath.join(stage, TRUTH_DIR, TRUTH_FILE))
        self.report.truth_rows = table.num_rows

    def rekey_rejects(self, stage: str) -> None:
        """Stage the import rejects with their decimal-text user ids re-keyed (nulls kept)."""
        base = posixpath.join(self.root, REJECTS_DIR)
        if not self._is_dir(base):
            return
        for info in self.fs.get_file_info(pafs.FileSelector(base)):
            if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
                continue
            table = pq.read_table(info.path, filesystem=self.fs)
            if "user_id" in table.column_names:
                col = table.column("user_id").cast(pa.string())
                valid = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), dtype=bool)
                old = np.asarray(pc.fill_null(col, "0").cast(pa.int64()).to_numpy(), dtype=np.int64)
                new = rekey_ids(old, self.link).astype(str)
                values = pa.array(
                    [str(v) if ok else None for v, ok in zip(new, valid, strict=True)],
                    pa.string(),
                )
                table = table.set_column(table.column_names.index("user_id"), "user_id", values)
            self._write(table, posixpath.join(stage, REJECTS_DIR, posixpath.basename(info.path)))
            self.report.reject_files += 1

    # ------------------------------------------------------------------ finishing
    def install(self, stage: str) -> None:
        """Move the staged files into place (idempotent: a rerun after a crash redoes it)."""
        staged_snaps = posixpath.join(stage, "snapshots")
        if self._is_dir(staged_snaps):
            store = SnapshotStore(self.data_root)
            for info in self.fs.get_file_info(pafs.FileSelector(staged_snaps)):
                if info.type != pafs.FileType.Directory:
                    continue
                version = posixpath.basename(info.path)
                staged = posixpath.join(info.path, "features")
                if not self._is_dir(staged):  # moved by the run that died
                    continue
                target = posixpath.join(store.path(version), "features")
                if self._is_dir(target):
                    self.fs.delete_dir(target)
                self.fs.move(staged, target)
        for rel in (posixpath.join(TRUTH_DIR, TRUTH_FILE), "privacy/tombstones.parquet"):
            src = posixpath.join(stage, rel)
            if self._is_file(src):
                self.fs.move(src, posixpath.join(self.root, rel))
        staged_rejects = posixpath.join(stage, REJECTS_DIR)
        if self._is_dir(staged_rejects):
            for info in self.fs.get_file_info(pafs.FileSelector(staged_rejects)):
                if info.type == pafs.FileType.File:
                    name = posixpath.basename(info.path)
                    self.fs.move(info.path, posixpath.join(self.root, REJECTS_DIR, name))
        work = posixpath.join(self.root, "models", WORK_DIR)
        if self._is_dir(work):
            files = self.fs.get_file_info(pafs.FileSelector(work, recursive=True))
            self.report.scratch_files_deleted += sum(
                1 for i in files if i.type == pafs.FileType.File
            )
            self.fs.delete_dir(work)
        self._drop_stage(stage)

    def run(self, save_key: Callable[[bytes], None]) -> RekeyReport:
        state = rotation_state(self.wh)
        if state is not None and not state.get("finished", True):
            if state.get("new") == self.report.old_fingerprint:
                # died after saving the extended chain: the loaded key is the new chain
                self.new_key = self.old_key
                self.report.old_fingerprint = str(state.get("old", ""))
                self.report.new_fingerprint = str(state["new"])
            elif state.get("new") != self.report.new_fingerprint:
                raise RotationError(
                    f"an interrupted rotation (to key fingerprint {state.get('new')}) is "
                    "pending: rerun it with the same new key file to finish it"
                )
            self.report.rotation_id = str(state["id"])
            self.report.resumed = True
            return self.finish(save_key)
        if state is not None and state.get("new") != self.report.old_fingerprint:
            raise RotationError(
                f"the warehouse was re-keyed to key fingerprint {state.get('new')} but the "
                f"current key has fingerprint {self.report.old_fingerprint}: load the rotated "
                "key chain before rotating again"
            )
        if self.link in key_links(self.old_key):
            raise RotationError("the new key is already a link of the current key chain")
        rid = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        self.report.rotation_id = rid
        stage = self.staging(rid)
        result = WriteResult()
        try:
            self.rekey_tombstones(stage)
            self.rekey_snapshots(stage)
            self.rekey_truth(stage)
            self.rekey_rejects(stage)
            result = self.rewrite_warehouse(rid)
            record = {
                "id": rid,
                "old": self.report.old_fingerprint,
                "new": self.report.new_fingerprint,
                "links": len(key_links(self.new_key)),
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "finished": False,
            }
            replace = [(t, b) for t in TABLES for b in self.wh.buckets(t)]
            self.wh.commit(
                result,
                "rotate-key",
                replace_buckets=replace,
                info={"key_fingerprint": self.report.new_fingerprint},
                amend_manifest=lambda m: m.__setitem__(ROTATION, record),
            )
        except BaseException:
            self._abandon(stage, result)
            raise
        return self.finish(save_key)

    def _drop_stage(self, stage: str) -> None:
        if self._is_dir(stage):
            self.fs.delete_dir(stage)
        parent = posixpath.dirname(stage)
        if self._is_dir(parent) and not self.fs.get_file_info(pafs.FileSelector(parent)):
            self.fs.delete_dir(parent)

    def _abandon(self, stage: str, result: WriteResult) -> None:
        """Delete what an uncommitted rotation wrote: the old data root stays as it was."""
        for part in result.parts:
            path = posixpath.join(self.wh.bucket_dir(part.table, part.bucket), part.name)
            if self._is_file(path):
                self.fs.delete_file(path)
        self._drop_stage(stage)

    def finish(self, save_key: Callable[[bytes], None]) -> RekeyReport:
        self.install(self.staging(self.report.rotation_id))
        save_key(self.new_key)

        def done(manifest: dict[str, Any]) -> None:
            manifest[ROTATION]["finished"] = True

        self.wh.commit(WriteResult(), "rotate-key-finished", amend_manifest=done)
        return self.report


def rekey_data_root(
    data_root: str,
    old_key: bytes,
    new_link: bytes,
    save_key: Callable[[bytes], None],
    *,
    chunk_rows: int = 2_000_000,
    on_progress: Progress | None = None,
) -> RekeyReport:
    """Re-key every pseudonym under a data root with one more chain link.

    Stop every writer first (``strata stream``, imports, erasures): rows a writer commits
    between this function's reads and its commit would be replaced unread.

    Args:
        data_root: local path or filesystem URI of the data root.
        old_key: the current key chain (what the data is keyed with now).
        new_link: the new link (one line, at least 16 bytes); never logged.
        save_key: stores the extended chain (the key file, or a file for the environment);
            called after the warehouse commit and before the rotation is marked finished.
        chunk_rows: rows re-keyed and written at a time (bounds the memory used; each chunk
            adds one part file per bucket: ``strata compact`` merges them).
        on_progress: called with (stage, done, total) as buckets and snapshots are done.

    Returns:
        what was rewritten (counts and key fingerprints).

    Raises:
        RotationError: the key does not match the warehouse's last rotation, or another
            rotation is pending.
    """
    rotation = _Rotation(data_root, old_key, new_link, chunk_rows, on_progress or _nothing)
    return rotation.run(save_key)


def drop_old_ids(client: SyncClient | str, namespace: str, keep_version: str) -> dict[str, int]:
    """After the recompute under the new chain: delete what Redis holds under old ids.

    Every segment version but ``keep_version`` (the one just published) is discarded
    (:meth:`SegmentStore.discard`: a rollback to one would serve old ids). Every real-time key
    that names or holds user ids is deleted: live states, overlays, tags, timers, action
    lists, exposures, the event streams, the outbox, dead letters, dedupe and idempotency
    markers and the sink's offsets. Kept: the partition layout, the rules, rule statistics,
    budgets and worker heartbeats (no user ids).

    Returns:
        counts of versions discarded, version keys and real-time keys deleted.
    """
    r = sync_client(client) if isinstance(client, str) else client
    store = SegmentStore(r, namespace)
    current = store.current()
    if current != keep_version:
        raise VersionStateError(
            f"the current version is {current!r}, not the re-keyed {keep_version!r}"
        )
    prefix = f"{namespace}:v:"
    versions: set[str] = set(store.versions())
    for key in r.scan_iter(match=f"{prefix}*", count=1000):
        versions.add(key.decode()[len(prefix) :].split(":", 1)[0])
    versions.discard(keep_version)
    out = {"versions discarded": 0, "version keys deleted": 0, "real-time keys deleted": 0}
    for version in sorted(versions):
        out["version keys deleted"] += store.discard(version)
        out["versions discarded"] += 1
    rt = f"{namespace}:rt:"
    doomed: list[bytes] = []
    for key in r.scan_iter(match=f"{rt}*", count=1000):
        partition, name = split_tag(key.decode()[len(rt) :])
        if partition is None and (name in _RT_KEEP or name.startswith(_RT_KEEP_PREFIXES)):
            continue
        if partition is not None and name in _RT_KEEP_PARTITION:
            continue
        doomed.append(key)
    out["real-time keys deleted"] = _unlink(r, doomed)
    return out


def _unlink(r: SyncClient, keys: Iterable[bytes]) -> int:
    """UNLINK ``keys`` in batches of one hash slot (a cluster refuses a multi-key command
    over several slots)."""
    n = 0
    for same_slot in group_by_slot(keys, lambda k: k).values():
        for start in range(0, len(same_slot), 1000):
            n += int(r.unlink(*same_slot[start : start + 1000]))
    return n
