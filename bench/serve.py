"""Benchmark: segment lookups on plain uvicorn vs the Ray Serve deployment, same app, same Redis.

    python bench/serve.py [--users 1000000] [--seconds 10] [--processes 1,2]

1. Starts an embedded redis-server and publishes ``--users`` synthetic users (raw ids
   10000001...) with SegmentStore, as the recompute job does.
2. Plain: ``uvicorn --factory api.app:create_app`` (uvloop, httptools, no access log) with
   each worker count of ``--processes`` (default 1 and one per core), before Ray starts.
3. Serve: for each count again, a fresh local Ray started with api.deployment's SERVE_ENV
   (HAProxy + direct ingress) and the app deployed with ``api.deployment.start`` with that
   many replicas.
4. For each server, the same load generator (bench/loadgen.py, a subprocess) and the same
   requests (random existing raw ids, a valid API key): peak req/s with p50/p99 at fixed
   concurrency (closed loop, after a warm-up), p50/p99 at half of that peak (open loop,
   rate-limited, latency counted from the scheduled send), p50/p99 at one fixed rate that is
   the same for every server (``--fixed-rate``, default 1,000 req/s, open loop: the fair
   latency comparison, since each server's half-peak differs), and batch lookups (1,000 ids
   per POST) in users/s.

``ratio_serve_vs_plain`` = Serve with 1 replica ÷ plain uvicorn with 1 worker (peak req/s:
the comparison of CALIBRATION.md, one Python process each); ``ratio_serve_vs_plain_<n>``
does the same for n replicas ÷ n workers. The last line is one JSON object.

    python bench/serve.py --redis cluster [--users 200000] [--seconds 10]

One node against a Redis Cluster instead, same run, same data: the same ``--users`` published
into one embedded redis-server (the ``packed`` format, one read script per batch) and into an
embedded 3-master cluster on loopback (``tagged``: the pointer, then one script per tag group,
pipelined per node); for each, batch lookups of ``--batch-size`` ids straight through
``SegmentStore.get_many`` (one thread) and as POST /v1/segments/lookup on plain uvicorn (1
worker, ``STRATA_REDIS_MODE`` set to match), in users/s with p50/p99 per batch.
``ratio_cluster_vs_standalone_*`` = cluster ÷ single node. All on this machine's cores: the
cluster's three servers share them with the app and the load generator.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from loadgen import LoadResult, build_request, measure_in_subprocess  # bench/ is sys.path[0]
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from strata.ids import pseudonymise_many
from strata.io.redis_cluster_server import EmbeddedRedisCluster
from strata.io.redis_server import EmbeddedRedis, free_port
from strata.io.segment_store import SegmentStore
from strata.online.codec import (
    ACTIVE_SLOTS,
    CATEGORIES,
    CHANNELS,
    LIFECYCLE_STAGES,
    PRICE_SENSITIVITIES,
    TIERS,
    encode,
    snapshot_layout,
)
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings

console = Console(width=150)
ROOT = Path(__file__).resolve().parents[1]
FIRST_RAW_ID = 10_000_001
BENCH_KEY = "strata-bench-pseudonym-key-000000"
CONFIG_NAME = "serve-haproxy-direct-ingress"


def synthetic_columns(n: int, seed: int = 0) -> dict[str, Any]:
    """Plausible segment columns for ``n`` users (vectorised)."""
    rng = np.random.default_rng(seed)

    def pick(labels: tuple[str, ...]) -> np.ndarray:
        return np.asarray(labels)[rng.integers(0, len(labels), n)]

    return {
        "tier": pick(TIERS),
        "lifecycle_stage": pick(LIFECYCLE_STAGES),
        "top_category": pick(CATEGORIES),
        "price_sensitivity": pick(PRICE_SENSITIVITIES),
        "active_slot": pick(ACTIVE_SLOTS),
        "channel": pick(CHANNELS),
        "rfm_r": rng.random(n),
        "rfm_f": rng.random(n),
        "rfm_m": rng.random(n),
        "rfm_score": rng.random(n),
        "recency_days": rng.integers(0, 365, n),
        "frequency_90d": rng.integers(0, 40, n),
        "monetary_90d": rng.gamma(2.0, 150.0, n),
        "churn_p": rng.random(n),
        "repurchase_p": rng.random(n),
        "predicted_spend": rng.gamma(2.0, 100.0, n),
    }


def publish(redis_url: str, n_users: int, key: bytes, mode: str = "standalone") -> float:
    """Publish ``n_users`` synthetic users; returns the seconds it took."""
    t0 = time.perf_counter()
    layout = snapshot_layout(predictions=True)
    ids = pseudonymise_many([str(FIRST_RAW_ID + i) for i in range(n_users)], key)
    records = encode(synthetic_columns(n_users), layout, allow_missing=True)
    namespace = Settings().redis_namespace
    with SegmentStore(redis_url, namespace=namespace, mode=mode) as store:
        store.begin_version(
            "bench",
            layout,
            store.plan_n_groups(n_users),
            {"job": "bench/serve.py"},
            as_of="2026-11-01T00:00:00+08:00",
            expected_users=n_users,
        )
        store.write_users("bench", ids, records)
        store.publish("bench")
    return time.perf_counter() - t0


def make_requests(
    base_url: str, api_key: str, n_users: int, batch_size: int, seed: int = 1
) -> tuple[list[bytes], list[bytes]]:
    """Single GETs of random existing raw ids, and batch POSTs of ``batch_size`` ids."""
    rng = np.random.default_rng(seed)
    auth = [("Authorization", f"Bearer {api_key}")]
    singles = [
        build_request(f"{base_url}/v1/users/{FIRST_RAW_ID + int(i)}/segment", headers=auth)
        for i in rng.integers(0, n_users, 4096)
    ]
    batches = []
    for _ in range(32):
        ids = [str(FIRST_RAW_ID + int(i)) for i in rng.integers(0, n_users, batch_size)]
        body = json.dumps({"user_ids": ids}).encode()
        batches.append(
            build_request(
                f"{base_url}/v1/segments/lookup",
                "POST",
                body,
                [*auth, ("Content-Type", "application/json")],
            )
        )
    return singles, batches


def check(base_url: str, request: bytes) -> None:
    """One request of the benchmark's kind must answer 200 (else the numbers are errors)."""
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, target, _ = lines[0].split(" ")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers.pop("Host", None)
    req = urllib.request.Request(
        base_url + target, data=body or None, headers=headers, method=method
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{method} {target} answered {resp.status}")


def measure_server(
    label: str, base_url: str, singles: list[bytes], batches: list[bytes], args: Any
) -> dict[str, Any]:
    """Peak (closed loop), half-peak (open loop) and batch figures of one server."""
    check(base_url, singles[0])
    check(base_url, batches[0])
    console.print(f"[bold]{label}[/]: peak at c={args.concurrency} ...")
    peak = measure_in_subprocess(
        base_url, singles, concurrency=args.concurrency, seconds=args.seconds,
        warmup_s=args.warmup,
    )  # fmt: skip
    half: LoadResult | None = None
    if not args.skip_half:
        console.print(f"[bold]{label}[/]: {peak.rps / 2:,.0f} req/s (half of peak) ...")
        half = measure_in_subprocess(
            base_url, singles, concurrency=args.concurrency, seconds=args.seconds,
            warmup_s=args.warmup, rate=peak.rps / 2,
        )  # fmt: skip
    fixed: LoadResult | None = None
    if args.fixed_rate > 0:
        console.print(f"[bold]{label}[/]: {args.fixed_rate:,.0f} req/s (fixed, every server) ...")
        fixed = measure_in_subprocess(
            base_url, singles, concurrency=args.concurrency, seconds=args.seconds,
            warmup_s=args.warmup, rate=args.fixed_rate,
        )  # fmt: skip
    console.print(f"[bold]{label}[/]: batches of {args.batch_size} ...")
    batch = measure_in_subprocess(
        base_url, batches, concurrency=args.batch_concurrency, seconds=args.seconds,
        warmup_s=1.0,
    )  # fmt: skip
    out: dict[str, Any] = {
        "label": label,
        "rps": round(peak.rps, 1),
        "p50_ms": peak.p50_ms,
        "p99_ms": peak.p99_ms,
        "errors": peak.errors,
        "loadgen_cpu": peak.loadgen_cpu,
        "batch_users_per_s": round(batch.rps * args.batch_size),
        "batch_p50_ms": batch.p50_ms,
        "batch_p99_ms": batch.p99_ms,
        "batch_errors": batch.errors,
    }
    if half is not None:
        out.update(
            {
                "half_rate": round(half.target_rate or 0.0, 1),
                "half_achieved_rps": round(half.rps, 1),
                "half_p50_ms": half.p50_ms,
                "half_p99_ms": half.p99_ms,
                "half_errors": half.errors,
            }
        )
    if fixed is not None:
        out.update(
            {
                "fixed_rate": args.fixed_rate,
                "fixed_achieved_rps": round(fixed.rps, 1),
                "fixed_p50_ms": fixed.p50_ms,
                "fixed_p99_ms": fixed.p99_ms,
                "fixed_errors": fixed.errors,
            }
        )
    console.print(
        f"  {out['rps']:,.0f} req/s p50 {out['p50_ms']} ms p99 {out['p99_ms']} ms; "
        f"at {args.fixed_rate:,.0f} req/s p99 {out.get('fixed_p99_ms')} ms; "
        f"half p99 {out.get('half_p99_ms')} ms; batch {out['batch_users_per_s']:,} users/s"
    )
    return out


def wait_ok(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


def run_plain(
    workers: int, env: dict[str, str], api_key: str, args: Any, batches_only: bool = False
) -> dict[str, Any]:
    """Plain uvicorn serving create_app (Ray not running); ``batches_only``: only the batch
    lookups (``--redis cluster``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
           "--loop", "uvloop", "--http", "httptools", "--no-access-log",
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=ROOT)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_ok(f"{base_url}/healthz")
        singles, batches = make_requests(base_url, api_key, args.users, args.batch_size)
        label = f"plain uvicorn, {workers} worker{'s' if workers > 1 else ''}"
        if batches_only:
            check(base_url, batches[0])
            batch = measure_in_subprocess(
                base_url, batches, concurrency=args.batch_concurrency, seconds=args.seconds,
                warmup_s=1.0,
            )  # fmt: skip
            result = {
                "label": label,
                "batch_users_per_s": round(batch.rps * args.batch_size),
                "batch_p50_ms": batch.p50_ms,
                "batch_p99_ms": batch.p99_ms,
                "batch_errors": batch.errors,
            }
        else:
            result = measure_server(label, base_url, singles, batches, args)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    result["workers"] = workers
    return result


def run_serve(replicas: int, settings: Settings, api_key: str, args: Any) -> dict[str, Any]:
    """The Serve deployment in the chosen configuration on a fresh local Ray."""
    from api.deployment import isolated_serve_env

    os.environ.update(isolated_serve_env())  # before Ray starts: its processes read them
    import ray
    from ray import serve

    from api.deployment import serve_mode, start

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        base_url = start(settings, port=free_port(), num_replicas=replicas)
        deploy_s = time.perf_counter() - t0
        mode = serve_mode()

        @ray.remote(num_cpus=0)
        def niceness() -> int:
            return os.nice(0)

        mode["worker_niceness"] = str(ray.get(niceness.remote()))
        singles, batches = make_requests(base_url, api_key, args.users, args.batch_size)
        label = f"Serve, {replicas} replica{'s' if replicas > 1 else ''} (HAProxy)"
        result = measure_server(label, base_url, singles, batches, args)
        result.update({"replicas": replicas, "deploy_s": round(deploy_s, 1), "env": mode})
        serve.shutdown()
    finally:
        ray.shutdown()
    return result


def direct_batches(url: str, mode: str, n_users: int, key: bytes, args: Any) -> dict[str, Any]:
    """``SegmentStore.get_many`` of ``--batch-size`` random existing users, one thread, for
    ``--seconds``: users/s and per-batch latency."""
    rng = np.random.default_rng(2)
    pool = pseudonymise_many([str(FIRST_RAW_ID + i) for i in range(n_users)], key)
    batches = [pool[rng.integers(0, n_users, args.batch_size)] for _ in range(64)]
    took: list[float] = []
    with SegmentStore(url, namespace=Settings().redis_namespace, mode=mode) as store:
        for batch in batches[:4]:  # warm up (script cache, meta, connections)
            version, records = store.get_many(batch)
            if version != "bench" or any(r is None for r in records):
                raise RuntimeError(f"{mode}: a warm-up batch did not read back whole")
        t_end = time.perf_counter() + args.seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            store.get_many(batches[len(took) % len(batches)])
            took.append(time.perf_counter() - t0)
    ms = np.asarray(took) * 1000
    return {
        "direct_users_per_s": round(len(took) * args.batch_size / max(ms.sum() / 1000, 1e-9)),
        "direct_p50_ms": round(float(np.percentile(ms, 50)), 2),
        "direct_p99_ms": round(float(np.percentile(ms, 99)), 2),
        "direct_batches": len(took),
    }


def run_cluster_comparison(args: Any, key_text: str, api_key: str, record: Any) -> None:
    """``--redis cluster``: one node vs a 3-master cluster, same data, same run."""
    results: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="strata-bench-serve-") as data,
        EmbeddedRedis() as single,
        EmbeddedRedisCluster(masters=3) as cluster,
    ):
        for mode, url in (("standalone", single.url), ("cluster", cluster.url)):
            console.print(f"[bold]{mode}[/]: publishing {args.users:,} users into {url} ...")
            publish_s = publish(url, args.users, key_text.encode(), mode)
            console.print(f"  published in {publish_s:.1f} s; get_many direct ...")
            figures = {"publish_s": round(publish_s, 1)}
            figures.update(direct_batches(url, mode, args.users, key_text.encode(), args))
            env = {
                "STRATA_REDIS_URL": url,
                "STRATA_REDIS_MODE": mode,
                "STRATA_PSEUDONYM_KEY": key_text,
                "STRATA_API_KEYS": dump_records([record]),
                "STRATA_DATA": data,
            }
            console.print(f"[bold]{mode}[/]: POST /v1/segments/lookup ...")
            figures.update(run_plain(1, env, api_key, args, batches_only=True))
            results[mode] = figures
    table = Table(
        title=f"batch lookups ({args.batch_size} ids), {args.users:,} users, "
        f"{os.cpu_count()} cores: one node vs a 3-master Redis Cluster"
    )
    columns = ["Redis", "publish s", "get_many users/s", "p50 ms", "p99 ms",
               "POST users/s", "p50 ms", "p99 ms", "errors"]  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "Redis" else "right")
    for mode, r in results.items():
        table.add_row(
            mode, f"{r['publish_s']:.1f}", f"{r['direct_users_per_s']:,}",
            f"{r['direct_p50_ms']:.2f}", f"{r['direct_p99_ms']:.2f}",
            f"{r['batch_users_per_s']:,}", f"{r['batch_p50_ms']:.2f}",
            f"{r['batch_p99_ms']:.2f}", str(r["batch_errors"]),
        )  # fmt: skip
    console.print(table)
    one, many = results["standalone"], results["cluster"]
    ratio_direct = many["direct_users_per_s"] / max(one["direct_users_per_s"], 1)
    ratio_post = many["batch_users_per_s"] / max(one["batch_users_per_s"], 1)
    console.print(
        f"cluster ÷ one node: get_many [bold]{ratio_direct:.2f}[/], POST [bold]{ratio_post:.2f}[/]"
    )
    print(
        json.dumps(
            {
                "redis": "cluster",
                "masters": 3,
                "users": args.users,
                "cores": os.cpu_count(),
                "batch_size": args.batch_size,
                "batch_concurrency": args.batch_concurrency,
                "ratio_cluster_vs_standalone_direct": round(ratio_direct, 3),
                "ratio_cluster_vs_standalone_post": round(ratio_post, 3),
                "standalone": one,
                "cluster": many,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    cores = os.cpu_count() or 2
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=3.0, help="unrecorded seconds first")
    ap.add_argument("--concurrency", type=int, default=32, help="connections (peak, half)")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--batch-concurrency", type=int, default=4)
    ap.add_argument(
        "--processes", default=None,
        help="comma-separated counts of uvicorn workers and of Serve replicas (default: 1 and "
        "one per core)",
    )  # fmt: skip
    ap.add_argument("--cpus", type=int, default=cores, help="local Ray CPUs")
    ap.add_argument(
        "--redis", choices=("standalone", "cluster"), default="standalone",
        help="cluster: batch lookups on one node vs a 3-master Redis Cluster (no Serve runs)",
    )  # fmt: skip
    ap.add_argument("--skip-half", action="store_true", help="skip the half-peak runs")
    ap.add_argument(
        "--fixed-rate", type=float, default=1000.0,
        help="req/s of the fixed-load run, the same for every server (0: skip)",
    )  # fmt: skip
    args = ap.parse_args()
    counts = sorted({int(w) for w in args.processes.split(",")} if args.processes else {1, cores})
    if min(counts) < 1:
        ap.error("--processes: counts must be at least 1")

    key_text = os.environ.get("STRATA_PSEUDONYM_KEY", BENCH_KEY)
    api_key, record = new_key("bench", ["segments:read"])
    if args.redis == "cluster":
        run_cluster_comparison(args, key_text, api_key, record)
        return
    with tempfile.TemporaryDirectory(prefix="strata-bench-serve-") as data, EmbeddedRedis() as rs:
        console.print(f"publishing {args.users:,} users into {rs.url} ...")
        publish_s = publish(rs.url, args.users, key_text.encode())
        console.print(f"  published in {publish_s:.1f} s")
        env = {
            "STRATA_REDIS_URL": rs.url,
            "STRATA_PSEUDONYM_KEY": key_text,
            "STRATA_API_KEYS": dump_records([record]),
            "STRATA_DATA": data,
        }
        plains = [run_plain(n, env, api_key, args) for n in counts]
        settings = Settings(
            data=data,
            redis_url=rs.url,
            pseudonym_key=SecretStr(key_text),
            api_keys=env["STRATA_API_KEYS"],
        )
        serves = [run_serve(n, settings, api_key, args) for n in counts]

    plain_by = {p["workers"]: p for p in plains}
    serve_by = {r["replicas"]: r for r in serves}
    table = Table(title=f"segment lookups, {args.users:,} users in Redis, {cores} cores")
    columns = ["server", f"req/s c={args.concurrency}", "p50 ms", "p99 ms", "half-peak req/s",
               "p50 ms", "p99 ms", f"p50 @{args.fixed_rate:,.0f}/s",
               f"p99 @{args.fixed_rate:,.0f}/s",
               f"batch users/s ({args.batch_size})", "loadgen CPU"]  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "server" else "right")
    for r in [*plains, *serves]:
        table.add_row(
            r["label"], f"{r['rps']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
            f"{r.get('half_achieved_rps', 0):,.0f}", f"{r.get('half_p50_ms', 0):.2f}",
            f"{r.get('half_p99_ms', 0):.2f}", f"{r.get('fixed_p50_ms', 0):.2f}",
            f"{r.get('fixed_p99_ms', 0):.2f}", f"{r['batch_users_per_s']:,}",
            f"{r['loadgen_cpu']:.2f}",
        )  # fmt: skip
    console.print(table)
    ratios = {n: serve_by[n]["rps"] / plain_by[n]["rps"] for n in counts}
    console.print(
        "Serve ÷ plain uvicorn, same number of processes: "
        + ", ".join(f"{n}: [bold]{r:.2f}[/]" for n, r in ratios.items())
    )
    first, top = counts[0], counts[-1]
    figures: dict[str, Any] = {
        "config": CONFIG_NAME,
        "users": args.users,
        "cores": cores,
        "concurrency": args.concurrency,
        "processes": counts,
        "publish_s": round(publish_s, 1),
        "ratio_serve_vs_plain": round(ratios[first], 3),
        **{f"ratio_serve_vs_plain_{n}": round(r, 3) for n, r in ratios.items()},
        **{f"plain_{n}_rps": plain_by[n]["rps"] for n in counts},
        **{f"serve_{n}_rps": serve_by[n]["rps"] for n in counts},
        **{f"plain_{n}_half_p99_ms": plain_by[n].get("half_p99_ms") for n in counts},
        **{f"serve_{n}_half_p99_ms": serve_by[n].get("half_p99_ms") for n in counts},
        "fixed_rate": args.fixed_rate,
        **{f"plain_{n}_fixed_p99_ms": plain_by[n].get("fixed_p99_ms") for n in counts},
        **{f"serve_{n}_fixed_p99_ms": serve_by[n].get("fixed_p99_ms") for n in counts},
        "serve_p50_ms": serve_by[top]["p50_ms"],
        "serve_p99_ms": serve_by[top]["p99_ms"],
        "serve_batch_users_per_s": serve_by[top]["batch_users_per_s"],
        "plain_batch_users_per_s": plain_by[top]["batch_users_per_s"],
        "plain": plains,
        "serve": serves,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
