"""Micro benchmark of strata.features.compute_features on synthetic user buckets.

Builds buckets shaped like the warehouse's (default ~4k users, ~80k orders, ~400k events,
sorted by (user_id, ts), zstd Parquet), then measures per bucket:

* compute: ``compute_features`` on an in-memory table read with ``read_dictionary`` (the hot
  path), and on plain-string input (the fallback that hashes event types and categories);
* read: reading the needed columns of one bucket file (1 thread, as one actor core would);
* DuckDB baseline: one query (2 threads) over the same files computing 10 core per-user
  features (last order, order count, spend, coupon share, 3 category spend shares, morning
  share, weekend share), as in CALIBRATION.md.

The ratio compares 2 worker processes (each reads and computes its half of the buckets from the
files, single-threaded, as two actors would; measured, warm pool) with the DuckDB query. Usage::

    .venv/bin/python bench/features_micro.py [--buckets 8] [--repeat 5]

Every timing is the best of ``--repeat`` runs (the development machine is shared and noisy),
for DuckDB and for strata alike. Prints ms per bucket; the last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from strata.features import (
    DICTIONARY_COLUMNS,
    FEATURE_EVENT_COLUMNS,
    compute_features,
    load_feature_config,
)
from strata.schema import CATEGORIES, EVENT_TYPES, TIMESTAMP
from strata.timeutil import DAY_MS

AS_OF_MS = 1_767_196_800_000  # 2026-01-01 00:00 local (UTC+8)

# relative frequency of the non-order event types
_OTHER_TYPES = {
    "item_view": 40,
    "category_view": 8,
    "search": 8,
    "add_to_cart": 8,
    "remove_from_cart": 2,
    "favourite": 2,
    "coupon_claim": 2,
    "coupon_use": 1,
    "share": 1,
    "review": 1,
    "service_contact": 0.5,
    "community_post": 0.5,
    "app_visit": 20,
}


def make_bucket(
    n_users: int = 4_000,
    n_orders: int = 80_000,
    n_events: int = 400_000,
    seed: int = 0,
    as_of_ms: int = AS_OF_MS,
    days: int = 365,
    line_share: float = 0.02,
) -> tuple[pa.Table, pa.Table]:
    """A synthetic bucket: (events sorted by (user_id, ts), users). ``line_share`` of the
    orders are logged as two line rows sharing ts and order id."""
    rng = np.random.default_rng(seed)
    user_ids = np.unique(rng.integers(0, 2**62, n_users * 2))[:n_users]
    rng.shuffle(user_ids)
    user_ids = user_ids[:n_users]
    weight = rng.lognormal(0.0, 1.0, n_users)
    p = weight / weight.sum()

    n_line = int(n_orders * line_share)
    n_order_rows = n_orders + n_line
    n_other = max(n_events - n_order_rows, 0)
    other_names = list(_OTHER_TYPES)
    other_p = np.array(list(_OTHER_TYPES.values()))
    other_p = other_p / other_p.sum()
    type_code = {t: i for i, t in enumerate(EVENT_TYPES)}

    o_user = rng.choice(n_users, n_orders, p=p)
    o_ts = as_of_ms - rng.integers(1, days * DAY_MS, n_orders)
    line = rng.choice(n_orders, n_line, replace=False)
    order_no = np.concatenate([np.arange(n_orders), line])
    o_user = np.concatenate([o_user, o_user[line]])
    o_ts = np.concatenate([o_ts, o_ts[line]])

    x_user = rng.choice(n_users, n_other, p=p)
    x_ts = as_of_ms - rng.integers(1, days * DAY_MS, n_other)
    x_type = np.array([type_code[t] for t in other_names])[
        rng.choice(len(other_names), n_other, p=other_p)
    ]

    user = np.concatenate([o_user, x_user])
    ts = np.concatenate([o_ts, x_ts])
    etype = np.concatenate([np.full(n_order_rows, type_code["order"]), x_type])
    ono = np.concatenate([order_no, np.full(n_other, -1)])
    order = np.lexsort((ts, user_ids[user]))
    user, ts, etype, ono = user_ids[user][order], ts[order], etype[order], ono[order]
    n = len(user)
    is_order = ono >= 0

    # per distinct order attributes, indexed by order number
    amount_o = np.round(rng.lognormal(4.0, 0.6, n_orders), 2)
    coupon_o = rng.random(n_orders) < 0.3
    discount_o = np.where(coupon_o, np.round(amount_o * rng.uniform(0.05, 0.3, n_orders), 2), 0.0)
    oi = np.where(is_order, ono, 0)
    amount = np.where(is_order, amount_o[oi], np.nan)
    discount = np.where(is_order, discount_o[oi], np.nan)

    order_ids = pa.array([f"o{seed}-{k}" for k in range(n_orders)])
    order_id = order_ids.take(pa.array(oi, mask=~is_order))
    coupon_id = pa.array(np.full(n, "c1", dtype=object), mask=~(is_order & coupon_o[oi]))

    lengths = np.where(is_order, rng.integers(1, 4, n), 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    cat_values = pa.array(
        np.array(CATEGORIES, dtype=object)[rng.integers(0, len(CATEGORIES), offsets[-1])]
    )
    categories = pa.ListArray.from_arrays(pa.array(offsets), cat_values, mask=pa.array(~is_order))

    is_review = etype == type_code["review"]
    rating = pa.array(rng.integers(1, 6, n).astype(np.int8), mask=~is_review)
    events = pa.table(
        {
            "user_id": pa.array(user, pa.int64()),
            "ts": pa.array(ts, pa.int64()).cast(TIMESTAMP),
            "event_type": pa.array(np.array(EVENT_TYPES, dtype=object)[etype]),
            "session_id": pa.array(rng.integers(0, 2**40, n), pa.int64()),
            "item_id": pa.array(rng.integers(0, 50_000, n), pa.int64()),
            "order_id": order_id,
            "amount_cny": pa.array(amount, mask=~is_order),
            "discount_cny": pa.array(discount, mask=~is_order),
            "coupon_id": coupon_id,
            "categories": categories,
            "rating": rating,
        }
    )
    signup = as_of_ms - rng.integers(days * DAY_MS, 2 * days * DAY_MS, n_users)
    users = pa.table(
        {
            "user_id": pa.array(np.sort(user_ids), pa.int64()),
            "signup_ts": pa.array(signup, pa.int64()).cast(TIMESTAMP),
            "channel": pa.array(
                np.array(["organic", "ads"], dtype=object)[rng.integers(0, 2, n_users)]
            ),
            "city": pa.array(np.full(n_users, "shanghai", dtype=object)),
        }
    )
    return events, users


def _time(fn: Callable[[], object], repeat: int) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return min(samples)  # best of N: the machine is shared and noisy


_DUCKDB_SQL = """
SELECT user_id,
       max(ts) AS last_order_ts,
       count(*) AS orders,
       sum(amount_cny) AS spend,
       avg((coupon_id IS NOT NULL)::INT) AS coupon_share,
       sum(amount_cny * list_count(list_filter(categories, lambda c: c = 'fruit'))
           / len(categories)) / sum(amount_cny) AS share_fruit,
       sum(amount_cny * list_count(list_filter(categories, lambda c: c = 'vegetables'))
           / len(categories)) / sum(amount_cny) AS share_vegetables,
       sum(amount_cny * list_count(list_filter(categories, lambda c: c = 'seafood'))
           / len(categories)) / sum(amount_cny) AS share_seafood,
       avg((extract(hour FROM ts + INTERVAL 8 HOUR) BETWEEN 6 AND 10)::INT) AS morning_share,
       avg((isodow(ts + INTERVAL 8 HOUR) >= 6)::INT) AS weekend_share
