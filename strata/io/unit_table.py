"""Read an experiment run elsewhere: one row per unit, an arm column and metric columns.

:func:`read_unit_table` reads only the named columns of a CSV (.csv/.tsv/.txt, optionally .gz)
or Parquet file into numpy arrays for :func:`strata.experiments.unit_statistics`. Missing
columns are named; a blank (or NaN) metric cell is refused with its row number.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from strata.io.import_files import InputError, detect_format


@dataclass(frozen=True)
class UnitTable:
    """One row per unit: its arm (an index into ``arm_names``, which are sorted) and values."""

    arm_codes: npt.NDArray[np.int64]
    arm_names: list[str]
    metrics: dict[str, npt.NDArray[np.float64]]
    covariate: npt.NDArray[np.float64] | None
    rows: int


def _where(fmt: str, index: int) -> str:
    # CSV: the header is line 1 (a quoted multi-line cell would shift the line, not the row)
    return f"row {index + 1}" + (f" (line {index + 2})" if fmt == "csv" else "")


def _read(path: str, columns: list[str], numeric: list[str]) -> tuple[str, pa.Table]:
    fmt, compression = detect_format(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    delimiter = "\t" if path.lower().removesuffix(".gz").endswith(".tsv") else ","
    try:
        if fmt == "parquet":
            names = pq.read_schema(path).names
        else:
            stream: pa.NativeFile = pa.OSFile(path, "rb")
            if compression:
                stream = pa.CompressedInputStream(stream, compression)
            with pacsv.open_csv(
                stream, parse_options=pacsv.ParseOptions(delimiter=delimiter)
            ) as reader:
                names = reader.schema.names
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: cannot read it as {fmt}: {e}") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(
            f"{path}: no column {', '.join(repr(c) for c in missing)}; it has {', '.join(names)}"
        )
    try:
        if fmt == "parquet":
            return fmt, pq.read_table(path, columns=columns)
        convert = pacsv.ConvertOptions(
            include_columns=columns,
            column_types={c: pa.float64() for c in numeric},
            strings_can_be_null=True,
        )
        return fmt, pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=convert,
        )
    except pa.ArrowInvalid as e:
        found = re.match(r"In CSV column #(\d+): (.*)", str(e).strip())
        if found and int(found[1]) < len(names):
            raise InputError(
                f"{path}: column {names[int(found[1])]!r} is not numeric ({found[2]})"
            ) from None
        raise InputError(f"{path}: {e}") from None


def _numeric(path: str, fmt: str, table: pa.Table, column: str) -> npt.NDArray[np.float64]:
    col = table.column(column)
    if not (
        pa.types.is_integer(col.type)
        or pa.types.is_floating(col.type)
        or pa.types.is_boolean(col.type)
    ):
        raise InputError(f"{path}: column {column!r} is not numeric ({col.type})")
    values = col.cast(pa.float64()).to_numpy()
    blank = np.isnan(values)
    if blank.any():
        first = int(np.flatnonzero(blank)[0])
        raise InputError(
            f"{path}: column {column!r} is blank at {_where(fmt, first)}; every unit needs a "
            "value (0 for none)"
        )
    return values


def read_unit_table(
    path: str, arm_col: str, metric_cols: list[str], covariate_col: str | None = None
) -> UnitTable:
    """Read the arm, metric and covariate columns of a file of one row per unit.

    Raises:
        InputError: an unknown file type, a missing file or column, a non-numeric metric, a
            blank arm or metric cell (named with its row), an empty file.
    """
    numeric = [*metric_cols, *([covariate_col] if covariate_col else [])]
    columns = list(dict.fromkeys([arm_col, *numeric]))
    fmt, table = _read(path, columns, numeric)
    if table.num_rows == 0:
        raise InputError(f"{path}: no rows")
    arm = table.column(arm_col)
    if arm.null_count:
        first = int(np.flatnonzero(arm.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{path}: column {arm_col!r} (the arm) is blank at {_where(fmt, first)}")
    encoded = pc.dictionary_encode(arm.cast(pa.string())).combine_chunks()
    names = [str(x) for x in encoded.dictionary.to_pylist()]
    order = sorted(range(len(names)), key=lambda i: names[i])
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    metrics = {m: _numeric(path, fmt, table, m) for m in metric_cols}
    covariate = _numeric(path, fmt, table, covariate_col) if covariate_col else None
    return UnitTable(
        arm_codes=codes,
        arm_names=[names[i] for i in order],
        metrics=metrics,
        covariate=covariate,
        rows=table.num_rows,
    )
