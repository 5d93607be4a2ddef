"""Benchmark of the real-time loop against raw Redis Streams, in one run on the same Redis.

    python bench/stream.py [--events 200000] [--users 100000] [--workers 2]
                           [--only baseline,processed]

1. baseline: raw XADD of the events, then ``workers`` processes doing XREADGROUP (500 at a
   time) + XACK over the same partitions with no processing at all: the most a consumer of
   these streams can do here.
2. processed: the same number of live events (a grocery mix: visits, views, carts, orders,
   reviews; timestamps in the last 40 minutes, so every shipped rule is live) appended with
   ``EventAppender`` and drained by ``workers`` stream workers (Ray actors) with all shipped
   rules active, against a published snapshot of ``users`` users: events/s processed.
3. accepted: ``POST /v1/events`` in batches of 500 on plain uvicorn (closed loop): events/s.
4. latency: event → action of the ``negative_review`` event rule with the workers running and
   events appended at a fixed 2,000 events/s (5 % negative reviews): p50/p99 from the time
   the event is appended to the time its action is in the outbox (the outbox entry's id).

Goals (issue 12): >= 20,000 events/s processed, >= 10,000 events/s accepted, p99 <= 100 ms.
``--only`` runs some of the four parts (comma-separated names; the ratio needs baseline and
processed); the default runs all. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import build_request, measure_in_subprocess
from bench.serve import BENCH_KEY, FIRST_RAW_ID, publish, wait_ok
from strata.ids import pseudonymise_many
from strata.io.event_log import EventAppender
from strata.io.redis_server import EmbeddedRedis, free_port
from strata.realtime.keys import ENTRY_FIELD, OUTBOX_FIELD, RealtimeKeys
from strata.realtime.stream_config import load_stream_config
from strata.realtime.wire import encode_event
from strata.schema import CATEGORIES

console = Console(width=150)
ROOT = Path(__file__).resolve().parents[1]
NS = "strata"
HTTP_NS = "httpbench"
MIX = [
    ("app_visit", 0.22),
    ("item_view", 0.34),
    ("category_view", 0.08),
    ("search", 0.05),
    ("add_to_cart", 0.12),
    ("favourite", 0.04),
    ("order", 0.07),
    ("review", 0.05),
    ("coupon_claim", 0.03),
]


def make_events(n: int, user_ids: np.ndarray, seed: int, now_ms: int) -> list[dict[str, Any]]:
    """``n`` live wire events of a grocery mix over ``user_ids``, ordered by time."""
    rng = np.random.default_rng(seed)
    kinds = np.asarray([k for k, _ in MIX])
    p = np.asarray([w for _, w in MIX])
    types = kinds[rng.choice(len(kinds), n, p=p / p.sum())]
    users = user_ids[rng.integers(0, len(user_ids), n)]
    ts = np.sort(now_ms - rng.integers(0, 40 * 60_000, n))
    cats = np.asarray(CATEGORIES)[rng.integers(0, len(CATEGORIES), n)]
    amounts = np.round(rng.gamma(2.0, 60.0, n), 2)
    ratings = rng.integers(1, 6, n)
    out: list[dict[str, Any]] = []
    for i in range(n):
        t = str(types[i])
        ev: dict[str, Any] = {
            "event_id": f"b{seed}.{i}",
            "user_id": int(users[i]),
            "event_type": t,
            "ts": int(ts[i]),
            "received_ms": now_ms,
        }
        if t in ("add_to_cart", "item_view", "category_view", "favourite"):
            ev["category"] = str(cats[i])
        elif t == "order":
            ev.update(
                order_id=f"o{seed}.{i}", amount_cny=float(amounts[i]), categories=[str(cats[i])]
            )
        elif t == "review":
            ev["rating"] = int(ratings[i])
        out.append(ev)
    return out


# ---------------------------------------------------------------------- 1. baseline
def _raw_consumer(url: str, streams: list[str], total: int, counter: Any) -> None:
    r = redis.Redis.from_url(url)
    group = "raw"
    while counter.value < total:
        reply = r.xreadgroup(group, "c", {s: ">" for s in streams}, count=500, block=100)
        if not reply:
            continue
        pipe = r.pipeline(transaction=False)
        got = 0
        for name, items in reply:
            pipe.xack(name, group, *[i for i, _ in items])
            got += len(items)
        pipe.execute()
        with counter.get_lock():
            counter.value += got


def baseline(
    url: str, events: list[dict[str, Any]], partitions: int, workers: int
) -> dict[str, Any]:
    r = redis.Redis.from_url(url)
    keys = RealtimeKeys("rawbench")
    streams = [keys.stream(p) for p in range(partitions)]
    t0 = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for i, ev in enumerate(events):
        pipe.xadd(streams[ev["user_id"] % partitions], {ENTRY_FIELD: encode_event(ev)})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    xadd_s = time.perf_counter() - t0
    for s in streams:
        r.xgroup_create(s, "raw", id="0")
    counter = mp.Value("q", 0)
    procs = [
        mp.Process(target=_raw_consumer, args=(url, streams[w::workers], len(events), counter))
        for w in range(workers)
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    read_s = time.perf_counter() - t0
    r.delete(*streams)
    return {
        "raw_xadd_per_s": round(len(events) / xadd_s),
        "raw_events_per_s": round(len(events) / read_s),
    }


# ---------------------------------------------------------------------- 2. processed
def processed(url: str, events: list[dict[str, Any]], workers: int, data: str) -> dict[str, Any]:
    import ray

    from actors.stream_worker import ACTOR_OPTIONS, StreamWorkerActor

    cfg = load_stream_config()
    appender = EventAppender(url, NS, cfg)
    t0 = time.perf_counter()
    for s in range(0, len(events), 500):
        res = appender.append(events[s : s + 500])
        if res.refused:
            raise RuntimeError("backlog refused the prefill: raise max_backlog")
    append_s = time.perf_counter() - t0
    partitions = appender.partitions
    appender.close()
    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        actors = [
            StreamWorkerActor.options(num_cpus=1, **ACTOR_OPTIONS).remote(
                i, workers, partitions, url, NS, data, cfg.model_dump_json(), None
            )
            for i in range(workers)
        ]
        ray.get([a.pid.remote() for a in actors])
        t0 = time.perf_counter()
        runs = [a.run.remote() for a in actors]
        done = 0
        while done < len(events):
            time.sleep(0.2)
            done = sum(s["events"] for s in ray.get([a.stats.remote() for a in actors]))
            if time.perf_counter() - t0 > 600:
                raise TimeoutError(f"only {done} of {len(events)} events processed in 600 s")
        elapsed = time.perf_counter() - t0
        stats = ray.get([a.stats.remote() for a in actors])
        for a in actors:
            a.stop.remote()
        ray.get(runs)
    finally:
        ray.shutdown()
    return {
        "append_events_per_s": round(len(events) / append_s),
        "processed_events_per_s": round(len(events) / elapsed),
        "actions": sum(s["actions"] for s in stats),
        "suppressed": sum(s["suppressed"] for s in stats),
        "timers": sum(s["timers"] for s in stats),
    }


# ---------------------------------------------------------------------- 3. accepted
def accepted(url: str, data: str, n_users: int, seconds: float) -> dict[str, Any]:
    # every request unique (a repeated batch would be answered as duplicates, cheaper): more
    # requests than the run can send (~200 per connection and second)
    n_requests = 4 * int((seconds + 0.5) * 200)
    api_key = "bench-events-key-0123456789abcdef"
    import hashlib

    keys_json = json.dumps(
        [
            {
                "name": "bench",
                "scopes": ["events:write"],
                "sha256": hashlib.sha256(api_key.encode()).hexdigest(),
            }
        ]
    )
    env = {
        **os.environ,
        "STRATA_REDIS_URL": url,
        "STRATA_PSEUDONYM_KEY": BENCH_KEY,
        "STRATA_API_KEYS": keys_json,
        "STRATA_DATA": data,
        # its own key space: the events it accepts must not queue before the latency run's
        "STRATA_REDIS_NAMESPACE": HTTP_NS,
    }
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "api.app:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ok(f"{base}/healthz")
        rng = np.random.default_rng(7)
        requests = []
        now_ms = time.time_ns() // 1_000_000
        for r in range(n_requests):
            evs = []
            for j in range(500):
                u = FIRST_RAW_ID + int(rng.integers(0, n_users))
                evs.append(
                    {
                        "user_id": str(u),
                        "event_type": "item_view",
                        "category": "fruit",
                        "ts": now_ms - j,
                        "event_id": f"h{r}.{j}",
                    }
                )
            body = orjson.dumps({"events": evs})
            requests.append(
                build_request(
                    f"{base}/v1/events",
                    "POST",
                    body,
                    [("Authorization", f"Bearer {api_key}"), ("Content-Type", "application/json")],
                )
            )
        result = measure_in_subprocess(
            f"{base}/v1/events",
            requests,
            concurrency=4,
            seconds=seconds,
            warmup_s=1.0,
            offset_step=len(requests) // 4,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    if result.errors:
        raise RuntimeError(f"POST /v1/events answered errors: {result.statuses}")
    r = redis.Redis.from_url(url)
    keys = RealtimeKeys(HTTP_NS)
    appended = sum(r.xlen(keys.stream(p)) for p in range(load_stream_config().partitions))
    sent = len(requests) * 500
    if appended > sent:
        raise RuntimeError(f"{appended} events appended from {sent} sent")
    # every 202 must have appended its 500 new events (no request was a repeat)
    if appended < result.ok * 500:
        raise RuntimeError(f"only {appended} events appended for {result.ok} batches: repeats")
    for key in r.scan_iter(match=f"{HTTP_NS}:*", count=10_000):
        r.unlink(key)
    return {
        "http_accepted_events_per_s": round(result.rps * 500),
        "http_requests_ok": result.ok,
        "http_events_appended": appended,
        "http_p99_ms_per_batch": round(result.p99_ms, 2),
    }


# ---------------------------------------------------------------------- 4. latency
def latency(
    url: str, user_ids: np.ndarray, workers: int, data: str, seconds: float, rate: int
) -> dict[str, Any]:
    import ray

    from actors.stream_worker import ACTOR_OPTIONS, StreamWorkerActor

    cfg = load_stream_config()
    r = redis.Redis.from_url(url)
    keys = RealtimeKeys(NS)
    outboxes = [keys.outbox(p) for p in range(cfg.partitions)]  # one per partition
    r.delete(*outboxes)
    # the processed run spent the day's budgets (negative_review: 2,000 a day): a fresh day
    for key in r.scan_iter(match=f"{keys.prefix}budget:*", count=10_000):
        r.unlink(key)
    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    sent: dict[str, int] = {}
    try:
        actors = [
            StreamWorkerActor.options(num_cpus=1, **ACTOR_OPTIONS).remote(
                i,
                workers,
                EventAppender(url, NS, cfg).partitions,
                url,
                NS,
                data,
                cfg.model_dump_json(),
                None,
            )
            for i in range(workers)
        ]
        ray.get([a.pid.remote() for a in actors])
        runs = [a.run.remote() for a in actors]
        time.sleep(2)  # leases taken, groups created
        appender = EventAppender(url, NS, cfg)
        rng = np.random.default_rng(11)
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        t_start = time.perf_counter()
        i = 0
        while time.perf_counter() - t_start < seconds:
            target = t_start + (i // per_tick + 1) * tick
            batch = []
            now_ms = time.time_ns() // 1_000_000
            for _ in range(per_tick):
                u = int(user_ids[rng.integers(0, len(user_ids))])
                neg = rng.random() < 0.05
                eid = f"l{i}"
                ev: dict[str, Any] = {
                    "event_id": eid,
                    "user_id": u,
                    "ts": now_ms,
                    "received_ms": now_ms,
                }
                if neg:
                    ev.update(event_type="review", rating=1)
                    sent[eid] = now_ms
                else:
                    ev.update(event_type="item_view", category="fruit")
                batch.append(ev)
                i += 1
            appender.append(batch)
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        sent_rate = i / (time.perf_counter() - t_start)
        time.sleep(1.5)
        for a in actors:
            a.stop.remote()
        ray.get(runs)
    finally:
        ray.shutdown()
    lat: list[float] = []
    for entry_id, fields in (e for o in outboxes for e in r.xrange(o, "-", "+")):
        action = orjson.loads(fields[OUTBOX_FIELD])
        eid = (action.get("trigger") or {}).get("event_id")
        if action["rule"] == "negative_review" and eid in sent and action["action"] == "coupon":
            lat.append(int(entry_id.split(b"-")[0]) - sent[eid])
    if not lat:
        raise RuntimeError("no negative_review action reached the outbox")
    arr = np.asarray(lat, dtype=float)
    return {
        "latency_rate_events_per_s": round(sent_rate),
        "latency_samples": len(lat),
        "latency_expected": len(sent),
        "latency_p50_ms": round(float(np.percentile(arr, 50)), 1),
        "latency_p99_ms": round(float(np.percentile(arr, 99)), 1),
    }


PARTS = ("baseline", "processed", "accepted", "latency")


def _parts(text: str) -> set[str]:
    names = {p.strip() for p in text.split(",") if p.strip()}
    bad = sorted(names - set(PARTS))
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"--only takes a comma-separated list of {', '.join(PARTS)}, not {text!r}"
        )
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0, help="HTTP and latency runs")
    ap.add_argument("--rate", type=int, default=2000, help="events/s of the latency run")
    ap.add_argument("--data", default="/tmp/strata-bench-stream")
    ap.add_argument(
        "--only",
        type=_parts,
        default=set(PARTS),
        help=f"run only these parts, comma-separated: {','.join(PARTS)} (default: all)",
    )
    args = ap.parse_args()
    only: set[str] = args.only
    os.environ["STRATA_PSEUDONYM_KEY"] = BENCH_KEY
    os.makedirs(args.data, exist_ok=True)
    figures: dict[str, Any] = {
        "events": args.events,
        "users": args.users,
        "workers": args.workers,
        "cores": os.cpu_count(),
    }
    with EmbeddedRedis() as server:
        url = server.url
        publish(url, args.users, BENCH_KEY.encode())
        ids = pseudonymise_many(
            [str(FIRST_RAW_ID + i) for i in range(args.users)], BENCH_KEY.encode()
        )
        cfg = load_stream_config()
        figures["partitions"] = cfg.partitions
        now_ms = time.time_ns() // 1_000_000
        events = make_events(args.events, ids, 1, now_ms)
        if "baseline" in only:
            console.print(
                f"1. raw streams baseline ({args.events:,} entries, {args.workers} consumers)"
            )
            figures.update(baseline(url, events, cfg.partitions, args.workers))
        if "processed" in only:
            console.print(f"2. stream workers, all shipped rules ({args.workers} workers)")
            figures.update(processed(url, events, args.workers, args.data))
        if {"baseline", "processed"} <= only:
            figures["ratio_vs_raw_streams"] = round(
                figures["processed_events_per_s"] / figures["raw_events_per_s"], 3
            )
        if "accepted" in only:
            console.print("3. POST /v1/events, batches of 500 (plain uvicorn, 2 workers)")
            figures.update(accepted(url, args.data, args.users, min(args.seconds, 2.0)))
        if "latency" in only:
            console.print(f"4. event -> action latency at {args.rate:,} events/s")
            figures.update(latency(url, ids, args.workers, args.data, args.seconds, args.rate))
    table = Table(title="bench/stream.py")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in figures.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
