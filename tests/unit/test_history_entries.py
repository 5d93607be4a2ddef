"""A user's history entries (strata.reports.history): order, changes and their rules."""

from __future__ import annotations

from typing import Any

from strata.reports.history import history_entries


def _row(tier: str, rule: str = "score_band", prev: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"tier": tier, "tier_rule": rule, "previous_tier": prev, "rfm_score": 0.5, **kw}


def test_changes_compare_with_the_older_entry() -> None:
    entries = history_entries(
        [
            ("v3", "2026-10-01", _row("churn_warning", "churn_warning", prev="potential")),
            ("v2", "2026-09-24", _row("potential", "hysteresis_hold", prev="potential")),
            ("v1", "2026-09-17", _row("potential", prev="high_value", recency_band="within_30d")),
        ]
    )
    assert [e["version"] for e in entries] == ["v3", "v2", "v1"]
    assert [e["from_tier"] for e in entries] == ["potential", "potential", "high_value"]
    assert [e["changed"] for e in entries] == [True, False, True]
    assert [e["changed_by"] for e in entries] == ["churn_warning", None, "score_band"]
    assert entries[2]["recency_band"] == "within_30d" and entries[0]["recency_band"] is None
    assert {e["source"] for e in entries} == {"snapshot"}


def test_a_user_new_to_the_oldest_snapshot_has_no_older_tier() -> None:
    (only,) = history_entries([("v1", None, _row("ordinary"))])
    assert only["from_tier"] is None and only["changed"] is None and only["changed_by"] is None


def test_the_live_entry_comes_first_and_compares_with_the_newest_snapshot() -> None:
    live = {"version": "v2", "tier": "high_value", "tier_rule": "score_band",
            "last_event_at": "2026-10-02T09:00:00+08:00", "rfm_score": 0.86}  # fmt: skip
    entries = history_entries([("v2", "2026-10-01", _row("potential"))], live)
    assert [e["source"] for e in entries] == ["live", "snapshot"]
    assert entries[0]["as_of"] == "2026-10-02T09:00:00+08:00"
    assert (entries[0]["from_tier"], entries[0]["changed"]) == ("potential", True)
    assert entries[0]["changed_by"] == "score_band" and entries[0]["rfm_score"] == 0.86
    (alone,) = history_entries([], live)  # a user only the live loop knows
    assert alone["changed"] is None
