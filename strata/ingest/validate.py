"""Batch validation of imported rows: :func:`parse_batch` turns them into events and rejects.

Each batch becomes two tables:

* accepted events, conforming to :data:`strata.schema.EVENTS_SCHEMA`, with user ids already
  pseudonymised (keyed HMAC-SHA256, :func:`strata.ids.pseudonymise_array`);
* rejects: every row that cannot be imported, with the reason (see
  :mod:`strata.ingest.rejects` for the reasons and their order), the source file and its
  1-based data-row number. ``accepted + rejected == input rows``, always: bad input never
  vanishes.

Validation is vectorised with ``pyarrow.compute``. Per-value Python runs only for the HMAC of
each distinct user id (:class:`PseudonymCache`) and as a fallback for the timestamps Arrow
cannot parse (:mod:`strata.ingest.timeparse`), applied to those values alone, each distinct
value once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from strata.ids import pseudonymise_array
from strata.ingest._arrays import (
    as_array,
    as_text,
    is_true,
    normalised_labels,
    parse_number,
    trimmed_text,
)
from strata.ingest.mapping import CATEGORY_ALIASES, EVENT_TYPE_ALIASES, ColumnMapping, Role
from strata.ingest.rejects import (
    MAX_VALUE_IN_REASON,
    MISSING_AMOUNT,
    MISSING_EVENT_TYPE,
    MISSING_USER,
    NEGATIVE_AMOUNT,
    NON_NUMERIC_AMOUNT,
    TIMESTAMP_TOO_EARLY,
    TIMESTAMP_TOO_LATE,
    UNPARSABLE_TIMESTAMP,
    rejects_schema,
)
from strata.ingest.timeparse import parse_time_ms
from strata.schema import CATEGORIES, EVENT_TYPES, EVENTS_SCHEMA, EventType, conform


class PseudonymCache:
    """Pseudonyms of the raw ids seen so far in one import: each distinct id is hashed once.

    Holds raw ids in memory only for the duration of the import (never written). Results are
    those of :func:`strata.ids.pseudonymise_array`.

    Args:
        key: the pseudonymisation key.
        max_ids: the cache starts over beyond this many distinct ids (bounds memory).
    """

    def __init__(self, key: bytes, max_ids: int = 2_000_000) -> None:
        self.key = key
        self.max_ids = max_ids
        self._raw = pa.array([], pa.string())
        self._ids = pa.array([], pa.int64())

    def pseudonymise(self, raw_ids: pa.Array) -> pa.Array:
        """int64 pseudonyms of a string array of (trimmed, non-null) raw ids."""
        encoded = pc.dictionary_encode(raw_ids)
        distinct = encoded.dictionary
        ids = np.zeros(len(distinct), dtype=np.int64)
        known = np.zeros(len(distinct), dtype=bool)
        if len(self._raw):
            # hash the batch's distinct ids (smaller) and probe the cache against them
            where = pc.index_in(self._raw, value_set=distinct)
            hit = pc.is_valid(where)
            slots = where.filter(hit).to_numpy()
            ids[slots] = self._ids.filter(hit).to_numpy()
            known[slots] = True
        new = distinct.filter(pa.array(~known))
        new_ids = pseudonymise_array(new, self.key) if len(new) else pa.array([], pa.int64())
        ids[~known] = new_ids.to_numpy()
        if len(self._raw) + len(new) > self.max_ids:
            self._raw, self._ids = new, new_ids
        else:
            self._raw = pa.concat_arrays([self._raw, new])
            self._ids = pa.concat_arrays([self._ids, new_ids])
        return pa.array(ids).take(encoded.indices)


def parse_batch(
    batch: pa.RecordBatch | pa.Table,
    mapping: ColumnMapping,
    key: bytes,
    source: str,
    first_row: int,
    now_ms: int,
    row_numbers: pa.Array | None = None,
    pseudonyms: PseudonymCache | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Validate and convert one batch of source rows.

    Args:
        batch: the mapped source columns (others are ignored), as read from the file.
        mapping: the column mapping (checked against the file beforehand).
        key: the pseudonymisation key.
        source: the source file, recorded in rejects.
        first_row: 1-based data-row number of the batch's first row.
        now_ms: the import time (epoch ms); without a ``max_time`` in the mapping, events
            a day or more later are rejected.
        row_numbers: explicit 1-based row numbers (when rows were skipped before), else
            ``first_row + i``.
        pseudonyms: a cache shared by the batches of one import (same results, less hashing).

    Returns:
        ``(accepted, rejects)``: accepted rows conforming to ``EVENTS_SCHEMA`` and the rejects
        table (:func:`rejects_schema`); their row counts add up to ``batch.num_rows``.
    """
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    n = table.num_rows
    roles = mapping.roles()
    raw = {role: as_array(table.column(col)) for role, col in roles.items()}
    reason: pa.Array = pa.nulls(n, pa.string())

    # 1. user
    user = trimmed_text(raw["user"])
    missing_user = pc.equal(user, "")
    cache = pseudonyms if pseudonyms is not None else PseudonymCache(key)
    pseudo = cache.pseudonymise(user) if n else pa.array([], pa.int64())
    pseudo = pc.if_else(missing_user, pa.scalar(None, pa.int64()), pseudo)
    reason = _first_reason(reason, missing_user, MISSING_USER)

    # 2-3. time
    ts_ms = parse_time_ms(raw["time"], mapping.time_format)
    reason = _first_reason(reason, pc.is_null(ts_ms), UNPARSABLE_TIMESTAMP)
    lo_ms, hi_ms = mapping.time_range_ms(now_ms)
    reason = _first_reason(reason, pc.less(ts_ms, float(lo_ms)), TIMESTAMP_TOO_EARLY)
    reason = _first_reason(reason, pc.greater_equal(ts_ms, float(hi_ms)), TIMESTAMP_TOO_LATE)

    # 4. event type
    if "event_type" in raw:
        et_text = trimmed_text(raw["event_type"])
        lookup = {v: v for v in EVENT_TYPES} | EVENT_TYPE_ALIASES | mapping.event_type_values
        event_type, unknown_reasons = _map_labels(et_text, lookup, "event type")
        reason = _first_reason(reason, pc.equal(et_text, ""), MISSING_EVENT_TYPE)
        reason = _first_reason(reason, pc.is_null(event_type), unknown_reasons)
    else:
        event_type = pa.nulls(n, pa.string()).fill_null(EventType.ORDER.value)
    is_order = is_true(pc.equal(event_type, EventType.ORDER.value))

    # 5-7. amount
    amount_raw = raw["amount"]
    if (
        pa.types.is_string(amount_raw.type)
        or pa.types.is_large_string(amount_raw.type)
        or (pa.types.is_dictionary(amount_raw.type))
    ):
        amount_text = trimmed_text(amount_raw)
        amount_missing = pc.equal(amount_text, "")
        amount = parse_number(amount_text)
    else:
        amount_missing = pc.is_null(amount_raw)
        amount = amount_raw.cast(pa.float64())
    finite = is_true(pc.is_finite(amount))
    reason = _first_reason(
        reason, pc.and_(pc.invert(amount_missing), pc.invert(finite)), NON_NUMERIC_AMOUNT
    )
    reason = _first_reason(reason, is_true(pc.less(amount, 0.0)), NEGATIVE_AMOUNT)
    reason = _first_reason(reason, pc.and_(is_order, amount_missing), MISSING_AMOUNT)

    # 8. category
    category: pa.Array = pa.nulls(n, pa.string())
    if "category" in raw:
        cat_text = trimmed_text(raw["category"])
        lookup = {v: v for v in CATEGORIES} | CATEGORY_ALIASES | mapping.category_values
        category, unknown_reasons = _map_labels(cat_text, lookup, "category")
        unknown = pc.and_(pc.is_null(category), pc.not_equal(cat_text, ""))
        reason = _first_reason(reason, unknown, unknown_reasons)

    keep = pc.is_null(reason)
    accepted = _events(keep, pseudo, ts_ms, event_type, is_order, amount, category, raw, roles)
    rejected = pc.invert(keep)
    rows = (
        row_numbers
        if row_numbers is not None
        else pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
    )
    reject_cols: list[pa.Array] = []
    for role in roles:
        if role == "user":
            reject_cols.append(pseudo.filter(rejected).cast(pa.string()))
        else:
            reject_cols.append(as_text(raw[role]).filter(rejected))
    n_rej = int(pc.sum(rejected).as_py() or 0)
    reject_cols += [
        reason.filter(rejected),
        pa.nulls(n_rej, pa.string()).fill_null(source),
        rows.filter(rejected),
    ]
    rejects = pa.Table.from_arrays(reject_cols, schema=rejects_schema(mapping))
    return accepted, rejects


