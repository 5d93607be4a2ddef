"""Where one stream worker's rounds spend their time, in-process (no Ray), on bench/stream.py's
kind of data.

    python bench/stream_phases.py [--events 100000] [--users 100000] [--profile FILE]

Publishes a snapshot of ``users`` users on an embedded Redis, appends ``events`` events of
bench/stream.py's grocery mix (timestamps in the last 40 minutes), then runs worker 0 of 2
(its 4 of the 8 partitions) round after round until a round finds no new entry (that last
round, which blocked for nothing, counts in no figure). Each phase
of ``StreamWorker._round`` / ``_process`` is timed, and every request written to a Redis
connection is counted (a pipeline or a MULTI/EXEC is one round trip). The table shows per
phase: seconds, share of the rounds' time, round trips, commands, and microseconds per event;
then the CPU seconds of the worker and of redis-server (with its costliest commands) and the
garbage collector's time during the rounds. The last line is one JSON object. ``--profile
FILE`` also writes a cProfile dump of the rounds. The heap here is not a Ray actor's (no
Ray), so the collector's share differs from bench/stream.py's workers.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.connection
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serve import BENCH_KEY, FIRST_RAW_ID, publish
from bench.stream import NS, make_events
from strata.ids import pseudonymise_many
from strata.io.event_log import EventAppender
from strata.io.redis_server import EmbeddedRedis
from strata.realtime.stream_config import load_stream_config

console = Console(width=150)

#: phase -> [seconds, calls, round trips, commands]
_PHASES: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0, 0])
_TRIPS = [0]
_COMMANDS = [0]
_ACTIVE: list[str] = []
#: time in the garbage collector during rounds, and its collections per generation
_GC = {"s": 0.0, "started": 0.0}
_GC_RUNS = [0, 0, 0]


def _gc_timer(phase: str, info: dict[str, Any]) -> None:
    if not _ACTIVE:
        return
    if phase == "start":
        _GC["started"] = time.perf_counter()
    else:
        _GC["s"] += time.perf_counter() - _GC["started"]
        _GC_RUNS[info["generation"]] += 1


def _count_trips() -> None:
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        _TRIPS[0] += 1
        send(self, command, check_health)

    pack = redis.connection.PythonRespSerializer.pack

    def counted_pack(self: Any, *args: Any) -> Any:
        _COMMANDS[0] += 1
        return pack(self, *args)

    redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    redis.connection.PythonRespSerializer.pack = counted_pack  # type: ignore[method-assign]


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        trips0, commands0 = _TRIPS[0], _COMMANDS[0]
        t0 = time.perf_counter()
        _ACTIVE.append(name)
        try:
            return fn(*args, **kwargs)
        finally:
            _ACTIVE.pop()
            row = _PHASES[name]
            row[0] += time.perf_counter() - t0
            row[1] += 1
            row[2] += _TRIPS[0] - trips0
            row[3] += _COMMANDS[0] - commands0

    return wrapper


def _instrument(worker: Any) -> None:
    import actors.stream_worker as sw

    sw.read_new = _timed("read (XREADGROUP)", sw.read_new)  # type: ignore[assignment]
    store = worker.store
    store.due_timers = _timed("due timers", store.due_timers)
    store.load_states_and_overlays = _timed("state + overlay loads", store.load_states_and_overlays)
    store.reserve = _timed("reservations (reserve)", store.reserve)
    store.commit = _timed("commit (MULTI/EXEC)", store.commit)
    worker._segments = _timed("segments (snapshot reads)", worker._segments)
    worker._overlays = _timed("live overlays", worker._overlays)
    worker.exposures.log = _timed("exposures log", worker.exposures.log)
    proc = worker.processor
    proc.start = _timed("decode (start)", proc.start)
    proc.evaluate = _timed("rule engine (evaluate)", proc.evaluate)
    proc.screen = _timed("playbook (screen)", proc.screen)
    proc.finish = _timed("finish (state encode)", proc.finish)


def run(n_events: int, n_users: int, profile: str | None) -> dict[str, Any]:
    """Drain worker 0 of 2's partitions round by round; the figures of each phase."""
    from actors.stream_worker import StreamWorker

    os.environ["STRATA_PSEUDONYM_KEY"] = BENCH_KEY
    cfg = load_stream_config()
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as data:
        url = server.url
        publish(url, n_users, BENCH_KEY.encode())
        ids = pseudonymise_many([str(FIRST_RAW_ID + i) for i in range(n_users)], BENCH_KEY.encode())
        events = make_events(n_events, ids, 1, time.time_ns() // 1_000_000)
        appender = EventAppender(url, NS, cfg)
        for s in range(0, len(events), 500):
            appender.append(events[s : s + 500])
        partitions = appender.partitions
        appender.close()
        del events, ids  # not in a stream worker's heap (the garbage collector walks it)
        gc.collect()
        worker = StreamWorker(0, 2, partitions, url, NS, data, cfg.model_dump_json(), None)
        _count_trips()
        _instrument(worker)
        round_fn = _timed("round (total)", worker._round)
        gc.callbacks.append(_gc_timer)
        prof = cProfile.Profile() if profile else None

        def redis_cpu_s() -> float:
            trips, commands = _TRIPS[0], _COMMANDS[0]
            info = worker.store.redis.info("cpu")
            _TRIPS[0], _COMMANDS[0] = trips, commands  # not the worker's
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

        worker.store.redis.config_resetstat()
        gc.freeze()  # as StreamWorker.run does
        start = (time.perf_counter(), time.process_time(), redis_cpu_s())
        end = start
        if prof:
            prof.enable()
        while True:
            before = worker.counters["events"]
            phases = {k: list(v) for k, v in _PHASES.items()}
            trips = _TRIPS[0], _COMMANDS[0]
            # what StreamWorker.run does each turn (lease renewals, heartbeats, checks)
            worker._housekeeping()
            round_fn([r for r in worker.readers if r.acquire()])
            if worker.counters["events"] == before:
                # drained: this round blocked block_ms for nothing (and only took the timers
                # that came due meanwhile); it counts in no figure
                _PHASES.clear()
                _PHASES.update(phases)
                _TRIPS[0], _COMMANDS[0] = trips
                break
            end = (time.perf_counter(), time.process_time(), redis_cpu_s())
        if prof:
            prof.disable()
            prof.dump_stats(profile)
        busy = end[0] - start[0]
        worker_cpu_s, redis_s = end[1] - start[1], end[2] - start[2]
        commandstats = {
            name.removeprefix("cmdstat_"): {"calls": v["calls"], "usec": v["usec"]}
            for name, v in worker.store.redis.info("commandstats").items()
        }
        if len(worker.readers) != sum(r.owned for r in worker.readers):
            raise RuntimeError("the worker lost a lease during the run")
        c = worker.counters
        return {
            "events": c["events"],
            "timers": c["timers"],
            "actions": c["actions"],
            "suppressed": c["suppressed"],
            "rounds": c["rounds"] - 1,
            "seconds": round(busy, 3),
            "events_per_s_one_worker": round(c["events"] / busy),
            "round_trips": _TRIPS[0],
            "commands": _COMMANDS[0],
            "worker_cpu_s": round(worker_cpu_s, 3),
            "redis_cpu_s": round(redis_s, 3),
            "redis_commands": dict(
                sorted(commandstats.items(), key=lambda kv: -int(kv[1]["usec"]))[:8]
            ),
            "gc_s": round(_GC["s"], 3),
            "gc_collections": list(_GC_RUNS),
            "phases": {
                k: {
                    "s": round(v[0], 3),
                    "calls": int(v[1]),
                    "round_trips": int(v[2]),
                    "commands": int(v[3]),
                }
                for k, v in _PHASES.items()
            },
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--profile", default=None, help="write a cProfile dump of the rounds here")
    args = ap.parse_args()
    console.print(f"worker 0 of 2 draining its partitions of {args.events:,} events")
    out = run(args.events, args.users, args.profile)
    total = out["phases"]["round (total)"]["s"]
    table = Table(title="bench/stream_phases.py (one worker, in-process)")
    for col in ("phase", "s", "share", "calls", "round trips", "commands", "us/event"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for name, row in sorted(out["phases"].items(), key=lambda kv: -kv[1]["s"]):
        table.add_row(
            name,
            f"{row['s']:.3f}",
            f"{row['s'] / total:.0%}",
            f"{row['calls']:,}",
            f"{row['round_trips']:,}",
            f"{row['commands']:,}",
            f"{row['s'] / max(out['events'], 1) * 1e6:.1f}",
        )
    console.print(table)
    console.print(
        f"CPU: worker {out['worker_cpu_s']:.3f} s, redis-server {out['redis_cpu_s']:.3f} s"
        "; redis-server's costliest commands: "
        + ", ".join(
            f"{name} {v['usec'] / 1e6:.3f} s ({v['calls']:,})"
            for name, v in list(out["redis_commands"].items())[:5]
        )
    )
    console.print(
        f"garbage collector during the rounds: {out['gc_s']:.3f} s "
        f"({out['gc_collections']} collections of generations 0, 1, 2)"
    )
    console.print(
        f"{out['events']:,} events, {out['timers']:,} timers, {out['rounds']} rounds, "
        f"{out['round_trips']:,} round trips and {out['commands']:,} commands in all: "
        f"{out['events_per_s_one_worker']:,} events/s"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
