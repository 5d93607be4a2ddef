"""``strata import``: bring your own transaction and event logs into the warehouse.

Reads CSV/TSV (optionally gzip-compressed) or Parquet files in batches, validates and converts
each batch with :func:`strata.ingest.parse_batch` (user ids pseudonymised at this boundary),
writes accepted rows into the warehouse buckets and every rejected row, with its reason, into
``<data>/rejects/import-<UTC time>-<id>.parquet``. The whole import is committed to the
warehouse manifest once, at the end: an import that fails publishes nothing.

Every mapped column is checked in every file before any row is written; personal-data
columns are never read (see :mod:`strata.ingest`). Run as ``strata import`` or
``python -m jobs.ingest``.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import typer
from rich.markup import escape
from rich.table import Table

from jobs._runtime import CommandError, console, progress, run_command
from strata.ingest import (
    DEFAULT_MIN_TIME,
    SAMPLE_VALUES,
    WHITESPACE,
    ColumnMapping,
    PseudonymCache,
    check_columns,
    load_mapping,
    malformed_rejects,
    parse_batch,
    pii_columns_in,
    reject_column,
    reject_role,
    reject_warnings,
    rejects_schema,
)
from strata.io.keys import load_pseudonym_key
from strata.io.warehouse import PARQUET_OPTIONS, Warehouse, WriteResult, resolve
from strata.schema import LOCAL_UTC_OFFSET_HOURS
from strata.settings import Settings

#: Accepted rows are buffered up to this many, then written as one part per touched bucket.
FLUSH_ROWS = 2_000_000
#: CSV read block (one batch per block).
CSV_BLOCK_BYTES = 32 << 20
#: Rows per Parquet batch.
PARQUET_BATCH_ROWS = 500_000

_CSV_SUFFIXES = (".csv", ".tsv", ".txt")
#: The one column of a whitespace-separated file as read (whole lines).
_LINE = "line"
_UNIT_SEPARATOR = "\x1f"
_PARQUET_SUFFIXES = (".parquet", ".pq")

Format = Literal["csv", "parquet"]

#: Exit status of an import that accepted no row (its rejects are still written).
NOTHING_ACCEPTED_EXIT = 1


class InputError(CommandError, ValueError):
    """An input file is missing, of an unknown type, or unreadable."""


@dataclass
class FileResult:
    """What one input file contributed."""

    path: str
    input_rows: int = 0
    accepted: int = 0
    rejected: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    pii_columns_dropped: list[str] = field(default_factory=list)
    #: distinct offending values of the first rejects per reason (see strata.ingest.reject_role)
    samples: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class ImportResult:
    """Outcome of one import; ``accepted + rejected == input_rows``."""

    input_rows: int
    accepted: int
    rejected: int
    rejects_by_reason: dict[str, int]
    files: list[FileResult]
    rejects_path: str | None
    seconds: float
    import_id: str = ""
    now_ms: int = 0
    #: messages for the user: reasons that rejected everything or most of a file
    warnings: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.input_rows / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------- inputs
def detect_format(path: str) -> tuple[Format, str | None]:
    """File format and compression from the name (``.csv``, ``.tsv``, ``.txt``, each
    optionally ``.gz``; ``.parquet``, ``.pq``).

    Raises:
        InputError: any other extension.
    """
    name = path.lower()
    compression = None
    if name.endswith(".gz"):
        compression, name = "gzip", name[:-3]
    if name.endswith(_CSV_SUFFIXES):
        return "csv", compression
    if name.endswith(_PARQUET_SUFFIXES) and compression is None:
        return "parquet", None
    raise InputError(
        f"{path}: unknown file type; expected .csv, .tsv, .txt (optionally .gz), .parquet or .pq"
    )


@dataclass
class _Input:
    """One input file, opened far enough to check its columns."""

    path: str
    fs: pafs.FileSystem
    fs_path: str
    fmt: Format
    compression: str | None
    delimiter: str
    size: int
    columns: list[str]
    schema: pa.Schema | None = None


def _open_raw(inp: _Input) -> pa.NativeFile:
    return inp.fs.open_input_file(inp.fs_path)


def _csv_stream(raw: pa.NativeFile, compression: str | None) -> pa.NativeFile:
    return pa.CompressedInputStream(raw, compression) if compression else raw


def _csv_parse_options(delimiter: str, handler: Callable[[Any], str] | None) -> pacsv.ParseOptions:
    # Empty lines are kept as rows of empty fields (rejected as "missing user id") so that line
    # numbers and data-row numbers agree: line n of the file is data row n - 1.
    if delimiter == WHITESPACE:
        # whole lines, split afterwards (_split_whitespace); a line holding the unit separator
        # is reported as malformed by the handler
        return pacsv.ParseOptions(
            delimiter=_UNIT_SEPARATOR,
            quote_char=False,
            escape_char=False,
            ignore_empty_lines=False,
            invalid_row_handler=handler,
        )
    return pacsv.ParseOptions(
        delimiter=delimiter, ignore_empty_lines=False, invalid_row_handler=handler
    )


def _split_whitespace(
    lines: pa.Array, columns: list[str], wanted: list[str], rows: pa.Array
) -> tuple[pa.Table, pa.Array, list[tuple[int, str]]]:
    """Split whole lines at runs of whitespace into the ``wanted`` columns (as text).

    Returns the table of the lines with the header's number of fields (an empty line is a row
    of empty fields, as in CSV), their row numbers, and the other lines as malformed rows.
    """
    trimmed = pc.utf8_trim_whitespace(pc.fill_null(lines, ""))
    parts = pc.utf8_split_whitespace(trimmed)
    blank = pc.equal(trimmed, "").to_numpy(zero_copy_only=False)
    # a blank line splits into one empty field: count it as none
    counts = np.where(blank, 0, pc.list_value_length(parts).to_numpy(zero_copy_only=False))
    n_fields = len(columns)
    bad = (counts != n_fields) & (counts != 0)
    malformed = [
        (int(r), f"malformed row (expected {n_fields} fields, got {int(c)})")
        for r, c in zip(rows.to_numpy()[bad], counts[bad], strict=True)
    ]
    good = np.flatnonzero(~bad)
    offsets = parts.offsets.to_numpy()[good]
    empty = counts[good] == 0
    flat = parts.values
    out = {}
    for name in wanted:
        idx = pa.array(offsets + columns.index(name), mask=empty)
        out[name] = pc.fill_null(flat.take(idx), "")
    return pa.table(out), rows.take(pa.array(good)), malformed


def _probe(path: str, mapping: ColumnMapping) -> _Input:
    """Open a file's header or schema and check the mapping against it."""
    fmt, compression = detect_format(path)
    fs, fs_path = resolve(path)
    info = fs.get_file_info(fs_path)
    if info.type != pafs.FileType.File:
        raise InputError(f"{path}: no such file")
    delimiter = mapping.delimiter or ("\t" if ".tsv" in path.lower() else ",")
    inp = _Input(path, fs, fs_path, fmt, compression, delimiter, int(info.size or 0), [])
    try:
        if fmt == "parquet":
            with fs.open_input_file(fs_path) as f:
                inp.schema = pq.ParquetFile(f).schema_arrow
            inp.columns = list(inp.schema.names)
        elif delimiter == WHITESPACE:
            with _open_raw(inp) as raw:
                reader = pacsv.open_csv(
                    _csv_stream(raw, compression),
                    read_options=pacsv.ReadOptions(
                        block_size=1 << 20, use_threads=False, column_names=[_LINE]
                    ),
                    parse_options=_csv_parse_options(delimiter, lambda _row: "skip"),
                    convert_options=pacsv.ConvertOptions(column_types={_LINE: pa.string()}),
                )
                first = reader.read_next_batch().column(0)
                header = first[0].as_py() if len(first) else ""
                inp.columns = (header or "").split()
        else:
            with _open_raw(inp) as raw:
                reader = pacsv.open_csv(
                    _csv_stream(raw, compression),
                    read_options=pacsv.ReadOptions(block_size=1 << 20, use_threads=False),
                    parse_options=_csv_parse_options(delimiter, lambda _row: "skip"),
                )
                inp.columns = list(reader.schema.names)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read {fmt} header: {exc}") from exc
    check_columns(mapping, inp.schema if inp.schema is not None else inp.columns, path)
    return inp