def _optional_text(arr: pa.Array) -> pa.Array:
    t = pc.utf8_trim_whitespace(as_text(arr))
    return pc.if_else(pc.equal(t, ""), pa.scalar(None, pa.string()), t)


def _events(
    keep: pa.Array,
    pseudo: pa.Array,
    ts_ms: pa.Array,
    event_type: pa.Array,
    is_order: pa.Array,
    amount: pa.Array,
    category: pa.Array,
    raw: dict[Role, pa.Array],
    roles: dict[Role, str],
) -> pa.Table:
    """The accepted rows as an events table."""
    ts = pc.cast(ts_ms.filter(keep), pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    cat = category.filter(keep)
    order = is_order.filter(keep)
    has_list = pc.and_(order, pc.is_valid(cat)).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(has_list) + 1, dtype=np.int32)
    np.cumsum(has_list, out=offsets[1:])
    categories = pa.ListArray.from_arrays(
        pa.array(offsets), cat.filter(pa.array(has_list)), mask=pa.array(~has_list)
    )
    columns: dict[str, pa.Array] = {
        "user_id": pseudo.filter(keep),
        "ts": ts,
        "event_type": event_type.filter(keep),
        "category": cat,
        "amount_cny": amount.filter(keep),
        "categories": categories,
    }
    if "order" in roles:
        columns["order_id"] = _optional_text(raw["order"].filter(keep))
    if "coupon" in roles:
        columns["coupon_id"] = _optional_text(raw["coupon"].filter(keep))
    return conform(pa.table(columns), EVENTS_SCHEMA)


