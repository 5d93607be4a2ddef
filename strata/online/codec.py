"""Fixed-size binary records for the online segment store, and the user → group mapping.

A :class:`RecordLayout` is an ordered list of typed fields. Every user's record is encoded into
the same small number of bytes (24 for :func:`snapshot_layout` with predictions, 20 without), so
that 50-100 users packed into one Redis hash stay in Redis's compact listpack/ziplist encoding
(~32 bytes of Redis memory per user instead of ~440 for one hash per user with text fields).

Field kinds (all little-endian; "null" is a reserved code, so every field is nullable):

========== ================================ ======= =========================================
kind       stored as                        bytes   null
========== ================================ ======= =========================================
enum       code into ``labels``, bit-packed  shared  all ones (2**bits - 1)
unit       uint16 ``round(x * 10000)``       2       65535; x clipped to [0, 1]
unit8      uint8 ``round(x * 200)``          1       255; x clipped to [0, 1]
uint8      uint8 count                       1       255; clipped to [0, 254]
uint16     uint16 count                      2       65535; clipped to [0, 65534]
uint32     uint32 count                      4       2**32-1; clipped to [0, 2**32-2]
float32    IEEE float32                      4       NaN
cny        uint24 fen: ``round(x * 100)``    3       2**24-1; clipped to [0, 167772.14] CNY
cny16      uint16 whole CNY: ``round(x)``    2       65535; clipped to [0, 65534] CNY
days8      uint8 days: exact to 199, then   1       255; clipped to [0, 1010] days
           15-day steps (rounded down)
weighted   nothing: ``sum(w * input)`` of   0       null if an input is null
           other fields, at decode
========== ================================ ======= =========================================

Enum fields take ``bits = len(labels).bit_length()`` bits each (4 labels → 3 bits, 8 → 4) and
are packed together into the first ``ceil(sum(bits) / 8)`` bytes of the record, in declared
order from the least significant bit; the other fields follow in declared order, unaligned.
A value outside an enum's labels is an error, unless the field names an ``other`` label that
such values encode as (a new region is ``other``).

In the packed store (:mod:`strata.io.segment_store`) every byte of a record costs one byte of
Redis memory per user, on top of the 8-byte user id and <1 byte of per-key overhead. The
32-bytes-per-user budget (bench/redis_memory.py) therefore leaves ~23 bytes for the record with
predictions, which is why fifteen enums share 6 bytes, money is whole CNY in 2 bytes
(``cny16``), percentile scores and probabilities use 1/200 steps (``unit8``), recency is one
byte (``days8``, exact over every recency band) and ``rfm_score`` can be ``weighted``: computed
from the stored ``rfm_r``/``rfm_f``/``rfm_m`` and the version's weights instead of stored.
Older layouts (exact cents in ``cny``, probabilities in 1/10000 ``unit``, ``uint16`` recency, a
stored ``rfm_score``) still decode.

A layout is stored (as JSON) with each published version, so a reader always decodes with the
layout the version was written with, and a layout may gain fields (for example predictions)
without touching older versions.

Users map to groups (Redis hashes) with :func:`group_of`, a murmur3-finaliser mix of the id
modulo the group count: unlike :func:`strata.ids.bucket_of` (a golden-ratio multiply), so each
warehouse bucket spreads evenly over all groups. The field key of a user inside its group is
its id as 8 big-endian bytes (:func:`user_field`).

Pure: numpy, pyarrow and pydantic only (plus the rule names of :mod:`strata.tiering.tiers`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal, TypeAlias, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from strata.features.compute import DAYTYPE_LABELS
from strata.schema import AGE_BANDS, CATEGORIES, CHANNELS, DEVICES, GENDERS
from strata.tiering.bands import FREQUENCY_BANDS, RECENCY_BANDS, SPEND_LEVELS
from strata.tiering.tiers import RULE_BAND, RULE_CHURN, RULE_HOLD

__all__ = [
    "ACTIVE_SLOTS",
    "DAYTYPES",
    "DEVICE_LABELS",
    "LIFECYCLE_STAGES",
    "PRICE_SENSITIVITIES",
    "REGIONS",
    "TIERS",
    "TIER_RULES",
    "FieldKind",
    "FieldSpec",
    "RecordLayout",
    "decode",
    "decode_many",
    "encode",
    "expected_max_group_size",
    "group_of",
    "n_groups_for",
    "packed_buckets_for",
    "packed_chunk_users",
    "snapshot_layout",
    "user_field",
    "user_fields",
]

#: Default labels of the segment record (a layout carries its own labels; these are defaults).
TIERS: tuple[str, ...] = ("high_value", "potential", "ordinary", "churn_warning")
LIFECYCLE_STAGES: tuple[str, ...] = ("new", "growing", "mature", "declining", "churned")
PRICE_SENSITIVITIES: tuple[str, ...] = (
    "coupon_sensitive",
    "quality_sensitive",
    "price_insensitive",
    "unknown",
)
ACTIVE_SLOTS: tuple[str, ...] = ("morning", "noon", "afternoon", "evening", "night")
#: The rule that gave a user its tier (the snapshot's ``tier_rule`` column).
TIER_RULES: tuple[str, ...] = (RULE_BAND, RULE_HOLD, RULE_CHURN)
#: Regions of the platform (configs/generator.yaml ``cities``), fixed in the layout so that
#: codes mean the same in every version; any other region (a new city, an import's own
#: naming) is stored as the last label, ``other``.
REGIONS: tuple[str, ...] = (
    "north",
    "northeast",
    "east",
    "central",
    "south",
    "southwest",
    "northwest",
    "other",
)
#: Devices, with ``other`` for any device an import names that the platform's list lacks.
DEVICE_LABELS: tuple[str, ...] = (*DEVICES, "other")
DAYTYPES: tuple[str, ...] = DAYTYPE_LABELS

_UNIT_SCALE = 10_000
_UNIT8_SCALE = 200
_MAX_ENUM_LABELS = 255
_MAX_ENUM_BITS = 64
_FIELD_NAME = r"^[a-z][a-z0-9_]{0,62}$"

#: murmur3 fmix64 constants: a different mix than strata.ids.bucket_of, so groups and
#: warehouse buckets are independent of each other.
_FMIX_1 = 0xFF51AFD7ED558CCD
_FMIX_2 = 0xC4CEB9FE1A85EC53
_MASK_64 = (1 << 64) - 1


class FieldKind(StrEnum):
    """How one field of a record is stored (see the module docstring for the table)."""

    ENUM = "enum"
    UNIT = "unit"
    UNIT8 = "unit8"
    UINT8 = "uint8"
    UINT16 = "uint16"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    CNY = "cny"
    CNY16 = "cny16"
    DAYS8 = "days8"
    WEIGHTED = "weighted"


#: numpy dtype, struct code and null code of each byte-aligned kind.
_SCALAR: dict[FieldKind, tuple[str, str, int | None]] = {
    FieldKind.UNIT: ("<u2", "H", 0xFFFF),
    FieldKind.UNIT8: ("u1", "B", 0xFF),
    FieldKind.UINT8: ("u1", "B", 0xFF),
    FieldKind.UINT16: ("<u2", "H", 0xFFFF),
    FieldKind.UINT32: ("<u4", "I", 0xFFFF_FFFF),
    FieldKind.FLOAT32: ("<f4", "f", None),
    FieldKind.CNY: ("3u1", "3s", 0xFF_FFFF),  # a little-endian uint24
    FieldKind.CNY16: ("<u2", "H", 0xFFFF),  # whole CNY
    FieldKind.DAYS8: ("u1", "B", 0xFF),
}
_SCALE: dict[FieldKind, int] = {FieldKind.UNIT: _UNIT_SCALE, FieldKind.UNIT8: _UNIT8_SCALE}
_CENTS = 100
#: days8: codes below _DAYS8_EXACT are days; code c above is _DAYS8_EXACT + (c - it) * step
_DAYS8_EXACT = 200
_DAYS8_STEP = 15
_DAYS8_MAX_CODE = 254
#: a weighted field's inputs must reproduce the column within this (else it is not derived):
#: the snapshot rounds the ranks and the score to 6 decimals each
_WEIGHTED_TOLERANCE = 2e-6


class FieldSpec(BaseModel):
    """One field of a record layout.

    Attributes:
        name: the record key (lower snake case), e.g. ``rfm_score``.
        kind: how it is stored.
        labels: the allowed values of an ``enum`` field, in code order (``enum`` only).
        other: ``enum`` only: the label that values outside ``labels`` encode as (e.g. a new
            region is ``other``); None: such a value is an error.
        decimals: ``float32`` only: round decoded values to this many decimals (2 for CNY);
            ``weighted``: decimals of the decoded sum (default 4).
        inputs: ``weighted`` only: the (stored, numeric) fields the value is a sum of.
        weights: ``weighted`` only: the weight of each input.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_FIELD_NAME)
    kind: FieldKind
    labels: tuple[str, ...] = ()
    other: str | None = None
    decimals: int | None = Field(default=None, ge=0, le=6)
    inputs: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> FieldSpec:
        if self.kind is FieldKind.WEIGHTED:
            if not self.inputs or len(self.inputs) != len(self.weights):
                raise ValueError(
                    f"weighted field {self.name!r} needs inputs and one weight per input"
                )
        elif self.inputs or self.weights:
            raise ValueError(f"field {self.name!r}: inputs and weights are only for weighted")
        if self.kind is FieldKind.ENUM:
            if not self.labels:
                raise ValueError(f"enum field {self.name!r} needs labels")
            if len(self.labels) > _MAX_ENUM_LABELS:
                raise ValueError(f"enum field {self.name!r}: at most {_MAX_ENUM_LABELS} labels")
            if len(set(self.labels)) != len(self.labels) or not all(self.labels):
                raise ValueError(f"enum field {self.name!r}: labels must be unique and non-empty")
        elif self.labels:
            raise ValueError(f"field {self.name!r}: labels are only for enum fields")
        if self.other is not None and self.other not in self.labels:
            raise ValueError(f"field {self.name!r}: other {self.other!r} is not one of its labels")
        if self.decimals is not None and self.kind not in (FieldKind.FLOAT32, FieldKind.WEIGHTED):
            raise ValueError(f"field {self.name!r}: decimals are only for float32/weighted fields")
        return self

    @property
    def bits(self) -> int:
        """Bits of an enum field: enough for every label plus the null code (all ones)."""
        return len(self.labels).bit_length() if self.kind is FieldKind.ENUM else 0


