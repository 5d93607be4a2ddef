"""Shared orchestration helpers of the jobs: Ray and Redis sessions, console output."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from strata.io.redis_server import EmbeddedRedis
from strata.settings import Settings

console = Console(stderr=False)


@contextlib.contextmanager
def ray_session(settings: Settings, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to the Ray cluster in settings (or the one ``ray job submit`` started us in),
    else start a local Ray; shut down only what this call started.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_cpus or settings.num_cpus
        kwargs["include_dashboard"] = False
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ray.init(**kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def redis_session(settings: Settings) -> Iterator[str]:
    """Yield a Redis URL: ``STRATA_REDIS_URL``, else an embedded redis-server for this run.

    With a local data root the embedded server keeps its dataset in ``<data>/redis/`` between
    runs, so what `strata recompute` published is there for `strata serve` and `rollback`.
    """
    if settings.redis_url:
        yield settings.redis_url
        return
    persist = None if "://" in settings.data else os.path.join(settings.data, "redis")
    with EmbeddedRedis(persist_dir=persist) as server:
        yield server.url


def progress() -> Progress:
    """The progress bar every long job uses."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def summary_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    """A two-column summary table (what, value) printed at the end of a job."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in rows:
        if isinstance(value, float):
            value = f"{value:,.2f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        table.add_row(name, str(value))
    return table