@dataclass
class _Batch:
    table: pa.Table
    row_numbers: pa.Array
    malformed: list[tuple[int, str]]
    bytes_done: int


def _csv_batches(inp: _Input, mapping: ColumnMapping) -> Iterator[_Batch]:
    """Batches of the mapped columns as text, with 1-based data-row numbers; rows the reader
    cannot split are reported as malformed (their text is never kept)."""
    malformed: list[tuple[int, str]] = []

    def on_invalid(row: Any) -> str:
        # line 1 is the header; 0 would mean "unknown" (not expected with use_threads=False)
        line = int(row.number) - 1 if row.number is not None else 0
        why = f"malformed row (expected {row.expected_columns} fields, got {row.actual_columns})"
        malformed.append((line, why))
        return "skip"

    cols = mapping.source_columns()
    whitespace = inp.delimiter == WHITESPACE
    read_cols = [_LINE] if whitespace else cols
    convert = pacsv.ConvertOptions(
        include_columns=read_cols,
        column_types={c: pa.string() for c in read_cols},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    # Single-threaded reading keeps the reader's row numbers of malformed rows (and measured
    # as fast as the threaded reader: parsing is not the bottleneck of an import).
    read = pacsv.ReadOptions(
        block_size=CSV_BLOCK_BYTES,
        use_threads=False,
        **({"column_names": [_LINE], "skip_rows": 1} if whitespace else {}),
    )
    good_rows = 0
    reported = 0
    blocks = 0
    with _open_raw(inp) as raw:
        reader = pacsv.open_csv(
            _csv_stream(raw, inp.compression),
            read_options=read,
            parse_options=_csv_parse_options(inp.delimiter, on_invalid),
            convert_options=convert,
        )
        for batch in reader:
            n = batch.num_rows
            # data-row number of the x-th good row (1-based): x plus the malformed rows
            # before it; bad[j] - j is the count of good rows preceding malformed row j + 1.
            bad = np.array(sorted(r for r, _ in malformed if r > 0), dtype=np.int64)
            x = np.arange(good_rows + 1, good_rows + n + 1, dtype=np.int64)
            shift = np.searchsorted(bad - np.arange(len(bad)), x, side="right")
            good_rows += n
            new = malformed[reported:]
            reported = len(malformed)
            # The reader reads a few blocks ahead, so raw.tell() runs ahead of the rows seen;
            # uncompressed blocks are block_size bytes each, which tracks progress closely.
            blocks += 1
            done = raw.tell() if inp.compression else min(blocks * CSV_BLOCK_BYTES, inp.size)
            table, numbers = pa.Table.from_batches([batch]), pa.array(x + shift)
            if whitespace:
                table, numbers, split_bad = _split_whitespace(
                    table.column(0).combine_chunks(), inp.columns, cols, numbers
                )
                new = sorted(new + split_bad)
            yield _Batch(table, numbers, new, done)
    if len(malformed) > reported:
        yield _Batch(
            pa.table({c: pa.array([], pa.string()) for c in cols}),
            pa.array([], pa.int64()),
            malformed[reported:],
            inp.size,
        )


def _parquet_batches(inp: _Input, mapping: ColumnMapping) -> Iterator[_Batch]:
    """Batches of the mapped columns with their types, and 1-based row numbers."""
    with inp.fs.open_input_file(inp.fs_path) as f:
        pf = pq.ParquetFile(f)
        total = max(pf.metadata.num_rows, 1)
        done = 0
        for batch in pf.iter_batches(
            batch_size=PARQUET_BATCH_ROWS, columns=mapping.source_columns()
        ):
            n = batch.num_rows
            rows = pa.array(np.arange(done + 1, done + n + 1, dtype=np.int64))
            done += n
            yield _Batch(pa.Table.from_batches([batch]), rows, [], inp.size * done // total)


def _batches(inp: _Input, mapping: ColumnMapping) -> Iterator[_Batch]:
    try:
        if inp.fmt == "csv":
            yield from _csv_batches(inp, mapping)
        else:
            yield from _parquet_batches(inp, mapping)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{inp.path}: cannot read: {exc}") from exc


# ---------------------------------------------------------------------------- run
#: Reasons sampled per file at most (each "unknown event type 'x'" is a reason of its own).
_MAX_SAMPLED_REASONS = 20


def _add_samples(
    samples: dict[str, list[str]], rejects: pa.Table, mapping: ColumnMapping, reasons: list[str]
) -> None:
    """Keep up to SAMPLE_VALUES distinct offending values of each reason seen so far."""
    for reason in reasons:
        if reason not in samples and len(samples) >= _MAX_SAMPLED_REASONS:
            continue
        kept = samples.setdefault(reason, [])
        role = reject_role(reason)
        if role is None or len(kept) >= SAMPLE_VALUES:
            continue
        rows = rejects.filter(pc.equal(rejects.column("reason"), reason))
        for value in pc.unique(rows.column(reject_column(mapping, role))).to_pylist():
            if value is not None and value not in kept and len(kept) < SAMPLE_VALUES:
                kept.append(value)


def _reason_counts(rejects: pa.Table) -> dict[str, int]:
    if rejects.num_rows == 0:
        return {}
    counts = pc.value_counts(rejects.column("reason").combine_chunks())
    return {
        str(v): int(c)
        for v, c in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
    }


class _Sink:
    """Where an import's rows go before its commit: warehouse parts and the rejects file.

    Accepted rows are buffered up to ``flush_rows`` and written, one part per touched bucket,
    by one background thread while the next rows are parsed (Arrow and Parquet release the
    GIL); at most one chunk is in flight, which bounds memory. Rejects stream into one Parquet
    file, created at the first reject.
    """

    def __init__(
        self,
        wh: Warehouse,
        rejects_path: str,
        schema: pa.Schema,
        import_id: str,
        flush_rows: int,
        columns: list[str],
    ) -> None:
        self.wh = wh
        self.columns = columns
        self.fs, _ = resolve(wh.data_root)
        self.rejects_path = rejects_path
        self.schema = schema
        self.import_id = import_id
        self.flush_rows = flush_rows
        self.written = WriteResult()
        self.rejected = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._chunk = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strata-import")
        self._in_flight: Future[WriteResult] | None = None
        self._rejects: pq.ParquetWriter | None = None

    def add(self, accepted: pa.Table, rejects: pa.Table) -> None:
        if rejects.num_rows:
            if self._rejects is None:
                self.fs.create_dir(posixpath.dirname(self.rejects_path), recursive=True)
                self._rejects = pq.ParquetWriter(
                    self.rejects_path, self.schema, filesystem=self.fs, **PARQUET_OPTIONS
                )
            self._rejects.write_table(rejects)
            self.rejected += rejects.num_rows
        if accepted.num_rows:
            self._pending.append(accepted)
            self._pending_rows += accepted.num_rows
            if self._pending_rows >= self.flush_rows:
                self._flush()

    def _wait(self) -> None:
        if self._in_flight is not None:
            done, self._in_flight = self._in_flight, None
            self.written.extend(done.result())

    def _flush(self) -> None:
        self._wait()
        if self._pending_rows:
            table = pa.concat_tables(self._pending)
            write_id = f"import-{self.import_id}-{self._chunk:04d}"
            self._in_flight = self._pool.submit(
                self.wh.write_partitioned, "events", table, write_id, self.columns
            )
            self._chunk += 1
        self._pending, self._pending_rows = [], 0

    def finish(self) -> WriteResult:
        """Write what is buffered, wait for it and close the rejects file."""
        self._flush()
        self._wait()
        if self._rejects is not None:
            self._rejects.close()
            self._rejects = None
        return self.written

    def discard(self) -> None:
        """Best-effort removal of everything written (nothing of it was committed)."""
        with contextlib.suppress(Exception):
            self._wait()
        try:
            if self._rejects is not None:
                self._rejects.close()
            if self.fs.get_file_info(self.rejects_path).type == pafs.FileType.File:
                self.fs.delete_file(self.rejects_path)
            for part in self.written.parts:
                d = self.wh.bucket_dir(part.table, part.bucket)
                self.fs.delete_file(posixpath.join(d, part.name))
        except (OSError, pa.ArrowException):
            pass  # orphans are invisible to readers and swept by `strata vacuum`

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def run(
    settings: Settings,
    files: list[str],
    mapping: ColumnMapping,
    *,
    now_ms: int | None = None,
    flush_rows: int = FLUSH_ROWS,
    show_progress: bool = True,
) -> ImportResult:
    """Import files into the warehouse of ``settings.data``; one commit at the end.

    Args:
        settings: data root, key and bucket count of a new warehouse.
        files: CSV/TSV/TXT (optionally ``.gz``) or Parquet files, local paths or URIs.
        mapping: which columns hold what (checked against every file before any write).
        now_ms: the import time (epoch ms) for the future-timestamp check; default now.
        flush_rows: accepted rows buffered before they are written to the buckets.
        show_progress: draw a progress bar.

    Returns:
        counts per file and in total, reasons of rejects, and the rejects file (if any).

    Raises:
        InputError, MappingError: a file is missing, unreadable or lacks a mapped column
            (before anything is written).
        WarehouseError: the warehouse cannot be opened.
    """
    t0 = time.perf_counter()
    if not files:
        raise InputError("no input files given")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    key = load_pseudonym_key(settings)
    inputs = [_probe(path, mapping) for path in files]  # every file checked before any write

    wh = Warehouse(settings.data)
    wh.open_or_create(settings.n_buckets)
    import_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_ms / 1000))
    import_id += "-" + uuid.uuid4().hex[:8]
    _, root = resolve(settings.data)
    rejects_path = posixpath.join(root, "rejects", f"import-{import_id}.parquet")
    sink = _Sink(
        wh,
        rejects_path,
        rejects_schema(mapping),
        import_id,
        flush_rows,
        mapping.warehouse_columns(),
    )
    pseudonyms = PseudonymCache(key)
    results: list[FileResult] = []
    bar = progress() if show_progress else None
    try:
        with bar if bar is not None else nullcontext():
            total_mib = max(sum(i.size for i in inputs) / (1 << 20), 1.0)
            task = bar.add_task("importing (MiB)", total=total_mib) if bar is not None else None
            done_before = 0
            for inp in inputs:
                fr = FileResult(inp.path, pii_columns_dropped=pii_columns_in(inp.columns))
                reasons: Counter[str] = Counter()
                for b in _batches(inp, mapping):
                    accepted, rejects = parse_batch(
                        b.table,
                        mapping,
                        key,
                        inp.path,
                        1,
                        now_ms,
                        row_numbers=b.row_numbers,
                        pseudonyms=pseudonyms,
                    )
                    if b.malformed:
                        rejects = pa.concat_tables(
                            [rejects, malformed_rejects(mapping, inp.path, b.malformed)]
                        )
                    fr.input_rows += b.table.num_rows + len(b.malformed)
                    fr.accepted += accepted.num_rows
                    fr.rejected += rejects.num_rows
                    counts = _reason_counts(rejects)
                    reasons.update(counts)
                    new = [
                        r
                        for r in counts
                        if r in fr.samples or len(fr.samples) < _MAX_SAMPLED_REASONS
                    ]
                    _add_samples(fr.samples, rejects, mapping, new)
                    sink.add(accepted, rejects)
                    if bar is not None and task is not None:
                        bar.update(task, completed=(done_before + b.bytes_done) / (1 << 20))
                done_before += inp.size
                fr.rejects_by_reason = dict(reasons.most_common())
                results.append(fr)
            written = sink.finish()
        accepted_n = sum(f.accepted for f in results)
        rejected_n = sum(f.rejected for f in results)
        wh.commit(
            written,
            "import",
            info={
                "import_id": import_id,
                "accepted": accepted_n,
                "rejected": rejected_n,
                "input_files": [i.path for i in inputs],
                "rejects_path": rejects_path if rejected_n else None,
            },
        )
    except BaseException:
        sink.discard()
        raise
    finally:
        sink.close()
    total: Counter[str] = Counter()
    warnings: list[str] = []
    for fr in results:
        total.update(fr.rejects_by_reason)
        warnings += reject_warnings(
            fr.path,
            fr.input_rows,
            fr.accepted,
            fr.rejects_by_reason,
            fr.samples,
            mapping,
            now_ms,
        )
    return ImportResult(
        input_rows=sum(f.input_rows for f in results),
        accepted=accepted_n,
        rejected=rejected_n,
        rejects_by_reason=dict(total.most_common()),
        files=results,
        rejects_path=rejects_path if rejected_n else None,
        seconds=time.perf_counter() - t0,
        import_id=import_id,
        now_ms=now_ms,
        warnings=warnings,
    )