@dataclass(frozen=True)
class _Plan:
    """Everything derived from a layout, computed once per layout object."""

    dtype: np.dtype[Any]
    enum_bytes: int
    shifts: dict[str, int]
    struct: struct.Struct
    decoders: tuple[Callable[[tuple[Any, ...], int], Any], ...]


class RecordLayout(BaseModel):
    """An ordered list of typed fields: the binary layout of one version's records.

    Serialise with :meth:`to_json` / :meth:`from_json`; it is stored with each version.

    Attributes:
        format: codec format of the layout (bumped only if the encoding rules change).
        fields: the fields, in declared order (decoded records keep this order).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[1] = 1
    fields: tuple[FieldSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> RecordLayout:
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate field names: {dupes}")
        total_bits = sum(f.bits for f in self.fields)
        if total_bits > _MAX_ENUM_BITS:
            raise ValueError(f"enum fields need {total_bits} bits; at most {_MAX_ENUM_BITS}")
        stored = {f.name for f in self.fields if f.kind in _SCALAR}
        for f in self.fields:
            bad = [name for name in f.inputs if name not in stored]
            if bad:
                raise ValueError(
                    f"weighted field {f.name!r}: inputs {bad} are not stored numeric fields"
                )
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy (see pydantic); the copy compiles its own encoding plan (a copy with other
        fields must not encode with the original's cached plan)."""
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("_plan", None)
        return copy

    def to_json(self) -> str:
        """The layout as compact JSON (what is stored with a version)."""
        return self.model_dump_json(exclude_defaults=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> RecordLayout:
        """Parse a layout written by :meth:`to_json`.

        Raises:
            pydantic.ValidationError: the JSON is not a valid layout.
        """
        return cls.model_validate_json(text)

    @property
    def names(self) -> tuple[str, ...]:
        """Field names in declared order."""
        return tuple(f.name for f in self.fields)

    @property
    def size(self) -> int:
        """Bytes per encoded record."""
        return int(self._plan.dtype.itemsize)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The packed numpy structured dtype of one record (enum bits under ``_enums``)."""
        return self._plan.dtype

    def field(self, name: str) -> FieldSpec:
        """The field called ``name``.

        Raises:
            KeyError: no such field.
        """
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"no field {name!r}; fields: {list(self.names)}")

    def extend(self, *fields: FieldSpec) -> RecordLayout:
        """A new layout with ``fields`` appended (e.g. predictions added to a tiers layout)."""
        return RecordLayout(fields=(*self.fields, *fields))

    @cached_property
    def _plan(self) -> _Plan:
        return _compile(self)


def _compile(layout: RecordLayout) -> _Plan:
    enum_bits = sum(f.bits for f in layout.fields)
    enum_bytes = (enum_bits + 7) // 8
    dtype_fields: list[tuple[Any, ...]] = []
    fmt = "<"
    if enum_bytes:
        dtype_fields.append(("_enums", "u1", (enum_bytes,)))
        fmt += f"{enum_bytes}s"
    shifts: dict[str, int] = {}
    shift = 0
    index = 1 if enum_bytes else 0
    positions: dict[str, int] = {}
    for f in layout.fields:
        if f.kind is FieldKind.ENUM:
            shifts[f.name] = shift
            shift += f.bits
        elif f.kind is not FieldKind.WEIGHTED:
            np_code, st_code, _ = _SCALAR[f.kind]
            dtype_fields.append((f.name, np_code))
            fmt += st_code
            positions[f.name] = index
            index += 1
    stored = {
        f.name: _scalar_decoder(f, shifts.get(f.name, 0), positions.get(f.name, 0))
        for f in layout.fields
        if f.kind is not FieldKind.WEIGHTED
    }
    decoders = tuple(
        stored[f.name] if f.name in stored else _weighted_decoder(f, stored) for f in layout.fields
    )
    return _Plan(
        dtype=np.dtype(dtype_fields),
        enum_bytes=enum_bytes,
        shifts=shifts,
        struct=struct.Struct(fmt),
        decoders=decoders,
    )


def _weighted_decoder(
    f: FieldSpec, stored: Mapping[str, Callable[[tuple[Any, ...], int], Any]]
) -> Callable[[tuple[Any, ...], int], Any]:
    """A function (unpacked tuple, enum word) -> the weighted sum of the field's inputs."""
    parts = tuple(zip(f.weights, (stored[name] for name in f.inputs), strict=True))
    decimals = _weighted_decimals(f)

    def dec_weighted(raw: tuple[Any, ...], word: int) -> float | None:
        total = 0.0
        for w, dec in parts:
            x = dec(raw, word)
            if x is None:
                return None
            total = total + w * x
        return round(total, decimals)

    return dec_weighted


def _weighted_decimals(f: FieldSpec) -> int:
    return 4 if f.decimals is None else f.decimals


def _days8_codes(x: np.ndarray) -> np.ndarray:
    """days8 codes of (non-null) day counts: exact below 200, then 15-day steps, rounded down."""
    days = np.rint(np.clip(np.nan_to_num(x, posinf=1e9, neginf=0.0), 0.0, 1e9))
    steps = np.floor((days - _DAYS8_EXACT) / _DAYS8_STEP)
    return np.where(days < _DAYS8_EXACT, days, np.minimum(_DAYS8_EXACT + steps, _DAYS8_MAX_CODE))


def _days8_value(code: int) -> int:
    return code if code < _DAYS8_EXACT else _DAYS8_EXACT + (code - _DAYS8_EXACT) * _DAYS8_STEP


def _scalar_decoder(f: FieldSpec, shift: int, pos: int) -> Callable[[tuple[Any, ...], int], Any]:
    """A function (unpacked tuple, enum word) -> decoded value of one field."""
    if f.kind is FieldKind.ENUM:
        mask = (1 << f.bits) - 1
        labels = f.labels

        def dec_enum(raw: tuple[Any, ...], word: int) -> str | None:
            code = (word >> shift) & mask
            return labels[code] if code < len(labels) else None

        return dec_enum
    _, _, null = _SCALAR[f.kind]
    if f.kind is FieldKind.DAYS8:

        def dec_days8(raw: tuple[Any, ...], word: int) -> int | None:
            code = raw[pos]
            return None if code == null else _days8_value(code)

        return dec_days8
    if f.kind is FieldKind.CNY16:

        def dec_cny16(raw: tuple[Any, ...], word: int) -> float | None:
            code = raw[pos]
            return None if code == null else float(code)

        return dec_cny16
    if f.kind is FieldKind.CNY:

        def dec_cny(raw: tuple[Any, ...], word: int) -> float | None:
            code = int.from_bytes(raw[pos], "little")
            return None if code == null else code / _CENTS

        return dec_cny
    if f.kind in _SCALE:
        scale = _SCALE[f.kind]

        def dec_unit(raw: tuple[Any, ...], word: int) -> float | None:
            code = raw[pos]
            return None if code == null else code / scale

        return dec_unit
    if f.kind is FieldKind.FLOAT32:
        decimals = f.decimals

        def dec_float(raw: tuple[Any, ...], word: int) -> float | None:
            x = raw[pos]
            if x != x:  # NaN is null
                return None
            return round(x, decimals) if decimals is not None else float(x)

        return dec_float

    def dec_count(raw: tuple[Any, ...], word: int) -> int | None:
        code = raw[pos]
        return None if code == null else int(code)

    return dec_count


# --------------------------------------------------------------------------------------- encode

#: What :func:`encode` accepts: an Arrow table/batch or a mapping of column name to values.
Columns: TypeAlias = pa.Table | pa.RecordBatch | Mapping[str, Any]


def encode(columns: Columns, layout: RecordLayout, *, allow_missing: bool = False) -> np.ndarray:
    """Encode whole columns into fixed-size records, vectorised (no per-row Python).

    Args:
        columns: a pyarrow Table/RecordBatch, or a mapping of field name to a pyarrow array,
            numpy array or list. Extra columns (``user_id``...) are ignored. Nulls (Arrow nulls,
            ``None``, NaN) encode as the field's null code.
        layout: the record layout.
        allow_missing: encode a field absent from ``columns`` as all-null instead of failing.

    Returns:
        A 1-D structured array of dtype ``layout.dtype`` (``layout.size`` bytes per row;
        ``.tobytes()`` gives the records back to back).

    Raises:
        ValueError: a field is missing, the columns differ in length, or an enum column holds
            a value that is not one of the field's labels.
    """
    available = (
        columns.column_names if isinstance(columns, pa.Table | pa.RecordBatch) else list(columns)
    )
    n: int | None = None
    arrays: dict[str, pa.Array | None] = {}
    for f in layout.fields:
        if f.name not in available:
            if not allow_missing:
                raise ValueError(
                    f"column {f.name!r} is missing; layout fields: {list(layout.names)}"
                )
            arrays[f.name] = None
            continue
        arr = _as_arrow(columns[f.name])
        if n is None:
            n = len(arr)
        elif len(arr) != n:
            raise ValueError(f"column {f.name!r} has {len(arr)} rows, expected {n}")
        arrays[f.name] = arr
    if n is None:
        n = columns.num_rows if isinstance(columns, pa.Table | pa.RecordBatch) else 0

    plan = layout._plan
    out = np.zeros(n, dtype=plan.dtype)
    word = np.zeros(n, dtype=np.uint64)
    for f in layout.fields:
        arr = arrays[f.name]
        if f.kind is FieldKind.ENUM:
            codes = _enum_codes(arr, f, n)
            word |= codes << np.uint64(plan.shifts[f.name])
        elif f.kind is FieldKind.WEIGHTED:
            _check_weighted(arr, f, arrays, n)
        else:
            codes = _scalar_codes(arr, f, n)
            if f.kind is FieldKind.CNY:
                codes = codes.astype("<u4").view(np.uint8).reshape(n, 4)[:, :3]
            out[f.name] = codes
    if plan.enum_bytes:
        out["_enums"] = word.astype("<u8").view(np.uint8).reshape(n, 8)[:, : plan.enum_bytes]
    return out


def _check_weighted(
    arr: pa.Array | None, f: FieldSpec, arrays: Mapping[str, pa.Array | None], n: int
) -> None:
    """A weighted field is not stored: its column (if given) must be exactly the weighted sum
    of its inputs' columns (before rounding), else storing only the inputs would lose it."""
    if arr is None:
        return
    given = _floats(arr, f, n)
    total = np.zeros(n)
    for name, w in zip(f.inputs, f.weights, strict=True):
        total = total + w * _floats(arrays[name], f, n)
    both = ~np.isnan(given) & ~np.isnan(total)
    off = np.abs(given[both] - total[both]) > _WEIGHTED_TOLERANCE
    if off.any() or (np.isnan(total) & ~np.isnan(given)).any():
        terms = " + ".join(f"{w:g}*{name}" for name, w in zip(f.inputs, f.weights, strict=True))
        raise ValueError(
            f"column {f.name!r} is not {terms} for every row: store it (not weighted) instead"
        )


def _floats(arr: pa.Array | None, f: FieldSpec, n: int) -> np.ndarray:
    if arr is None:
        return np.full(n, np.nan)
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        if pa.types.is_null(arr.type):
            return np.full(n, np.nan)
        raise ValueError(f"column {f.name!r} and its inputs must be numeric, got {arr.type}")
    return np.asarray(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _as_arrow(values: Any) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return pa.array(values, from_pandas=True)  # NaN -> null
    return pa.array(values, from_pandas=True)


def _enum_codes(arr: pa.Array | None, f: FieldSpec, n: int) -> np.ndarray:
    null = np.uint64((1 << f.bits) - 1)
    if arr is None:
        return np.full(n, null, dtype=np.uint64)
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        if arr.null_count == len(arr):
            return np.full(n, null, dtype=np.uint64)
        raise ValueError(f"enum column {f.name!r} must hold strings, got {arr.type}")
    idx = pc.index_in(arr, value_set=pa.array(f.labels, type=arr.type))
    unknown = pc.and_(pc.is_valid(arr), pc.is_null(idx))
    if f.other is not None:
        idx = pc.if_else(unknown, pa.scalar(f.labels.index(f.other), idx.type), idx)
    elif pc.any(unknown).as_py():
        bad = pc.unique(arr.filter(unknown)).to_pylist()[:10]
        raise ValueError(f"enum column {f.name!r}: unknown labels {bad}; allowed: {list(f.labels)}")
    return pc.fill_null(idx, int(null)).to_numpy(zero_copy_only=False).astype(np.uint64)


def _scalar_codes(arr: pa.Array | None, f: FieldSpec, n: int) -> np.ndarray:
    np_code, _, null = _SCALAR[f.kind]
    if arr is None:
        x = np.full(n, np.nan)
    else:
        if not (
            pa.types.is_integer(arr.type)
            or pa.types.is_floating(arr.type)
            or pa.types.is_null(arr.type)
            or pa.types.is_boolean(arr.type)
        ):
            raise ValueError(
                f"column {f.name!r} must be numeric for a {f.kind} field, got {arr.type}"
            )
        x = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    if f.kind is FieldKind.FLOAT32:
        return x.astype(np.float32)
    assert null is not None
    missing = np.isnan(x)
    if f.kind is FieldKind.CNY:
        codes = np.rint(np.clip(np.nan_to_num(x * _CENTS, posinf=null, neginf=0.0), 0.0, null - 1))
        codes[missing] = null
        return codes.astype(np.uint32)
    if f.kind in _SCALE:
        scale = _SCALE[f.kind]
        codes = np.rint(np.clip(np.nan_to_num(x), 0.0, 1.0) * scale)
    elif f.kind is FieldKind.DAYS8:
        codes = _days8_codes(x)
    else:
        codes = np.rint(np.clip(np.nan_to_num(x, posinf=null, neginf=0.0), 0.0, null - 1))
    codes[missing] = null
    return codes.astype(np_code)


# --------------------------------------------------------------------------------------- decode


def decode(value: bytes, layout: RecordLayout) -> dict[str, Any]:
    """Decode one record into ``{field: value}`` (declared order; None for null).

    Enum fields give their label, ``unit``/``unit8`` and ``float32`` fields a float, counts an
    int.

    Raises:
        ValueError: ``value`` is not ``layout.size`` bytes long.
    """
    plan = layout._plan
    if len(value) != plan.struct.size:
        raise ValueError(f"record is {len(value)} bytes; the layout needs {plan.struct.size}")
    raw = plan.struct.unpack(value)
    word = int.from_bytes(raw[0], "little") if plan.enum_bytes else 0
    return {f.name: dec(raw, word) for f, dec in zip(layout.fields, plan.decoders, strict=True)}


def decode_many(
    values: Sequence[bytes] | bytes | np.ndarray, layout: RecordLayout
) -> list[dict[str, Any]]:
    """Decode many records at once (vectorised per field); same results as :func:`decode`.

    Args:
        values: a sequence of records, their concatenation, or an array from :func:`encode`.
        layout: the layout they were written with.

    Raises:
        ValueError: a record does not have ``layout.size`` bytes.
    """
    plan = layout._plan
    if isinstance(values, np.ndarray):
        buf = values.tobytes()
    elif isinstance(values, bytes | bytearray | memoryview):
        buf = bytes(values)
    else:
        if any(len(v) != plan.dtype.itemsize for v in values):
            raise ValueError(f"every record must be {plan.dtype.itemsize} bytes")
        buf = b"".join(values)
    if len(buf) % plan.dtype.itemsize:
        raise ValueError(
            f"{len(buf)} bytes is not a whole number of {plan.dtype.itemsize}-byte records"
        )
    recs = np.frombuffer(buf, dtype=plan.dtype)
    if len(recs) == 0:
        return []
    decoded = {
        f.name: _decode_column(recs, f, plan)
        for f in layout.fields
        if f.kind is not FieldKind.WEIGHTED
    }
    columns = [
        decoded[f.name] if f.name in decoded else _weighted_column(f, decoded)
        for f in layout.fields
    ]
    names = layout.names
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _weighted_column(f: FieldSpec, decoded: Mapping[str, list[Any]]) -> list[Any]:
    """A weighted field's values from its decoded inputs (the same float operations, in the
    same order, as :func:`decode`'s, so both give identical numbers)."""
    decimals = _weighted_decimals(f)
    total = np.zeros(len(decoded[f.inputs[0]]))
    missing = np.zeros(len(total), dtype=bool)
    for name, w in zip(f.inputs, f.weights, strict=True):
        x = np.array(decoded[name], dtype=np.float64)  # None -> NaN
        missing |= np.isnan(x)
        total = total + w * x
    pairs = zip(total.tolist(), missing.tolist(), strict=True)
    return [None if m else round(v, decimals) for v, m in pairs]


def _decode_column(recs: np.ndarray, f: FieldSpec, plan: _Plan) -> list[Any]:
    if f.kind is FieldKind.ENUM:
        word = np.zeros((len(recs), 8), dtype=np.uint8)
        word[:, : plan.enum_bytes] = recs["_enums"]
        codes = (word.view("<u8").ravel() >> np.uint64(plan.shifts[f.name])) & np.uint64(
            (1 << f.bits) - 1
        )
        lut = np.full(1 << f.bits, None, dtype=object)
        lut[: len(f.labels)] = f.labels
        return list(lut[codes.astype(np.intp)])
    col = recs[f.name]
    _, _, null = _SCALAR[f.kind]
    if f.kind is FieldKind.CNY:
        padded = np.zeros((len(recs), 4), dtype=np.uint8)
        padded[:, :3] = col
        codes = padded.view("<u4").ravel()
        missing = codes == null
        vals = (codes / _CENTS).astype(object)
    elif f.kind is FieldKind.CNY16:
        missing = col == null
        vals = col.astype(np.float64).astype(object)
    elif f.kind is FieldKind.DAYS8:
        missing = col == null
        codes = col.astype(np.int64)
        exact = codes < _DAYS8_EXACT
        vals = np.where(exact, codes, _DAYS8_EXACT + (codes - _DAYS8_EXACT) * _DAYS8_STEP)
        vals = vals.astype(object)
    elif f.kind is FieldKind.FLOAT32:
        x = col.astype(np.float64)
        missing = np.isnan(x)
        if f.decimals is not None:
            x = np.round(x, f.decimals)
        vals = x.astype(object)
    else:
        missing = col == null
        vals = (col / _SCALE[f.kind]).astype(object) if f.kind in _SCALE else col.astype(object)
    vals[missing] = None
    return list(vals)


# ------------------------------------------------------------------------------- users → groups


@overload
def group_of(user_id: int, n_groups: int) -> int: ...
@overload
def group_of(user_id: np.ndarray, n_groups: int) -> np.ndarray: ...
def group_of(user_id: int | np.ndarray, n_groups: int) -> int | np.ndarray:
    """The group (Redis hash, 0..n_groups-1) of pseudonymous user ids.

    ``fmix64(user_id) mod n_groups`` (murmur3's 64-bit finaliser): stable on every machine, and
    independent of :func:`strata.ids.bucket_of`, so one warehouse bucket spreads evenly over all
    groups and every writer touches every group a little.

    Args:
        user_id: one non-negative id (gives an int) or an int64 array (gives an int64 array).
        n_groups: number of groups of the version.

    Raises:
        ValueError: ``n_groups`` is not positive or an id is negative.
    """
    if n_groups <= 0:
        raise ValueError("n_groups must be positive")
    if isinstance(user_id, int | np.integer):
        z = int(user_id)
        if z < 0:
            raise ValueError("user ids must be non-negative")
        z ^= z >> 33
        z = (z * _FMIX_1) & _MASK_64
        z ^= z >> 33
        z = (z * _FMIX_2) & _MASK_64
        z ^= z >> 33
        return z % n_groups
    ids = np.asarray(user_id, dtype=np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError("user ids must be non-negative")
    mixed = ids.astype(np.uint64)
    shift = np.uint64(33)
    with np.errstate(over="ignore"):
        mixed ^= mixed >> shift
        mixed *= np.uint64(_FMIX_1)
        mixed ^= mixed >> shift
        mixed *= np.uint64(_FMIX_2)
        mixed ^= mixed >> shift
    return (mixed % np.uint64(n_groups)).astype(np.int64)


def expected_max_group_size(n_users: int, n_groups: int, tail: float = 1e-3) -> int:
    """A size that no group exceeds except with probability about ``tail``.

    Group sizes of a hash-spread id set are ~Poisson(n_users / n_groups); the result is the
    smallest k with ``n_groups * P(X > k) <= tail`` (a union bound over the groups). One
    oversized group only costs that group's compact encoding, so 1e-3 is plenty.
    """
    if n_users <= 0:
        return 0
    lam = n_users / n_groups
    hi = int(lam + 12 * math.sqrt(lam) + 40)  # the pmf beyond this is far below any tail
    j = np.arange(hi + 1, dtype=np.float64)
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(j[1:]))))
    pmf = np.exp(-lam + j * math.log(lam) - log_fact)
    survival = np.cumsum(pmf[::-1])[::-1] - pmf  # survival[k] = P(X > k)
    k = int(np.argmax(n_groups * survival <= tail))
    return min(k, n_users)


