"""The calendar campaigns run once per local date when `strata stream` crosses midnight."""

from __future__ import annotations

import datetime as dt

from jobs.stream import CampaignScheduler


def test_campaigns_run_once_when_the_local_date_changes_and_failures_do_not_stop_it() -> None:
    days = iter([dt.date(2026, 12, 30)] * 3 + [dt.date(2026, 12, 31)] * 3 + [dt.date(2027, 1, 1)])
    ran: list[dt.date] = []

    def run(day: dt.date) -> str:
        ran.append(day)
        if day.year == 2027:
            raise RuntimeError("no snapshot")
        return f"{day}: 5 entries"

    s = CampaignScheduler(run, today=lambda: next(days))
    said = [s.tick() for _ in range(6)]
    assert ran == [dt.date(2026, 12, 31), dt.date(2027, 1, 1)]
    assert said == [
        None,
        None,
        "2026-12-31: 5 entries",
        None,
        None,
        "2027-01-01: failed (no snapshot)",
    ]
    assert s.runs == ["2026-12-31: 5 entries", "2027-01-01: failed (no snapshot)"]
