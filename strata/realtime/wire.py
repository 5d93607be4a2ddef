"""The wire format of a live event on the partition streams, and how events are partitioned.

An event travels as one JSON object (orjson bytes) in the stream entry's ``e`` field, with the
warehouse's column names (:data:`strata.schema.EVENTS_SCHEMA`) and a few envelope keys::

    {"event_id": "c1f0...", "user_id": 4711..., "event_type": "add_to_cart",
     "ts": 1764547200000, "received_ms": 1764547200123, "category": "fruit", ...}

``user_id`` is already pseudonymised (int64); ``ts`` and ``received_ms`` are epoch ms. Only
fields that are set are present. ``event_id`` is the client's id when given, else derived from
the content (:func:`derived_event_id`), so posting the same batch twice appends nothing new.

Internal entries (the calendar campaigns) use event types starting with ``_``: the rule workers
act on them, the warehouse sink skips them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

from strata.ids import bucket_of
from strata.schema import EVENTS_SCHEMA

__all__ = [
    "CAMPAIGN_EVENT",
    "ENVELOPE_KEYS",
    "EVENT_FIELDS",
    "EVENT_ID_PATTERN",
    "check_event_id",
    "decode_event",
    "derived_event_id",
    "encode_event",
    "is_internal",
    "partition_of",
]

#: event type of a calendar-campaign entry: {"rule", "date"} plus the user (never sunk)
CAMPAIGN_EVENT = "_campaign"
#: envelope keys that are not warehouse columns
ENVELOPE_KEYS: frozenset[str] = frozenset({"event_id", "received_ms", "rule", "date", "festival"})
#: the warehouse's event columns (what the sink writes)
EVENT_FIELDS: tuple[str, ...] = tuple(EVENTS_SCHEMA.names)
#: a client event id: 1-64 letters, digits and ``._-`` (no ``:`` so it can be a key part)
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_EVENT_ID_RE = re.compile(EVENT_ID_PATTERN)


def check_event_id(event_id: str) -> str:
    """``event_id`` if valid, else ValueError naming the rule."""
    if not _EVENT_ID_RE.match(event_id):
        raise ValueError("event_id must be 1-64 letters, digits or ._- (starting alphanumeric)")
    return event_id


def derived_event_id(event: Mapping[str, Any]) -> str:
    """A content hash of an event without a client id: same content, same id (24 hex)."""
    body = {k: v for k, v in event.items() if k not in ("event_id", "received_ms")}
    digest = hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=12)
    return "d" + digest.hexdigest()[1:]


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The entry value of one event (nulls dropped)."""
    return orjson.dumps({k: v for k, v in event.items() if v is not None})


def decode_event(raw: bytes) -> dict[str, Any]:
    """One event from its entry value.

    Raises:
        ValueError: not a JSON object with ``user_id`` (int), ``event_type`` (str) and
            ``ts`` (int).
    """
    event = orjson.loads(raw)
    if not isinstance(event, dict):
        raise ValueError("entry is not a JSON object")
    if not isinstance(event.get("user_id"), int):
        raise ValueError("user_id missing or not an integer")
    if not isinstance(event.get("event_type"), str):
        raise ValueError("event_type missing or not a string")
    if not isinstance(event.get("ts"), int):
        raise ValueError("ts missing or not epoch ms")
    return event


def is_internal(event: Mapping[str, Any]) -> bool:
    """True for internal entries (campaigns) that the warehouse sink skips."""
    return str(event.get("event_type", "")).startswith("_")


def partition_of(user_id: int, partitions: int) -> int:
    """The stream partition of a (pseudonymised) user: the user's bucket among
    ``partitions`` buckets, with the warehouse's bucket hash."""
    return int(bucket_of(user_id, partitions))
