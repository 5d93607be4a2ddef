"""Bring-your-own data: column mapping and row validation of imported event logs.

``strata import`` reads transaction or event logs (CSV or Parquet) whose columns are named by a
:class:`ColumnMapping`, and turns each batch of rows into two tables with :func:`parse_batch`:

* accepted events, conforming to :data:`strata.schema.EVENTS_SCHEMA`, with user ids already
  pseudonymised (keyed HMAC-SHA256, :func:`strata.ids.pseudonymise_array`);
* rejects: every row that cannot be imported, with the reason, the source file and its 1-based
  data-row number. ``accepted + rejected == input rows``, always: bad input never vanishes.

Validation is vectorised with ``pyarrow.compute``. Per-value Python runs only for the HMAC of
each distinct user id (:class:`PseudonymCache`) and as a fallback for the timestamps Arrow
cannot parse (other ISO shapes, 30 February), applied to those values alone, each distinct
value once.

Reject reasons, in the order they are checked (a row with several problems gets the first):

1. ``missing user id`` — the user cell is empty or blank;
2. ``unparsable timestamp`` — the time does not parse in the mapping's ``time_format``;
3. ``timestamp before min time`` / ``timestamp at or after max time`` — outside the
   mapping's accepted range ``[min_time, max_time)`` (flags ``--min-time`` / ``--max-time``;
   the upper bound is exclusive like every as-of of strata: ``--max-time 1998-07-01`` keeps
   June). By default the range starts just after the Unix epoch (:data:`DEFAULT_MIN_TIME`:
   epoch zero, ``19700101`` and year 0001 are garbage, not history) and ends one day after
   the import (clock skew);
4. ``missing event type`` / ``unknown event type 'x'`` — not a :data:`strata.schema.EVENT_TYPES`
   value or alias (:data:`EVENT_TYPE_ALIASES`, plus the mapping's ``event_type_values``);
5. ``non-numeric amount`` — not a plain decimal number (``12.50``, ``-3``, ``1e3``), or NaN/inf;
6. ``negative amount``;
7. ``missing amount`` — an ``order`` row without an amount (other events may have none);
8. ``unknown category 'x'`` — not a :data:`strata.schema.CATEGORIES` value or alias
   (:data:`CATEGORY_ALIASES`, plus the mapping's ``category_values``); a blank category is null.

Identity is checked first, then time, then what the event is (whether an amount is required
depends on it), then the amount, then the optional category. CSV rows with the wrong number of
fields are rejected by the reader as ``malformed row (expected N fields, got M)``
(:func:`malformed_rejects`). With ``delimiter: whitespace`` fields are separated by runs of
spaces or tabs (leading and trailing ones ignored, no quoting), as in classic research logs
such as CDNOW; a blank field cannot be written there, so a short line is a malformed row.

After an import, :func:`reject_warnings` turns the counts into what the user must see: a
reason that rejected every row, or more than half of a file, is named with a sample of the
offending values and the flag (or mapping key) that changes it.

Time: ``iso`` (default) accepts ISO-8601 dates and date-times; those with ``Z`` or an offset
(``+08:00``, ``+0800``, ``+08``) are honoured, naive ones are platform local time
(UTC+:data:`strata.schema.LOCAL_UTC_OFFSET_HOURS`). ``epoch`` / ``epoch_ms`` are seconds /
milliseconds since 1970 UTC. Anything with a ``%`` is a strptime format (``%Y%m%d``); with
``%z`` its offset is honoured, otherwise it is local time. Timestamps already typed in Parquet
are taken as they are (naive ones as local time).

Privacy: personal-data columns (:data:`strata.schema.PII_COLUMNS`, names ending in one such as
``customer_phone``, and ``<person>_name``: :func:`is_pii_column`) can never be mapped; unmapped
columns are never read. The rejects table
keeps the mapped columns as text, except the raw user id: its column is replaced by ``user_id``,
the *pseudonymised* id as decimal text (null when missing). The pseudonym is what the warehouse
stores, so rejected rows can be matched to a user's accepted events, and whoever holds the key
can find a known user's rejects by pseudonymising the id; the clear id is never written.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, ValidationError, field_validator, model_validator

from strata.config import ConfigError, StrictModel, load_yaml
from strata.ids import pseudonymise_array
from strata.schema import (
    CATEGORIES,
    EVENT_TYPES,
    EVENTS_SCHEMA,
    LOCAL_UTC_OFFSET_HOURS,
    PII_COLUMNS,
    EventType,
    conform,
)

# ---------------------------------------------------------------------------- constants
MISSING_USER = "missing user id"
UNPARSABLE_TIMESTAMP = "unparsable timestamp"
TIMESTAMP_TOO_EARLY = "timestamp before min time"
TIMESTAMP_TOO_LATE = "timestamp at or after max time"
MISSING_EVENT_TYPE = "missing event type"
NON_NUMERIC_AMOUNT = "non-numeric amount"
NEGATIVE_AMOUNT = "negative amount"
MISSING_AMOUNT = "missing amount"

#: Default earliest accepted event time (inclusive): one millisecond after the Unix epoch,
#: so epoch zero (0, ``1970-01-01 08:00`` local, the date ``19700101``) and anything before it
#: (year 0001) is rejected as garbage, while decades-old history imports.
DEFAULT_MIN_TIME = "1970-01-01T00:00:00.001Z"
#: Default latest accepted event time, relative to the import's ``now``: one day of clock skew.
MAX_FUTURE_MS = 86_400_000
#: ``delimiter`` value for runs of spaces/tabs.
WHITESPACE = "whitespace"
_LOCAL_OFFSET_MS = LOCAL_UTC_OFFSET_HOURS * 3_600_000
_LOCAL_TZ = dt.timezone(dt.timedelta(hours=LOCAL_UTC_OFFSET_HOURS))
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

TIME_FORMAT_KEYWORDS = ("iso", "epoch", "epoch_ms")

#: Extra names of event types (matched after normalisation: lower case, trimmed, runs of
#: space, ``-``, ``&``, ``/``, ``+`` and ``.`` turned into ``_``). Includes the Taobao
#: user-behaviour vocabulary (pv, cart, fav, buy) and common Chinese labels.
EVENT_TYPE_ALIASES: dict[str, str] = {
    # order
    "purchase": "order",
    "buy": "order",
    "pay": "order",
    "paid": "order",
    "payment": "order",
    "order_paid": "order",
    "下单": "order",
    "购买": "order",
    "支付": "order",
    # item_view
    "view": "item_view",
    "pv": "item_view",
    "product_view": "item_view",
    "detail_view": "item_view",
    "浏览": "item_view",
    # category_view
    "category": "category_view",
    "list_view": "category_view",
    # search
    "query": "search",
    "搜索": "search",
    # add_to_cart / remove_from_cart
    "cart": "add_to_cart",
    "add_cart": "add_to_cart",
    "addcart": "add_to_cart",
    "加购": "add_to_cart",
    "remove_cart": "remove_from_cart",
    "uncart": "remove_from_cart",
    # favourite
    "fav": "favourite",
    "favorite": "favourite",
    "collect": "favourite",
    "收藏": "favourite",
    # coupons
    "claim_coupon": "coupon_claim",
    "coupon_get": "coupon_claim",
    "领券": "coupon_claim",
    "use_coupon": "coupon_use",
    "redeem": "coupon_use",
    "用券": "coupon_use",
    # share / interaction / sessions
    "分享": "share",
    "rating": "review",
    "comment": "review",
    "评价": "review",
    "support": "service_contact",
    "contact": "service_contact",
    "post": "community_post",
    "visit": "app_visit",
    "app_open": "app_visit",
    "session_start": "app_visit",
}

#: Extra names of categories (same normalisation as event types).
CATEGORY_ALIASES: dict[str, str] = {
    "vegetable": "vegetables",
    "veg": "vegetables",
    "蔬菜": "vegetables",
    "fruits": "fruit",
    "水果": "fruit",
    "meat": "meat_poultry",
    "poultry": "meat_poultry",
    "meat_and_poultry": "meat_poultry",
    "肉禽": "meat_poultry",
    "fish": "seafood",
    "aquatic": "seafood",
    "海鲜": "seafood",
    "水产": "seafood",
    "dairy": "dairy_eggs",
    "eggs": "dairy_eggs",
    "dairy_and_eggs": "dairy_eggs",
    "乳品": "dairy_eggs",
    "蛋奶": "dairy_eggs",
    "grain": "grain_oil",
    "grains": "grain_oil",
    "grain_and_oil": "grain_oil",
    "粮油": "grain_oil",
    "snacks": "snacks_drinks",
    "drinks": "snacks_drinks",
    "beverages": "snacks_drinks",
    "snacks_and_drinks": "snacks_drinks",
    "零食": "snacks_drinks",
    "饮料": "snacks_drinks",
    "daily": "daily_goods",
    "household": "daily_goods",
    "日用": "daily_goods",
    "日用品": "daily_goods",
}

#: Columns the rejects table adds after the mapped columns.
REJECT_META_COLUMNS = ("reason", "source_file", "row_number")
#: Name of the (pseudonymised) user column in the rejects table.
REJECT_USER_COLUMN = "user_id"

_SEPARATORS = r"[ \t\-&/+.]+"
_NUMBER_RE = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
#: ISO-8601 extended shapes Arrow's cast parses, with fields in range (years 1700-2199 fit a
#: nanosecond cast): naive, and with a zone after the time. Only a day 29-31 may still be
#: past the end of its month.
_ISO_DATE = r"^(1[7-9][0-9]{2}|2[01][0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_ISO_TIME = r"[T ]([01][0-9]|2[0-3])(:[0-5][0-9](:[0-5][0-9](\.[0-9]{1,9})?)?)?"
_ISO_NAIVE_RE = _ISO_DATE + "(" + _ISO_TIME + ")?$"
_ISO_ZONED_RE = _ISO_DATE + _ISO_TIME + r"(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)$"
_LATE_DAY_RE = r"^.{8}(29|3[01])"
#: Unknown values are quoted in reasons up to this many characters.
_MAX_VALUE_IN_REASON = 40

Role = Literal["user", "time", "amount", "order", "category", "coupon", "event_type"]


class MappingError(ValueError):
    """The mapping does not fit an input file (a mapped column is missing, or unusable)."""


def normalise_label(value: str) -> str:
    """Normalise an event-type or category label the way imported values are matched.

    Lower case, trimmed, runs of space, tab, ``-``, ``&``, ``/``, ``+`` and ``.`` become ``_``,
    and leading/trailing ``_`` are dropped: ``"Meat & Poultry"`` -> ``"meat_poultry"``.
    """
    return re.sub(_SEPARATORS, "_", value.lower().strip()).strip("_")


#: Prefixes that make ``<prefix>_name`` a person's name (``product_name`` is not one).
_PERSON_PREFIXES = frozenset(
    {"customer", "user", "member", "buyer", "receiver", "recipient", "consignee", "contact"}
)


def is_pii_column(name: str) -> bool:
    """True when a column name denotes raw personal data (never imported).

    Matches :data:`strata.schema.PII_COLUMNS` after normalisation (lower case, runs of other
    characters as ``_``), names ending in one of them other than ``name`` (``customer_phone``,
    ``shipping_address``), and ``<person>_name`` (``customer_name``, ``receiver_name``) — but
    not ``category_name`` or ``product_name``.
    """
    norm = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if norm in PII_COLUMNS:
        return True
    if any(norm.endswith("_" + p) for p in PII_COLUMNS if p != "name"):
        return True
    head, _, tail = norm.rpartition("_")
    return tail == "name" and head.rsplit("_", 1)[-1] in _PERSON_PREFIXES


def _check_labels(values: dict[str, str], allowed: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for raw, target in values.items():
        if target not in allowed:
            raise ValueError(
                f"{raw!r} maps to unknown {what} {target!r}; allowed: {', '.join(allowed)}"
            )
        key = normalise_label(raw)
        if not key:
            raise ValueError(f"empty {what} label {raw!r}")
        out[key] = target
    return out


class _MappingFields(StrictModel):
    """Fields shared by the YAML file model and the complete mapping."""

    time_format: str = "iso"
    order_col: str | None = None
    category_col: str | None = None
    coupon_col: str | None = None
    event_type_col: str | None = None
    delimiter: str | None = None
    min_time: str | None = None
    max_time: str | None = None
    event_type_values: dict[str, str] = Field(default_factory=dict)
    category_values: dict[str, str] = Field(default_factory=dict)


class ImportMappingFile(_MappingFields):
    """The YAML mapping file (``--mapping``): every key optional, flags fill in or override.

    Keys are the flag names with ``_`` for ``-``: ``user_col``, ``time_col``, ``amount_col``,
    ``time_format``, ``order_col``, ``category_col``, ``coupon_col``, ``event_type_col``,
    ``delimiter``, ``min_time``, ``max_time``, plus ``event_type_values`` /
    ``category_values`` (extra labels -> values).
    """

    user_col: str | None = None
    time_col: str | None = None
    amount_col: str | None = None


class ColumnMapping(_MappingFields):
    """Which source column holds what, and how to read the time column.

    Attributes:
        user_col: the platform's user id (pseudonymised on import). Required.
        time_col: the event time. Required.
        amount_col: the order amount in CNY. Required (cells may be blank on non-order rows).
        time_format: ``iso`` (default), ``epoch`` (seconds), ``epoch_ms``, or a strptime format
            such as ``%Y%m%d`` or ``%Y-%m-%d %H:%M:%S``.
        order_col, category_col, coupon_col, event_type_col: optional columns. Without an
            event type column every row is an ``order``.
        delimiter: CSV field separator (default ``,``; ``\\t`` for ``.tsv`` files), or
            ``whitespace`` for runs of spaces and tabs (no quoting).
        min_time, max_time: the accepted event times ``[min_time, max_time)``, each an ISO
            date (its local midnight) or date-time (naive = local time, ``Z``/offsets
            honoured). Default: :data:`DEFAULT_MIN_TIME` .. one day after the import.
        event_type_values, category_values: extra label -> value aliases on top of the
            built-in :data:`EVENT_TYPE_ALIASES` / :data:`CATEGORY_ALIASES`.
    """

    user_col: str
    time_col: str
    amount_col: str

    @field_validator(
        "user_col",
        "time_col",
        "amount_col",
        "order_col",
        "category_col",
        "coupon_col",
        "event_type_col",
    )
    @classmethod
    def _column_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("column name is empty")
        if is_pii_column(v):
            raise ValueError(
                f"{v!r} is a personal-data column (name, phone, address, ...); "
                "strata never imports personal data"
            )
        return v

    @field_validator("time_format")
    @classmethod
    def _time_format(cls, v: str) -> str:
        if v.lower() in TIME_FORMAT_KEYWORDS:
            return v.lower()
        if "%" not in v:
            raise ValueError(
                f"unknown time format {v!r}: use iso, epoch, epoch_ms or a strptime format "
                "such as %Y%m%d"
            )
        return v

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(v, v)
        if v.lower() in (WHITESPACE, "ws"):
            return WHITESPACE
        if len(v) != 1 or v in '\r\n"':
            raise ValueError(f"delimiter must be one character, \\t or {WHITESPACE}, got {v!r}")
        return v

    @field_validator("min_time", "max_time")
    @classmethod
    def _instant(cls, v: str | None) -> str | None:
        if v is not None:
            parse_instant_ms(v)
        return v

    @field_validator("event_type_values")
    @classmethod
    def _event_type_values(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_labels(v, EVENT_TYPES, "event type")

    @field_validator("category_values")
    @classmethod
    def _category_values(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_labels(v, CATEGORIES, "category")

    @model_validator(mode="after")
    def _distinct(self) -> ColumnMapping:
        seen: dict[str, str] = {}
        for role, col in self.roles().items():
            if col in seen:
                raise ValueError(f"column {col!r} is mapped twice ({seen[col]} and {role})")
            seen[col] = role
        return self

    @model_validator(mode="after")
    def _range(self) -> ColumnMapping:
        if self.max_time is not None and self.time_range_ms(0)[0] >= self.time_range_ms(0)[1]:
            raise ValueError(f"min_time {self.min_time} is not before max_time {self.max_time}")
        return self

    def time_range_ms(self, now_ms: int) -> tuple[int, int]:
        """The accepted event times ``[lo, hi)`` (epoch ms) of an import run at ``now_ms``."""
        lo = parse_instant_ms(self.min_time or DEFAULT_MIN_TIME)
        hi = parse_instant_ms(self.max_time) if self.max_time else now_ms + MAX_FUTURE_MS
        return lo, hi

    def roles(self) -> dict[Role, str]:
        """Mapped roles and their source column names, in a fixed order."""
        pairs: list[tuple[Role, str | None]] = [
            ("user", self.user_col),
            ("time", self.time_col),
            ("amount", self.amount_col),
            ("event_type", self.event_type_col),
            ("order", self.order_col),
            ("category", self.category_col),
            ("coupon", self.coupon_col),
        ]
        return {role: col for role, col in pairs if col is not None}

    def source_columns(self) -> list[str]:
        """The mapped source column names (the only columns an import reads)."""
        return list(self.roles().values())

    def warehouse_columns(self) -> list[str]:
        """Event columns an import with this mapping really fills; the rest are unknown.

        Recorded with each written part, so features that need an unmapped column (e.g.
        coupons, when no coupon column was mapped) stay null instead of reading "none".
        """
        roles = self.roles()
        cols = ["user_id", "ts", "event_type", "amount_cny"]
        if "order" in roles:
            cols.append("order_id")
        if "category" in roles:
            cols += ["category", "categories"]
        if "coupon" in roles:
            cols.append("coupon_id")
        return cols


def load_mapping(path: str | Path | None = None, **overrides: Any) -> ColumnMapping:
    """Build the column mapping from an optional YAML file and flag overrides.

    Args:
        path: a YAML file fitting :class:`ImportMappingFile`, or None.
        overrides: field values from flags; None values are ignored, others win over the file.

    Raises:
        ConfigError: the file is invalid (names the file and the key), or the merged mapping
            lacks a required column or has an invalid value.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values = load_yaml(path, ImportMappingFile).model_dump(exclude_unset=True)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ColumnMapping.model_validate(values)
    except ValidationError as exc:
        where = f"mapping {path}" if path is not None else "column mapping"
        lines = [f"invalid {where}:"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(mapping)"
            msg = err["msg"]
            if err["type"] == "missing":
                msg = f"required; give --{loc.replace('_', '-')} or `{loc}:` in the YAML"
            lines.append(f"  - {loc}: {msg}")
        raise ConfigError("\n".join(lines)) from exc


def check_columns(mapping: ColumnMapping, schema: pa.Schema | Sequence[str], source: str) -> None:
    """Check that every mapped column exists (once) in a file, before any row is read.

    Args:
        mapping: the column mapping.
        schema: the file's Arrow schema (Parquet) or header names (CSV).
        source: the file, for the message.

    Raises:
        MappingError: names the column, its role, the file and the columns that exist; also
            for a numeric Parquet time column read as ``iso``.
    """
    names = list(schema.names) if isinstance(schema, pa.Schema) else list(schema)
    for role, col in mapping.roles().items():
        count = names.count(col)
        if count == 0:
            raise MappingError(
                f"{source}: mapped {role} column {col!r} is not in the file; "
                f"its columns are: {', '.join(repr(n) for n in names)}"
            )
        if count > 1:
            raise MappingError(f"{source}: column {col!r} appears {count} times in the header")
    if isinstance(schema, pa.Schema):
        t = schema.field(mapping.time_col).type
        if (pa.types.is_integer(t) or pa.types.is_floating(t)) and mapping.time_format == "iso":
            raise MappingError(
                f"{source}: time column {mapping.time_col!r} is numeric ({t}); give "
                "--time-format epoch, epoch_ms or a strptime format such as %Y%m%d"
            )


def pii_columns_in(names: Iterable[str]) -> list[str]:
    """The personal-data columns among a file's columns (they are dropped, never read)."""
    return [n for n in names if is_pii_column(n)]


# ---------------------------------------------------------------------------- rejects table
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


# ---------------------------------------------------------------------------- warnings
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
        shown = ", ".join(repr(v[:_MAX_VALUE_IN_REASON]) for v in values[:SAMPLE_VALUES])
        out.append(
            f"{head}: {n:,} of {input_rows:,} rows {reason!r}"
            + (f" (e.g. {shown})" if shown else "")
            + f"; to change it: {reject_hint(reason, mapping, now_ms)}"
        )
    return out


# ---------------------------------------------------------------------------- helpers
def _array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _text(arr: pa.Array) -> pa.Array:
    """The column as ``string`` (nulls kept)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    return arr if pa.types.is_string(arr.type) else arr.cast(pa.string())


def _trimmed(arr: pa.Array) -> pa.Array:
    """Text trimmed of whitespace, null as ``""``."""
    return pc.fill_null(pc.utf8_trim_whitespace(_text(arr)), "")


def _normalised_labels(trimmed: pa.Array) -> pa.Array:
    low = pc.utf8_lower(trimmed)
    return pc.utf8_trim(pc.replace_substring_regex(low, _SEPARATORS, "_"), "_")


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
    mapped = values.take(pc.index_in(_normalised_labels(labels), value_set=keys))

    def reasons() -> pa.Array:
        short = pc.utf8_slice_codeunits(labels, 0, _MAX_VALUE_IN_REASON)
        quoted = pc.binary_join_element_wise(f"unknown {what} '", short, "'", "")
        return quoted.take(encoded.indices)

    return mapped.take(encoded.indices), reasons


def _first_reason(
    reason: pa.Array, cond: pa.Array, message: str | Callable[[], pa.Array]
) -> pa.Array:
    """Set ``message`` where ``cond`` holds and no earlier reason was set."""
    cond = _is_true(cond)
    if not pc.any(cond).as_py():
        return reason
    msg = pa.scalar(message, pa.string()) if isinstance(message, str) else message()
    return pc.coalesce(reason, pc.if_else(cond, msg, pa.scalar(None, pa.string())))


def _is_true(arr: pa.Array) -> pa.Array:
    return pc.fill_null(arr, False)


# ---------------------------------------------------------------------------- identity
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


# ---------------------------------------------------------------------------- time
def parse_instant_ms(text: str) -> int:
    """Epoch ms of a range bound: an ISO date (its local midnight) or date-time (naive = local
    time, UTC+:data:`strata.schema.LOCAL_UTC_OFFSET_HOURS`; ``Z`` and offsets honoured).

    Raises:
        ValueError: not an ISO date or date-time.
    """
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an ISO date or date-time (e.g. 1997-01-01, 1997-01-01T08:00:00Z)"
        ) from exc
    ms = _datetime_ms(value)
    if ms is None:
        raise ValueError(f"{text!r} is out of range")
    return int(ms)


def format_ms(ms: float) -> str:
    """An epoch-ms instant as local ISO time (``1997-01-01T00:00:00+08:00``)."""
    t = _EPOCH + dt.timedelta(milliseconds=ms)
    spec = "seconds" if ms % 1000 == 0 else "milliseconds"
    return t.astimezone(_LOCAL_TZ).isoformat(timespec=spec)


def _datetime_ms(t: dt.datetime) -> float | None:
    """Epoch ms of a Python datetime (naive = local time); None when out of range."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=_LOCAL_TZ)
    try:
        return float((t - _EPOCH) // dt.timedelta(milliseconds=1))
    except OverflowError:
        return None


def _iso_python_ms(value: str) -> float | None:
    """Epoch ms of one ISO-8601 string the vectorised parser left, else None."""
    try:
        return _datetime_ms(dt.datetime.fromisoformat(value))
    except ValueError:
        return None


def _timestamp_ms(ts: pa.Array) -> pa.Array:
    """float64 epoch ms of a timestamp array (naive = local time)."""
    ms = pc.cast(ts, pa.timestamp("ms", tz=ts.type.tz), safe=False).cast(pa.int64())
    out = pc.cast(ms, pa.float64())
    return out if ts.type.tz is not None else pc.subtract(out, float(_LOCAL_OFFSET_MS))


def _real_dates(s: pa.Array, shaped: pa.Array) -> pa.Array:
    """``shaped``, less the values whose day 29-31 is past the end of the month.

    Arrow's strptime rolls 30 February over to 1 March, so a real date is one that keeps its
    day; only the values with a late day are checked.
    """
    late = pc.and_(shaped, _is_true(pc.match_substring_regex(s, _LATE_DAY_RE)))
    if _count(late) == 0:
        return shaped
    idx = np.flatnonzero(late.to_numpy(zero_copy_only=False))
    sub = s.take(pa.array(idx))
    date = pc.strptime(
        pc.utf8_slice_codeunits(sub, 0, 10), format="%Y-%m-%d", unit="s", error_is_null=True
    )
    day = pc.cast(pc.utf8_slice_codeunits(sub, 8, 10), pa.int8())
    keeps = _is_true(pc.equal(pc.day(date), day)).to_numpy(zero_copy_only=False)
    out = shaped.to_numpy(zero_copy_only=False).copy()
    out[idx] = keeps
    return pa.array(out)


def _count(mask: pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)


_NAIVE_NS = pa.timestamp("ns")
_ZONED_NS = pa.timestamp("ns", tz="UTC")


def _parse_iso_ms(s: pa.Array) -> pa.Array:
    """float64 epoch ms of trimmed ISO strings; null where unparsable.

    A column whose sampled values are all naive (or all zoned) is first cast by Arrow at
    once (a failed cast costs about as much as the values that fail it). Otherwise, or when
    that cast fails, the values of those two shapes with a real date are cast by Arrow, each
    shape in one go, and the values left (other ISO shapes such as ``20240501T100000``,
    invalid ones) go to Python's ``fromisoformat``.
    """
    null = pa.scalar(None, pa.string())
    blank = pc.equal(s, "")
    n_blank = _count(blank)
    values = pc.if_else(blank, null, s) if n_blank else s
    sample = values.take(pa.array(np.linspace(0, len(s) - 1, min(len(s), 256), dtype=np.int64)))
    sample = sample.drop_null()
    for regex, to in ((_ISO_NAIVE_RE, _NAIVE_NS), (_ISO_ZONED_RE, _ZONED_NS)):
        if len(sample) and pc.all(pc.match_substring_regex(sample, regex)).as_py():
            try:
                return _timestamp_ms(values.cast(to))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                break
    naive = _is_true(pc.match_substring_regex(s, _ISO_NAIVE_RE))
    zoned = _is_true(pc.match_substring_regex(s, _ISO_ZONED_RE))
    valid = _real_dates(s, pc.or_(naive, zoned))
    out: pa.Array = pa.nulls(len(s), pa.float64())
    for shape, to in ((naive, _NAIVE_NS), (zoned, _ZONED_NS)):
        mask = pc.and_(shape, valid)
        n_mask = _count(mask)
        if n_mask == 0:
            continue
        shaped = s if n_mask == len(s) else pc.if_else(mask, s, null)
        try:
            ms = _timestamp_ms(shaped.cast(to))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue  # not expected after the checks; the Python fallback takes them
        out = pc.coalesce(out, ms)
    return _python_fallback(out, s, _iso_python_ms)


def _parse_strptime_ms(s: pa.Array, time_format: str) -> pa.Array:
    """float64 epoch ms of trimmed strings in a strptime format; null where unparsable."""
    parsed = pc.strptime(s, format=time_format, unit="ms", error_is_null=True)
    # Arrow's strptime rolls 30 February over to March: keep only values that format back to
    # themselves; the others (also unpadded numbers, offsets) are checked by Python.
    same = _is_true(pc.equal(pc.strftime(parsed, format=time_format), s))
    out = pc.if_else(same, _timestamp_ms(parsed), pa.scalar(None, pa.float64()))
    return _python_fallback(out, s, lambda v: _strptime_python_ms(v, time_format))


def _strptime_python_ms(value: str, time_format: str) -> float | None:
    try:
        return _datetime_ms(dt.datetime.strptime(value, time_format))
    except ValueError:
        return None


def _python_fallback(
    out: pa.Array, s: pa.Array, parse_one: Callable[[str], float | None]
) -> pa.Array:
    """Fill the nulls of ``out`` whose text is not blank with ``parse_one`` (each distinct
    value once): the per-value fallback, applied only to the values vectorised code left."""
    todo = pc.and_(pc.is_null(out), pc.not_equal(s, ""))
    if not pc.any(todo).as_py():
        return out
    idx = np.flatnonzero(todo.to_numpy(zero_copy_only=False))
    encoded = pc.dictionary_encode(s.take(pa.array(idx)))
    parsed = pa.array([parse_one(v) for v in encoded.dictionary.to_pylist()], pa.float64())
    values = parsed.take(encoded.indices).to_numpy(zero_copy_only=False)
    dense = out.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> nan
    dense[idx] = values
    return pa.array(dense, pa.float64(), from_pandas=True)


def _parse_number(s: pa.Array) -> pa.Array:
    """float64 of trimmed decimal strings; null where not a plain number."""
    ok = _is_true(pc.match_substring_regex(s, _NUMBER_RE))
    return pc.if_else(ok, s, pa.scalar(None, pa.string())).cast(pa.float64())


def parse_time_ms(col: pa.Array | pa.ChunkedArray, time_format: str) -> pa.Array:
    """Epoch milliseconds (UTC, float64) of a time column; null where unparsable.

    Args:
        col: strings, or typed timestamps/dates (taken as they are, naive = local time), or
            numbers (``epoch`` / ``epoch_ms``, or cast to text for a strptime format).
        time_format: ``iso``, ``epoch``, ``epoch_ms`` or a strptime format.
    """
    arr = _array(col)
    t = arr.type
    if pa.types.is_timestamp(t):
        return _timestamp_ms(arr)
    if pa.types.is_date(t):
        return _timestamp_ms(arr.cast(pa.timestamp("ms")))
    if time_format in ("epoch", "epoch_ms"):
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
            num = arr.cast(pa.float64())
        else:
            num = _parse_number(_trimmed(arr))
        num = pc.if_else(_is_true(pc.is_finite(num)), num, pa.scalar(None, pa.float64()))
        return pc.multiply(num, 1000.0) if time_format == "epoch" else num
    s = _trimmed(arr)
    if time_format == "iso":
        return _parse_iso_ms(s)
    return _parse_strptime_ms(s, time_format)


# ---------------------------------------------------------------------------- parse_batch
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
    raw = {role: _array(table.column(col)) for role, col in roles.items()}
    reason: pa.Array = pa.nulls(n, pa.string())

    # 1. user
    user = _trimmed(raw["user"])
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
        et_text = _trimmed(raw["event_type"])
        lookup = {v: v for v in EVENT_TYPES} | EVENT_TYPE_ALIASES | mapping.event_type_values
        event_type, unknown_reasons = _map_labels(et_text, lookup, "event type")
        reason = _first_reason(reason, pc.equal(et_text, ""), MISSING_EVENT_TYPE)
        reason = _first_reason(reason, pc.is_null(event_type), unknown_reasons)
    else:
        event_type = pa.nulls(n, pa.string()).fill_null(EventType.ORDER.value)
    is_order = _is_true(pc.equal(event_type, EventType.ORDER.value))

    # 5-7. amount
    amount_raw = raw["amount"]
    if (
        pa.types.is_string(amount_raw.type)
        or pa.types.is_large_string(amount_raw.type)
        or (pa.types.is_dictionary(amount_raw.type))
    ):
        amount_text = _trimmed(amount_raw)
        amount_missing = pc.equal(amount_text, "")
        amount = _parse_number(amount_text)
    else:
        amount_missing = pc.is_null(amount_raw)
        amount = amount_raw.cast(pa.float64())
    finite = _is_true(pc.is_finite(amount))
    reason = _first_reason(
        reason, pc.and_(pc.invert(amount_missing), pc.invert(finite)), NON_NUMERIC_AMOUNT
    )
    reason = _first_reason(reason, _is_true(pc.less(amount, 0.0)), NEGATIVE_AMOUNT)
    reason = _first_reason(reason, pc.and_(is_order, amount_missing), MISSING_AMOUNT)

    # 8. category
    category: pa.Array = pa.nulls(n, pa.string())
    if "category" in raw:
        cat_text = _trimmed(raw["category"])
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
            reject_cols.append(_text(raw[role]).filter(rejected))
    n_rej = int(pc.sum(rejected).as_py() or 0)
    reject_cols += [
        reason.filter(rejected),
        pa.nulls(n_rej, pa.string()).fill_null(source),
        rows.filter(rejected),
    ]
    rejects = pa.Table.from_arrays(reject_cols, schema=rejects_schema(mapping))
    return accepted, rejects


def _optional_text(arr: pa.Array) -> pa.Array:
    t = pc.utf8_trim_whitespace(_text(arr))
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
