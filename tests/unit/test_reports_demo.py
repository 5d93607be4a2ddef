"""`strata demo`'s weekly snapshots: which as-ofs it recomputes, oldest first, and that weeks
already on disk are kept on a rerun (the recompute itself is replaced by a recorder here; the
whole demo runs in tests/integration/test_serve_cli.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from jobs import demo
from strata.io.snapshots import SnapshotStore
from strata.settings import Settings
from strata.timeutil import LOCAL_TZ, to_epoch_ms

AS_OF = dt.datetime(2026, 12, 1, tzinfo=LOCAL_TZ)


def test_weekly_as_ofs_are_oldest_first() -> None:
    assert demo.weekly_as_ofs(AS_OF) == [
        AS_OF - dt.timedelta(days=21),
        AS_OF - dt.timedelta(days=14),
        AS_OF - dt.timedelta(days=7),
        AS_OF,
    ]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dt.datetime]:
    runs: list[dt.datetime] = []

    class Recorder:
        def __init__(self, settings: Settings, as_of: dt.datetime) -> None:
            self.as_of = as_of

        def run(self) -> Any:
            runs.append(self.as_of)
            return f"result {self.as_of.date()}"

    monkeypatch.setattr(demo, "RecomputeJob", Recorder)
    return runs


def test_history_skips_weeks_on_disk_and_always_redoes_today(
    settings: Settings, recorded: list[dt.datetime]
) -> None:
    store = SnapshotStore(settings.data)
    for days in (21, 0):  # a first run's oldest and newest snapshot
        at = AS_OF - dt.timedelta(days=days)
        store.write_manifest(f"v{days}", {"as_of_ms": to_epoch_ms(at), "as_of": at.isoformat()})
    job, result, done = demo.recompute_history(settings, AS_OF, days=60)
    assert recorded == [AS_OF - dt.timedelta(days=14), AS_OF - dt.timedelta(days=7), AS_OF]
    assert done == 3 and result == "result 2026-12-01" and job.as_of == AS_OF


def test_a_short_history_recomputes_fewer_weeks(
    settings: Settings, recorded: list[dt.datetime]
) -> None:
    demo.recompute_history(settings, AS_OF, days=14)  # a week of history before AS_OF - 7
    assert recorded == [AS_OF - dt.timedelta(days=7), AS_OF]
