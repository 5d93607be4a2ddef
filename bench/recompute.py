"""Benchmark: the Ray feature stage vs the strongest DuckDB query over the same warehouse files.

    python bench/recompute.py [--data /tmp/strata-bench] [--actors 1,2] [--users 1000000]

1. Generates the data when the data root has no events (`strata generate` in a child process;
   kept for reruns; every benchmark shares the default root, see bench/_data.py).
2. DuckDB, timed in this process before Ray starts, with threads = actors: the core feature
   set (RFM windows, first/last order, coupon share and discount depth, weekend and time-slot
   shares, per-category spend shares, funnel counts) with strata's exact semantics (local
   calendar-day windows, distinct orders, activity = visits + orders) written for speed: order
   rows deduplicated and aggregated apart from all rows, event types compared once per CTE,
   windows as FILTERs on the order side only, integer local-time arithmetic. Two variants: one
   query over every file with T threads, and one query per bucket on N single-threaded
   connections in parallel; the faster is the baseline. Warm once, best of ``--repeat``.
3. Cross-check: on ``--check-buckets`` buckets, DuckDB's per-bucket answer and strata's
   features (the same FeatureShard code the actors run, in process) must agree on every shared
   column (to 1e-9); a mismatch is printed and recorded (``crosscheck_mismatches``).
4. The Ray feature stage (N actors, 1 CPU each) computes the full feature set (a superset) over
   the same files, warmed once, best of ``--repeat``. Ratio = best DuckDB seconds / Ray
   seconds at the same parallelism (> 1: Ray is faster).
5. End to end: the whole recompute (features, scoring, snapshot, publish into an embedded
   Redis with the pointer flip), its peak RSS and Redis bytes per user.

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _data
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from jobs.recompute import RecomputeJob
from strata.features import FeatureConfig
from strata.ids import assign
from strata.io.redis_server import EmbeddedRedis
from strata.io.warehouse import Warehouse
from strata.schema import CATEGORIES
from strata.settings import Settings
from strata.tiering.scoring import RecomputeConfig
from strata.timeutil import DAY_MS, HOUR_MS, LOCAL_OFFSET_MS, parse_as_of, to_epoch_ms

console = Console()

#: DuckDB column -> strata feature column, for the cross-check
_RENAMED = {"first_ms": "first_order_ts", "last_ms": "last_order_ts"}


def duckdb_query(source: str, as_of_ms: int, config: FeatureConfig) -> str:
    """The core feature set with strata's semantics, as one DuckDB SELECT over ``source``."""
    w = config.windows
    if (w.activity_days, w.funnel_days, w.price_days) != (90, 90, None) or w.category_days is None:
        raise SystemExit("bench/recompute.py's DuckDB query needs features.yaml's default windows")
    obs_day = (as_of_ms - 1 + LOCAL_OFFSET_MS) // DAY_MS

    def start(days: int) -> int:  # first UTC ms of a window of local days ending on obs_day
        return (obs_day - days + 1) * DAY_MS - LOCAL_OFFSET_MS

    s30, s90, s180, sc = start(30), start(90), start(180), start(w.category_days)
    slots = config.time_slots.model_dump()
    names = list(slots)
    bounds = [slots[n] for n in names]
    slot_cols = []
    for i, name in enumerate(names):
        lo, hi = bounds[i], bounds[(i + 1) % len(names)]
        cond = f"h >= {lo} AND h < {hi}" if lo < hi else f"h >= {lo} OR h < {hi}"
        slot_cols.append(f"avg(({cond})::INT) AS slot_{name}")
    shares = ",\n    ".join(
        f"sum(w) FILTER (list_contains(categories, '{c}')) / sum(amount_cny) AS share_{c}"
        for c in CATEGORIES
    )
    return f"""
WITH e AS (
  SELECT user_id, epoch_ms(ts) AS t, event_type AS ty, amount_cny, discount_cny, coupon_id,
         order_id, categories, rating
  FROM {source} WHERE ts < to_timestamp({as_of_ms / 1000})
),
o AS (  -- distinct orders: line rows sharing (user, ts, order id) are one order
  SELECT user_id, t, sum(coalesce(amount_cny, 0)) AS amt, sum(coalesce(discount_cny, 0)) AS disc,
         bool_or(coupon_id IS NOT NULL) AS cpn
  FROM e WHERE ty = 'order' GROUP BY user_id, t, order_id
),
oa AS (
  SELECT user_id, count(*) AS orders_total, sum(amt) AS spend_total_cny,
    min(t) AS first_ms, max(t) AS last_ms,
    count(*) FILTER (t >= {s30}) AS frequency_30d,
    coalesce(sum(amt) FILTER (t >= {s30}), 0) AS monetary_30d,
    count(*) FILTER (t >= {s90}) AS frequency_90d,
    coalesce(sum(amt) FILTER (t >= {s90}), 0) AS monetary_90d,
    count(*) FILTER (t >= {s180}) AS frequency_180d,
    coalesce(sum(amt) FILTER (t >= {s180}), 0) AS monetary_180d,
    count(*) FILTER (t >= {s180} AND t < {s90}) AS frequency_prev_90d,
    coalesce(sum(amt) FILTER (t >= {s180} AND t < {s90}), 0) AS monetary_prev_90d,
    avg(cpn::INT) AS coupon_order_share,
    avg(disc / (amt + disc)) FILTER (amt + disc > 0) AS avg_discount_depth
  FROM o GROUP BY user_id
),
aa AS (  -- activity: app visits and distinct orders in the window, local hour and weekday
  SELECT user_id, avg(((((t + {LOCAL_OFFSET_MS}) // {DAY_MS}) + 3) % 7 >= 5)::INT) AS weekend_share,
    {", ".join(slot_cols)}
  FROM (
    SELECT user_id, t, ((t + {LOCAL_OFFSET_MS}) // {HOUR_MS}) % 24 AS h FROM (
      SELECT user_id, t FROM e WHERE ty = 'app_visit' AND t >= {s90}
      UNION ALL SELECT user_id, t FROM o WHERE t >= {s90}
    )
  ) GROUP BY user_id
),
ca AS (  -- category spend shares: each row's amount split across the categories it lists
  SELECT user_id,
    {shares}
  FROM (
    SELECT user_id, amount_cny, categories, amount_cny / len(categories) AS w FROM e
    WHERE ty = 'order' AND t >= {sc} AND len(categories) > 0
  ) GROUP BY user_id
),
fa AS (
  SELECT user_id,
    count(*) FILTER (ty IN ('item_view', 'category_view')) AS views,
    count(*) FILTER (ty = 'search') AS searches,
    count(*) FILTER (ty = 'add_to_cart') AS add_to_carts,
    count(*) FILTER (ty = 'remove_from_cart') AS cart_removals,
    count(*) FILTER (ty = 'favourite') AS favourites,
    count(*) FILTER (ty = 'share') AS shares,
    count(*) FILTER (ty = 'coupon_claim') AS coupon_claims,
    count(*) FILTER (ty = 'coupon_use') AS coupon_uses,
    count(*) FILTER (ty = 'review') AS reviews,
    count(*) FILTER (ty = 'service_contact') AS service_contacts,
    count(*) FILTER (ty = 'community_post') AS community_posts,
    count(*) FILTER (ty = 'app_visit') AS visits
  FROM e WHERE t >= {s90} GROUP BY user_id
)
SELECT * FROM oa FULL JOIN aa USING (user_id) FULL JOIN ca USING (user_id)
  FULL JOIN fa USING (user_id)
"""


