"""`strata campaigns run`: the calendar rules of one date, on demand (``strata stream`` runs
them itself at local midnight).

For each calendar rule due on the date (e.g. ``festival_eve`` the day before a festival) it
selects the users of the current snapshot its segment conditions admit and appends one
internal ``_campaign`` entry per user to that user's partition stream; the stream workers
decide and issue (cooldowns, caps, budgets, idempotency) like for any rule. Entry ids are
``c.{rule}.{festival}.{date}.{user}``, so a second run appends nothing, and the action key
(rule, user, festival date) stops a second issue even after the dedupe window.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import typer
from rich.progress import TaskID

from jobs._errors import CommandError, run_command
from jobs._runtime import console, progress, redis_session, summary_table
from strata.config import load_calendar
from strata.io.event_log import EventAppender
from strata.io.segment_store import SegmentStore
from strata.io.snapshots import SnapshotStore
from strata.realtime.stream_config import load_stream_config
from strata.realtime.triggers import campaigns_due, load_triggers, target_tiers
from strata.realtime.wire import CAMPAIGN_EVENT
from strata.settings import Settings
from strata.tiering.tiers import load_tier_rules

_CHUNK = 1000


@dataclass
class CampaignResult:
    """What one run appended."""

    date: str
    rules: list[str] = field(default_factory=list)
    targeted: int = 0
    appended: int = 0
    duplicates: int = 0
    version: str | None = None


def run_campaigns(
    settings: Settings,
    date: dt.date,
    *,
    redis_url: str,
    config_dir: str | None = None,
    show_progress: bool = False,
) -> CampaignResult:
    """Append the campaign entries of ``date`` (see the module docstring).

    Raises:
        CommandError: no snapshot is published (nothing to target).
    """
    rules = load_triggers(config_dir)
    due = campaigns_due(rules, load_calendar(config_dir), date)
    result = CampaignResult(date.isoformat(), rules=[f"{r} ({f} {d})" for r, f, d in due])
    if not due:
        return result
    segments = SegmentStore(redis_url, namespace=settings.redis_namespace)
    try:
        version = segments.current()
    finally:
        segments.close()
    if version is None:
        raise CommandError("no snapshot is published: run `strata recompute` first")
    result.version = version
    table = SnapshotStore(settings.data).read(version, columns=["user_id", "tier"])
    tier_names = load_tier_rules(config_dir).tier_names
    appender = EventAppender(redis_url, settings.redis_namespace, load_stream_config(config_dir))
    now_ms = time.time_ns() // 1_000_000
    try:
        for rule_name, festival, festival_date in due:
            rule = rules.rule(rule_name)
            assert rule is not None
            tiers = target_tiers(rule, tier_names)
            ids = table.column("user_id")
            if tiers is not None:
                ids = ids.filter(pc.is_in(table.column("tier"), pa.array(tiers, pa.string())))
            users = np.asarray(ids.to_numpy())
            result.targeted += len(users)
            with progress() if show_progress else _NoBar() as bar:
                task = bar.add_task(f"{rule_name} ({festival} {festival_date})", total=len(users))
                for start in range(0, len(users), _CHUNK):
                    chunk = users[start : start + _CHUNK].tolist()
                    events = [
                        {
                            "event_id": f"c.{rule_name}.{festival}.{date.isoformat()}.{u}"[:64],
                            "user_id": int(u),
                            "event_type": CAMPAIGN_EVENT,
                            "ts": now_ms,
                            "received_ms": now_ms,
                            "rule": rule_name,
                            "date": date.isoformat(),
                            "festival": festival,
                        }
                        for u in chunk
                    ]
                    res = appender.append(events)
                    while res.refused:  # backpressure: wait for the workers, never drop
                        time.sleep(1.0)
                        res = appender.append(events)
                    result.appended += res.accepted
                    result.duplicates += res.duplicates
                    bar.advance(task, len(chunk))
    finally:
        appender.close()
    return result


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: object, **kwargs: object) -> TaskID:
        return TaskID(0)

    def advance(self, *args: object) -> None:
        return None


def run(
    data: str = typer.Option("./data", "--data", envvar="STRATA_DATA", help="Data root."),
    date: str = typer.Option(
        ..., "--date", help="The business date (YYYY-MM-DD, local calendar) to run."
    ),
) -> None:
    """Run the calendar rules (e.g. festival_eve) of one date now; running twice issues
    nothing twice."""
    try:
        day = dt.date.fromisoformat(date)
    except ValueError:
        raise typer.BadParameter(
            f"not a date: {date!r} (use YYYY-MM-DD)", param_hint="--date"
        ) from None
    settings = Settings(data=data)
    t0 = time.perf_counter()
    with redis_session(settings) as url:
        result = run_campaigns(settings, day, redis_url=url, show_progress=True)
    console.print(
        summary_table(
            "strata campaigns run",
            [
                ("date", result.date),
                ("calendar rules due", ", ".join(result.rules) or "none"),
                ("snapshot version", result.version or "-"),
                ("users targeted", result.targeted),
                ("entries appended", result.appended),
                ("already appended before", result.duplicates),
                ("seconds", round(time.perf_counter() - t0, 2)),
            ],
        )
    )
    if result.appended:
        console.print("the stream workers issue the actions (`strata stream` must be running)")


app = typer.Typer(no_args_is_help=True)
app.command("run", help=run.__doc__)(run)

if __name__ == "__main__":
    run_command(run)