# ---------------------------------------------------------------------------- CLI
def _summary(result: ImportResult) -> list[Table]:
    counts = Table(title="import", header_style="bold")
    counts.add_column("file")
    for name in ("input rows", "accepted", "rejected"):
        counts.add_column(name, justify="right")
    for fr in result.files:
        counts.add_row(
            escape(fr.path), f"{fr.input_rows:,}", f"{fr.accepted:,}", f"{fr.rejected:,}"
        )
    counts.add_row(
        "[bold]total",
        f"{result.input_rows:,}",
        f"{result.accepted:,}",
        f"{result.rejected:,}",
        end_section=True,
    )
    tables = [counts]
    if result.rejects_by_reason:
        reasons = Table(title="rejected by reason", header_style="bold")
        reasons.add_column("reason")
        per_file = len(result.files) > 1
        if per_file:
            for fr in result.files:
                reasons.add_column(escape(posixpath.basename(fr.path)), justify="right")
        reasons.add_column("total", justify="right")
        top = list(result.rejects_by_reason.items())
        shown, rest = top[:20], top[20:]
        for reason, n in shown:
            cells = [f"{fr.rejects_by_reason.get(reason, 0):,}" for fr in result.files]
            reasons.add_row(escape(reason), *(cells if per_file else []), f"{n:,}")
        if rest:
            other = sum(n for _, n in rest)
            pad = [""] * len(result.files) if per_file else []
            reasons.add_row(f"({len(rest)} other reasons)", *pad, f"{other:,}")
        tables.append(reasons)
    return tables