def _source(files: list[str]) -> str:
    return "read_parquet([" + ", ".join(f"'{f}'" for f in files) + "])"


def _connect(threads: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET TimeZone = 'UTC'")
    return con


def time_duckdb_one_query(
    files: list[str], as_of_ms: int, config: FeatureConfig, threads: int, repeat: int
) -> tuple[float, int]:
    """One query over every file with ``threads`` threads, materialised as a table."""
    con = _connect(threads)
    sql = "CREATE OR REPLACE TEMP TABLE feats AS " + duckdb_query(_source(files), as_of_ms, config)
    times = []
    for _ in range(repeat + 1):  # the first run warms the page cache and is not counted
        t0 = time.perf_counter()
        con.execute(sql)
        times.append(time.perf_counter() - t0)
    row = con.execute("SELECT count(*) FROM feats").fetchone()
    con.close()
    return min(times[1:]), int(row[0]) if row else 0


def time_duckdb_per_bucket(
    bucket_files: list[list[str]],
    as_of_ms: int,
    config: FeatureConfig,
    connections: int,
    repeat: int,
) -> tuple[float, int]:
    """One query per bucket on ``connections`` single-threaded connections in parallel (DuckDB
    releases the GIL), each result materialised as a table."""
    cons = [_connect(1) for _ in range(connections)]
    sqls = [duckdb_query(_source(f), as_of_ms, config) for f in bucket_files if f]

    def work(i: int) -> int:
        con, n = cons[i], 0
        for j, sql in enumerate(sqls[i::connections]):
            con.execute(f"CREATE OR REPLACE TEMP TABLE f{j} AS {sql}")
            row = con.execute(f"SELECT count(*) FROM f{j}").fetchone()
            n += int(row[0]) if row else 0
        return n

    times, users = [], 0
    with ThreadPoolExecutor(connections) as pool:
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            users = sum(pool.map(work, range(connections)))
            times.append(time.perf_counter() - t0)
    for con in cons:
        con.close()
    return min(times[1:]), users


def cross_check(
    data: str, buckets: list[int], as_of_ms: int, config: RecomputeConfig
) -> dict[str, int]:
    """Mismatching users per shared column between DuckDB and strata on ``buckets``."""
    from actors.feature_shard import FeatureShard

    wh = Warehouse(data)
    shard = FeatureShard(data, buckets, as_of_ms, config)
    ours = shard._compute()
    con = _connect(1)
    bad: dict[str, int] = {}
    for b in buckets:
        sql = duckdb_query(_source(wh.bucket_files("events", b)), as_of_ms, config.features)
        theirs = con.sql(sql + " ORDER BY user_id").to_arrow_table()
        mine = ours[b].filter(pc.is_in(ours[b]["user_id"], value_set=theirs["user_id"]))
        if mine.num_rows != theirs.num_rows:
            bad["users"] = bad.get("users", 0) + abs(mine.num_rows - theirs.num_rows)
            continue
        for col in theirs.column_names[1:]:
            ref = mine[_RENAMED.get(col, col)]
            if pa.types.is_timestamp(ref.type):
                ref = ref.cast(pa.int64())
            x = np.nan_to_num(np.asarray(ref.to_numpy(zero_copy_only=False), float), nan=0.0)
            y = np.nan_to_num(
                np.asarray(theirs[col].to_numpy(zero_copy_only=False), float), nan=0.0
            )
            n = int((~np.isclose(x, y, rtol=1e-9, atol=1e-9)).sum())
            if n:
                bad[col] = bad.get(col, 0) + n
    con.close()
    return bad


def time_ray_features(
    ray: Any,
    settings: Settings,
    as_of_ms: int,
    n_actors: int,
    config: RecomputeConfig,
    repeat: int,
) -> float:
    """Warm, then time the feature pass of ``n_actors`` actors over every bucket."""
    from actors.feature_shard import FeatureShardActor

    wh = Warehouse(settings.data)
    buckets = wh.buckets()
    rows = wh.bucket_rows()
    plan = [p for p in assign(buckets, n_actors, [rows[b] for b in buckets]) if p]
    cpus = float(ray.cluster_resources()["CPU"])
    shards = [
        FeatureShardActor.options(num_cpus=min(1.0, cpus / len(plan))).remote(
            settings.data, p, as_of_ms, config
        )
        for p in plan
    ]
    ray.get([s.ping.remote() for s in shards])
    times = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        ray.get([s.features.remote(fresh=True) for s in shards])
        times.append(time.perf_counter() - t0)
    for s in shards:
        ray.kill(s)
    return min(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=_data.DEFAULT_DATA)
    ap.add_argument("--users", type=int, default=_data.DEFAULT_USERS, help="when generating")
    ap.add_argument("--days", type=int, default=_data.DEFAULT_DAYS, help="when generating")
    ap.add_argument("--end", default=_data.DEFAULT_END, help="generated end = as-of")
    ap.add_argument("--actors", default="2", help="comma-separated actor counts (= DuckDB threads)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs after a warm-up (best)")
    ap.add_argument("--check-buckets", type=int, default=4, help="buckets to cross-check")
    ap.add_argument("--cpus", type=int, default=None, help="local Ray CPUs (default: all)")
    ap.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end recompute")
    args = ap.parse_args()

    os.environ.setdefault("STRATA_PSEUDONYM_KEY", _data.BENCH_KEY)
    _data.ensure_generated(args.data, args.users, args.days, args.end)
    settings = Settings(data=args.data)
    as_of = parse_as_of(args.end)
    as_of_ms = to_epoch_ms(as_of)
    config = RecomputeConfig.load()
    wh = Warehouse(settings.data)
    summary = wh.summary()
    bucket_files = [wh.bucket_files("events", b) for b in wh.buckets()]
    files = [f for fs in bucket_files for f in fs]
    events = summary["events"]["rows"]
    con = _connect(2)
    orders_row = con.execute(
        "SELECT count(*) FROM read_parquet(?) WHERE event_type = 'order'", [files]
    ).fetchone()
    con.close()
    n_orders = int(orders_row[0]) if orders_row else 0
    actor_counts = [int(x) for x in args.actors.split(",")]

    # DuckDB first, in this process, before any Ray process exists
    duck: dict[int, dict[str, float]] = {}
    duck_users = 0
    for n in actor_counts:
        one, duck_users = time_duckdb_one_query(files, as_of_ms, config.features, n, args.repeat)
        per, _ = time_duckdb_per_bucket(bucket_files, as_of_ms, config.features, n, args.repeat)
        duck[n] = {"one_query": one, "per_bucket": per}
        console.print(f"DuckDB {n} thread(s): one query {one:.2f} s, per bucket {per:.2f} s")
    step = max(1, len(wh.buckets()) // max(1, args.check_buckets))
    checked = wh.buckets()[::step][: args.check_buckets]
    mismatches = cross_check(args.data, checked, as_of_ms, config)
    if mismatches:
        console.print(f"[red]cross-check: DuckDB and strata disagree: {mismatches}[/red]")
    else:
        console.print(f"cross-check on {args.check_buckets} buckets: every shared column agrees")

    import ray

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray_times = {
        n: time_ray_features(ray, settings, as_of_ms, n, config, args.repeat) for n in actor_counts
    }

    table = Table(title=f"feature stage over {events:,} events / {n_orders:,} orders")
    table.add_column("engine")
    table.add_column("seconds", justify="right")
    table.add_column("events/s", justify="right")
    table.add_column("DuckDB best / this", justify="right")
    ratios: dict[int, float] = {}
    for n in actor_counts:
        best = min(duck[n].values())
        ratios[n] = best / ray_times[n]
        for variant, s in duck[n].items():
            name = f"DuckDB, {n} thread(s), {variant.replace('_', ' ')} (core set)"
            table.add_row(name, f"{s:.2f}", f"{events / s:,.0f}", f"{best / s:.2f}")
        s = ray_times[n]
        table.add_row(f"Ray, {n} actor(s) (full set)", f"{s:.2f}", f"{events / s:,.0f}",
                      f"{ratios[n]:.2f}")  # fmt: skip
    console.print(table)
    ref_n = 2 if 2 in ray_times else actor_counts[0]
    figures: dict[str, Any] = {
        "users": summary["users"]["rows"],
        "feature_users": duck_users,
        "events": events,
        "orders": n_orders,
        "duckdb_s": {str(n): {k: round(v, 3) for k, v in d.items()} for n, d in duck.items()},
        "ray_feature_s": {str(n): round(s, 3) for n, s in ray_times.items()},
        f"ratio_vs_duckdb_{ref_n}_actors": round(ratios[ref_n], 3),
        "ratios_vs_duckdb": {str(n): round(r, 3) for n, r in ratios.items()},
        "crosscheck_mismatches": mismatches,
    }
    if 1 in ray_times and len(ray_times) > 1:
        top = max(ray_times)
        figures[f"scaling_efficiency_{top}"] = round(ray_times[1] / (top * ray_times[top]), 3)

    if not args.skip_e2e:
        import redis

        with EmbeddedRedis() as server:
            client = redis.Redis.from_url(server.url)
            before = int(client.info("memory")["used_memory"])
            e2e = settings.model_copy(update={"redis_url": server.url})
            t0 = time.perf_counter()
            result = RecomputeJob(e2e, as_of, actors=ref_n).run()
            e2e_s = time.perf_counter() - t0
            after = int(client.info("memory")["used_memory"])
            client.close()
        figures.update(
            {
                "e2e_recompute_s": round(e2e_s, 2),
                "e2e_timings": {k: round(v, 2) for k, v in result.timings.items()},
                "redis_bytes_per_user": round((after - before) / max(result.users, 1), 1),
                "model": result.model,
                # the scoring pass: ranks, lifecycle, tiers and (with a model) predictions
                "scoring_users_per_s": round(result.users / result.timings["scoring_s"]),
                "peak_actor_rss_mb": round(result.max_actor_rss_mb, 0),
                "driver_peak_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0
                ),
                "tiers": result.tiers,
            }
        )
    ray.shutdown()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
