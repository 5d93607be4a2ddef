"""`strata demo`: the main job end to end on local Ray, embedded Redis and ./data."""

from __future__ import annotations

import datetime as dt
import time

import redis
import typer

from jobs import generate
from jobs._runtime import console, ray_session, redis_session, summary_table
from strata.io.warehouse import Warehouse
from strata.settings import Settings


def command(
    data: str = typer.Option("./data", "--data", help="Data root."),
    users: int = typer.Option(50_000, "--users", min=100, help="Synthetic users to generate."),
    days: int = typer.Option(60, "--days", min=7, help="Days of history."),
    seed: int = typer.Option(0, "--seed"),
    fresh: bool = typer.Option(False, "--fresh", help="Regenerate even if data exists."),
) -> None:
    """Generate a sample, then run the pipeline on local Ray with an embedded Redis."""
    settings = Settings(data=data)
    t0 = time.perf_counter()
    wh = Warehouse(settings.data)
    with ray_session(settings):
        if fresh or not wh.exists() or wh.summary()["events"]["rows"] == 0:
            console.rule("[bold]1. generate synthetic grocery behaviour")
            generate.run(
                settings, users=users, days=days, seed=seed, end=dt.date.today(), overwrite=True
            )
        else:
            console.print(f"warehouse at {wh.root} already holds data (use --fresh to redo)")
        wh.reload()
        summary = wh.summary()
        console.rule("[bold]2. embedded Redis")
        with redis_session(settings) as url:
            client = redis.Redis.from_url(url)
            redis_version = client.info("server")["redis_version"]
            client.close()
            console.print(f"redis-server {redis_version} answering at {url}")
    console.print(
        summary_table(
            "strata demo",
            [
                ("data root", settings.data),
                ("users", summary["users"]["rows"]),
                ("events", summary["events"]["rows"]),
                ("buckets", summary["n_buckets"]),
                ("events from", summary["events"]["min_ts"]),
                ("events to", summary["events"]["max_ts"]),
                ("redis", f"redis-server {redis_version} (embedded)"),
                ("seconds", time.perf_counter() - t0),
            ],
        )
    )


if __name__ == "__main__":
    typer.run(command)
