"""Time, once: the platform's local zone, day arithmetic on epoch milliseconds, and as-of.

Every timestamp is stored as UTC epoch milliseconds; days, weekdays, time-of-day slots and
as-of instants are *local* (UTC+:data:`LOCAL_UTC_OFFSET_HOURS`, China has no daylight saving).
An as-of is an exclusive instant: ``--as-of 1997-10-01`` means every event before 00:00 local
time on 1997-10-01.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, overload

import numpy as np

__all__ = [
    "AS_OF_HELP",
    "DAY_MS",
    "HOUR_MS",
    "LOCAL_OFFSET_MS",
    "LOCAL_TZ",
    "LOCAL_UTC_OFFSET_HOURS",
    "from_epoch_ms",
    "local_day",
    "local_iso",
    "local_midnight_ms",
    "parse_as_of",
    "to_epoch_ms",
]

#: Time zone of the platform's operations. Time-of-day and day-of-week features are computed
#: in this zone; timestamps are stored in UTC.
LOCAL_UTC_OFFSET_HOURS = 8
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
LOCAL_OFFSET_MS = LOCAL_UTC_OFFSET_HOURS * HOUR_MS
LOCAL_TZ = dt.timezone(dt.timedelta(hours=LOCAL_UTC_OFFSET_HOURS))
_EPOCH = dt.date(1970, 1, 1)
_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: The help text of every ``--as-of`` option.
AS_OF_HELP = (
    "As-of instant, exclusive: only events strictly before it count. An ISO date means its "
    f"local midnight (platform time UTC+{LOCAL_UTC_OFFSET_HOURS}): --as-of 1997-10-01 is "
    "everything up to 1997-09-30 23:59:59 local; a date-time without offset is local too."
)


def parse_as_of(text: str) -> dt.datetime:
    """An as-of instant from an ISO date or date-time (naive = local time), in UTC.

    Raises:
        ValueError: ``text`` is not an ISO date or date-time (the message names it).
    """
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO date or date-time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=LOCAL_TZ)
    return value.astimezone(dt.UTC)


def to_epoch_ms(value: dt.datetime) -> int:
    """UTC epoch milliseconds of an aware datetime (naive = local time)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=LOCAL_TZ)
    return (value - _EPOCH_UTC) // dt.timedelta(milliseconds=1)


def from_epoch_ms(ms: int) -> dt.datetime:
    """The local-time datetime of UTC epoch milliseconds."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=LOCAL_TZ)


def local_iso(ms: int) -> str:
    """ISO-8601 local time (seconds) of UTC epoch milliseconds."""
    return from_epoch_ms(ms).isoformat(timespec="seconds")


@overload
def local_day(ts_ms: int) -> int: ...
@overload
def local_day(ts_ms: np.ndarray) -> np.ndarray: ...
def local_day(ts_ms: Any) -> Any:
    """Local calendar day number (days since 1970-01-01 local) of UTC epoch milliseconds."""
    return (ts_ms + LOCAL_OFFSET_MS) // DAY_MS


def local_midnight_ms(day: dt.date) -> int:
    """UTC epoch milliseconds of 00:00 local time on ``day``."""
    return (day - _EPOCH).days * DAY_MS - LOCAL_OFFSET_MS
