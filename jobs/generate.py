"""``strata generate``: synthetic grocery behaviour into the warehouse, sharded over Ray.

Two stages of Ray tasks (:mod:`actors.generator_shard`), so the driver holds per-range counts,
never per-user arrays: one task per range of raw ids pseudonymises it and writes it by bucket
to a scratch file in the run's staging folder (:mod:`strata.io.user_ranges`); then one task
per bucket reads its rows of each range file, runs :func:`strata.synth.generate_bucket` and
writes the bucket's events, users and ground-truth parts. The driver commits all parts in one
manifest replace, so a failed run leaves the warehouse as it was (the scratch goes with the
staging folder, at the end and on failure). Ground truth (persona, next-month orders and
spend, churn) goes to ``<data>/truth/users.parquet``, outside the warehouse.

With ``--experiment NAME`` the run also simulates that experiment of configs/experiments.yaml
with the true effect of generator.yaml ``experiments.NAME`` (:mod:`strata.synth.experiment`):
its exposures are committed to the ``exposures`` table with the rest, and the effect really
planted goes to ``<data>/truth/experiments.json`` as ``{NAME: {"arm", "baseline", "metric",
"relative_effect"}}``.
"""

from __future__ import annotations

import datetime as dt
import resource
import time
import uuid
from typing import Annotated, Any

import numpy as np
import typer

from actors.generator_shard import (
    HORIZON_DAYS,
    ShardResult,
    generate_shard,
    generate_shard_task,
    pseudonymise_range,
    truth_part,
)
from jobs._errors import BucketTaskError, run_command
from jobs._generate_report import GenerateResult, summary_rows
from jobs._runtime import console, map_buckets, ray_session, summary_table
from strata.config import ConfigError, load_calendar
from strata.experiments.config import load_experiments
from strata.io.keys import load_pseudonym_key
from strata.io.paths import worker_root
from strata.io.truth import TruthFiles
from strata.io.user_ranges import UserRangeFiles
from strata.io.warehouse import TABLES, Warehouse, WriteResult, resolve
from strata.schema import EVENT_TYPES
from strata.settings import Settings
from strata.synth import (
    RANGE_USERS,
    bucket_offsets,
    id_ranges,
    load_generator_config,
    truth_schema,
    window_start,
)
from strata.synth.experiment import (
    ExperimentTruth,
    merge_outcomes,
    plan_from_config,
    truth_document,
)


class GenerateError(RuntimeError):
    """Generation failed; nothing was committed."""


def _rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _prepare_warehouse(
    settings: Settings, overwrite: bool
) -> tuple[Warehouse, list[tuple[str, int]]]:
    """Open or create the warehouse; return it and the (table, bucket) pairs to replace."""
    wh = Warehouse(settings.data)
    if not wh.exists():
        wh.create(settings.n_buckets)
        return wh, []
    has_rows = any(wh.bucket_rows(t).get(b, 0) for t in TABLES for b in wh.buckets(t))
    if has_rows and not overwrite:
        raise GenerateError(
            f"the warehouse at {wh.root} already holds events; pass --overwrite to replace "
            "them (the existing bucket count is kept)"
        )
    replace = [(t, int(b)) for t in TABLES for b in wh.manifest["tables"][t]["buckets"]]
    return wh, replace


