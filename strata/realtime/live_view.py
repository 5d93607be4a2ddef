"""What a segment lookup shows of live state: the live overlay over the snapshot record, and
the unexpired dynamic tags.

The stream workers keep ``{ns}:rt:live:{user}`` (JSON: ``version``, the snapshot version it is
based on, and the live ``tier``, ``lifecycle_stage``, RFM scores and inputs, ``last_event_ms``,
``last_event_at``, the RFM base bands and value tags a live order changes) and
``{ns}:rt:tags:{user}`` (tag -> expiry epoch ms). An overlay applies only
when it is based on the very version the lookup read: after a newer recompute is published it
is stale (the recompute covers the events it was built from) and the snapshot answers alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from strata.realtime.live import LIVE_TAG_KEYS, OVERLAY_KEYS

__all__ = [
    "LIVE_FIELDS",
    "SOURCE_LIVE",
    "SOURCE_SNAPSHOT",
    "live_tags",
    "merge_live",
    "parse_overlay",
]

#: overlay fields that replace the snapshot record's: tier, lifecycle stage, RFM scores and
#: inputs, and the tags a live order changes (RFM base bands, LTV, ARPU 30d). An overlay
#: written before those tags existed lacks them: the snapshot's stay.
LIVE_FIELDS: tuple[str, ...] = (*OVERLAY_KEYS[2:11], *LIVE_TAG_KEYS)
SOURCE_LIVE = "live"
SOURCE_SNAPSHOT = "snapshot"


def parse_overlay(raw: bytes | str | None) -> dict[str, Any] | None:
    """An overlay value as a dict (None when absent or not a JSON object with a version)."""
    if not raw:
        return None
    try:
        overlay = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(overlay, dict) or not isinstance(overlay.get("version"), str):
        return None
    return overlay


def merge_live(
    record: dict[str, Any] | None, overlay: Mapping[str, Any] | None, version: str
) -> tuple[dict[str, Any] | None, str, str | None]:
    """The record a lookup answers with.

    Args:
        record: the snapshot record of ``version`` (None: the snapshot lacks the user).
        overlay: the parsed live overlay, if any.
        version: the snapshot version the lookup read.

    Returns:
        ``(record, source, last_event_at)``: with an overlay based on ``version`` (and a tier),
        the record with the overlay's tier, lifecycle stage and scores (a new record for a user
        the snapshot lacks), ``"live"`` and the overlay's ``last_event_at``; else the record
        unchanged (None stays None), ``"snapshot"`` and None.
    """
    if overlay is None or overlay.get("version") != version or not overlay.get("tier"):
        return record, SOURCE_SNAPSHOT, None
    merged = dict(record) if record is not None else {}
    for name in LIVE_FIELDS:
        if name in overlay:
            merged[name] = overlay[name]
    at = overlay.get("last_event_at")
    return merged, SOURCE_LIVE, at if isinstance(at, str) else None


def live_tags(tags: Mapping[Any, Any] | None, now_ms: int) -> list[str]:
    """Names of the dynamic tags whose expiry (epoch ms) is after ``now_ms``, sorted."""
    out = []
    for name, expiry in (tags or {}).items():
        try:
            until = int(expiry)
        except ValueError:
            continue
        if until > now_ms:
            out.append(name.decode() if isinstance(name, bytes) else name)
    return sorted(out)
