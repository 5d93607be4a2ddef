"""Which source column holds what: the column mapping of ``strata import``.

A :class:`ColumnMapping` names the user, time and amount columns (and the optional order,
category, coupon and event-type columns), the time format, the delimiter, the accepted time
range ``[min_time, max_time)`` and extra label aliases; :func:`load_mapping` builds it from a
YAML file (:class:`ImportMappingFile`) and flags, :func:`check_columns` checks it against a
file before any row is read.

Privacy: personal-data columns (:data:`strata.schema.PII_COLUMNS`, names ending in one such as
``customer_phone``, and ``<person>_name``: :func:`is_pii_column`) can never be mapped; unmapped
columns are never read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, ValidationError, field_validator, model_validator

from strata.config import ConfigError, StrictModel, load_yaml
from strata.ingest._arrays import LABEL_SEPARATORS
from strata.ingest.timeparse import parse_instant_ms
from strata.schema import CATEGORIES, EVENT_TYPES, PII_COLUMNS
from strata.timeutil import DAY_MS

#: Default earliest accepted event time (inclusive): one millisecond after the Unix epoch,
#: so epoch zero (0, ``1970-01-01 08:00`` local, the date ``19700101``) and anything before it
#: (year 0001) is rejected as garbage, while decades-old history imports.
DEFAULT_MIN_TIME = "1970-01-01T00:00:00.001Z"
#: Default latest accepted event time, relative to the import's ``now``: one day of clock skew.
MAX_FUTURE_MS = DAY_MS
#: ``delimiter`` value for runs of spaces/tabs.
WHITESPACE = "whitespace"

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

Role = Literal["user", "time", "amount", "order", "category", "coupon", "event_type"]


class MappingError(ValueError):
    """The mapping does not fit an input file (a mapped column is missing, or unusable)."""


def normalise_label(value: str) -> str:
    """Normalise an event-type or category label the way imported values are matched.

    Lower case, trimmed, runs of space, tab, ``-``, ``&``, ``/``, ``+`` and ``.`` become ``_``,
    and leading/trailing ``_`` are dropped: ``"Meat & Poultry"`` -> ``"meat_poultry"``.
    """
    return re.sub(LABEL_SEPARATORS, "_", value.lower().strip()).strip("_")


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
