"""Time parsing of imported logs: event times to UTC epoch milliseconds, vectorised.

Formats (the mapping's ``time_format``): ``iso`` (default) accepts ISO-8601 dates and
date-times; those with ``Z`` or an offset (``+08:00``, ``+0800``, ``+08``) are honoured, naive
ones are platform local time (UTC+:data:`strata.timeutil.LOCAL_UTC_OFFSET_HOURS`). ``epoch`` /
``epoch_ms`` are seconds / milliseconds since 1970 UTC. Anything with a ``%`` is a strptime
format (``%Y%m%d``); with ``%z`` its offset is honoured, otherwise it is local time. Timestamps
already typed in Parquet are taken as they are (naive ones as local time).

Parsing is vectorised with ``pyarrow.compute``; Python runs only as a fallback for the values
Arrow cannot parse (other ISO shapes, 30 February), applied to those values alone, each
distinct value once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from strata.ingest._arrays import as_array, count_true, is_true, parse_number, trimmed_text
from strata.timeutil import LOCAL_OFFSET_MS, LOCAL_TZ

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: ISO-8601 extended shapes Arrow's cast parses, with fields in range (years 1700-2199 fit a
#: nanosecond cast): naive, and with a zone after the time. Only a day 29-31 may still be
#: past the end of its month.
_ISO_DATE = r"^(1[7-9][0-9]{2}|2[01][0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_ISO_TIME = r"[T ]([01][0-9]|2[0-3])(:[0-5][0-9](:[0-5][0-9](\.[0-9]{1,9})?)?)?"
_ISO_NAIVE_RE = _ISO_DATE + "(" + _ISO_TIME + ")?$"
_ISO_ZONED_RE = _ISO_DATE + _ISO_TIME + r"(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)$"
_LATE_DAY_RE = r"^.{8}(29|3[01])"


def parse_instant_ms(text: str) -> int:
    """Epoch ms of a range bound: an ISO date (its local midnight) or date-time (naive = local
    time, UTC+:data:`strata.timeutil.LOCAL_UTC_OFFSET_HOURS`; ``Z`` and offsets honoured).

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
    return t.astimezone(LOCAL_TZ).isoformat(timespec=spec)


def _datetime_ms(t: dt.datetime) -> float | None:
    """Epoch ms of a Python datetime (naive = local time); None when out of range."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=LOCAL_TZ)
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
    return out if ts.type.tz is not None else pc.subtract(out, float(LOCAL_OFFSET_MS))


def _real_dates(s: pa.Array, shaped: pa.Array) -> pa.Array:
    """``shaped``, less the values whose day 29-31 is past the end of the month.

    Arrow's strptime rolls 30 February over to 1 March, so a real date is one that keeps its
    day; only the values with a late day are checked.
    """
    late = pc.and_(shaped, is_true(pc.match_substring_regex(s, _LATE_DAY_RE)))
    if count_true(late) == 0:
        return shaped
    idx = np.flatnonzero(late.to_numpy(zero_copy_only=False))
    sub = s.take(pa.array(idx))
    date = pc.strptime(
        pc.utf8_slice_codeunits(sub, 0, 10), format="%Y-%m-%d", unit="s", error_is_null=True
    )
    day = pc.cast(pc.utf8_slice_codeunits(sub, 8, 10), pa.int8())
    keeps = is_true(pc.equal(pc.day(date), day)).to_numpy(zero_copy_only=False)
    out = shaped.to_numpy(zero_copy_only=False).copy()
    out[idx] = keeps
    return pa.array(out)


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
    n_blank = count_true(blank)
    values = pc.if_else(blank, null, s) if n_blank else s
    sample = values.take(pa.array(np.linspace(0, len(s) - 1, min(len(s), 256), dtype=np.int64)))
    sample = sample.drop_null()
    for regex, to in ((_ISO_NAIVE_RE, _NAIVE_NS), (_ISO_ZONED_RE, _ZONED_NS)):
        if len(sample) and pc.all(pc.match_substring_regex(sample, regex)).as_py():
            try:
                return _timestamp_ms(values.cast(to))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                break
    naive = is_true(pc.match_substring_regex(s, _ISO_NAIVE_RE))
    zoned = is_true(pc.match_substring_regex(s, _ISO_ZONED_RE))
    valid = _real_dates(s, pc.or_(naive, zoned))
    out: pa.Array = pa.nulls(len(s), pa.float64())
    for shape, to in ((naive, _NAIVE_NS), (zoned, _ZONED_NS)):
        mask = pc.and_(shape, valid)
        n_mask = count_true(mask)
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
    same = is_true(pc.equal(pc.strftime(parsed, format=time_format), s))
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


def parse_time_ms(col: pa.Array | pa.ChunkedArray, time_format: str) -> pa.Array:
    """Epoch milliseconds (UTC, float64) of a time column; null where unparsable.

    Args:
        col: strings, or typed timestamps/dates (taken as they are, naive = local time), or
            numbers (``epoch`` / ``epoch_ms``, or cast to text for a strptime format).
        time_format: ``iso``, ``epoch``, ``epoch_ms`` or a strptime format.
    """
    arr = as_array(col)
    t = arr.type
    if pa.types.is_timestamp(t):
        return _timestamp_ms(arr)
    if pa.types.is_date(t):
        return _timestamp_ms(arr.cast(pa.timestamp("ms")))
    if time_format in ("epoch", "epoch_ms"):
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
            num = arr.cast(pa.float64())
        else:
            num = parse_number(trimmed_text(arr))
        num = pc.if_else(is_true(pc.is_finite(num)), num, pa.scalar(None, pa.float64()))
        return pc.multiply(num, 1000.0) if time_format == "epoch" else num
    s = trimmed_text(arr)
    if time_format == "iso":
        return _parse_iso_ms(s)
    return _parse_strptime_ms(s, time_format)
