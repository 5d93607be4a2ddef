"""Benchmark: the heavy faults of issue 16, with more load and repeats than tests/faults/.

    python bench/chaos.py [--users 3000] [--repeats 2] [--only node,publish,stream,replica]

1. node: a worker node of a 2-node ``ray.cluster_utils.Cluster`` killed at each kill point of
   the recompute (after features, after scoring, a moment into scoring, a moment into the
   publish pass), ``--repeats`` times; a probe does batch lookups throughout. Figures: runs
   completed, snapshots byte-identical to the fault-free one, actors on the killed node,
   seconds per faulty run against the fault-free one, lookups answered / failed / mixed.
2. publish: Redis restarted (graceful; SIGKILL) the moment a publish's writers begin.
   Figures per kind: publishes failed cleanly or completed, versions left behind, the outage,
   lookups answered / failed / mixed, answers of the previous version after the restart.
3. stream: Redis restarted under a steady event rate (graceful with ``appendfsync
   everysec``; SIGKILL with everysec; SIGKILL with ``always``): events acknowledged vs sunk
   into the warehouse (lost, extra, twice), actions issued vs unique.
4. replica: the Ray Serve app with 2 replicas under an open-loop 500 req/s of segment lookups;
   one replica actor killed (``ray.kill``); per-second success and failure, the failed share
   of the worst second, and the seconds until every second is back to full rate and success.

Each part runs the functions the fault tests run (tests/faults/). Shows progress, ends with a
summary table and ONE JSON line of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from pydantic import SecretStr
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from tests.conftest import TEST_KEY

console = Console(width=150)
PARTS = ("node", "publish", "stream", "replica")
END = dt.date(2026, 10, 1)


def generate(root: str, users: int) -> None:
    """A warehouse of ``users`` x 60 days (on a local Ray in a child: the parent stays free
    of Ray for the node part's own cluster)."""
    import subprocess

    code = (
        "import datetime as dt; from pydantic import SecretStr; from jobs import generate; "
        "from strata.settings import Settings; "
        f"generate.run(Settings(data={root!r}, pseudonym_key=SecretStr({TEST_KEY!r}), "
        f"n_buckets=8, num_cpus=2), users={users}, days=60, seed=11, end=dt.date(2026, 10, 1))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def copy_warehouse(src: str, dst: str) -> str:
    import shutil

    shutil.copytree(Path(src) / "warehouse", Path(dst) / "warehouse")
    return dst


def part_node(base: str, args: Any) -> dict[str, Any]:
    from strata.io.redis_server import EmbeddedRedis
    from tests.faults.test_node_kill import KILL_POINTS, run_child

    runs: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    fault_free: list[float] = []
    for r in range(args.repeats):
        data = copy_warehouse(base, tempfile.mkdtemp(prefix="chaos-node-") + "/data")
        with EmbeddedRedis() as server:
            out = run_child(data, server.url, list(KILL_POINTS), args.delay_s, timeout_s=900)
        if "error" in out:
            raise RuntimeError(f"node kill, repeat {r}: {out['error']}")
        runs += out["runs"]
        probes.append(out["probe"])
        fault_free.append(out["fault_free_s"] / 2)  # two fault-free recomputes
    by_point = {p: [x for x in runs if x["kill_at"] == p] for p in KILL_POINTS}
    return {
        "runs": len(runs),
        "killed": sum(x["killed"] for x in runs),
        "completed": sum(x["completed"] for x in runs),
        "identical": sum(bool(x.get("identical")) for x in runs),
        "actors_on_killed_node": sum(x.get("actors_on_worker", 0) for x in runs),
        "fault_free_s": round(float(np.mean(fault_free)), 2),
        "faulty_s": {
            p: round(float(np.mean([x["seconds"] for x in v])), 2) for p, v in by_point.items() if v
        },
        "lookups": sum(p["answers"] for p in probes),
        "lookup_errors": sum(p["errors"] for p in probes),
        "mixed": sum(p["mixed"] + p["unknown_versions"] for p in probes),
        "flips": sum(p["flips"] for p in probes),
    }


def part_publish(base: str, args: Any) -> dict[str, Any]:
    from strata.io.redis_server import EmbeddedRedis
    from tests.faults.test_redis_restart import HOW, publish_with_restart

    figures: dict[str, Any] = {}
    for how in HOW:
        outs = []
        for _ in range(args.repeats):
            root = tempfile.mkdtemp(prefix="chaos-publish-")
            data = copy_warehouse(base, root + "/data")
            with EmbeddedRedis(persist_dir=root + "/redis", supervise=True) as server:
                outs.append(publish_with_restart(data, server, how))
        figures[how] = {
            "runs": len(outs),
            "failed_cleanly": sum(
                not o["completed"] and o["current"] == o["previous"] and not o["stray_version"]
                for o in outs
            ),
            "completed": sum(o["completed"] for o in outs),
            "left_behind": sum(o["stray_version"] for o in outs),
            "down_s": round(float(np.mean([o.get("down_s", 0) for o in outs])), 3),
            "lookups": sum(o["probe"]["answers"] for o in outs),
            "lookup_errors": sum(o["probe"]["errors"] for o in outs),
            "mixed": sum(o["probe"]["mixed"] + o["probe"]["unknown_versions"] for o in outs),
            "previous_after_restart": sum(o["probe"]["previous_after_restart"] for o in outs),
        }
    return figures


def part_stream(args: Any) -> dict[str, Any]:
    from strata.io.redis_server import EmbeddedRedis
    from strata.settings import Settings
    from tests.faults.test_stream_restart import stream_with_restart

    figures: dict[str, Any] = {}
    for how, fsync in (("graceful", "everysec"), ("sigkill", "everysec"), ("sigkill", "always")):
        root = tempfile.mkdtemp(prefix="chaos-stream-")
        settings = Settings(data=root + "/data", pseudonym_key=SecretStr(TEST_KEY), n_buckets=16)
        with EmbeddedRedis(persist_dir=root + "/redis", supervise=True, appendfsync=fsync) as rs:
            out = stream_with_restart(
                settings, rs, how, rate_per_s=args.event_rate, seconds=args.stream_s,
                restarts=args.restarts, n_users=1000,
            )  # fmt: skip
        figures[f"{how}_{fsync}"] = {
            k: out[k]
            for k in ("events", "accepted", "sunk", "lost", "extra", "retried_batches",
                      "actions", "actions_unique", "fired", "action_rows", "down_s")
        }  # fmt: skip
        figures[f"{how}_{fsync}"]["sunk_twice"] = out["sunk"] - out["sunk_unique"]
    return figures


#: failed answers of the last :func:`timeline` by "second:status" (0: no answer in 2 s or
#: a refused connection)
statuses: dict[str, int] = {}


async def timeline(
    url: str, requests: list[bytes], rate: float, seconds: float, conns: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """An open loop of ``rate`` req/s for ``seconds``: ok and failed answers per second (by
    scheduled time), and the start time (perf_counter)."""
    from urllib.parse import urlsplit

    from loadgen import _connect  # the same raw keep-alive connections as bench/serve.py

    parts = urlsplit(url)
    n = int(seconds)
    ok = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=np.int64)
    statuses.clear()
    t0 = time.perf_counter() + 0.5
    interval = conns / rate

    async def worker(i: int) -> None:
        conn = None
        k = i
        scheduled = t0 + i / rate
        while scheduled < t0 + n:
            now = time.perf_counter()
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
            try:
                if conn is None or conn.closed:
                    conn = await _connect(parts.hostname or "127.0.0.1", parts.port or 80)
                status = await asyncio.wait_for(conn.send(requests[k % len(requests)]), 2.0)
            except (TimeoutError, OSError):
                status = 0
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
            second = int(scheduled - t0)
            if 0 <= second < n:
                (ok if 200 <= status < 300 else bad)[second] += 1
                if not 200 <= status < 300:
                    statuses[f"{second}:{status}"] = statuses.get(f"{second}:{status}", 0) + 1
            k += conns
            scheduled += interval
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(worker(i) for i in range(conns)))
    return ok, bad, t0


def part_replica(args: Any) -> dict[str, Any]:
    import threading

    from api.deployment import isolated_serve_env

    os.environ.update(isolated_serve_env())
    if args.retry_on:  # HAProxy's retry-on (Serve's default: conn-failure), before Ray starts
        os.environ["RAY_SERVE_HAPROXY_RETRY_ON"] = args.retry_on
    import ray
    from ray import serve
    from serve import make_requests, publish  # bench/serve.py (bench/ is on sys.path)

    from api.deployment import start
    from strata.io.redis_server import EmbeddedRedis, free_port
    from strata.serving.apikeys import dump_records, new_key
    from strata.settings import Settings

    api_key, record = new_key("chaos", ["segments:read"])
    with EmbeddedRedis() as rs, tempfile.TemporaryDirectory(prefix="chaos-serve-") as data:
        publish(rs.url, 100_000, TEST_KEY.encode())
        settings = Settings(data=data, redis_url=rs.url, pseudonym_key=SecretStr(TEST_KEY),
                            api_keys=dump_records([record]))  # fmt: skip
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            base = start(settings, port=free_port(), num_replicas=2)
            singles, _ = make_requests(base, api_key, 100_000, 10)
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if "SERVE_REPLICA" in a["name"]]  # fmt: skip
            killed: dict[str, float] = {}

            def kill() -> None:
                time.sleep(0.5 + args.kill_at_s)
                victim = ray.get_actor(names[0], namespace="serve")
                killed["at"] = time.perf_counter()
                ray.kill(victim, no_restart=True)  # Serve's controller starts a new one

            # warm-up: both replicas answering (HAProxy picks the second up a moment late)
            asyncio.run(timeline(base, singles, args.rate, 5.0, 32))
            threading.Thread(target=kill, daemon=True).start()
            ok, bad, t0 = asyncio.run(timeline(base, singles, args.rate, args.serve_s, 32))
            serve.shutdown()
        finally:
            ray.shutdown()
    k = int(killed["at"] - t0)
    full = [(ok[s] >= 0.99 * args.rate and bad[s] == 0) for s in range(len(ok))]
    back = next((s for s in range(k, len(ok)) if all(full[s:])), None)
    worst = max(range(k, len(ok)), key=lambda s: bad[s] / max(1, ok[s] + bad[s]))
    return {
        "retry_on": args.retry_on or "conn-failure (Serve's default)",
        "replicas": len(names),
        "rate": args.rate,
        "kill_second": k,
        "ok_per_s": ok.tolist(),
        "failed_per_s": bad.tolist(),
        "failed_share_worst_second": round(float(bad[worst] / max(1, ok[worst] + bad[worst])), 4),
        "failed_total": int(bad.sum()),
        "failed_by_second_status": dict(statuses),
        "recovery_s": None if back is None else round(back + 1 - (killed["at"] - t0), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=3000, help="warehouse users (node, publish)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--delay-s", type=float, default=0.3, help="kill this long into a pass")
    ap.add_argument("--event-rate", type=float, default=500.0)
    ap.add_argument("--stream-s", type=float, default=20.0)
    ap.add_argument("--restarts", type=int, default=2, help="Redis restarts per stream run")
    ap.add_argument("--rate", type=float, default=500.0, help="req/s of the replica part")
    ap.add_argument("--serve-s", type=float, default=30.0)
    ap.add_argument("--kill-at-s", type=float, default=10.0)
    ap.add_argument(
        "--retry-on", default="",
        help="replica part: HAProxy's retry-on, e.g. 'conn-failure empty-response' (default: "
        "Serve's, conn-failure only)",
    )  # fmt: skip
    ap.add_argument("--only", default=",".join(PARTS))
    args = ap.parse_args()
    parts = [p for p in args.only.split(",") if p]
    if set(parts) - set(PARTS):
        ap.error(f"--only: parts are {', '.join(PARTS)}")
    os.environ.setdefault("STRATA_PSEUDONYM_KEY", TEST_KEY)
    os.environ.setdefault("STRATA_REDIS_SERVER", "bundled")
    figures: dict[str, Any] = {"users": args.users, "repeats": args.repeats}
    base = tempfile.mkdtemp(prefix="chaos-warehouse-") + "/data"
    t_all = time.perf_counter()
    with Progress(console=console) as bar:
        task = bar.add_task("chaos", total=len(parts) + 1)
        if {"node", "publish"} & set(parts):
            bar.update(task, description=f"generating {args.users:,} users")
            generate(base, args.users)
        bar.advance(task)
        for part in parts:  # node first: its cluster runs in a child, before any local Ray
            bar.update(task, description=part)
            t0 = time.perf_counter()
            local_ray(part in ("publish", "stream"))
            if part == "node":
                figures["node"] = part_node(base, args)
            elif part == "publish":
                figures["publish"] = part_publish(base, args)
            elif part == "stream":
                figures["stream"] = part_stream(args)
            else:
                figures["replica"] = part_replica(args)
            figures[f"{part}_s"] = round(time.perf_counter() - t0, 1)
            bar.advance(task)
    local_ray(False)
    figures["total_s"] = round(time.perf_counter() - t_all, 1)
    print_table(figures)
    print(json.dumps(figures))


def local_ray(wanted: bool) -> None:
    """A local Ray (2 CPUs) for the parts that run recomputes and stream workers in this
    process; none for the replica part, which starts its own with Serve's environment."""
    import ray

    if wanted and not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    elif not wanted and ray.is_initialized():
        ray.shutdown()


def print_table(f: dict[str, Any]) -> None:
    table = Table(title="heavy faults (bench/chaos.py)")
    for col in ("fault", "figure", "value"):
        table.add_column(col, justify="left" if col != "value" else "right")
    for part in PARTS:
        if part not in f:
            continue
        rows = f[part].items() if part in ("node", "replica") else [
            (f"{k}: {kk}", vv) for k, v in f[part].items() for kk, vv in v.items()
        ]  # fmt: skip
        for name, value in rows:
            if name in ("ok_per_s", "failed_per_s"):
                continue
            table.add_row(part, str(name), json.dumps(value))
    console.print(table)


if __name__ == "__main__":
    main()