def n_groups_for(n_users: int, per_group: int = 100, max_entries: int = 128) -> int:
    """Number of groups for ``n_users``: a power of two with at most ``per_group`` users each
    on average, doubled until no group is likely to exceed ``max_entries`` (the server's
    ``hash-max-listpack-entries``; above it a group loses its compact encoding).

    >>> n_groups_for(1_000_000)
    16384
    """
    if per_group <= 0 or max_entries <= 0:
        raise ValueError("per_group and max_entries must be positive")
    n_groups = 1 << max(0, math.ceil(math.log2(max(1.0, n_users / per_group))))
    while expected_max_group_size(n_users, n_groups) > max_entries:
        n_groups *= 2
    return n_groups


#: Bytes of a packed group string's header and terminator in Redis (an sds of up to 64 KiB).
_SDS_OVERHEAD = 6
_ID_BYTES = 8


def packed_chunk_users(record_size: int, chunk_bytes: int = 8192) -> int:
    """Users per packed group string: as many ``8 + record_size``-byte entries as fit in a
    ``chunk_bytes`` allocation (a power of two: an exact jemalloc size class, so a full group
    wastes nothing; the store fills every group of a bucket but its last).

    >>> packed_chunk_users(22)
    272
    """
    if record_size <= 0 or chunk_bytes <= _SDS_OVERHEAD + _ID_BYTES + record_size:
        raise ValueError("chunk_bytes must hold at least one entry")
    return (chunk_bytes - _SDS_OVERHEAD) // (_ID_BYTES + record_size)


