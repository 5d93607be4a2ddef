"""Benchmark: the Ray feature stage vs one DuckDB query over the same warehouse files.

    python bench/recompute.py --data /tmp/bench1m --users 1000000 --days 90 [--actors 1,2]

1. Generates the data if the data root has no warehouse (strata generate; kept for reruns).
2. DuckDB (2 threads) computes the core feature set (RFM windows, first/last order, coupon
   and discount, weekend and time-slot shares, per-category spend shares, funnel counts) in one
   query over the warehouse's committed Parquet files, materialised into a table.
3. The Ray feature stage (2 actors by default, 1 CPU each) computes the full feature set (a
   superset: it adds BTYD, labels, attributes) over the same files. Both are warmed once and
   timed on the second run. Ratio = Ray rows/s / DuckDB rows/s (same input rows).
4. End to end: the whole recompute (features, scoring, snapshot, publish into an embedded
   Redis with the pointer flip), its peak RSS and Redis bytes per user.
5. ``--actors 1,2,4,8,16`` prints the feature stage time per actor count.

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb
import ray
import redis
from rich.console import Console
from rich.table import Table

from jobs import generate
from jobs.recompute import RecomputeJob, parse_as_of
from strata.ids import assign
from strata.io.redis_server import EmbeddedRedis
from strata.io.warehouse import Warehouse
from strata.scoring import RecomputeConfig
from strata.settings import Settings

console = Console()


def duckdb_query(files: list[str], as_of: dt.datetime) -> str:
    """The core feature set in one DuckDB query (local time = UTC+8)."""
    cats = ["vegetables", "fruit", "meat_poultry", "seafood", "dairy_eggs", "grain_oil",
            "snacks_drinks", "daily_goods"]  # fmt: skip
    a = f"TIMESTAMPTZ '{as_of.isoformat()}'"
    o = "event_type = 'order'"
    windows = []
    for d in (30, 90, 180):
        windows.append(f"count(*) FILTER (WHERE {o} AND ts >= {a} - INTERVAL {d} DAY) AS f{d}")
        windows.append(
            f"coalesce(sum(amount_cny) FILTER (WHERE {o} AND ts >= {a} - INTERVAL {d} DAY), 0)"
            f" AS m{d}"
        )
    shares = [
        f"sum(amount_cny / len(categories) * list_contains(categories, '{c}')::INT) "
        f"FILTER (WHERE {o}) / nullif(sum(amount_cny) FILTER (WHERE {o}), 0) AS share_{c}"
        for c in cats
    ]
    # local hour and weekday by integer arithmetic on epoch ms (UTC+8, no DST): as cheap as it
    # gets in DuckDB, so the baseline is not slowed by time-zone conversion
    slots = {"morning": (6, 11), "noon": (11, 14), "afternoon": (14, 18), "evening": (18, 22)}
    slot_cols = [
        f"avg((lh >= {lo} AND lh < {hi})::INT) AS slot_{name}" for name, (lo, hi) in slots.items()
    ] + ["avg((lh >= 22 OR lh < 6)::INT) AS slot_night"]
    counts = {
        "views": "('item_view', 'category_view')", "searches": "('search')",
        "carts": "('add_to_cart')", "favourites": "('favourite')", "shares": "('share')",
        "claims": "('coupon_claim')", "reviews": "('review')", "contacts": "('service_contact')",
        "visits": "('app_visit')",
    }  # fmt: skip
    count_cols = [f"count(*) FILTER (WHERE event_type IN {v}) AS {k}" for k, v in counts.items()]
    file_list = ", ".join(f"'{f}'" for f in files)
    return f"""
    CREATE OR REPLACE TEMP TABLE feats AS
    WITH e AS (
      SELECT user_id, ts, event_type, amount_cny, discount_cny, coupon_id, categories, rating,
             ((epoch_ms(ts) // 3600000 + 8) % 24) AS lh,
             ((epoch_ms(ts) + 28800000) // 86400000 + 3) % 7 AS ldow
      FROM read_parquet([{file_list}]) WHERE ts < {a}
    )
    SELECT user_id,
      date_diff('day', max(ts) FILTER (WHERE {o}), {a}) AS recency_days,
      min(ts) FILTER (WHERE {o}) AS first_order_ts,
      max(ts) FILTER (WHERE {o}) AS last_order_ts,
      count(*) FILTER (WHERE {o}) AS orders_total,
      coalesce(sum(amount_cny) FILTER (WHERE {o}), 0) AS spend_total,
      avg(amount_cny) FILTER (WHERE {o}) AS aov,
      {", ".join(windows)},
      avg((coupon_id IS NOT NULL)::INT) FILTER (WHERE {o}) AS coupon_order_share,
      avg(coalesce(discount_cny, 0) / nullif(amount_cny + coalesce(discount_cny, 0), 0))
        FILTER (WHERE {o}) AS avg_discount_depth,
      avg((ldow >= 5)::INT) AS weekend_share,
      {", ".join(slot_cols)},
      {", ".join(shares)},
      {", ".join(count_cols)},
      avg(rating) FILTER (WHERE event_type = 'review') AS mean_rating
    FROM e GROUP BY user_id
    """


def time_duckdb(files: list[str], as_of: dt.datetime, threads: int) -> tuple[float, int]:
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET TimeZone = 'UTC'")
    sql = duckdb_query(files, as_of)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        con.execute(sql)
        best = min(best, time.perf_counter() - t0)
    users = con.execute("SELECT count(*) FROM feats").fetchone()
    con.close()
    return best, int(users[0]) if users else 0


def time_ray_features(
    settings: Settings, as_of: dt.datetime, n_actors: int, config: RecomputeConfig
) -> float:
    """Warm, then time the feature pass of ``n_actors`` actors over every bucket."""
    from actors.feature_shard import FeatureShardActor

    wh = Warehouse(settings.data)
    buckets = wh.buckets()
    rows = wh.bucket_rows()
    plan = [p for p in assign(buckets, n_actors, [rows[b] for b in buckets]) if p]
    as_of_ms = int(as_of.timestamp() * 1000)
    cpus = float(ray.cluster_resources()["CPU"])
    shards = [
        FeatureShardActor.options(num_cpus=min(1.0, cpus / len(plan))).remote(
            settings.data, p, as_of_ms, config
        )
        for p in plan
    ]
    ray.get([s.ping.remote() for s in shards])
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        ray.get([s.features.remote(fresh=True) for s in shards])
        best = min(best, time.perf_counter() - t0)
    for s in shards:
        ray.kill(s)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="/tmp/strata-bench-1m")
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--end", default="2026-11-01")
    ap.add_argument("--actors", default="2", help="comma-separated actor counts to time")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    ap.add_argument("--cpus", type=int, default=None, help="local Ray CPUs (default: all)")
    ap.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end recompute")
    args = ap.parse_args()

    os.environ.setdefault("STRATA_PSEUDONYM_KEY", "strata-bench-pseudonym-key-000000")
    settings = Settings(data=args.data)
    end = dt.date.fromisoformat(args.end)
    as_of = parse_as_of(end.isoformat())
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    wh = Warehouse(settings.data)
    if not wh.exists() or wh.summary()["events"]["rows"] == 0:
        console.print(f"generating {args.users:,} users x {args.days} days into {args.data}")
        generate.run(settings, users=args.users, days=args.days, seed=1, end=end, overwrite=True)
        wh.reload()
    summary = wh.summary()
    files = [f for b in wh.buckets() for f in wh.bucket_files("events", b)]
    events = summary["events"]["rows"]
    con = duckdb.connect()
    orders = con.execute(
        "SELECT count(*) FROM read_parquet(?) WHERE event_type = 'order'", [files]
    ).fetchone()
    con.close()
    n_orders = int(orders[0]) if orders else 0
    config = RecomputeConfig.load()

    duck_s, duck_users = time_duckdb(files, as_of, args.threads)
    actor_counts = [int(x) for x in args.actors.split(",")]
    ray_times = {n: time_ray_features(settings, as_of, n, config) for n in actor_counts}
    ref_n = 2 if 2 in ray_times else actor_counts[0]
    ratio = duck_s / ray_times[ref_n]

    table = Table(title=f"feature stage over {events:,} events / {n_orders:,} orders")
    table.add_column("engine")
    table.add_column("seconds", justify="right")
    table.add_column("events/s", justify="right")
    table.add_row(f"DuckDB, {args.threads} threads (core set)", f"{duck_s:.2f}",
                  f"{events / duck_s:,.0f}")  # fmt: skip
    for n, s in ray_times.items():
        table.add_row(f"Ray, {n} actor(s) (full set)", f"{s:.2f}", f"{events / s:,.0f}")
    console.print(table)
    figures: dict[str, Any] = {
        "users": summary["users"]["rows"],
        "feature_users": duck_users,
        "events": events,
        "orders": n_orders,
        "duckdb_s": round(duck_s, 3),
        "ray_feature_s": {str(n): round(s, 3) for n, s in ray_times.items()},
        f"ratio_vs_duckdb_{ref_n}_actors": round(ratio, 3),
    }
    if 1 in ray_times and len(ray_times) > 1:
        top = max(ray_times)
        figures[f"scaling_efficiency_{top}"] = round(ray_times[1] / (top * ray_times[top]), 3)

    if not args.skip_e2e:
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
