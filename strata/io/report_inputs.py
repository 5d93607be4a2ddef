"""What the tier report reads: the retained snapshots and the warehouse's orders and
exposures, column-projected (only the columns the metrics use leave the Parquet files).

Erased users (:mod:`strata.io.tombstones`) are left out of every input: the warehouse reads
drop them, and so does :func:`read_snapshot` for snapshots not yet compacted.

String columns are read dictionary-encoded, so they become categoricals in a data frame
(smaller, faster to group). Timestamps become ``ts_ms`` (int64 epoch milliseconds UTC).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from strata.io.snapshots import SnapshotStore
from strata.io.tombstones import ErasureFilter
from strata.io.warehouse import Warehouse, WarehouseError
from strata.schema import EventType


class ReportInputError(ValueError):
    """The report's inputs do not exist or do not fit (no snapshots, an unknown version)."""


def snapshot_refs(data_root: str) -> list[tuple[str, int, str]]:
    """(version, as_of_ms, as_of ISO) of every complete snapshot, by as-of then version
    (the same order as creation when snapshots were recomputed oldest first)."""
    store = SnapshotStore(data_root)
    out = []
    for v in store.versions():
        m = store.manifest(v)
        out.append((v, int(m["as_of_ms"]), str(m["as_of"])))
    return sorted(out, key=lambda r: (r[1], r[0]))


def select_range(versions: Sequence[str], first: str | None, last: str | None) -> tuple[int, int]:
    """Indices ``[i, j)`` of the versions from ``first`` to ``last`` inclusive.

    Raises:
        ReportInputError: no versions, an unknown one (the message lists the retained ones),
            or ``first`` after ``last``.
    """
    if not versions:
        raise ReportInputError("no snapshots: run `strata recompute` first")

    def index(v: str, flag: str) -> int:
        if v not in versions:
            raise ReportInputError(f"{flag} {v}: no such snapshot; retained: {', '.join(versions)}")
        return versions.index(v)

    i = index(first, "--from") if first else 0
    j = index(last, "--to") if last else len(versions) - 1
    if i > j:
        raise ReportInputError(f"--from {first} is newer than --to {last}")
    return i, j + 1


def _files(fs: pafs.FileSystem, base: str) -> list[str]:
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    return sorted(
        i.path
        for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
        if i.type == pafs.FileType.File and i.path.endswith(".parquet")
    )


def read_snapshot(
    data_root: str,
    version: str,
    columns: Sequence[str],
    optional: Sequence[str] = (),
) -> pa.Table:
    """The ``columns`` of a snapshot, plus those of ``optional`` it has.

    Raises:
        WarehouseError: the snapshot has no files or lacks a required column.
    """
    store = SnapshotStore(data_root)
    files = _files(store.fs, posixpath.join(store.path(version), "features"))
    if not files:
        raise WarehouseError(f"snapshot {version} has no feature files")
    names = set(pq.read_schema(files[0], filesystem=store.fs).names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise WarehouseError(f"snapshot {version} lacks columns {missing}")
    cols = list(columns) + [c for c in optional if c in names]
    schema = pq.read_schema(files[0], filesystem=store.fs)
    strings = [c for c in cols if pa.types.is_string(schema.field(c).type)]
    erasure = ErasureFilter(data_root)
    erased = bool(erasure.buckets()) and "user_id" in names
    read_cols = cols if not erased or "user_id" in cols else ["user_id", *cols]
    tables = [
        pq.read_table(
            f, filesystem=store.fs, columns=read_cols, read_dictionary=strings, partitioning=None
        )
        for f in files
    ]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if erased:
        n_buckets = store.n_buckets(version, Warehouse(data_root).n_buckets)
        table = erasure.apply_any(table, n_buckets).select(cols)
    return table


def _ts_ms(table: pa.Table) -> pa.Table:
    i = table.column_names.index("ts")
    ms = table.column("ts").cast(pa.int64())
    return table.set_column(i, "ts_ms", ms)


def read_orders(data_root: str, since_ms: int, until_ms: int) -> pa.Table:
    """Order events in ``[since_ms, until_ms)``: user_id, ts_ms, amount_cny, discount_cny."""
    wh = Warehouse(data_root)
    parts = []
    order = pa.scalar(EventType.ORDER.value)
    lo = pa.scalar(since_ms, pa.int64())
    hi = pa.scalar(until_ms, pa.int64())
    for b in wh.buckets("events"):
        t = wh.read_bucket(
            "events",
            b,
            columns=["user_id", "ts", "event_type", "amount_cny", "discount_cny"],
            read_dictionary=["event_type"],
        )
        t = _ts_ms(t)
        ts = t.column("ts_ms")
        mask = pc.and_(
            pc.equal(t.column("event_type").cast(pa.string()), order),
            pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)),
        )
        parts.append(t.filter(mask).drop_columns(["event_type"]))
    if not parts:
        return pa.table(
            {
                "user_id": pa.array([], pa.int64()),
                "ts_ms": pa.array([], pa.int64()),
                "amount_cny": pa.array([], pa.float64()),
                "discount_cny": pa.array([], pa.float64()),
            }
        )
    return pa.concat_tables(parts)


def read_exposures(data_root: str, since_ms: int, until_ms: int) -> pa.Table:
    """Exposures in ``[since_ms, until_ms)``: user_id, ts_ms, experiment, arm."""
    wh = Warehouse(data_root)
    parts = []
    lo = pa.scalar(since_ms, pa.int64())
    hi = pa.scalar(until_ms, pa.int64())
    for b in wh.buckets("exposures"):
        t = _ts_ms(wh.read_bucket("exposures", b, columns=["user_id", "ts", "experiment", "arm"]))
        ts = t.column("ts_ms")
        parts.append(t.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))))
    if not parts:
        return pa.table(
            {
                "user_id": pa.array([], pa.int64()),
                "ts_ms": pa.array([], pa.int64()),
                "experiment": pa.array([], pa.string()),
                "arm": pa.array([], pa.string()),
            }
        )
    return pa.concat_tables(parts)
