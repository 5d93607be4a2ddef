"""The work of ``strata generate``'s tasks: one id range (stage 1), one warehouse bucket (stage 2).

Thin shells. :func:`pseudonymise_range` pseudonymises one range of raw ids
(:func:`strata.synth.range_by_bucket`) and writes it, sorted by bucket, to its scratch file
(:class:`strata.io.user_ranges.UserRangeFiles`), returning only its per-bucket counts.
:func:`generate_shard` reads its bucket's users from every range file (a ranged read of
each), calls :func:`strata.synth.generate_bucket` and writes the bucket's events and users
part files (uncommitted) and its ground-truth part; the driver (:mod:`jobs.generate`) commits
every part in one manifest replace. The same functions run without Ray
(``bench/generate.py``'s single-process baseline passes the users themselves);
:func:`generate_shard_task` makes them Ray tasks in one line.
"""

from __future__ import annotations

import datetime as dt
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.remote_function import RemoteFunction

from strata.config import CalendarConfig
from strata.io.paths import bucket_part_file
from strata.io.user_ranges import BucketSlices, UserRangeFiles
from strata.io.warehouse import PARQUET_OPTIONS, PartFile, Warehouse, resolve
from strata.synth import (
    ORDER_LOG_COLUMNS,
    GeneratorConfig,
    generate_bucket,
    orders_only,
    range_by_bucket,
)
from strata.synth.experiment import ExperimentPlan, ExperimentTruth

#: Days after the window simulated to label the ground truth (next month's orders, churn).
HORIZON_DAYS = 30


@dataclass
class ShardResult:
    """What one generation task wrote and counted (one bucket)."""

    bucket: int
    parts: list[PartFile]
    users: int
    events: int
    event_counts: dict[str, int]
    seconds: float
    peak_rss_mb: float
    #: the simulated experiment's truth part (None without one)
    experiment_truth: ExperimentTruth | None = None
    #: arm -> users exposed to the simulated experiment
    exposed_by_arm: dict[str, int] = field(default_factory=dict)


def _rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def truth_part(staging: str, bucket: int) -> str:
    """Path of a bucket's ground-truth part inside the run's truth staging folder."""
    return bucket_part_file(staging, bucket)


def pseudonymise_range(
    data_root: str, staging: str, index: int, lo: int, hi: int, key: bytes, n_buckets: int
) -> tuple[int, np.ndarray]:
    """Pseudonymise users ``lo..hi-1`` and write them, by bucket, to range ``index``'s scratch
    file in ``staging`` (on the data root's filesystem). The body of a stage-1 Ray task.

    Returns:
        ``(index, counts)``: the int32 users of each of the ``n_buckets`` buckets.
    """
    user_ids, raw_ids, counts = range_by_bucket(lo, hi, key, n_buckets)
    UserRangeFiles(resolve(data_root)[0], staging).write(index, user_ids, raw_ids)
    return index, counts


def generate_shard(
    data_root: str,
    write_id: str,
    truth_staging: str,
    bucket: int,
    users: BucketSlices | tuple[np.ndarray, np.ndarray],
    cfg: GeneratorConfig,
    calendar: CalendarConfig,
    seed: int,
    start: dt.date,
    days: int,
    only_orders: bool = False,
    experiment: ExperimentPlan | None = None,
) -> ShardResult:
    """Generate one bucket and write its parts (uncommitted). The body of a Ray task.

    Args:
        data_root: the data root holding ``warehouse/`` (which must exist).
        write_id: the run's write id (names the part files).
        truth_staging: folder for the bucket's ground-truth part.
        bucket: the bucket.
        users: where its users are in the range files (read here), or ``(user_ids,
            raw_ids)`` themselves.
        cfg, calendar, seed, start, days: as in :func:`strata.synth.generate_bucket`.
        only_orders: write a transaction log (:func:`strata.synth.orders_only`): order
            events with :data:`strata.synth.ORDER_LOG_COLUMNS`, no users part.
        experiment: a simulated experiment; its exposures become the bucket's
            ``exposures`` part.
    """
    t0 = time.perf_counter()
    wh = Warehouse(data_root)
    user_ids, raw_ids = users.read(wh.fs) if isinstance(users, BucketSlices) else users
    out = generate_bucket(
        bucket, user_ids, raw_ids, cfg, calendar, seed, start, days, horizon_days=HORIZON_DAYS,
        experiment=experiment,
    )  # fmt: skip
    if only_orders:
        out = orders_only(out)
        parts = [
            wh.write_bucket(
                "events", bucket, out.events, write_id, already_sorted=True,
                columns=ORDER_LOG_COLUMNS,
            )
        ]  # fmt: skip
    else:
        parts = [
            wh.write_bucket("events", bucket, out.events, write_id, already_sorted=True),
            wh.write_bucket("users", bucket, out.users, write_id, already_sorted=True),
        ]
    exposed: dict[str, int] = {}
    if out.exposures is not None and out.exposures.num_rows:
        counts = pc.value_counts(out.exposures.column("arm")).to_pylist()
        exposed = {row["values"]: int(row["counts"]) for row in counts}
        parts.append(
            wh.write_bucket("exposures", bucket, out.exposures, write_id, already_sorted=True)
        )
    wh.fs.create_dir(truth_staging, recursive=True)
    pq.write_table(
        out.truth, truth_part(truth_staging, bucket), filesystem=wh.fs, **PARQUET_OPTIONS
    )
    return ShardResult(
        bucket=bucket,
        parts=parts,
        users=out.users.num_rows,
        events=out.events.num_rows,
        event_counts=out.event_counts(),
        seconds=time.perf_counter() - t0,
        peak_rss_mb=_rss_mb(),
        experiment_truth=out.experiment_truth,
        exposed_by_arm=exposed,
    )


def generate_shard_task(body: Callable[..., Any] = generate_shard) -> RemoteFunction:
    """``body`` (:func:`generate_shard` or :func:`pseudonymise_range`) as a Ray task: one
    CPU, never retried, so a failed bucket or range fails the run and nothing is committed.
    The driver passes the body it holds, which is where a test swaps in a failing one."""
    return ray.remote(num_cpus=1, max_retries=0)(body)