def packed_buckets_for(
    n_users: int, n_buckets: int = 1, chunk_users: int = 272, max_groups: int = 32
) -> int:
    """Buckets of a packed version: ``n_buckets`` (the warehouse's, so a writer of one
    warehouse bucket writes whole store buckets) times the power of two that keeps a bucket
    under ``max_groups`` group strings on average (its index stays a few hundred bytes).

    >>> packed_buckets_for(1_000_000, 256)
    256
    """
    if n_buckets <= 0 or chunk_users <= 0 or max_groups <= 0:
        raise ValueError("n_buckets, chunk_users and max_groups must be positive")
    k = 1
    while n_users / (n_buckets * k) > chunk_users * max_groups:
        k *= 2
    return n_buckets * k


def user_field(user_id: int) -> bytes:
    """The field key of one user inside its group: the id as 8 big-endian bytes."""
    return int(user_id).to_bytes(8, "big")


def user_fields(user_ids: np.ndarray) -> bytes:
    """The field keys of many users, back to back (8 bytes each)."""
    return np.asarray(user_ids, dtype=np.int64).astype(">i8").tobytes()


# ------------------------------------------------------------------------------ default layout


def _with_other(labels: Sequence[str]) -> tuple[str, ...]:
    return tuple(labels) if "other" in labels else (*labels, "other")