FROM read_parquet({files})
WHERE event_type = 'order' AND ts < {as_of}
GROUP BY user_id
"""


def _duckdb_seconds(files: list[str], repeat: int) -> float | None:
    try:
        import duckdb
    except ImportError:
        return None
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.execute("SET TimeZone = 'UTC'")
    as_of = f"to_timestamp({AS_OF_MS / 1000})"
    sql = _DUCKDB_SQL.format(files=json.dumps(files).replace('"', "'"), as_of=as_of)
    return _time(lambda: con.sql(sql).to_arrow_table(), repeat)


def _read(path: str, dictionary: bool = True) -> pa.Table:
    return pq.read_table(
        path,
        columns=list(FEATURE_EVENT_COLUMNS),
        read_dictionary=list(DICTIONARY_COLUMNS) if dictionary else None,
        use_threads=False,
    )


def _worker(paths: list[tuple[str, str]]) -> int:
    """One worker's share: read each bucket's events and users from disk, compute features."""
    config = load_feature_config()
    users = 0
    for events_path, users_path in paths:
        table = compute_features(_read(events_path), pq.read_table(users_path), AS_OF_MS, config)
        users += table.num_rows
    return users


def _workers_seconds(paths: list[tuple[str, str]], workers: int, repeat: int) -> float:
    """Wall time of ``workers`` processes splitting the buckets (warm pool, best of N)."""
    shares = [paths[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        return _time(lambda: list(pool.map(_worker, shares)), repeat)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--buckets", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--users", type=int, default=4_000)
    ap.add_argument("--orders", type=int, default=80_000)
    ap.add_argument("--events", type=int, default=400_000)
    args = ap.parse_args(argv)

    config = load_feature_config()
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        users_by_bucket = []
        paths = []
        for b in range(args.buckets):
            events, users = make_bucket(args.users, args.orders, args.events, seed=b)
            path = str(Path(tmp) / f"bucket={b:03d}.parquet")
            users_path = str(Path(tmp) / f"users={b:03d}.parquet")
            pq.write_table(events, path, compression="zstd", compression_level=1)
            pq.write_table(users, users_path)
            files.append(path)
            paths.append((path, users_path))
            users_by_bucket.append(users)
        read = _read
        tables = [read(f) for f in files]
        plain = [read(f, dictionary=False) for f in files]
        n_events = sum(t.num_rows for t in tables) / len(tables)

        def compute_all(ts: list[pa.Table]) -> None:
            for t, u in zip(ts, users_by_bucket, strict=True):
                compute_features(t, u, AS_OF_MS, config)

        def read_all() -> None:
            for f in files:
                read(f)

        nb = args.buckets
        compute_ms = _time(lambda: compute_all(tables), args.repeat) / nb * 1e3
        compute_plain_ms = _time(lambda: compute_all(plain), args.repeat) / nb * 1e3
        read_ms = _time(read_all, args.repeat) / nb * 1e3
        duck_s = _duckdb_seconds(files, args.repeat)
        ours_2_workers_s = _workers_seconds(paths, 2, args.repeat)

    ms_per_100k = compute_ms / n_events * 1e5
    print(f"events per bucket          {n_events:,.0f}")
    print(
        f"compute (dictionary input) {compute_ms:8.2f} ms/bucket ({ms_per_100k:.2f} ms/100k events)"
    )
    print(f"compute (string input)     {compute_plain_ms:8.2f} ms/bucket")
    print(f"read needed columns        {read_ms:8.2f} ms/bucket (1 thread)")
    result = {
        "buckets": nb,
        "events_per_bucket": int(n_events),
        "compute_ms_per_bucket": round(compute_ms, 3),
        "compute_ms_per_100k_events": round(ms_per_100k, 3),
        "compute_plain_strings_ms_per_bucket": round(compute_plain_ms, 3),
        "read_ms_per_bucket": round(read_ms, 3),
        "two_workers_s": round(ours_2_workers_s, 3),
    }
    if duck_s is not None:
        duck_ms = duck_s / nb * 1e3
        print(f"DuckDB 2 threads, 10 feats {duck_ms:8.2f} ms/bucket (one query over {nb} files)")
        print(
            f"2 worker processes read+compute (measured) / DuckDB = {ours_2_workers_s:.3f} s / "
            f"{duck_s:.3f} s "
            f"= {ours_2_workers_s / duck_s:.2f}"
        )
        result["duckdb_ms_per_bucket"] = round(duck_ms, 3)
        result["ratio_2_workers_vs_duckdb"] = round(ours_2_workers_s / duck_s, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
