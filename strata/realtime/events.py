"""Validation of live events posted to ``POST /v1/events``: plain dicts in, wire events out.

The importer's rules (:mod:`strata.ingest.validate`) and reason texts
(:mod:`strata.ingest.rejects`) apply, checked per value with simple Python: a batch is at most
a thousand events and must validate in about a millisecond per hundred, so there is one
function per field and no model per event.

Each event is a JSON object with ``user_id`` (the platform's raw id, text or integer,
:data:`strata.serving.config.RAW_ID_PATTERN`), ``event_type`` (a warehouse type or one of the
importer's aliases), optional ``ts`` (ISO-8601 with ``Z`` or an offset, or epoch ms; default
now), optional ``event_id`` (:data:`strata.realtime.wire.EVENT_ID_PATTERN`) and the type's
fields as in :data:`strata.schema.EVENTS_SCHEMA`. Any other key is refused (no unknown, possibly
personal, data enters the stream). A batch with any invalid event is refused whole:
:func:`validate_events` returns every problem (index, field, reason).

Accepted events become wire events (:mod:`strata.realtime.wire`): the user id pseudonymised
with the API's key, ``ts`` and ``received_ms`` in epoch ms, canonical labels, and an
``event_id`` (the client's, else :func:`strata.realtime.wire.derived_event_id` of the
pseudonymised content, so the raw id never enters a hash that is stored).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strata.ids import pseudonymise_many
from strata.ingest.mapping import (
    CATEGORY_ALIASES,
    DEFAULT_MIN_TIME,
    EVENT_TYPE_ALIASES,
    MAX_FUTURE_MS,
    normalise_label,
)
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
)
from strata.ingest.timeparse import parse_instant_ms
from strata.realtime.wire import EVENT_ID_PATTERN, derived_event_id
from strata.schema import CATEGORIES, EVENT_TYPES, EventType
from strata.serving.config import RAW_ID_PATTERN

__all__ = [
    "EVENT_KEYS",
    "EventError",
    "ValidatedBatch",
    "min_event_ms",
    "validate_events",
]

#: keys an event may carry (the envelope plus the warehouse's event columns)
EVENT_KEYS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "event_type",
    "ts",
    "session_id",
    "item_id",
    "category",
    "query",
    "order_id",
    "amount_cny",
    "discount_cny",
    "coupon_id",
    "item_count",
    "categories",
    "rating",
)
_KEYS = frozenset(EVENT_KEYS)
_USER_RE = re.compile(RAW_ID_PATTERN)
_EVENT_ID_RE = re.compile(EVENT_ID_PATTERN)
_EVENT_TYPES: dict[str, str] = {v: v for v in EVENT_TYPES} | EVENT_TYPE_ALIASES
_CATEGORIES: dict[str, str] = {v: v for v in CATEGORIES} | CATEGORY_ALIASES
_ORDER = EventType.ORDER.value
_REVIEW = EventType.REVIEW.value
_INT64_MAX = (1 << 63) - 1
_INT16_MAX = (1 << 15) - 1
#: longest text accepted for ids and queries (the warehouse has no limit; a stream should)
MAX_TEXT = 128
MAX_QUERY = 256
MAX_CATEGORIES = 64
_MIN_MS = parse_instant_ms(DEFAULT_MIN_TIME)


def min_event_ms() -> int:
    """The earliest accepted event time (the importer's default ``min_time``), epoch ms."""
    return _MIN_MS


@dataclass(frozen=True)
class EventError:
    """One problem of one posted event: its 0-based ``index``, the ``field`` and why."""

    index: int
    field: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


@dataclass(frozen=True)
class ValidatedBatch:
    """A posted batch after validation: wire events (empty when any event is invalid) and
    every problem found."""

    events: list[dict[str, Any]]
    errors: list[EventError]


class _Bad(Exception):
    """A field's value is invalid (the reason is the message)."""


def _quoted(value: Any) -> str:
    return str(value)[:MAX_VALUE_IN_REASON]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _user(value: Any) -> str:
    if value is None or value == "":
        raise _Bad(MISSING_USER)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _USER_RE.match(value):
        raise _Bad("user id must be 1-64 letters, digits, _ or -")
    return value


def _event_type(value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _Bad(MISSING_EVENT_TYPE)
    if not isinstance(value, str):
        raise _Bad(f"unknown event type '{_quoted(value)}'")
    canonical = _EVENT_TYPES.get(value) or _EVENT_TYPES.get(normalise_label(value))
    if canonical is None:
        raise _Bad(f"unknown event type '{_quoted(value.strip())}'")
    return canonical


def _ts(value: Any, now_ms: int) -> int:
    if value is None:
        return now_ms
    if _is_number(value):
        if not math.isfinite(value):
            raise _Bad(UNPARSABLE_TIMESTAMP)
        ms = int(value)
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise _Bad(UNPARSABLE_TIMESTAMP) from None
        if parsed.tzinfo is None:
            # a naive time is ambiguous on a network API (local? UTC?): say which is wanted
            raise _Bad(f"{UNPARSABLE_TIMESTAMP}: ISO-8601 needs Z or an offset such as +08:00")
        try:
            ms = (parsed - _EPOCH) // _ONE_MS
        except OverflowError:
            raise _Bad(UNPARSABLE_TIMESTAMP) from None
    else:
        raise _Bad(UNPARSABLE_TIMESTAMP)
    if ms < _MIN_MS:
        raise _Bad(TIMESTAMP_TOO_EARLY)
    if ms >= now_ms + MAX_FUTURE_MS:
        raise _Bad(TIMESTAMP_TOO_LATE)
    return ms


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_MS = dt.timedelta(milliseconds=1)


def _category(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None  # a blank category is null, as in the importer
    if not isinstance(value, str):
        raise _Bad(f"unknown category '{_quoted(value)}'")
    canonical = _CATEGORIES.get(value) or _CATEGORIES.get(normalise_label(value))
    if canonical is None:
        raise _Bad(f"unknown category '{_quoted(value.strip())}'")
    return canonical


def _categories(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_CATEGORIES:
        raise _Bad(f"categories must be a list of at most {MAX_CATEGORIES} categories")
    out = []
    for item in value:
        cat = _category(item)
        if cat is not None:
            out.append(cat)
    return out


def _amount(value: Any) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value):
        raise _Bad(NON_NUMERIC_AMOUNT)
    if value < 0:
        raise _Bad(NEGATIVE_AMOUNT)
    return float(value)


def _discount(value: Any) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value):
        raise _Bad("non-numeric discount")
    if value < 0:
        raise _Bad("negative discount")
    return float(value)


def _text(limit: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or len(value) > limit:
            raise _Bad(f"must be text of at most {limit} characters")
        value = value.strip()
        return value or None

    return check


def _integer(lo: int, hi: int) -> Callable[[Any], int | None]:
    def check(value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise _Bad(f"must be an integer in {lo}..{hi}")
        return value

    return check


_rating_range = _integer(1, 5)


def _rating(value: Any) -> int | None:
    try:
        return _rating_range(value)
    except _Bad:
        raise _Bad("rating must be an integer 1-5") from None


def _event_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _EVENT_ID_RE.match(value):
        raise _Bad("event_id must be 1-64 letters, digits or ._- (starting alphanumeric)")
    return value


#: optional fields: key -> checker (None drops the key)
_OPTIONAL: dict[str, Callable[[Any], Any]] = {
    "session_id": _integer(0, _INT64_MAX),
    "item_id": _integer(0, _INT64_MAX),
    "category": _category,
    "query": _text(MAX_QUERY),
    "order_id": _text(MAX_TEXT),
    "amount_cny": _amount,
    "discount_cny": _discount,
    "coupon_id": _text(MAX_TEXT),
    "item_count": _integer(0, _INT16_MAX),
    "categories": _categories,
    "rating": _rating,
}


def _one(raw: Any, index: int, now_ms: int, errors: list[EventError]) -> dict[str, Any] | None:
    """One event checked field by field (every bad field reported); None when invalid."""
    if not isinstance(raw, dict):
        errors.append(EventError(index, "(event)", "must be a JSON object"))
        return None
    n_errors = len(errors)
    out: dict[str, Any] = {}
    for key in raw:
        if key not in _KEYS:
            errors.append(EventError(index, str(key)[:MAX_VALUE_IN_REASON], "unknown field"))
    try:
        out["user_id"] = _user(raw.get("user_id"))
    except _Bad as exc:
        errors.append(EventError(index, "user_id", str(exc)))
    try:
        out["ts"] = _ts(raw.get("ts"), now_ms)
    except _Bad as exc:
        errors.append(EventError(index, "ts", str(exc)))
    event_type: str | None = None
    try:
        event_type = out["event_type"] = _event_type(raw.get("event_type"))
    except _Bad as exc:
        errors.append(EventError(index, "event_type", str(exc)))
    for key, check in _OPTIONAL.items():
        value = raw.get(key)
        if value is None:
            continue
        try:
            checked = check(value)
        except _Bad as exc:
            errors.append(EventError(index, key, str(exc)))
            continue
        if checked is not None:
            out[key] = checked
    try:
        event_id = _event_id(raw.get("event_id"))
        if event_id is not None:
            out["event_id"] = event_id
    except _Bad as exc:
        errors.append(EventError(index, "event_id", str(exc)))
    if event_type == _ORDER:
        if "amount_cny" not in out and "amount_cny" not in {e.field for e in errors[n_errors:]}:
            errors.append(EventError(index, "amount_cny", MISSING_AMOUNT))
        if "categories" not in out and "category" in out:
            out["categories"] = [out["category"]]  # as the importer fills it for orders
    elif event_type == _REVIEW and raw.get("rating") is None:
        errors.append(EventError(index, "rating", "missing rating (an integer 1-5)"))
    return out if len(errors) == n_errors else None


def validate_events(
    events: list[Any], *, key: bytes, now_ms: int, received_ms: int | None = None
) -> ValidatedBatch:
    """Check a posted batch and turn it into wire events, or list every problem.

    Args:
        events: the ``events`` list of the body, as parsed JSON.
        key: the pseudonymisation key (the API's, same as the importer's).
        now_ms: the time of the request: the default ``ts`` and the base of the upper time
            bound (``now + 1 day``, exclusive, like the importer's default ``max_time``).
        received_ms: the ``received_ms`` envelope value (default ``now_ms``).

    Returns:
        the wire events in input order (pseudonymised ``user_id``, ``event_id`` set), or no
        events and every problem found when any event is invalid.
    """
    errors: list[EventError] = []
    checked = [_one(raw, i, now_ms, errors) for i, raw in enumerate(events)]
    if errors:
        return ValidatedBatch([], errors)
    good = [e for e in checked if e is not None]
    pseudo = pseudonymise_many([e["user_id"] for e in good], key).tolist()
    received = now_ms if received_ms is None else received_ms
    for event, uid in zip(good, pseudo, strict=True):
        event["user_id"] = uid
        if "event_id" not in event:
            event["event_id"] = derived_event_id(event)
        event["received_ms"] = received
    return ValidatedBatch(good, [])
