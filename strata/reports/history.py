"""A user's tier history: "why did this user move?" answered from the retained snapshots.

:func:`history_entries` turns the user's row in each snapshot (newest first) and, when there
is one, the live overlay based on the newest snapshot into entries that each say the tier,
stage, score and rule, and whether the tier changed from the older entry (and by which rule).
The oldest retained entry compares with the ``previous_tier`` its snapshot stored (the tier in
a snapshot no longer retained); a user new to it has no older tier (``changed`` None).

Pure: the stdlib only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["BAND_FIELDS", "ENTRY_FIELDS", "history_entries"]

#: the RFM base bands (shown when the snapshot has them)
BAND_FIELDS: tuple[str, ...] = ("recency_band", "frequency_band", "spend_level")
#: fields copied from a snapshot row or overlay into an entry
ENTRY_FIELDS: tuple[str, ...] = (
    "tier",
    "tier_rule",
    "tier_explanation",
    "lifecycle_stage",
    "rfm_score",
    *BAND_FIELDS,
)


def _entry(source: str, version: str, as_of: str | None, row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"source": source, "version": version, "as_of": as_of}
    for name in ENTRY_FIELDS:
        out[name] = row.get(name)
    return out


def history_entries(
    snapshots: Sequence[tuple[str, str | None, Mapping[str, Any]]],
    live: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Entries newest first: the live one (if any), then one per snapshot holding the user.

    Args:
        snapshots: ``(version, as_of, row)`` of each snapshot holding the user, newest first;
            a row has the snapshot's ``tier``, ``tier_rule``, ``tier_explanation``,
            ``previous_tier``, ``lifecycle_stage``, ``rfm_score`` and the bands it has.
        live: the user's live overlay when it is based on the newest snapshot (the caller
            checks its version), else None.

    Returns:
        Dicts with ``source`` ("live" | "snapshot"), ``version``, ``as_of`` (the last live
        event's time for the live entry), the :data:`ENTRY_FIELDS`, ``from_tier`` (the older
        tier, None when unknown), ``changed`` (None when there is no older tier) and
        ``changed_by`` (the rule that gave the new tier, when it changed).
    """
    entries = [_entry("snapshot", v, at, row) for v, at, row in snapshots]
    older: list[str | None] = [e["tier"] for e in entries[1:]]
    if snapshots:
        older.append(snapshots[-1][2].get("previous_tier"))
    if live is not None:
        at = live.get("last_event_at")
        entries.insert(
            0, _entry("live", str(live.get("version")), at if isinstance(at, str) else None, live)
        )
        older.insert(0, entries[1]["tier"] if len(entries) > 1 else None)
    for entry, before in zip(entries, older, strict=True):
        entry["from_tier"] = before
        entry["changed"] = None if before is None else entry["tier"] != before
        entry["changed_by"] = entry["tier_rule"] if entry["changed"] else None
    return entries