def run(
    settings: Settings,
    users: int,
    days: int,
    seed: int,
    end: dt.date | None,
    overwrite: bool = False,
    workers: int | None = None,
    config_dir: str | None = None,
    show_progress: bool = True,
    only_orders: bool = False,
    experiment: str | None = None,
    range_users: int = RANGE_USERS,
) -> GenerateResult:
    """Generate ``users`` synthetic users over the ``days`` local days before ``end``.

    Events fall in [end - days, end) local time (UTC+8); ``end`` defaults to today (UTC).
    The same seed, users, days, end, bucket count and pseudonym key give byte-identical
    files.

    Args:
        settings: data root, key and (for a new warehouse) bucket count.
        users: number of synthetic users.
        days: window length in days.
        seed: random seed.
        end: first local day after the window.
        overwrite: replace the events of an existing warehouse (its bucket count is kept);
            without it a warehouse that already holds rows is refused.
        workers: CPUs for a local Ray (default: all); at most twice as many bucket tasks
            are in flight at a time.
        config_dir: where generator.yaml and calendar.yaml live (default: configs/).
        show_progress: draw the rich progress bar.
        only_orders: a transaction log only (``--orders-only``): order events with
            :data:`strata.synth.ORDER_LOG_COLUMNS` and no users table; the truth as usual.
        experiment: simulate this experiment of experiments.yaml (its exposures into the
            warehouse, its true effect into ``truth/experiments.json``); without it a stale
            ``truth/experiments.json`` is removed, as the exposures table is replaced.
        range_users: raw ids per first-stage task (the output does not depend on it).

    Raises:
        GenerateError: the warehouse already holds rows, a task failed (nothing committed),
            or the experiment is unknown or does not fit the window.
    """
    if users < 1 or days < 1:
        raise GenerateError("users and days must be at least 1")
    t_start = time.perf_counter()
    end = end or dt.datetime.now(dt.UTC).date()
    start = window_start(end, days)
    cfg = load_generator_config(config_dir)
    calendar = load_calendar(config_dir)
    try:
        plan = (
            None
            if experiment is None
            else plan_from_config(experiment, load_experiments(config_dir), cfg, days)
        )
    except (ConfigError, ValueError) as exc:
        raise GenerateError(f"--experiment {experiment}: {exc}") from None
    wh, replace = _prepare_warehouse(settings, overwrite)
    n_buckets = wh.n_buckets
    key = load_pseudonym_key(settings)
    spans = id_ranges(users, range_users)
    write_id = f"gen-{uuid.uuid4().hex[:12]}"
    fs, root = resolve(settings.data)
    data_root = worker_root(settings.data)
    truth = TruthFiles(fs, root, write_id)
    staging = truth.staging
    ranges = UserRangeFiles(fs, staging)
    t_prepared = time.perf_counter()

    shards: list[ShardResult] = []
    with ray_session(settings, num_cpus=workers) as ray:
        t_ray = time.perf_counter()
        parallel = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        max_in_flight = 2 * parallel
        range_task = generate_shard_task(pseudonymise_range)
        task = generate_shard_task(generate_shard)
        # the key reaches the tasks through the object store (in memory, this run only)
        key_ref, cfg_ref, cal_ref = ray.put(key), ray.put(cfg), ray.put(calendar)
        stage = "ranges"
        try:
            range_counts = np.zeros((len(spans), n_buckets), dtype=np.int32)
            for i, c in map_buckets(
                ray, range(len(spans)), lambda i: i,
                lambda i: range_task.remote(data_root, staging, i, *spans[i], key_ref, n_buckets),
                max_in_flight, "pseudonymising id ranges", show_progress,
            ):  # fmt: skip
                range_counts[i] = c
            t_ranged = time.perf_counter()
            stage = "buckets"
            offsets = bucket_offsets(range_counts)

            def submit(b: int) -> Any:
                users_at = ranges.bucket(b, range_counts, offsets)
                return task.remote(
                    data_root, write_id, staging, b, users_at, cfg_ref, cal_ref, seed, start,
                    days, only_orders, plan,
                )  # fmt: skip

            shards = map_buckets(
                ray, np.flatnonzero(range_counts.sum(axis=0)).tolist(), lambda b: b, submit,
                max_in_flight, "generating buckets", show_progress,
            )  # fmt: skip
            ranges.remove()  # frees the scratch space before the commit
        except BucketTaskError as exc:
            truth.cleanup()
            what = f"bucket {exc.bucket}"
            if stage == "ranges":
                lo, hi = spans[exc.bucket]
                what = f"id range {exc.bucket} (users {lo}..{hi - 1})"
            raise GenerateError(
                f"generation of {what} failed: {type(exc.cause).__name__}: {exc.cause}; "
                "nothing was committed (orphan part files are removed by `strata vacuum`)"
            ) from exc
        except BaseException:
            truth.cleanup()
            raise
    t_generated = time.perf_counter()

    shards.sort(key=lambda s: s.bucket)
    result = WriteResult([p for s in shards for p in s.parts])
    counts = dict.fromkeys(EVENT_TYPES, 0)
    for s in shards:
        for k, v in s.event_counts.items():
            counts[k] += v
    events = sum(s.events for s in shards)
    exp_truth, exposed = merge_outcomes(
        [(s.experiment_truth or ExperimentTruth(), s.exposed_by_arm) for s in shards]
    )
    try:
        truth.merge_parts(truth_part, [s.bucket for s in shards], truth_schema(HORIZON_DAYS))
        wh.commit(
            result,
            "generate",
            replace_buckets=replace,
            info={
                "write_id": write_id,
                "users": users,
                "days": days,
                "seed": seed,
                "window_start": start.isoformat(),
                "window_end": end.isoformat(),
                "orders": counts["order"],
                "orders_only": only_orders,
                **(
                    {}
                    if plan is None
                    else {
                        "experiment": plan.name,
                        "experiment_start": (start + dt.timedelta(days=plan.start_day)).isoformat(),
                    }
                ),
            },
        )
        truth.publish(None if plan is None else truth_document(plan, exp_truth))
    finally:
        truth.cleanup()
    t_end = time.perf_counter()
    seconds = t_end - t_start
    return GenerateResult(
        users=users,
        days=days,
        seed=seed,
        start=start,
        end=end,
        buckets=len(shards),
        events=events,
        orders=counts["order"],
        event_counts=counts,
        seconds=seconds,
        events_per_s=events / seconds if seconds > 0 else 0.0,
        peak_worker_rss_mb=max((s.peak_rss_mb for s in shards), default=0.0),
        driver_rss_mb=_rss_mb(),
        truth_path=truth.users_path,
        write_id=write_id,
        id_ranges=len(spans),
        timings={
            "prepare_s": t_prepared - t_start,
            "ray_start_s": t_ray - t_prepared,
            "pseudonymise_s": t_ranged - t_ray,
            "generate_s": t_generated - t_ranged,
            "commit_s": t_end - t_generated,
            "task_s": sum(s.seconds for s in shards),
        },
        orders_only=only_orders,
        experiment=None if plan is None else plan.name,
        exposed=exposed,
        configured_effect=None if plan is None else plan.relative_effect,
        true_effect=None if plan is None else exp_truth.relative_effect,
    )


