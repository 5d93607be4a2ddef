"""Input files of ``strata import``: format detection, the header probe and batch readers.

:func:`probe` opens a file far enough to check the column mapping against its header or
schema (every file is probed before any row is written); :func:`read_batches` then yields the
mapped columns in batches with their 1-based data-row numbers. CSV/TSV/TXT (optionally
gzip-compressed) is read as text, single-threaded; rows the reader cannot split are reported as
malformed and their text is never kept. ``delimiter: whitespace`` files are read as whole lines
and split at runs of spaces/tabs. Parquet columns keep their types. Unmapped columns are never
read. Problems with a file raise :class:`InputError`, a user error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from strata.ingest import WHITESPACE, ColumnMapping, check_columns
from strata.io.warehouse import resolve

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


class InputError(ValueError):
    """An input file is missing, of an unknown type, or unreadable."""


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
class InputFile:
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


def _open_raw(inp: InputFile) -> pa.NativeFile:
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


def probe(path: str, mapping: ColumnMapping) -> InputFile:
    """Open a file's header or schema and check the mapping against it.

    Raises:
        InputError: the file is missing, of an unknown type, or its header is unreadable.
        MappingError: a mapped column is missing or unusable.
    """
    fs, fs_path = resolve(path)
    # from the path on its filesystem: a URI's query (``?endpoint_override=...``) is no suffix
    fmt, compression = detect_format(fs_path)
    info = fs.get_file_info(fs_path)
    if info.type != pafs.FileType.File:
        raise InputError(f"{path}: no such file")
    delimiter = mapping.delimiter or ("\t" if ".tsv" in fs_path.lower() else ",")
    inp = InputFile(path, fs, fs_path, fmt, compression, delimiter, int(info.size or 0), [])
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
class Batch:
    """One batch of an input file: the mapped columns, their 1-based data-row numbers, the
    malformed rows seen since the previous batch and how far into the file (bytes) it is."""

    table: pa.Table
    row_numbers: pa.Array
    malformed: list[tuple[int, str]]
    bytes_done: int


def _csv_batches(inp: InputFile, mapping: ColumnMapping) -> Iterator[Batch]:
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
            yield Batch(table, numbers, new, done)
    if len(malformed) > reported:
        yield Batch(
            pa.table({c: pa.array([], pa.string()) for c in cols}),
            pa.array([], pa.int64()),
            malformed[reported:],
            inp.size,
        )


def _parquet_batches(inp: InputFile, mapping: ColumnMapping) -> Iterator[Batch]:
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
            yield Batch(pa.Table.from_batches([batch]), rows, [], inp.size * done // total)


def read_batches(inp: InputFile, mapping: ColumnMapping) -> Iterator[Batch]:
    """The mapped columns of a probed file in batches (CSV as text, Parquet typed).

    Raises:
        InputError: the file cannot be read.
    """
    try:
        if inp.fmt == "csv":
            yield from _csv_batches(inp, mapping)
        else:
            yield from _parquet_batches(inp, mapping)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{inp.path}: cannot read: {exc}") from exc
