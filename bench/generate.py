"""Benchmark of ``strata generate``: events/s and peak memory on Ray, against one process.

Runs ``jobs.generate.run`` at the given size (default 1M users x 90 days) into a scratch data
root, then, as the baseline, the same per-bucket work (generate + write) in one fresh child
process without Ray over a spread subset of the buckets (or all of them with
``--baseline-full``); the child reports its own peak RSS, compared with the peak RSS of Ray's
driver and busiest worker.
The last line printed is one JSON object with the figures.

    python -m bench.generate --users 1000000 --days 90
    python -m bench.generate --users 20000 --days 30 --baseline-full
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr

from actors.generator_shard import generate_shard
from jobs import generate
from strata.config import load_calendar
from strata.io.keys import load_pseudonym_key
from strata.io.warehouse import Warehouse
from strata.settings import Settings
from strata.synth import load_generator_config, users_by_bucket, window_start

BENCH_KEY = "strata-bench-pseudonym-key-0123456789"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--end", type=dt.date.fromisoformat, default=dt.date(2025, 12, 1))
    p.add_argument("--buckets", type=int, default=256)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--data", default=None, help="data root (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the generated data")
    p.add_argument(
        "--baseline-share",
        type=float,
        default=0.1,
        help="share of the buckets the single-process baseline generates",
    )
    p.add_argument("--baseline-full", action="store_true", help="baseline over every bucket")
    return p.parse_args(argv)


def _baseline(a: argparse.Namespace, scratch: str, key: str) -> tuple[int, int, int, float, float]:
    """The single-process baseline (run in a fresh child): buckets done, buckets in all,
    events, seconds, and this process's peak RSS in MB."""
    base = Settings(
        data=str(Path(scratch) / "single"), n_buckets=a.buckets, pseudonym_key=SecretStr(key)
    )
    wh = Warehouse(base.data)
    wh.create(a.buckets, overwrite=True)
    groups = users_by_bucket(a.users, load_pseudonym_key(base), a.buckets)
    step = 1 if a.baseline_full else max(1, round(1 / max(a.baseline_share, 1e-9)))
    subset = groups[::step]
    cfg, calendar = load_generator_config(), load_calendar()
    start = window_start(a.end, a.days)
    staging = str(Path(scratch) / "single" / "truth-staging")
    t1 = time.perf_counter()
    events = 0
    for b, ids, raw in subset:
        shard = generate_shard(
            base.data, "bench", staging, b, (ids, raw),
            cfg, calendar, a.seed, start, a.days,
        )  # fmt: skip
        events += shard.events
    seconds = time.perf_counter() - t1
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return len(subset), len(groups), events, seconds, rss_mb


def main(argv: list[str] | None = None) -> dict[str, float | int]:
    """Run the benchmark; print a report and, last, one JSON line. Returns the figures."""
    a = _args(argv)
    scratch = Path(a.data or tempfile.mkdtemp(prefix="strata-bench-gen-")).resolve()
    key = os.environ.get("STRATA_PSEUDONYM_KEY") or BENCH_KEY
    settings = Settings(
        data=str(scratch / "ray"), n_buckets=a.buckets, pseudonym_key=SecretStr(key)
    )
    try:
        t0 = time.perf_counter()
        res = generate.run(
            settings, a.users, a.days, a.seed, a.end, overwrite=True, workers=a.workers
        )
        wall = time.perf_counter() - t0
        driver_rss = res.driver_rss_mb
        phases = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in res.timings.items())
        print(
            f"ray: {res.users:,} users x {res.days} days -> {res.events:,} events, "
            f"{res.orders:,} orders in {wall:.1f} s ({res.events / wall:,.0f} events/s; {phases})"
        )
        print(f"peak RSS: driver {driver_rss:.0f} MB, worker max {res.peak_worker_rss_mb:.0f} MB")

        # baseline: the same per-bucket work in one fresh process, no Ray
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            n_subset, n_groups, base_events, base_s, base_rss = pool.apply(
                _baseline, (a, str(scratch), key)
            )
        base_rate = base_events / base_s
        print(
            f"single process: {n_subset}/{n_groups} buckets, {base_events:,} events in "
            f"{base_s:.1f} s ({base_rate:,.0f} events/s), peak RSS {base_rss:.0f} MB"
        )
        ratio = (res.events / wall) / base_rate
        ratio_buckets = (res.events / res.timings["generate_s"]) / base_rate
        print(
            f"ratio vs single process: {ratio:.2f}x end to end, "
            f"{ratio_buckets:.2f}x over the bucket phase"
        )
        figures: dict[str, float | int] = {
            "users": res.users,
            "days": res.days,
            "events": res.events,
            "orders": res.orders,
            "seconds": round(wall, 2),
            "events_per_s": round(res.events / wall),
            "peak_driver_rss_mb": round(driver_rss, 1),
            "peak_worker_rss_mb": round(res.peak_worker_rss_mb, 1),
            "baseline_buckets": n_subset,
            "baseline_events_per_s": round(base_rate),
            "baseline_peak_rss_mb": round(base_rss, 1),
            "ratio_peak_rss_vs_single_process": round(
                max(driver_rss, res.peak_worker_rss_mb) / base_rss, 3
            ),
            "ratio_vs_single_process": round(ratio, 3),
            "ratio_bucket_phase": round(ratio_buckets, 3),
        }
        print(json.dumps(figures))
        return figures
    finally:
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