def command(
    data: Annotated[
        str, typer.Option("--data", envvar="STRATA_DATA", help="Data root (path or URI).")
    ] = "./data",
    users: Annotated[int, typer.Option("--users", min=1, help="Synthetic users.")] = 50_000,
    days: Annotated[int, typer.Option("--days", min=1, max=3650, help="Window days.")] = 60,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    end: Annotated[
        dt.datetime | None,
        typer.Option(
            "--end",
            formats=["%Y-%m-%d"],
            help="First local day after the window, exclusive: events end before its local "
            "midnight (UTC+8), like --as-of of the other commands (default: today, UTC).",
        ),
    ] = None,
    buckets: Annotated[
        int | None,
        typer.Option(
            "--buckets",
            min=1,
            help="Buckets of a new warehouse (default: STRATA_N_BUCKETS or 256).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the events of an existing warehouse.")
    ] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="CPUs to use (default: all).")
    ] = None,
    orders_only_: Annotated[
        bool,
        typer.Option(
            "--orders-only",
            help="Only order events (a transaction log: no sessions, no users table).",
        ),
    ] = False,
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment",
            help="Simulate this experiment of experiments.yaml with the true effect of "
            "generator.yaml: exposures into the warehouse, truth/experiments.json.",
        ),
    ] = None,
) -> None:
    """Generate synthetic grocery behaviour (events, users, ground truth) into the warehouse."""
    overrides: dict[str, Any] = {"data": data}
    if buckets is not None:
        overrides["n_buckets"] = buckets
    settings = Settings(**overrides)
    result = run(
        settings,
        users=users,
        days=days,
        seed=seed,
        end=end.date() if end else None,
        overwrite=overwrite,
        workers=workers,
        only_orders=orders_only_,
        experiment=experiment,
    )
    console.print(summary_table("strata generate", summary_rows(result)))


if __name__ == "__main__":
    run_command(command)
