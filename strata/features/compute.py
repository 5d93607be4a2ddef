"""Per-user features of one user bucket: RFM, BTYD summary, preferences, funnel, value.

:func:`compute_features` turns one bucket's events (sorted by ``(user_id, ts)``, as compaction
writes them) and its users into one row per user. Every event row is mapped once to its
user's output row (users are contiguous runs), and every feature group is then one vectorised
reduction (``np.bincount`` keyed by user x event type, user x window class or user x
category), with no per-user Python, no pandas and no hash group-by. ``docs/features.md``
defines every column (unit, window, null convention); ``configs/features.yaml`` holds the
windows, time slots and label rules.

Global normalisation (percentile ranks of recency, frequency and monetary value) is done in two
passes (:mod:`strata.features.rfm`): each shard returns mergeable partials, the driver merges
them and every shard scores its users against the merged result.

Pure: numpy, pyarrow and pydantic only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from strata.config import StrictModel, config_path, load_yaml
from strata.schema import CATEGORIES, EVENT_TYPES, TIMESTAMP, EventType
from strata.timeutil import DAY_MS, HOUR_MS, LOCAL_OFFSET_MS, local_day

__all__ = [
    "DAYTYPE_LABELS",
    "DICTIONARY_COLUMNS",
    "FEATURES_SCHEMA",
    "FEATURE_COLUMNS",
    "FEATURE_EVENT_COLUMNS",
    "FEATURE_USER_COLUMNS",
    "PRICE_SENSITIVITY_LABELS",
    "SLOTS",
    "FeatureConfig",
    "compute_features",
    "int64_values",
    "load_feature_config",
    "max_before",
]


#: Event columns :func:`compute_features` reads; pass only these (any subset, see the docs).
FEATURE_EVENT_COLUMNS: tuple[str, ...] = (
    "user_id",
    "ts",
    "event_type",
    "order_id",
    "amount_cny",
    "discount_cny",
    "coupon_id",
    "categories",
    "rating",
)
#: User columns :func:`compute_features` reads.
FEATURE_USER_COLUMNS: tuple[str, ...] = (
    "user_id",
    "signup_ts",
    "age_band",
    "gender",
    "region",
    "city",
    "device",
    "channel",
)
#: Parquet ``read_dictionary`` paths that make the hot path skip string hashing: event types
#: and category names then arrive as dictionary indices (both also work as plain strings).
DICTIONARY_COLUMNS: tuple[str, ...] = ("event_type", "categories.list.element")

#: Time-of-day slots, in the order of their (configured) start hours; night wraps midnight.
SLOTS: tuple[str, ...] = ("morning", "noon", "afternoon", "evening", "night")
PRICE_SENSITIVITY_LABELS: tuple[str, ...] = (
    "coupon_sensitive",
    "quality_sensitive",
    "price_insensitive",
    "unknown",
)
DAYTYPE_LABELS: tuple[str, ...] = ("weekday", "weekend")

_ATTRIBUTE_COLUMNS: tuple[str, ...] = ("channel", "age_band", "gender", "region", "city", "device")

_I32 = pa.int32()
_F64 = pa.float64()
_STR = pa.string()

FEATURES_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        # RFM
        pa.field("recency_days", _I32),
        pa.field("frequency_30d", _I32),
        pa.field("frequency_90d", _I32),
        pa.field("frequency_180d", _I32),
        pa.field("monetary_30d", _F64),
        pa.field("monetary_90d", _F64),
        pa.field("monetary_180d", _F64),
        pa.field("frequency_prev_30d", _I32),
        pa.field("monetary_prev_30d", _F64),
        pa.field("frequency_prev_90d", _I32),
        pa.field("monetary_prev_90d", _F64),
        pa.field("orders_total", _I32),
        pa.field("spend_total_cny", _F64),
        pa.field("aov_cny", _F64),
        pa.field("first_order_ts", TIMESTAMP),
        pa.field("last_order_ts", TIMESTAMP),
        # RFM over long windows (sparse categories, tiers.yaml measures)
        pa.field("frequency_365d", _I32),
        pa.field("monetary_365d", _F64),
        pa.field("active_months", _I32),
        # BTYD summary (lifetimes conventions, day granularity)
        pa.field("btyd_frequency", _F64),
        pa.field("btyd_recency", _F64),
        pa.field("btyd_t", _F64),
        pa.field("btyd_monetary_value", _F64),
        # category preference
        *[pa.field(f"share_{c}", _F64) for c in CATEGORIES],
        pa.field("top_category", _STR),
        # price sensitivity
        pa.field("coupon_order_share", _F64),
        pa.field("avg_discount_depth", _F64),
        pa.field("coupon_only_share", _F64),
        pa.field("price_sensitivity", _STR),
        # active time
        pa.field("weekend_share", _F64),
        *[pa.field(f"slot_{s}", _F64) for s in SLOTS],
        pa.field("active_slot", _STR),
        pa.field("active_daytype", _STR),
        # attributes
        *[pa.field(a, _STR) for a in _ATTRIBUTE_COLUMNS],
        pa.field("signup_ts", TIMESTAMP),
        # funnel and interaction
        pa.field("views", _I32),
        pa.field("searches", _I32),
        pa.field("add_to_carts", _I32),
        pa.field("cart_removals", _I32),
        pa.field("favourites", _I32),
        pa.field("cart_to_order_rate", _F64),
        pa.field("shares", _I32),
        pa.field("coupon_claims", _I32),
        pa.field("coupon_uses", _I32),
        pa.field("reviews", _I32),
        pa.field("mean_rating", _F64),
        pa.field("negative_reviews", _I32),
        pa.field("service_contacts", _I32),
        pa.field("community_posts", _I32),
        pa.field("visits", _I32),
        pa.field("active_days_30d", _I32),
        # value
        pa.field("ltv_cny", _F64),
        pa.field("arpu_30d_cny", _F64),
        pa.field("discount_sensitivity", _F64),
        # inter-purchase gaps (_gap_columns)
        pa.field("gap_std_days", _F64),
    ],
    metadata={"strata.table": "features"},
)
#: Output columns of :func:`compute_features`, in order.
FEATURE_COLUMNS: tuple[str, ...] = tuple(FEATURES_SCHEMA.names)

_NT = len(EVENT_TYPES)
_NC = len(CATEGORIES)
_CODE: dict[str, int] = {name: i for i, name in enumerate(EVENT_TYPES)}
_CAT_CODE: dict[str, int] = {name: i for i, name in enumerate(CATEGORIES)}
_ORDER = _CODE[EventType.ORDER]
_REVIEW = _CODE[EventType.REVIEW]
_VISIT = _CODE[EventType.APP_VISIT]
_UNKNOWN = _NT  # code of an event type outside EVENT_TYPES (ignored by every feature)
#: Funnel count columns and the event types each one counts.
_COUNT_COLUMNS: dict[str, tuple[int, ...]] = {
    "views": (_CODE[EventType.ITEM_VIEW], _CODE[EventType.CATEGORY_VIEW]),
    "searches": (_CODE[EventType.SEARCH],),
    "add_to_carts": (_CODE[EventType.ADD_TO_CART],),
    "cart_removals": (_CODE[EventType.REMOVE_FROM_CART],),
    "favourites": (_CODE[EventType.FAVOURITE],),
    "shares": (_CODE[EventType.SHARE],),
    "coupon_claims": (_CODE[EventType.COUPON_CLAIM],),
    "coupon_uses": (_CODE[EventType.COUPON_USE],),
    "reviews": (_REVIEW,),
    "service_contacts": (_CODE[EventType.SERVICE_CONTACT],),
    "community_posts": (_CODE[EventType.COMMUNITY_POST],),
    "visits": (_VISIT,),
}


# =========================================================================== configuration
class FeatureWindows(StrictModel):
    """Look-back windows in local calendar days ending on the observation day (null: to date)."""

    funnel_days: int | None = Field(default=90, ge=1, le=3650)
    category_days: int | None = Field(default=180, ge=1, le=3650)
    price_days: int | None = Field(default=None, ge=1, le=3650)
    recent_coupon_days: int = Field(default=90, ge=1, le=3650)
    activity_days: int | None = Field(default=90, ge=1, le=3650)


class TimeSlots(StrictModel):
    """Local start hour of each time-of-day slot; each slot ends where the next begins and
    night runs past midnight to the start of morning, so the five cover 24 hours."""

    morning: int = Field(default=6, ge=0, le=23)
    noon: int = Field(default=11, ge=0, le=23)
    afternoon: int = Field(default=14, ge=0, le=23)
    evening: int = Field(default=18, ge=0, le=23)
    night: int = Field(default=22, ge=0, le=23)

    @model_validator(mode="after")
    def _in_order(self) -> TimeSlots:
        starts = [getattr(self, s) for s in SLOTS]
        if any(b <= a for a, b in itertools.pairwise(starts)):
            shown = ", ".join(f"{s}={h}" for s, h in zip(SLOTS, starts, strict=True))
            raise ValueError(
                "slot start hours must increase strictly in the order "
                f"{' < '.join(SLOTS)} (night wraps past midnight); got {shown}"
            )
        return self

    def hour_to_slot(self) -> np.ndarray:
        """Slot index (into :data:`SLOTS`) of each local hour 0..23."""
        starts = np.array([getattr(self, s) for s in SLOTS])
        slot = np.searchsorted(starts, np.arange(24), side="right") - 1
        slot[slot < 0] = len(SLOTS) - 1  # before morning: still night
        return slot.astype(np.int64)


class PriceSensitivityRules(StrictModel):
    """Rules of the ``price_sensitivity`` label, applied in order (first match wins)."""

    coupon_share_min: float = Field(default=0.5, ge=0, le=1)
    discount_depth_min: float = Field(default=0.15, ge=0, le=1)
    quality_aov_min_cny: float = Field(default=120.0, ge=0)
    quality_coupon_share_max: float = Field(default=0.2, ge=0, le=1)


class DiscountSensitivityScore(StrictModel):
    """``discount_sensitivity = w * coupon_order_share + (1 - w) * min(1, depth / depth_cap)``."""

    coupon_weight: float = Field(default=0.5, ge=0, le=1)
    depth_cap: float = Field(default=0.3, gt=0, le=1)


class FeatureConfig(StrictModel):
    """configs/features.yaml: windows, time slots and label rules of the user features."""

    windows: FeatureWindows = Field(default_factory=FeatureWindows)
    time_slots: TimeSlots = Field(default_factory=TimeSlots)
    weekend_daytype_min: float = Field(default=0.5, ge=0, le=1)
    negative_rating_max: int = Field(default=2, ge=1, le=5)
    price_sensitivity: PriceSensitivityRules = Field(default_factory=PriceSensitivityRules)
    discount_sensitivity: DiscountSensitivityScore = Field(default_factory=DiscountSensitivityScore)


def load_feature_config(config_dir: str | Path | None = None) -> FeatureConfig:
    """Load and validate ``features.yaml`` (default: the repository's configs/).

    Raises:
        ConfigError: the file is missing or invalid (the message names the key).
    """
    return load_yaml(config_path("features", config_dir), FeatureConfig)


# =========================================================================== arrow helpers
_NUMPY_TYPES: dict[pa.DataType, type[np.generic]] = {
    pa.float64(): np.float64,
    pa.float32(): np.float32,
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
}


def _chunks(col: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    return list(col.chunks) if isinstance(col, pa.ChunkedArray) else [col]


def _one_array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.Array):
        return col
    if col.num_chunks == 1:
        return col.chunk(0)
    return col.combine_chunks()


def _bits(buf: pa.Buffer, offset: int, rows: np.ndarray) -> np.ndarray:
    """Bits of an Arrow bitmap at ``offset + rows``, as bool."""
    data = np.frombuffer(buf, dtype=np.uint8)
    p = rows + offset
    return ((data[p >> 3] >> (p & 7).astype(np.uint8)) & 1).astype(bool)


def _valid(arr: pa.Array) -> np.ndarray:
    """Validity of every slot as a bool array, read from the bitmap."""
    n = len(arr)
    if arr.null_count == 0:
        return np.ones(n, dtype=bool)
    if arr.null_count == n:
        return np.zeros(n, dtype=bool)
    buf = arr.buffers()[0]
    if buf is None:  # types without a validity bitmap
        return np.asarray(pc.is_valid(arr).to_numpy(zero_copy_only=False), dtype=bool)
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")
    return bits[arr.offset : arr.offset + n].astype(bool)


def _valid_at_chunk(arr: pa.Array, rows: np.ndarray) -> np.ndarray:
    if arr.null_count == 0:
        return np.ones(len(rows), dtype=bool)
    if arr.null_count == len(arr):
        return np.zeros(len(rows), dtype=bool)
    buf = arr.buffers()[0]
    if buf is None:
        return _valid(arr)[rows]
    return _bits(buf, arr.offset, rows)


def _by_chunk(
    col: pa.ChunkedArray | pa.Array, rows: np.ndarray
) -> list[tuple[pa.Array, slice | np.ndarray | None, np.ndarray]]:
    """Split row indices of a (chunked) column by chunk: (chunk, positions in ``rows`` (None:
    all), row indices local to the chunk). Ascending ``rows`` (the usual case) split by
    binary search into contiguous slices."""
    chunks = _chunks(col)
    if len(chunks) == 1:
        return [(chunks[0], None, rows)]
    bounds = np.cumsum([0, *(len(c) for c in chunks)])
    out: list[tuple[pa.Array, slice | np.ndarray | None, np.ndarray]] = []
    if len(rows) < 2 or bool((rows[1:] >= rows[:-1]).all()):
        cuts = np.searchsorted(rows, bounds)
        for k, chunk in enumerate(chunks):
            lo, hi = int(cuts[k]), int(cuts[k + 1])
            if hi > lo:
                out.append((chunk, slice(lo, hi), rows[lo:hi] - bounds[k]))
        return out
    which = np.searchsorted(bounds, rows, side="right") - 1
    for k, chunk in enumerate(chunks):
        pos = np.flatnonzero(which == k)
        if len(pos):
            out.append((chunk, pos, rows[pos] - bounds[k]))
    return out


def _numbers_at(col: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values (float64; null and NaN -> 0) and validity at ``rows`` of a numeric column, read
    straight from the Arrow buffers (no take kernel)."""
    values = np.zeros(len(rows), dtype=np.float64)
    valid = np.zeros(len(rows), dtype=bool)
    for chunk, pos, local in _by_chunk(col, rows):
        ok = _valid_at_chunk(chunk, local)
        np_type = _NUMPY_TYPES.get(chunk.type)
        if chunk.null_count == len(chunk):
            v = np.zeros(len(local))
        elif np_type is not None:
            data = np.frombuffer(chunk.buffers()[1], dtype=np_type, count=chunk.offset + len(chunk))
            v = data[chunk.offset :][local].astype(np.float64)
        else:  # decimals and other types: the generic kernels
            taken = chunk.take(pa.array(local, type=pa.int64())).cast(pa.float64())
            v = np.asarray(taken.to_numpy(zero_copy_only=False), dtype=np.float64)
        ok &= np.isfinite(v)
        v[~ok] = 0.0
        if pos is None:
            return v, ok
        values[pos] = v
        valid[pos] = ok
    return values, valid


def _valid_at(col: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> np.ndarray:
    """Validity at ``rows`` of any column."""
    valid = np.zeros(len(rows), dtype=bool)
    for chunk, pos, local in _by_chunk(col, rows):
        ok = _valid_at_chunk(chunk, local)
        if pos is None:
            return ok
        valid[pos] = ok
    return valid


def int64_values(col: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    """A non-null integer or timestamp column as int64 numpy (timestamps in ms)."""
    arr = _one_array(col)
    if arr.null_count:
        raise ValueError(f"column {name!r} has {arr.null_count} nulls")
    if pa.types.is_timestamp(arr.type):
        if arr.type.unit != "ms":
            arr = arr.cast(pa.timestamp("ms", tz=arr.type.tz), safe=False)
        arr = arr.cast(pa.int64())
    elif arr.type != pa.int64():
        arr = arr.cast(pa.int64())
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)


def max_before(events: pa.Table, as_of_ms: int, current: int | None = None) -> int | None:
    """The latest event time (epoch ms) strictly before ``as_of_ms``, merged with ``current``
    (the same partial of other buckets): what a recompute as of ``as_of_ms`` includes last."""
    if events.num_rows == 0:
        return current
    ts = int64_values(events.column("ts"), "ts")
    included = ts[ts < as_of_ms]
    if not len(included):
        return current
    latest = int(included.max())
    return latest if current is None else max(latest, current)


def _lut(dictionary: pa.Array, lookup: dict[str, int], missing: int) -> np.ndarray:
    """Code of each dictionary entry, plus a last entry (``missing``) for null slots."""
    names = dictionary.to_pylist()
    return np.array([lookup.get(v, missing) for v in names] + [missing], dtype=np.int8)


def _codes_at(
    arr: pa.Array, rows: np.ndarray | None, lookup: dict[str, int], missing: int
) -> np.ndarray:
    """int8 code (``lookup``; ``missing`` for unknown or null) of the string slots ``rows``
    (None: all) of a string or dictionary<string> array. Dictionary input costs one table
    lookup per slot; plain strings are hashed (``dictionary_encode``)."""
    if not pa.types.is_dictionary(arr.type):
        if rows is not None:
            arr = arr.take(pa.array(rows, type=pa.int64()))
            rows = None
        arr = pc.dictionary_encode(arr)
    lut = _lut(arr.dictionary, lookup, missing)
    indices = arr.indices
    np_type = _NUMPY_TYPES[indices.type]
    data = np.frombuffer(indices.buffers()[1], dtype=np_type, count=indices.offset + len(indices))
    data = data[indices.offset :]
    idx = data.astype(np.int64) if rows is None else data[rows].astype(np.int64)
    if indices.null_count:
        ok = _valid(indices) if rows is None else _valid_at_chunk(indices, rows)
        idx[~ok] = len(lut) - 1
    return lut[idx]


def _event_codes(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    parts = [_codes_at(c, None, _CODE, _UNKNOWN) for c in _chunks(col)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int8)


def _runs(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal adjacent values (keys non-empty)."""
    return np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))


# =========================================================================== inputs
@dataclass
class _Events:
    """Events before as-of, sorted by (user, ts), as numpy; ``rows`` maps back to the input."""

    uid: np.ndarray
    ts: np.ndarray
    code: np.ndarray  # index into EVENT_TYPES, _UNKNOWN for other types
    rows: np.ndarray | None  # None: identity
    _since: dict[int, np.ndarray] = field(default_factory=dict)

    def orig(self, idx: np.ndarray) -> np.ndarray:
        return idx if self.rows is None else self.rows[idx]

    def since(self, start_ms: int) -> np.ndarray:
        """Mask of rows with ``ts >= start_ms`` (cached: windows share their masks)."""
        if start_ms not in self._since:
            self._since[start_ms] = self.ts >= start_ms
        return self._since[start_ms]


def _prepare_events(events: pa.Table, as_of_ms: int) -> _Events:
    names = events.column_names
    if "user_id" not in names or "ts" not in names:
        raise ValueError("events need at least the columns user_id and ts")
    uid = int64_values(events.column("user_id"), "user_id")
    ts = int64_values(events.column("ts"), "ts")
    n = len(uid)
    if "event_type" in names:
        code = _event_codes(events.column("event_type"))
    else:  # imported purchase logs: every row is an order
        code = np.full(n, _ORDER, dtype=np.int8)
    rows: np.ndarray | None = None
    if n > 1:
        same_user = uid[1:] == uid[:-1]
        if bool((uid[1:] < uid[:-1]).any()) or bool((same_user & (ts[1:] < ts[:-1])).any()):
            rows = np.lexsort((ts, uid))  # stable: line rows of one order keep their order
            uid, ts, code = uid[rows], ts[rows], code[rows]
    before = ts < as_of_ms
    if not before.all():
        keep = np.flatnonzero(before)
        rows = keep if rows is None else rows[keep]
        uid, ts, code = uid[keep], ts[keep], code[keep]
    return _Events(uid, ts, code, rows)


def _prepare_users(users: pa.Table | None, as_of_ms: int) -> tuple[np.ndarray, pa.Table | None]:
    """User ids (sorted, unique; the last row of a repeated id wins) signed up by as-of (or
    with unknown signup), and their rows in the same order."""
    if users is None or users.num_rows == 0 or "user_id" not in users.column_names:
        return np.zeros(0, dtype=np.int64), None
    ids = int64_values(users.column("user_id"), "user_id")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    last = np.concatenate((sorted_ids[1:] != sorted_ids[:-1], [True]))
    sel = order[last]
    if "signup_ts" in users.column_names:
        signup = _one_array(users.column("signup_ts"))
        signed = _valid(signup)
        if pa.types.is_timestamp(signup.type) and signup.type.unit != "ms":
            signup = signup.cast(pa.timestamp("ms", tz=signup.type.tz), safe=False)
        signup_ms = int64_values(pc.fill_null(signup.cast(pa.int64()), 0), "signup_ts")
        sel = sel[~signed[sel] | (signup_ms[sel] <= as_of_ms)]
    if len(sel) == users.num_rows and bool((sel[1:] > sel[:-1]).all()):
        return ids[sel], users  # already sorted and unique
    return ids[sel], users.take(pa.array(sel, type=pa.int64()))


# =========================================================================== computation
def _start_ms(obs_day: int, days: int) -> int:
    """UTC ms of the local midnight that starts a ``days``-day window ending on ``obs_day``."""
    return (obs_day - days + 1) * DAY_MS - LOCAL_OFFSET_MS


def _ratio(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """num / den where den > 0 (else 0), and the mask den > 0 (broadcasting like numpy)."""
    ok = den > 0
    out = np.zeros(np.broadcast_shapes(np.shape(num), np.shape(den)), dtype=np.float64)
    np.divide(num, den, out=out, where=ok)
    return out, ok


def _argmax_label(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the largest column per row (ties: first), valid where the max is > 0."""
    if counts.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return counts.argmax(axis=1), counts.max(axis=1) > 0


@dataclass
class _Orders:
    """One entry per distinct order (line rows merged), sorted by (user, ts)."""

    user: np.ndarray  # output row of the user
    ts: np.ndarray
    amount: np.ndarray
    discount: np.ndarray | None  # None: discount_cny not supplied
    coupon: np.ndarray | None  # None: coupon_id not supplied
    rows: np.ndarray  # working row index of every order row (line rows included)
    row_user: np.ndarray  # output row of the user of each of those rows
    row_ts: np.ndarray
    row_amount: np.ndarray  # amount_cny of each of those rows (null -> 0)


def _orders(events: pa.Table, ev: _Events, uidx: np.ndarray) -> _Orders:
    """Distinct orders: rows sharing (user, ts, order_id) are one order, amounts summed."""
    o = np.flatnonzero(ev.code == _ORDER)
    names = events.column_names
    o_user, o_ts = uidx[o], ev.ts[o]
    orig = ev.orig(o)
    row_amount = (
        _numbers_at(events.column("amount_cny"), orig)[0]
        if "amount_cny" in names
        else np.zeros(len(o))
    )
    discount = (
        _numbers_at(events.column("discount_cny"), orig)[0] if ("discount_cny" in names) else None
    )
    coupon = _valid_at(events.column("coupon_id"), orig) if "coupon_id" in names else None

    # Line-level logs repeat an order id on several rows with the same ts. Rows can only
    # belong to one order when they share (user, ts), so order ids are read (and hashed)
    # only for those rows; a repeated row is folded into the first row of its order.
    same = (o_user[1:] == o_user[:-1]) & (o_ts[1:] == o_ts[:-1])
    if "order_id" not in names or not bool(same.any()):
        return _Orders(o_user, o_ts, row_amount, discount, coupon, o, o_user, o_ts, row_amount)
    in_group = np.zeros(len(o), dtype=bool)
    in_group[1:] |= same
    in_group[:-1] |= same
    sub = np.flatnonzero(in_group)
    # (user, ts) group of each sub row: a new group starts after a row whose next row differs
    group = np.concatenate(([0], np.cumsum(~same[sub[:-1]])))
    oid = _one_array(events.column("order_id").take(pa.array(orig[sub], type=pa.int64())))
    enc = pc.dictionary_encode(oid)
    code = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), np.int64)
    nulls = code < 0
    code[nulls] = -2 - np.arange(int(nulls.sum()))  # a row without an id is its own order
    by_order = np.lexsort((code, group))  # stable: the first row of an order comes first
    g, c = group[by_order], code[by_order]
    first = np.concatenate(([True], (g[1:] != g[:-1]) | (c[1:] != c[:-1])))
    rep = by_order[np.maximum.accumulate(np.where(first, np.arange(len(first)), 0))]
    dup_sub = rep != by_order  # a later row of an order seen before
    dup = sub[by_order[dup_sub]]
    into = sub[rep[dup_sub]]
    keep = np.ones(len(o), dtype=bool)
    keep[dup] = False
    order_index = np.cumsum(keep) - 1

    def per_order(values: np.ndarray) -> np.ndarray:
        out = values[keep]
        np.add.at(out, order_index[into], values[dup])
        return out

    return _Orders(
        o_user[keep],
        o_ts[keep],
        per_order(row_amount),
        None if discount is None else per_order(discount),
        None if coupon is None else per_order(coupon.astype(np.int64)) > 0,
        o,
        o_user,
        o_ts,
        row_amount,
    )


class _Windows:
    """Day windows ending on the observation day, and the orders summed per window.

    Orders are classed once by age (class j: inside window ``days[j]`` but not the smaller
    ones; the last class: older than every window), summed per (user, class) with one
    bincount per quantity, and accumulated over classes: every window is then a column.
    """

    def __init__(self, obs_day: int, config: FeatureConfig, orders: _Orders, n: int) -> None:
        w = config.windows
        used = {30, 60, 90, 180, w.recent_coupon_days}
        used |= {d for d in (w.funnel_days, w.price_days, w.activity_days) if d is not None}
        self.obs_day = obs_day
        self.days: list[int] = sorted(used)
        self.n = n
        self.width = len(self.days) + 1
        k = np.zeros(len(orders.ts), dtype=np.int64)
        for d in self.days:
            k += orders.ts < _start_ms(obs_day, d)
        self.order_class = k
        self._key = orders.user * self.width + k
        self.counts = self.sums()
        self.spend = self.sums(orders.amount)

    def column(self, days: int | None) -> int:
        """Class column holding the window (None: to date)."""
        return len(self.days) if days is None else self.days.index(days)

    def sums(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(n, classes) running sums over orders: column j = total over window ``days[j]``,
        the last column = to date."""
        flat = np.bincount(self._key, weights=weights, minlength=self.n * self.width)
        return np.cumsum(flat.reshape(self.n, self.width), axis=1)


def compute_features(
    events: pa.Table,
    users: pa.Table | None,
    as_of_ms: int,
    config: FeatureConfig,
) -> pa.Table:
    """Per-user features of one bucket as of ``as_of_ms``.

    Args:
        events: the bucket's events, any subset of :data:`FEATURE_EVENT_COLUMNS` that includes
            ``user_id`` and ``ts`` (a column that is absent makes the features derived only
            from it null, see docs/features.md). Sorted by ``(user_id, ts)`` is the fast path
            (unsorted input is sorted here). ``event_type`` and the ``categories`` elements may
            be dictionary-encoded (read Parquet with ``read_dictionary=DICTIONARY_COLUMNS``).
            Only rows with ``ts < as_of_ms`` count.
        users: the bucket's users (any subset of :data:`FEATURE_USER_COLUMNS`), may be empty
            or None. A repeated user_id keeps its last row.
        as_of_ms: the as-of instant, UTC epoch milliseconds (exclusive).
        config: windows, slots and label rules (:func:`load_feature_config`).

    Returns:
        :data:`FEATURES_SCHEMA` table, one row per user sorted by user_id: every user of
        ``users`` with ``signup_ts <= as_of`` (or unknown) plus every user with an event
        before as-of.
    """
    as_of_ms = int(as_of_ms)
    ev = _prepare_events(events, as_of_ms)
    user_ids, user_rows = _prepare_users(users, as_of_ms)

    n_rows = len(ev.uid)
    if n_rows:
        run_starts = _runs(ev.uid)
        ev_users = ev.uid[run_starts]
        run_lengths = np.diff(np.append(run_starts, n_rows))
    else:
        ev_users = np.zeros(0, dtype=np.int64)
        run_lengths = np.zeros(0, dtype=np.int64)
    if len(user_ids) == 0 or np.array_equal(user_ids, ev_users):
        out_ids = ev_users
    else:
        out_ids = np.union1d(ev_users, user_ids)
    n = len(out_ids)
    ev_pos = np.searchsorted(out_ids, ev_users)
    uidx = np.repeat(ev_pos, run_lengths)  # output row of every event row

    obs_day = int(local_day(as_of_ms - 1))  # observation day: the last day with data
    orders = _orders(events, ev, uidx)
    win = _Windows(obs_day, config, orders, n)

    cols: dict[str, pa.Array] = {"user_id": pa.array(out_ids, type=pa.int64())}
    _rfm_columns(cols, orders, win)
    _long_window_columns(cols, orders, win)
    _category_columns(cols, events, ev, orders, win, config)
    discount_sensitivity = _price_columns(cols, orders, win, config)
    _activity_columns(cols, ev, uidx, orders, win, config)
    _attribute_columns(cols, out_ids, user_ids, user_rows)
    _funnel_columns(cols, events, ev, uidx, win, config)
    cols["ltv_cny"] = cols["spend_total_cny"]
    cols["arpu_30d_cny"] = cols["monetary_30d"]
    cols["discount_sensitivity"] = discount_sensitivity
    _gap_columns(cols, orders, n)
    return pa.Table.from_arrays([cols[c] for c in FEATURE_COLUMNS], schema=FEATURES_SCHEMA)


def _i32(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    return pa.array(values.astype(np.int32), type=_I32, mask=None if valid is None else ~valid)


def _f64(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    return pa.array(values.astype(np.float64), type=_F64, mask=None if valid is None else ~valid)


def _ts(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.int64), type=pa.int64(), mask=~valid).cast(TIMESTAMP)


def _labels(names: Sequence[str], idx: np.ndarray, valid: np.ndarray) -> pa.Array:
    indices = pa.array(idx.astype(np.int32), type=pa.int32(), mask=~valid)
    return pa.DictionaryArray.from_arrays(indices, pa.array(list(names), type=_STR)).cast(_STR)


def _rfm_columns(cols: dict[str, pa.Array], orders: _Orders, win: _Windows) -> None:
    u, ts, amt = orders.user, orders.ts, orders.amount
    n, counts, spend = win.n, win.counts, win.spend
    for d in (30, 90, 180):
        cols[f"frequency_{d}d"] = _i32(counts[:, win.column(d)])
        cols[f"monetary_{d}d"] = _f64(spend[:, win.column(d)])
    c30, c60, c90, c180 = (win.column(d) for d in (30, 60, 90, 180))
    cols["frequency_prev_30d"] = _i32(counts[:, c60] - counts[:, c30])
    cols["monetary_prev_30d"] = _f64(spend[:, c60] - spend[:, c30])
    cols["frequency_prev_90d"] = _i32(counts[:, c180] - counts[:, c90])
    cols["monetary_prev_90d"] = _f64(spend[:, c180] - spend[:, c90])
    total = counts[:, -1]
    has = total > 0
    cols["orders_total"] = _i32(total)
    cols["spend_total_cny"] = _f64(spend[:, -1])
    aov, _ = _ratio(spend[:, -1], total)
    cols["aov_cny"] = _f64(aov, has)

    first_ts = np.zeros(n, dtype=np.int64)
    last_ts = np.zeros(n, dtype=np.int64)
    btyd = np.zeros((4, n))  # frequency, recency, T, monetary value
    recency = np.zeros(n, dtype=np.int64)
    if len(u):
        starts = _runs(u)
        ends = np.append(starts[1:], len(u)) - 1
        users = u[starts]
        first_ts[users] = ts[starts]
        last_ts[users] = ts[ends]
        # BTYD: purchase days in local time; spend summed per day, as lifetimes does
        day = local_day(ts)
        new_day = np.concatenate(([True], (u[1:] != u[:-1]) | (day[1:] != day[:-1])))
        day_index = np.cumsum(new_day) - 1
        day_user = u[new_day]
        day_spend = np.bincount(day_index, weights=amt)
        repeat = np.concatenate(([False], day_user[1:] == day_user[:-1]))
        n_days = np.bincount(day_user, minlength=n)[users]
        repeat_spend = np.bincount(day_user[repeat], weights=day_spend[repeat], minlength=n)
        first_day = day[starts]
        last_day = day[ends]
        btyd[0, users] = n_days - 1
        btyd[1, users] = last_day - first_day
        btyd[2, users] = win.obs_day - first_day
        btyd[3, users] = np.divide(
            repeat_spend[users], n_days - 1, out=np.zeros(len(users)), where=n_days > 1
        )
        recency[users] = win.obs_day - last_day
    cols["recency_days"] = _i32(recency, has)
    cols["first_order_ts"] = _ts(first_ts, has)
    cols["last_order_ts"] = _ts(last_ts, has)
    for j, name in enumerate(("btyd_frequency", "btyd_recency", "btyd_t", "btyd_monetary_value")):
        cols[name] = _f64(btyd[j], has)


#: Length of an "active month" in days (a twelfth of a Julian year).
MONTH_DAYS = 365.25 / 12


def _long_window_columns(cols: dict[str, pa.Array], orders: _Orders, win: _Windows) -> None:
    """Orders and spend in the last 365 days and active months (sparse-category RFM).

    ``active_months``: whole months (of :data:`MONTH_DAYS`, rounded up) from the local day of
    the user's first order to the observation day, both counted; null without an order. One
    bincount per quantity over the order rows, separate from the shorter windows' classes.
    """
    n = win.n
    recent = orders.ts >= _start_ms(win.obs_day, 365)
    u = orders.user[recent]
    cols["frequency_365d"] = _i32(np.bincount(u, minlength=n))
    cols["monetary_365d"] = _f64(np.bincount(u, weights=orders.amount[recent], minlength=n))
    months = np.zeros(n, dtype=np.int64)
    has = np.zeros(n, dtype=bool)
    if len(orders.user):
        starts = _runs(orders.user)
        users = orders.user[starts]
        tenure_days = win.obs_day - local_day(orders.ts[starts]) + 1
        months[users] = np.ceil(tenure_days / MONTH_DAYS).astype(np.int64)
        has[users] = True
    cols["active_months"] = _i32(np.maximum(months, 1), has)


def _gap_columns(cols: dict[str, pa.Array], orders: _Orders, n: int) -> None:
    """``gap_std_days``: population standard deviation of the gaps (days) between a user's
    consecutive distinct local purchase days; null with fewer than two gaps. The mean gap is
    ``btyd_recency / btyd_frequency`` (derived in strata.training)."""
    std = np.zeros(n)
    has = np.zeros(n, dtype=bool)
    u = orders.user
    if len(u):
        day = local_day(orders.ts)
        new_day = np.concatenate(([True], (u[1:] != u[:-1]) | (day[1:] != day[:-1])))
        d_user, d_day = u[new_day], day[new_day]
        same = d_user[1:] == d_user[:-1]
        g_user = d_user[1:][same]
        gaps = (d_day[1:] - d_day[:-1])[same].astype(np.float64)
        k = np.bincount(g_user, minlength=n)
        s1 = np.bincount(g_user, weights=gaps, minlength=n)
        s2 = np.bincount(g_user, weights=gaps * gaps, minlength=n)
        has = k >= 2
        kk = np.where(has, k, 1)
        std = np.sqrt(np.maximum(s2 / kk - (s1 / kk) ** 2, 0.0))
    cols["gap_std_days"] = _f64(std, has)


def _category_spend(
    col: pa.ChunkedArray | pa.Array, orig: np.ndarray, user: np.ndarray, amount: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(n, categories) spend and the spend of rows listing any category; each row's amount is
    split equally across the categories it lists."""
    e_user, e_code, e_spend, e_row, r_user, r_amount, r_row = [], [], [], [], [], [], []
    scattered = False  # rows of one chunk not contiguous in ``orig`` (unsorted input)
    for chunk, pos, local in _by_chunk(col, orig):
        offsets = np.asarray(chunk.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        start = offsets[local]
        length = offsets[local + 1] - start
        if chunk.null_count:
            length[~_valid_at_chunk(chunk, local)] = 0
        listed = np.flatnonzero(length > 0)
        if not len(listed):
            continue
        start, length = start[listed], length[listed]
        u = (user if pos is None else user[pos])[listed]
        a = (amount if pos is None else amount[pos])[listed]
        # element e of a row sits at start + (e - index of the row's first element)
        first_elem = np.cumsum(length) - length
        elem = np.repeat(start - first_elem, length) + np.arange(int(length.sum()))
        e_code.append(_codes_at(chunk.values, elem, _CAT_CODE, -1))
        e_user.append(np.repeat(u, length))
        e_spend.append(np.repeat(a / length, length))
        r_user.append(u)
        r_amount.append(a)
        if isinstance(pos, np.ndarray):  # _by_chunk gives arrays for all chunks or none
            scattered = True
            e_row.append(np.repeat(pos[listed], length))
            r_row.append(pos[listed])
    if not r_user:
        return np.zeros((n, _NC)), np.zeros(n)
    code = np.concatenate(e_code).astype(np.int64)
    eu, es = np.concatenate(e_user), np.concatenate(e_spend)
    ru, ra = np.concatenate(r_user), np.concatenate(r_amount)
    if scattered:  # sum in row order, so that the result does not depend on chunking
        e_order = np.argsort(np.concatenate(e_row), kind="stable")
        code, eu, es = code[e_order], eu[e_order], es[e_order]
        r_order = np.argsort(np.concatenate(r_row), kind="stable")
        ru, ra = ru[r_order], ra[r_order]
    ok = code >= 0
    spend = np.bincount(eu[ok] * _NC + code[ok], weights=es[ok], minlength=n * _NC)
    known = np.bincount(ru, weights=ra, minlength=n)
    return spend.reshape(n, _NC), known


def _category_columns(
    cols: dict[str, pa.Array],
    events: pa.Table,
    ev: _Events,
    orders: _Orders,
    win: _Windows,
    config: FeatureConfig,
) -> None:
    n = win.n
    spend: np.ndarray = np.zeros((n, _NC))
    known: np.ndarray = np.zeros(n)
    if "categories" in events.column_names and len(orders.rows):
        days = config.windows.category_days
        rows, user, amount = orders.rows, orders.row_user, orders.row_amount
        if days is not None:
            pick = np.flatnonzero(orders.row_ts >= _start_ms(win.obs_day, days))
            rows, user, amount = rows[pick], user[pick], amount[pick]
        spend, known = _category_spend(events.column("categories"), ev.orig(rows), user, amount, n)
    share, _ = _ratio(spend, known[:, None])
    has = known > 0
    for j, c in enumerate(CATEGORIES):
        cols[f"share_{c}"] = _f64(share[:, j], has)
    top, top_ok = _argmax_label(spend)
    cols["top_category"] = _labels(CATEGORIES, top, top_ok & has)


def _price_columns(
    cols: dict[str, pa.Array], orders: _Orders, win: _Windows, config: FeatureConfig
) -> pa.Array:
    """Price-sensitivity columns; returns the discount_sensitivity column."""
    rules = config.price_sensitivity
    w = config.windows
    cp, cr = win.column(w.price_days), win.column(w.recent_coupon_days)
    n, counts = win.n, win.counts
    coupon_share = np.zeros(n)
    coupon_ok = np.zeros(n, dtype=bool)
    recent_share = np.zeros(n)
    recent_ok = np.zeros(n, dtype=bool)
    if orders.coupon is not None:
        coupons = win.sums(orders.coupon.astype(np.float64))
        coupon_share, coupon_ok = _ratio(coupons[:, cp], counts[:, cp])
        recent_share, recent_ok = _ratio(coupons[:, cr], counts[:, cr])
    depth = np.zeros(n)
    depth_ok = np.zeros(n, dtype=bool)
    if orders.discount is not None:
        gross = orders.amount + orders.discount
        priced = gross > 0
        per_order = np.divide(orders.discount, gross, out=np.zeros(len(gross)), where=priced)
        depth_sum = win.sums(per_order)
        depth_n = win.sums(priced.astype(np.float64))
        depth, depth_ok = _ratio(depth_sum[:, cp], depth_n[:, cp])
    cols["coupon_order_share"] = _f64(coupon_share, coupon_ok)
    cols["avg_discount_depth"] = _f64(depth, depth_ok)
    cols["coupon_only_share"] = _f64(recent_share, recent_ok)

    aov, _ = _ratio(win.spend[:, -1], counts[:, -1])
    sensitive = (coupon_ok & (coupon_share >= rules.coupon_share_min)) | (
        depth_ok & (depth >= rules.discount_depth_min)
    )
    quality = (
        ~sensitive
        & (aov >= rules.quality_aov_min_cny)
        & (~coupon_ok | (coupon_share <= rules.quality_coupon_share_max))
    )
    label = np.where(sensitive, 0, np.where(quality, 1, 2))
    label[~(coupon_ok | depth_ok)] = 3  # unknown: no orders or no price information
    cols["price_sensitivity"] = _labels(PRICE_SENSITIVITY_LABELS, label, np.ones(n, dtype=bool))

    s = config.discount_sensitivity
    depth_score = np.minimum(1.0, depth / s.depth_cap)
    score = np.where(
        coupon_ok & depth_ok,
        s.coupon_weight * coupon_share + (1 - s.coupon_weight) * depth_score,
        np.where(coupon_ok, coupon_share, depth_score),
    )
    return _f64(score, coupon_ok | depth_ok)


def _activity_columns(
    cols: dict[str, pa.Array],
    ev: _Events,
    uidx: np.ndarray,
    orders: _Orders,
    win: _Windows,
    config: FeatureConfig,
) -> None:
    n = win.n
    days = config.windows.activity_days
    visit = ev.code == _VISIT
    if days is not None:
        visit &= ev.since(_start_ms(win.obs_day, days))
    v = np.flatnonzero(visit)
    o = np.flatnonzero(win.order_class <= win.column(days)) if days is not None else slice(None)
    ts = np.concatenate((ev.ts[v], orders.ts[o]))
    user = np.concatenate((uidx[v], orders.user[o]))
    local = ts + LOCAL_OFFSET_MS
    slot = config.time_slots.hour_to_slot()[(local // HOUR_MS) % 24]
    weekend = ((local // DAY_MS) + 3) % 7 >= 5  # 1970-01-01 was a Thursday
    total = np.bincount(user, minlength=n)
    has = total > 0
    ns = len(SLOTS)
    slots = np.bincount(user * ns + slot, minlength=n * ns).reshape(n, ns)
    we_share, _ = _ratio(np.bincount(user[weekend], minlength=n), total)
    cols["weekend_share"] = _f64(we_share, has)
    shares, _ = _ratio(slots, total[:, None])
    for j, s in enumerate(SLOTS):
        cols[f"slot_{s}"] = _f64(shares[:, j], has)
    top, _ = _argmax_label(slots)
    cols["active_slot"] = _labels(SLOTS, top, has)
    daytype = (we_share >= config.weekend_daytype_min).astype(np.int64)
    cols["active_daytype"] = _labels(DAYTYPE_LABELS, daytype, has)


def _attribute_columns(
    cols: dict[str, pa.Array],
    out_ids: np.ndarray,
    user_ids: np.ndarray,
    user_rows: pa.Table | None,
) -> None:
    n = len(out_ids)
    names = [*_ATTRIBUTE_COLUMNS, "signup_ts"]
    types = {a: _STR for a in _ATTRIBUTE_COLUMNS} | {"signup_ts": TIMESTAMP}
    if user_rows is None or len(user_ids) == 0:
        for a in names:
            cols[a] = pa.nulls(n, type=types[a])
        return
    take: pa.Array | None = None
    if not np.array_equal(user_ids, out_ids):
        pos = np.minimum(np.searchsorted(user_ids, out_ids), len(user_ids) - 1)
        take = pa.array(pos, type=pa.int64(), mask=user_ids[pos] != out_ids)
    for a in names:
        if a not in user_rows.column_names:
            cols[a] = pa.nulls(n, type=types[a])
            continue
        col = user_rows.column(a)
        if take is not None:
            col = col.take(take)
        cols[a] = _one_array(col).cast(types[a])


def _funnel_columns(
    cols: dict[str, pa.Array],
    events: pa.Table,
    ev: _Events,
    uidx: np.ndarray,
    win: _Windows,
    config: FeatureConfig,
) -> None:
    n = win.n
    days = config.windows.funnel_days
    # rows outside the window count in the spare column _UNKNOWN, like unknown types
    code = (
        ev.code
        if days is None
        else np.where(ev.since(_start_ms(win.obs_day, days)), ev.code, _UNKNOWN)
    )
    width = _NT + 1
    counts = np.bincount(uidx * width + code, minlength=n * width).reshape(n, width)
    for name, codes in _COUNT_COLUMNS.items():
        c = counts[:, codes[0]] if len(codes) == 1 else counts[:, list(codes)].sum(axis=1)
        cols[name] = _i32(c)
    rate, ok = _ratio(win.counts[:, win.column(days)], counts[:, _CODE[EventType.ADD_TO_CART]])
    cols["cart_to_order_rate"] = _f64(rate, ok)

    rated_sum: np.ndarray = np.zeros(n)
    rated_n: np.ndarray = np.zeros(n, dtype=np.int64)
    negative: np.ndarray = np.zeros(n, dtype=np.int64)
    if "rating" in events.column_names:
        r = np.flatnonzero(code == _REVIEW)
        rating, rated = _numbers_at(events.column("rating"), ev.orig(r))
        ru, rv = uidx[r][rated], rating[rated]
        rated_sum = np.bincount(ru, weights=rv, minlength=n)
        rated_n = np.bincount(ru, minlength=n)
        negative = np.bincount(ru[rv <= config.negative_rating_max], minlength=n)
    mean, ok_m = _ratio(rated_sum, rated_n)
    cols["mean_rating"] = _f64(mean, ok_m)
    cols["negative_reviews"] = _i32(negative)

    # distinct local days with any event in the last 30 days
    s30 = np.flatnonzero(ev.ts >= _start_ms(win.obs_day, 30))
    active: np.ndarray = np.zeros(n, dtype=np.int64)
    if len(s30):
        d = local_day(ev.ts[s30])
        u = uidx[s30]
        new = np.concatenate(([True], (d[1:] != d[:-1]) | (u[1:] != u[:-1])))
        active = np.bincount(u[new], minlength=n)
    cols["active_days_30d"] = _i32(active)
