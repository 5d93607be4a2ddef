"""`strata demo`: the main job end to end on local Ray, embedded Redis and ./data."""

from __future__ import annotations

import datetime as dt
import time

import typer

from jobs import _tiers_report as tiers_report
from jobs import generate
from jobs._errors import run_command
from jobs._recompute_report import RecomputeResult, print_result
from jobs._runtime import console, ray_session, redis_session, summary_table
from jobs.recompute import RecomputeJob
from jobs.serve import run_server
from strata.ids import pseudonymise
from strata.io.keys import load_pseudonym_key
from strata.io.segment_store import SegmentStore
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from strata.reports import frames
from strata.settings import Settings
from strata.tiering.scoring import RecomputeConfig
from strata.timeutil import LOCAL_TZ, to_epoch_ms

#: the generator's first platform id (``strata.synth.raw_user_ids``): in every demo sample
DEMO_USER = "10000001"
#: the demo's weekly snapshots: as-of minus these days, oldest first (the last is today's)
HISTORY_DAYS: tuple[int, ...] = (21, 14, 7, 0)


def weekly_as_ofs(as_of: dt.datetime, days: tuple[int, ...] = HISTORY_DAYS) -> list[dt.datetime]:
    """The as-ofs of the demo's weekly snapshots, oldest first (local midnights)."""
    return [as_of - dt.timedelta(days=d) for d in sorted(days, reverse=True)]


def recompute_history(
    settings: Settings, as_of: dt.datetime, days: int
) -> tuple[RecomputeJob, RecomputeResult, int]:
    """Recompute and publish the weekly snapshots oldest first, so the newest is current.

    Earlier weeks that already have a snapshot (a second demo run) are kept, not redone;
    today's is always recomputed. Weeks with less than a week of history before them are
    skipped (a short ``--days``).

    Returns:
        today's job, its result and the number of snapshots recomputed.
    """
    snapshots = SnapshotStore(settings.data)
    have = {int(snapshots.manifest(v)["as_of_ms"]) for v in snapshots.versions()}
    as_ofs = [a for a in weekly_as_ofs(as_of) if (as_of - a).days <= days - 7]
    done = 0
    for at in as_ofs[:-1]:
        if to_epoch_ms(at) in have:
            continue
        console.rule(f"[bold]2. recompute the weekly snapshot as of {at.isoformat()}")
        RecomputeJob(settings, at).run()
        done += 1
    console.rule(f"[bold]2. recompute features and tiers as of {as_of.isoformat()}")
    job = RecomputeJob(settings, as_of)
    return job, job.run(), done + 1


def command(
    data: str = typer.Option("./data", "--data", envvar="STRATA_DATA", help="Data root."),
    users: int = typer.Option(50_000, "--users", min=100, help="Synthetic users to generate."),
    days: int = typer.Option(60, "--days", min=7, help="Days of history."),
    seed: int = typer.Option(0, "--seed"),
    fresh: bool = typer.Option(False, "--fresh", help="Regenerate even if data exists."),
    serve: bool = typer.Option(
        True, "--serve/--no-serve", help="End with the API running (demo key) until Ctrl-C."
    ),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="API port."),
) -> None:
    """Generate a sample, recompute weekly tier snapshots (as of today and 7, 14, 21 days
    before) on local Ray, publish them to an embedded Redis, report the tiers over them and
    serve them over HTTP (with the demo API key) until Ctrl-C."""
    settings = Settings(data=data)
    # configs first: a typo fails here, before Ray starts
    generate.load_generator_config()
    RecomputeConfig.load()
    tiers_report.default_spec(30)
    t0 = time.perf_counter()
    wh = Warehouse(settings.data)
    today = dt.datetime.now(LOCAL_TZ).date()
    frames.quiet_workers()  # the tier report runs Modin on this Ray
    with ray_session(settings):
        if fresh or not wh.exists() or wh.summary()["events"]["rows"] == 0:
            console.rule("[bold]1. generate synthetic grocery behaviour")
            generate.run(settings, users=users, days=days, seed=seed, end=today, overwrite=True)
        else:
            console.print(f"warehouse at {wh.root} already holds data (use --fresh to redo)")
        wh.reload()
        summary = wh.summary()
        end = dt.datetime.fromisoformat(summary["events"]["max_ts"]).astimezone(LOCAL_TZ)
        as_of = dt.datetime.combine(end.date() + dt.timedelta(days=1), dt.time(), LOCAL_TZ)
        job, result, recomputed = recompute_history(settings, as_of, days)
        t_report = time.perf_counter()
        console.rule("[bold]3. tier report over the weekly snapshots (Modin on Ray)")
        report = tiers_report.run(settings, "modin").report
        report_s = time.perf_counter() - t_report
    console.rule("[bold]4. online lookup from Redis")
    key = load_pseudonym_key(settings)
    with redis_session(settings) as url:
        store = SegmentStore(url, namespace=settings.redis_namespace)
        found = store.get(pseudonymise(DEMO_USER, key))
        store.close()
    if found is not None:
        version, record = found
        console.print(f"platform user {DEMO_USER} in version {version}: {record}")
    console.print(
        summary_table(
            "strata demo",
            [
                ("data root", settings.data),
                ("users", summary["users"]["rows"]),
                ("events", summary["events"]["rows"]),
                ("events from", summary["events"]["min_ts"]),
                ("events to", summary["events"]["max_ts"]),
                ("snapshot version (current in Redis)", result.version),
                ("weekly snapshots in the report", len(report.snapshots)),
                ("snapshots recomputed now", recomputed),
                ("tier report version", report.report_version),
                ("tier report seconds", report_s),
                ("redis", settings.redis_url or f"embedded, persisted in {settings.data}/redis"),
                ("seconds", time.perf_counter() - t0),
            ],
        )
    )
    print_result(result, job.config.tiers.tier_names)
    if serve:
        console.rule("[bold]5. segment API (FastAPI on Ray Serve, demo key) and the real-time loop")
        run_server(settings, port=port, demo=True, example_user=DEMO_USER, stream_workers=2)


if __name__ == "__main__":
    run_command(command)