DataOpt = typer.Option("./data", "--data", help="Data root (local path or filesystem URI).")


def command(
    files: list[str] = typer.Argument(
        ..., help="CSV/TSV/TXT files with a header (optionally .gz) or Parquet files."
    ),
    data: str = DataOpt,
    user_col: str | None = typer.Option(None, "--user-col", help="Column of the user id."),
    time_col: str | None = typer.Option(None, "--time-col", help="Column of the event time."),
    amount_col: str | None = typer.Option(
        None, "--amount-col", help="Column of the amount in CNY."
    ),
    time_format: str | None = typer.Option(
        None,
        "--time-format",
        help="iso (default), epoch (seconds), epoch_ms, or a strptime format like %Y%m%d.",
    ),
    order_col: str | None = typer.Option(None, "--order-col", help="Column of the order id."),
    category_col: str | None = typer.Option(None, "--category-col", help="Column of the category."),
    coupon_col: str | None = typer.Option(None, "--coupon-col", help="Column of the coupon id."),
    event_type_col: str | None = typer.Option(
        None, "--event-type-col", help="Column of the event type (without: every row is an order)."
    ),
    delimiter: str | None = typer.Option(
        None,
        "--delimiter",
        help="Field separator: one character (default , and tab for .tsv), or 'whitespace' "
        "for runs of spaces/tabs (no quoting).",
    ),
    min_time: str | None = typer.Option(
        None,
        "--min-time",
        help="Earliest accepted event time, inclusive: ISO date (its local midnight, "
        f"UTC+{LOCAL_UTC_OFFSET_HOURS}) or date-time. Default {DEFAULT_MIN_TIME} "
        "(epoch zero and year 0001 are garbage).",
    ),
    max_time: str | None = typer.Option(
        None,
        "--max-time",
        help="End of the accepted event times, exclusive like --as-of (same forms): "
        "--max-time 1998-07-01 keeps June. Default: one day after now.",
    ),
    mapping_file: str | None = typer.Option(
        None, "--mapping", help="YAML column mapping; flags override its keys."
    ),
) -> None:
    """Import transaction or event logs (CSV or Parquet) into the warehouse."""
    mapping = load_mapping(
        mapping_file,
        user_col=user_col,
        time_col=time_col,
        amount_col=amount_col,
        time_format=time_format,
        order_col=order_col,
        category_col=category_col,
        coupon_col=coupon_col,
        event_type_col=event_type_col,
        delimiter=delimiter,
        min_time=min_time,
        max_time=max_time,
    )
    result = run(Settings(data=data), files, mapping)
    for table in _summary(result):
        console.print(table)
    dropped = sorted({c for f in result.files for c in f.pii_columns_dropped})
    if dropped:
        console.print(f"personal-data columns dropped (never read): {escape(', '.join(dropped))}")
    if result.rejects_path:
        console.print(f"rejected rows with reasons: {escape(result.rejects_path)}")
    console.print(
        f"{result.input_rows:,} rows in {result.seconds:,.1f} s "
        f"({result.rows_per_second:,.0f} rows/s); import id {result.import_id}"
    )
    for warning in result.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if result.accepted == 0:
        console.print(
            f"[bold red]import accepted no rows[/] of {result.input_rows:,}; "
            "nothing was added to the warehouse",
            soft_wrap=True,
        )
        raise typer.Exit(NOTHING_ACCEPTED_EXIT)


if __name__ == "__main__":
    run_command(command)