def _map_labels(
    trimmed: pa.Array, table: dict[str, str], what: str
) -> tuple[pa.Array, Callable[[], pa.Array]]:
    """Map labels to canonical values (null where unknown), working on distinct values.

    Returns:
        the mapped values, and a function giving ``"unknown <what> 'label'"`` per row.
    """
    encoded = pc.dictionary_encode(trimmed)
    labels = encoded.dictionary
    keys = pa.array(list(table), pa.string())
    values = pa.array(list(table.values()), pa.string())
    mapped = values.take(pc.index_in(normalised_labels(labels), value_set=keys))

    def reasons() -> pa.Array:
        short = pc.utf8_slice_codeunits(labels, 0, MAX_VALUE_IN_REASON)
        quoted = pc.binary_join_element_wise(f"unknown {what} '", short, "'", "")
        return quoted.take(encoded.indices)

    return mapped.take(encoded.indices), reasons


def _first_reason(
    reason: pa.Array, cond: pa.Array, message: str | Callable[[], pa.Array]
) -> pa.Array:
    """Set ``message`` where ``cond`` holds and no earlier reason was set."""
    cond = is_true(cond)
    if not pc.any(cond).as_py():
        return reason
    msg = pa.scalar(message, pa.string()) if isinstance(message, str) else message()
    return pc.coalesce(reason, pc.if_else(cond, msg, pa.scalar(None, pa.string())))
