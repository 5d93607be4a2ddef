"""Benchmark: generate, recompute and publish at 10M users in bounded memory, against 1M.

    python bench/scale.py [--users 10000000] [--days 90] [--data /tmp/strata-scale]
                          [--buckets 2048] [--actors 2] [--baseline-users 1000000]

For each size (the baseline first, then ``--users``) into ``<data>/users-<N>`` (replaced):

1. ``python -m jobs.generate --users N --days D --buckets B --overwrite`` in a child process.
2. An embedded redis-server (:class:`strata.io.redis_server.EmbeddedRedis`, nothing saved),
   then ``python -m jobs.recompute --as-of END --actors A`` in a child process with
   ``STRATA_REDIS_URL`` naming it: features, scoring, snapshot and the atomic publish. The
   stage times are the snapshot manifest's ``timings``; Redis bytes per user is INFO memory
   ``used_memory`` after the publish minus before, over the users published.

A sampler thread reads the RSS of EVERY process of the run every 0.5 s (psutil over this
process's tree: the job drivers, Ray's GCS, raylet and workers, the redis-server) and keeps
each process's peak under its role (``driver (jobs.generate)``, ``raylet``,
``ray::generate_shard``, ``ray::FeatureShard``, ...; a worker takes the last non-idle title
it had). The baseline keeps the users per bucket of the main run (its bucket count is scaled
down with the users), so a bounded process shows a peak-RSS ratio of ~1 and a linear stage a
time ratio of ``users / baseline_users``. The children's output goes to
``<data>/logs/<size>-<stage>.log``.

Rich progress, a summary table, and the last line one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _data
import numpy as np
import psutil
import redis
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from strata.io.redis_server import EmbeddedRedis
from strata.io.segment_store import SegmentStore
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse

ROOT = Path(__file__).resolve().parents[1]
console = Console()
MIB = 1024 * 1024
#: roles whose memory is the data itself (the online store), not a compute process
STORE_ROLES = {"redis-server"}


def role_of(proc: psutil.Process, bench_pid: int) -> str:
    """The role of one process of the run, from its (possibly rewritten) command line."""
    if proc.pid == bench_pid:
        return "bench"
    cmd = proc.cmdline()
    if not cmd:
        return proc.name()
    first = cmd[0].split()[0]  # Ray's workers and redis-server rewrite their title
    if first.startswith("ray::"):
        title = first.split(".")[0]  # ray::FeatureShard.features -> ray::FeatureShard
        return "ray worker (idle)" if title == "ray::IDLE" else title
    name = Path(first).name
    if name.startswith("redis-server"):
        return "redis-server"
    if name.startswith("python"):
        if "-m" in cmd:
            return f"driver ({cmd[cmd.index('-m') + 1]})"
        scripts = [Path(c).name for c in cmd[1:] if c.endswith(".py")]
        if scripts:
            return f"python {scripts[0]}"
        if any("default_worker" in c for c in cmd):
            return "ray worker (idle)"
    return name


@dataclass
class RssSampler:
    """Peak RSS of every process under this one, sampled from a thread.

    Attributes:
        by_pid: pid -> (role, peak RSS bytes); a worker's role is the last non-idle one.
        cpu_s: pid -> CPU seconds (user + system) at its last sample (a process that ends
            between two samples loses at most one interval's CPU).
        samples: samples taken.
    """

    interval_s: float = 0.5
    by_pid: dict[int, tuple[str, int]] = field(default_factory=dict)
    cpu_s: dict[int, float] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        """One pass over the process tree."""
        me = psutil.Process()
        try:
            procs = [me, *me.children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            try:
                rss = int(proc.memory_info().rss)
                role = role_of(proc, me.pid)
                cpu = proc.cpu_times()
            except psutil.Error:  # ended between the listing and the read
                continue
            old_role, old_rss = self.by_pid.get(proc.pid, (role, 0))
            if role == "ray worker (idle)" and old_role != role:
                role = old_role
            self.by_pid[proc.pid] = (role, max(old_rss, rss))
            self.cpu_s[proc.pid] = float(cpu.user + cpu.system)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    @contextmanager
    def running(self) -> Iterator[RssSampler]:
        """Sample from a thread while the block runs (and once at each end)."""
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.sample()

    def by_role(self) -> dict[str, float]:
        """Role -> the largest peak RSS of its processes, MiB."""
        out: dict[str, float] = {}
        for role, rss in self.by_pid.values():
            out[role] = max(out.get(role, 0.0), rss / MIB)
        return {k: round(v, 1) for k, v in sorted(out.items())}

    def cpu_by_role(self) -> dict[str, float]:
        """Role -> CPU seconds of all its processes so far."""
        out: dict[str, float] = {}
        for pid, seconds in self.cpu_s.items():
            role = self.by_pid[pid][0]
            out[role] = out.get(role, 0.0) + seconds
        return {k: round(v, 1) for k, v in sorted(out.items())}


def _run_stage(cmd: list[str], log: Path, env: dict[str, str]) -> float:
    """Run one stage's command in a child process (output to ``log``); its wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        console.print("\n".join(tail), markup=False, highlight=False)
        raise SystemExit(f"{' '.join(cmd[2:4])} failed (exit {proc.returncode}); see {log}")
    return seconds


def run_size(
    users: int,
    buckets: int,
    args: argparse.Namespace,
    bar: Progress,
) -> dict[str, Any]:
    """Generate, recompute and publish ``users`` users; their figures."""
    data = Path(args.data) / f"users-{users}"
    if data.exists():
        shutil.rmtree(data)
    logs = Path(args.data) / "logs"
    env = os.environ.copy()
    env.setdefault("STRATA_PSEUDONYM_KEY", _data.BENCH_KEY)
    env.pop("STRATA_REDIS_URL", None)
    env.pop("RAY_ADDRESS", None)
    py = sys.executable
    out: dict[str, Any] = {"users": users, "buckets": buckets, "data": str(data)}
    sampler = RssSampler()
    task = bar.add_task(f"{users:,} users: generate", total=2)
    with sampler.running():
        gen_cmd = [
            py, "-m", "jobs.generate", "--data", str(data), "--users", str(users),
            "--days", str(args.days), "--seed", str(args.seed), "--end", args.end,
            "--buckets", str(buckets), "--workers", str(args.actors), "--overwrite",
        ]  # fmt: skip
        out["generate_s"] = round(_run_stage(gen_cmd, logs / f"{users}-generate.log", env), 2)
        summary = Warehouse(str(data)).summary()
        out["events"] = int(summary["events"]["rows"])
        out["generate_rss_mib_by_role"] = sampler.by_role()
        out["generate_cpu_s_by_role"] = sampler.cpu_by_role()
        bar.update(task, advance=1, description=f"{users:,} users: recompute + publish")

        with EmbeddedRedis() as server:
            client = redis.Redis.from_url(server.url)
            before = int(client.info("memory")["used_memory"])
            env_rc = {**env, "STRATA_REDIS_URL": server.url}
            rc_cmd = [
                py, "-m", "jobs.recompute", "--data", str(data), "--as-of", args.end,
                "--actors", str(args.actors),
            ]  # fmt: skip
            out["recompute_wall_s"] = round(
                _run_stage(rc_cmd, logs / f"{users}-recompute.log", env_rc), 2
            )
            after = int(client.info("memory")["used_memory"])
            lookups = lookup_cost(server.url, client, str(data), args.lookups)
            client.close()
        bar.update(task, advance=1)
    snapshots = SnapshotStore(str(data))
    manifest = snapshots.manifest(snapshots.versions()[-1])
    timings = manifest["timings"]
    published = int(manifest["outputs"]["users"])
    out.update(
        {
            "published_users": published,
            "features_s": round(timings["features_s"], 2),
            "scoring_s": round(timings["scoring_s"], 2),
            "recompute_s": round(timings["features_s"] + timings["scoring_s"], 2),
            "publish_s": round(timings["publish_s"], 2),
            "recompute_total_s": round(timings["total_s"], 2),
            "redis_used_memory_mib": round((after - before) / MIB, 1),
            "redis_bytes_per_user": round((after - before) / max(published, 1), 1),
            "peak_rss_mib_by_role": sampler.by_role(),
            "rss_samples": sampler.samples,
            "recompute_cpu_s_by_role": {
                k: round(v - out["generate_cpu_s_by_role"].get(k, 0.0), 1)
                for k, v in sampler.cpu_by_role().items()
            },
            **lookups,
        }
    )
    compute = {k: v for k, v in out["peak_rss_mib_by_role"].items() if k not in STORE_ROLES}
    out["peak_rss_mib_max"] = max(out["peak_rss_mib_by_role"].values())
    out["peak_rss_mib_max_compute"] = max(compute.values())
    cores = args.actors
    out["events_per_s_generate"] = round(out["events"] / out["generate_s"])
    out["users_per_s_recompute_per_core"] = round(published / out["recompute_s"] / cores)
    out["users_per_s_features_per_core"] = round(published / out["features_s"] / cores)
    out["users_per_s_scoring_per_core"] = round(published / out["scoring_s"] / cores)
    out["users_per_s_publish"] = round(published / out["publish_s"])
    # per CPU-second of the stage's workers: what a core does without other load on it
    gen_cpu = out["generate_cpu_s_by_role"].get("ray::generate_shard", 0.0)
    rc_cpu = out["recompute_cpu_s_by_role"].get("ray::FeatureShard", 0.0)
    out["events_per_cpu_s_generate"] = round(out["events"] / gen_cpu) if gen_cpu else None
    out["users_per_cpu_s_recompute"] = round(published / rc_cpu) if rc_cpu else None
    if args.delete_data:
        shutil.rmtree(data, ignore_errors=True)
    return out


def _redis_cpu_s(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def lookup_cost(url: str, client: redis.Redis, data: str, n: int) -> dict[str, Any]:
    """Redis's own cost of the online lookups against the published version: ``n`` single
    lookups and ``n // 100`` batches of 1,000 (SegmentStore: one EVALSHA each, as the API),
    sequential from this process. ``usec_per_call`` is Redis's command time (INFO
    commandstats); ``cpu_us`` is the server's whole CPU (INFO cpu: parsing, replies and
    command together) per call, what bounds the lookups one Redis core can answer."""
    if n <= 0:
        return {}
    snapshots = SnapshotStore(data)
    version = snapshots.versions()[-1]
    rng = np.random.default_rng(0)
    wh = Warehouse(data)
    tables = [
        snapshots.read_bucket(version, int(b), wh.n_buckets, ["user_id"])
        for b in rng.choice(wh.buckets(), size=min(8, len(wh.buckets())), replace=False)
    ]
    ids = np.concatenate([t["user_id"].to_numpy() for t in tables if t is not None])
    store = SegmentStore(url)
    out: dict[str, Any] = {}
    for name, batch, calls in (("single", 1, n), ("batch_1000", 1000, max(1, n // 100))):
        pick = rng.choice(ids, size=batch * calls)
        store.get_many(pick[:batch])  # warm the script cache and the version meta
        client.config_resetstat()
        cpu0, t0 = _redis_cpu_s(client), time.perf_counter()
        for i in range(calls):
            store.get_many(pick[i * batch : (i + 1) * batch])
        wall, cpu = time.perf_counter() - t0, _redis_cpu_s(client) - cpu0
        stat = client.info("commandstats")["cmdstat_evalsha"]
        out[f"redis_lookup_{name}"] = {
            "calls": calls,
            "usec_per_call": round(float(stat["usec_per_call"]), 1),
            "cpu_us_per_call": round(cpu / calls * 1e6, 1),
            "client_calls_per_s": round(calls / wall),
        }
    store.close()
    return out


def _ratio(main: dict[str, Any], base: dict[str, Any], key: str, role: str) -> float | None:
    m, b = main[key].get(role), base[key].get(role)
    return round(m / b, 2) if m and b else None


def ratios(main: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Per-stage time ratios and per-role peak-RSS ratios, main / baseline."""
    stages = ["generate_s", "features_s", "scoring_s", "recompute_s", "publish_s"]
    rss_main, rss_base = main["peak_rss_mib_by_role"], base["peak_rss_mib_by_role"]
    return {
        "users_ratio": round(main["users"] / base["users"], 3),
        "time_ratio": {s: round(main[s] / base[s], 2) for s in stages},
        "peak_rss_ratio_by_role": {
            r: round(rss_main[r] / rss_base[r], 2)
            for r in sorted(set(rss_main) & set(rss_base))
            if rss_base[r] > 0
        },
        "worker_cpu_s_ratio": {
            role: _ratio(main, base, key, role)
            for key, role in (
                ("generate_cpu_s_by_role", "ray::generate_shard"),
                ("recompute_cpu_s_by_role", "ray::FeatureShard"),
            )
        },
        "peak_rss_ratio_max_compute": round(
            main["peak_rss_mib_max_compute"] / base["peak_rss_mib_max_compute"], 2
        ),
    }


def summary(runs: list[dict[str, Any]], limit_mib: float) -> Table:
    """Stage times, rates and peak RSS per size (the main run last)."""
    table = Table(title="strata at scale: generate, recompute, publish")
    table.add_column("what")
    for r in runs:
        table.add_column(f"{r['users']:,} users", justify="right")
    if len(runs) == 2:
        table.add_column("ratio", justify="right")
    rows: list[tuple[str, str, str]] = [
        ("buckets", "buckets", "d"),
        ("events", "events", ","),
        ("generate, s", "generate_s", ".1f"),
        ("  events/s", "events_per_s_generate", ","),
        ("  events per generate-task CPU-s", "events_per_cpu_s_generate", ","),
        ("features, s", "features_s", ".1f"),
        ("scoring, s", "scoring_s", ".1f"),
        ("  recompute users/s per core", "users_per_s_recompute_per_core", ","),
        ("  recompute users per actor CPU-s", "users_per_cpu_s_recompute", ","),
        ("publish, s", "publish_s", ".1f"),
        ("Redis bytes / user", "redis_bytes_per_user", ".1f"),
        ("peak RSS, any compute process (MiB)", "peak_rss_mib_max_compute", ",.0f"),
    ]
    for label, key, fmt in rows:
        cells = ["-" if r.get(key) is None else format(r[key], fmt) for r in runs]
        if len(runs) == 2:
            b, m = runs[0].get(key), runs[1].get(key)
            cells.append(f"{m / b:.2f}" if b and m else "-")
        table.add_row(label, *cells)
    roles = sorted({k for r in runs for k in r["peak_rss_mib_by_role"]})
    table.add_row("peak RSS by role (MiB)", *[""] * (len(runs) + (len(runs) == 2)))
    for role in roles:
        vals = [r["peak_rss_mib_by_role"].get(role) for r in runs]
        cells = ["-" if v is None else f"{v:,.0f}" for v in vals]
        if len(runs) == 2:
            b, m = vals
            cells.append(f"{m / b:.2f}" if b and m else "-")
        over = any(v is not None and v > limit_mib for v in vals) and role not in STORE_ROLES
        table.add_row(f"  [red]{role}" if over else f"  {role}", *cells)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument(
        "--data", default=os.environ.get("STRATA_SCALE_DATA", "/tmp/strata-scale"),
        help="scratch root: <data>/users-<N> per size (replaced), <data>/logs",
    )  # fmt: skip
    ap.add_argument(
        "--buckets", type=int, default=2048,
        help="warehouse buckets at --users (the baseline keeps the users per bucket)",
    )  # fmt: skip
    ap.add_argument("--actors", type=int, default=2, help="feature actors = generate workers")
    ap.add_argument("--baseline-users", type=int, default=1_000_000, help="0: no baseline")
    ap.add_argument("--end", default=_data.DEFAULT_END, help="generated end = as-of")
    ap.add_argument("--seed", type=int, default=_data.DEFAULT_SEED)
    ap.add_argument("--limit-mib", type=float, default=2048, help="peak RSS bound per process")
    ap.add_argument(
        "--lookups", type=int, default=20_000,
        help="single lookups timed against Redis after each publish (and n/100 batches)",
    )  # fmt: skip
    ap.add_argument("--delete-data", action="store_true", help="remove each size's data root")
    args = ap.parse_args()
    if args.users < 1 or args.buckets < 1 or args.actors < 1 or args.baseline_users < 0:
        raise SystemExit("--users, --buckets and --actors must be at least 1")
    sizes = [(args.users, args.buckets)]
    if args.baseline_users:
        base_buckets = max(1, round(args.buckets * args.baseline_users / args.users))
        sizes.insert(0, (args.baseline_users, base_buckets))
    free = shutil.disk_usage(Path(args.data).parent if not Path(args.data).exists() else args.data)
    console.print(
        f"sizes {', '.join(f'{u:,} users / {b} buckets' for u, b in sizes)}; "
        f"{free.free / 1e9:.0f} GB free for {args.data} (~1.6 GB per 1M users x 90 days)"
    )
    runs: list[dict[str, Any]] = []
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console,
    ) as bar:  # fmt: skip
        for users, buckets in sizes:
            runs.append(run_size(users, buckets, args, bar))
            console.print(json.dumps(runs[-1]), markup=False, highlight=False)
    console.print(summary(runs, args.limit_mib))
    main_run = runs[-1]
    figures: dict[str, Any] = {
        k: main_run[k]
        for k in (
            "users", "events", "buckets", "generate_s", "features_s", "scoring_s",
            "recompute_s", "publish_s", "recompute_total_s", "peak_rss_mib_max",
            "peak_rss_mib_max_compute", "peak_rss_mib_by_role", "redis_bytes_per_user",
            "redis_used_memory_mib", "events_per_s_generate", "users_per_s_recompute_per_core",
            "users_per_s_features_per_core", "users_per_s_scoring_per_core", "users_per_s_publish",
            "redis_lookup_single", "redis_lookup_batch_1000", "events_per_cpu_s_generate",
            "users_per_cpu_s_recompute", "generate_cpu_s_by_role", "recompute_cpu_s_by_role",
        )
        if k in main_run
    }  # fmt: skip
    figures["actors"] = args.actors
    figures["days"] = args.days
    figures["within_limit"] = main_run["peak_rss_mib_max_compute"] <= args.limit_mib
    if len(runs) == 2:
        figures["baseline"] = runs[0]
        figures.update(ratios(main_run, runs[0]))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