def snapshot_layout(
    tiers: Sequence[str] = TIERS,
    *,
    categories: Sequence[str] = CATEGORIES,
    channels: Sequence[str] = CHANNELS,
    regions: Sequence[str] = REGIONS,
    predictions: bool = False,
    rfm_weights: Sequence[float] | None = None,
) -> RecordLayout:
    """The record of a snapshot that is served online: the four tag groups of the segment
    lookup (basic, behaviour, value and, optionally, predictive), the tier, lifecycle stage,
    the rule that gave the tier and the key RFM inputs. 19 bytes, 23 with predictions; one
    less with ``rfm_weights`` (``rfm_score`` computed from ``rfm_r``/``rfm_f``/``rfm_m``).

    The fifteen enums take 43 bits of the first 6 bytes. Values are quantised to what a lookup
    needs (the exact values stay in the Parquet snapshot): percentile scores, probabilities and
    discount sensitivity in 1/200 steps (``unit8``), money in whole CNY (``cny16``: clipped at
    65,534 CNY, far above a grocery user's 90-day or lifetime spend), orders in 90 days as a
    ``uint8`` (clipped at 254), days since the last order as ``days8`` (exact below 200 days,
    beyond every recency band's threshold; 15-day steps after). Region, device, channel, age
    band and gender come from imported user attributes: a value outside the fixed labels
    encodes as ``other`` (``unknown`` for age band and gender), null stays null.

    Field names are the snapshot's column names, so ``encode(snapshot_table, layout)`` works.

    Args:
        tiers: tier labels (from the tier configuration).
        categories: top-category labels.
        channels: acquisition channel labels.
        regions: region labels; the last is where values outside them go.
        predictions: add ``churn_p``, ``repurchase_p`` and ``predicted_spend`` (CNY).
        rfm_weights: the tier rules' (recency, frequency, monetary) weights: ``rfm_score``
            is then not stored but computed at decode as their weighted sum of the stored
            (1/200-step) ranks, as precise as the stored score (``encode`` checks that the
            snapshot's score is exactly that sum). None: store ``rfm_score`` (``unit8``).
    """

    def enum(name: str, labels: Sequence[str], other: str | None = None) -> FieldSpec:
        return FieldSpec(name=name, kind=FieldKind.ENUM, labels=tuple(labels), other=other)

    def of(name: str, kind: FieldKind) -> FieldSpec:
        return FieldSpec(name=name, kind=kind)

    score = (
        of("rfm_score", FieldKind.UNIT8)
        if rfm_weights is None
        else FieldSpec(
            name="rfm_score",
            kind=FieldKind.WEIGHTED,
            inputs=("rfm_r", "rfm_f", "rfm_m"),
            weights=tuple(float(w) for w in rfm_weights),
        )
    )
    layout = RecordLayout(
        fields=(
            enum("tier", tiers),
            enum("lifecycle_stage", LIFECYCLE_STAGES),
            enum("top_category", categories),
            enum("price_sensitivity", PRICE_SENSITIVITIES),
            enum("active_slot", ACTIVE_SLOTS),
            enum("channel", _with_other(channels), other="other"),
            enum("tier_rule", TIER_RULES),
            # RFM base bands (strata.tiering.bands)
            enum("recency_band", RECENCY_BANDS),
            enum("frequency_band", FREQUENCY_BANDS),
            enum("spend_level", SPEND_LEVELS),
            enum("active_daytype", DAYTYPES),
            # basic attributes (null for logs without user attributes)
            enum("age_band", AGE_BANDS, other="unknown"),
            enum("gender", GENDERS, other="unknown"),
            enum("region", regions, other=regions[-1]),
            enum("device", _with_other(DEVICES), other="other"),
            # percentile-rank scores: 1/200 steps are finer than any tier cut uses
            of("rfm_r", FieldKind.UNIT8),
            of("rfm_f", FieldKind.UNIT8),
            of("rfm_m", FieldKind.UNIT8),
            score,
            of("recency_days", FieldKind.DAYS8),
            of("frequency_90d", FieldKind.UINT8),
            of("monetary_90d", FieldKind.CNY16),
            # value tags
            of("ltv_cny", FieldKind.CNY16),
            of("arpu_30d_cny", FieldKind.CNY16),
            of("discount_sensitivity", FieldKind.UNIT8),
        )
    )
    if predictions:
        layout = layout.extend(
            of("churn_p", FieldKind.UNIT8),
            of("repurchase_p", FieldKind.UNIT8),
            of("predicted_spend", FieldKind.CNY16),
        )
    return layout
