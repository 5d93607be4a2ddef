"""Arrow helpers shared by the modules of :mod:`strata.ingest` (private to the package)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

#: Runs of these characters become ``_`` when labels are normalised.
LABEL_SEPARATORS = r"[ \t\-&/+.]+"
NUMBER_RE = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"


def as_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array of a column."""
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def as_text(arr: pa.Array) -> pa.Array:
    """The column as ``string`` (nulls kept)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    return arr if pa.types.is_string(arr.type) else arr.cast(pa.string())


def trimmed_text(arr: pa.Array) -> pa.Array:
    """Text trimmed of whitespace, null as ``""``."""
    return pc.fill_null(pc.utf8_trim_whitespace(as_text(arr)), "")


def normalised_labels(trimmed: pa.Array) -> pa.Array:
    """Labels normalised as :func:`strata.ingest.mapping.normalise_label` does, vectorised."""
    low = pc.utf8_lower(trimmed)
    return pc.utf8_trim(pc.replace_substring_regex(low, LABEL_SEPARATORS, "_"), "_")


def is_true(arr: pa.Array) -> pa.Array:
    """A boolean mask with null as False."""
    return pc.fill_null(arr, False)


def count_true(mask: pa.Array) -> int:
    """How many values of a boolean mask are true."""
    return int(pc.sum(mask).as_py() or 0)


def parse_number(s: pa.Array) -> pa.Array:
    """float64 of trimmed decimal strings; null where not a plain number."""
    ok = is_true(pc.match_substring_regex(s, NUMBER_RE))
    return pc.if_else(ok, s, pa.scalar(None, pa.string())).cast(pa.float64())
