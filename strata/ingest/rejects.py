"""Rejected rows of an import: reasons, the rejects table, and the warnings a user must see.

Reject reasons, in the order they are checked (a row with several problems gets the first):

1. ``missing user id`` — the user cell is empty or blank;
2. ``unparsable timestamp`` — the time does not parse in the mapping's ``time_format``;
3. ``timestamp before min time`` / ``timestamp at or after max time`` — outside the
   mapping's accepted range ``[min_time, max_time)`` (flags ``--min-time`` / ``--max-time``;
   the upper bound is exclusive like every as-of of strata: ``--max-time 1998-07-01`` keeps
   June). By default the range starts just after the Unix epoch
   (:data:`strata.ingest.mapping.DEFAULT_MIN_TIME`: epoch zero, ``19700101`` and year 0001 are
   garbage, not history) and ends one day after the import (clock skew);
4. ``missing event type`` / ``unknown event type 'x'`` — not a :data:`strata.schema.EVENT_TYPES`
   value or alias (:data:`strata.ingest.mapping.EVENT_TYPE_ALIASES`, plus the mapping's
   ``event_type_values``);
5. ``non-numeric amount`` — not a plain decimal number (``12.50``, ``-3``, ``1e3``), or NaN/inf;
6. ``negative amount``;
7. ``missing amount`` — an ``order`` row without an amount (other events may have none);
8. ``unknown category 'x'`` — not a :data:`strata.schema.CATEGORIES` value or alias
   (:data:`strata.ingest.mapping.CATEGORY_ALIASES`, plus the mapping's ``category_values``); a
   blank category is null.

Identity is checked first, then time, then what the event is (whether an amount is required
depends on it), then the amount, then the optional category. CSV rows with the wrong number of
fields are rejected by the reader as ``malformed row (expected N fields, got M)``
(:func:`malformed_rejects`). With ``delimiter: whitespace`` fields are separated by runs of
spaces or tabs (leading and trailing ones ignored, no quoting), as in classic research logs
such as CDNOW; a blank field cannot be written there, so a short line is a malformed row.

After an import, :func:`reject_warnings` turns the counts into what the user must see: a
reason that rejected every row, or more than half of a file, is named with a sample of the
offending values and the flag (or mapping key) that changes it.

Privacy: the rejects table keeps the mapped columns as text, except the raw user id: its
column is replaced by ``user_id``, the *pseudonymised* id as decimal text (null when missing).
The pseudonym is what the warehouse stores, so rejected rows can be matched to a user's
accepted events, and whoever holds the key can find a known user's rejects by pseudonymising
the id; the clear id is never written.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from strata.ingest.mapping import ColumnMapping, Role
from strata.ingest.timeparse import format_ms

MISSING_USER = "missing user id"
UNPARSABLE_TIMESTAMP = "unparsable timestamp"
TIMESTAMP_TOO_EARLY = "timestamp before min time"
TIMESTAMP_TOO_LATE = "timestamp at or after max time"
MISSING_EVENT_TYPE = "missing event type"
NON_NUMERIC_AMOUNT = "non-numeric amount"
NEGATIVE_AMOUNT = "negative amount"
MISSING_AMOUNT = "missing amount"

#: Columns the rejects table adds after the mapped columns.
REJECT_META_COLUMNS = ("reason", "source_file", "row_number")
#: Name of the (pseudonymised) user column in the rejects table.
REJECT_USER_COLUMN = "user_id"
#: Unknown values are quoted in reasons up to this many characters.
MAX_VALUE_IN_REASON = 40


def _reject_column_names(mapping: ColumnMapping) -> list[str]:
    out = []
    for role, col in mapping.roles().items():
        if role == "user":
            out.append(REJECT_USER_COLUMN)
        elif col in (REJECT_USER_COLUMN, *REJECT_META_COLUMNS):
            out.append(f"source_{col}")
        else:
            out.append(col)
    return out


def rejects_schema(mapping: ColumnMapping) -> pa.Schema:
    """Schema of the rejects table: mapped columns as text (the user column as ``user_id``,
    pseudonymised), then ``reason``, ``source_file`` and ``row_number``.

    A mapped column whose name clashes with those four is written as ``source_<name>``.
    """
    fields = [pa.field(n, pa.string()) for n in _reject_column_names(mapping)]
    fields += [
        pa.field("reason", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("row_number", pa.int64(), nullable=False),
    ]
    return pa.schema(fields, metadata={"strata.table": "import_rejects"})


def malformed_rejects(
    mapping: ColumnMapping, source: str, rows: Sequence[tuple[int, str]]
) -> pa.Table:
    """Rejects for rows the CSV reader could not split (their text is not kept).

    Args:
        mapping: the column mapping (gives the table's columns).
        source: the file.
        rows: (1-based data-row number, reason) per malformed row.
    """
    schema = rejects_schema(mapping)
    n = len(rows)
    arrays: list[pa.Array] = [pa.nulls(n, pa.string()) for _ in schema.names[:-3]]
    arrays += [
        pa.array([r for _, r in rows], pa.string()),
        pa.array([source] * n, pa.string()),
        pa.array([i for i, _ in rows], pa.int64()),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


#: Distinct offending values shown per reason.
SAMPLE_VALUES = 5


def reject_role(reason: str) -> Role | None:
    """The mapped role whose values a reject reason is about (what to sample), if any."""
    if reason in (UNPARSABLE_TIMESTAMP, TIMESTAMP_TOO_EARLY, TIMESTAMP_TOO_LATE):
        return "time"
    if reason in (NON_NUMERIC_AMOUNT, NEGATIVE_AMOUNT, MISSING_AMOUNT):
        return "amount"
    if reason == MISSING_EVENT_TYPE or reason.startswith("unknown event type"):
        return "event_type"
    if reason.startswith("unknown category"):
        return "category"
    return None


def reject_column(mapping: ColumnMapping, role: Role) -> str:
    """Name of the rejects-table column that holds a role's source values."""
    return dict(zip(mapping.roles(), _reject_column_names(mapping), strict=True))[role]


def reject_hint(reason: str, mapping: ColumnMapping, now_ms: int) -> str:
    """What changes a reject reason: the flag, its mapping key and its value now."""
    lo, hi = mapping.time_range_ms(now_ms)
    if reason == TIMESTAMP_TOO_EARLY:
        return f"--min-time (mapping key min_time; now {format_ms(lo)})"
    if reason == TIMESTAMP_TOO_LATE:
        return f"--max-time (mapping key max_time; now {format_ms(hi)})"
    if reason == UNPARSABLE_TIMESTAMP:
        return f"--time-format (mapping key time_format; now {mapping.time_format!r})"
    if reason == MISSING_USER:
        return f"--user-col (mapping key user_col; now {mapping.user_col!r})"
    if reason in (NON_NUMERIC_AMOUNT, NEGATIVE_AMOUNT, MISSING_AMOUNT):
        return f"--amount-col (mapping key amount_col; now {mapping.amount_col!r})"
    if reason == MISSING_EVENT_TYPE or reason.startswith("unknown event type"):
        return "--event-type-col, or event_type_values in the --mapping file"
    if reason.startswith("unknown category"):
        return "--category-col, or category_values in the --mapping file"
    if reason.startswith("malformed row"):
        return f"--delimiter (mapping key delimiter; now {mapping.delimiter or 'by extension'!r})"
    return "the input file"


def reject_warnings(
    source: str,
    input_rows: int,
    accepted: int,
    rejects_by_reason: dict[str, int],
    samples: dict[str, list[str]],
    mapping: ColumnMapping,
    now_ms: int,
) -> list[str]:
    """What the user must be told about one file's rejects (empty when nothing is alarming).

    A file that gave no accepted row lists its reasons; otherwise each reason that rejected
    more than half of the file's rows is named. Each message has the count, a sample of the
    offending values and the flag (or mapping key) that changes it.

    Args:
        source: the file.
        input_rows, accepted: the file's counts.
        rejects_by_reason: rejected rows per reason.
        samples: distinct offending values per reason (:func:`reject_role`'s column).
        mapping: the mapping of the import (for the hint's current values).
        now_ms: the import time (the default upper bound depends on it).
    """
    if input_rows == 0:
        return [f"{source}: no data rows"]
    if accepted == 0:
        alarming = list(rejects_by_reason.items())[:3]
        head = f"{source}: nothing accepted"
    else:
        alarming = [(r, n) for r, n in rejects_by_reason.items() if 2 * n > input_rows]
        head = f"{source}: more than half of the rows rejected"
    out = []
    for reason, n in alarming:
        values = samples.get(reason) or []
        shown = ", ".join(repr(v[:MAX_VALUE_IN_REASON]) for v in values[:SAMPLE_VALUES])
        out.append(
            f"{head}: {n:,} of {input_rows:,} rows {reason!r}"
            + (f" (e.g. {shown})" if shown else "")
            + f"; to change it: {reject_hint(reason, mapping, now_ms)}"
        )
    return out


# ---------------------------------------------------------------------------- samples
#: Reasons sampled per file at most (each "unknown event type 'x'" is a reason of its own).
MAX_SAMPLED_REASONS = 20


def add_samples(
    samples: dict[str, list[str]], rejects: pa.Table, mapping: ColumnMapping, reasons: list[str]
) -> None:
    """Keep up to SAMPLE_VALUES distinct offending values of each reason seen so far."""
    for reason in reasons:
        if reason not in samples and len(samples) >= MAX_SAMPLED_REASONS:
            continue
        kept = samples.setdefault(reason, [])
        role = reject_role(reason)
        if role is None or len(kept) >= SAMPLE_VALUES:
            continue
        rows = rejects.filter(pc.equal(rejects.column("reason"), reason))
        for value in pc.unique(rows.column(reject_column(mapping, role))).to_pylist():
            if value is not None and value not in kept and len(kept) < SAMPLE_VALUES:
                kept.append(value)


def reason_counts(rejects: pa.Table) -> dict[str, int]:
    """Rejected rows per reason of a rejects table."""
    if rejects.num_rows == 0:
        return {}
    counts = pc.value_counts(rejects.column("reason").combine_chunks())
    return {
        str(v): int(c)
        for v, c in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
    }
