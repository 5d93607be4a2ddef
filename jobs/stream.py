"""`strata stream`: the real-time loop's workers, in the foreground until Ctrl-C.

Starts N stream workers (Ray actors owning the event-stream partitions: trigger rules,
actions, live tiers) and the warehouse sink, shows one progress line, restarts the ``run`` of
a worker Ray has restarted, runs the calendar campaigns at local midnight, reloads the
trigger rules on SIGHUP, and on Ctrl-C stops everything cleanly and prints a summary.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import typer
from rich.live import Live

from jobs._errors import run_command
from jobs._runtime import console, ray_session, redis_session, summary_table
from strata.config import load_calendar
from strata.io.event_log import stream_partitions
from strata.io.realtime_store import RealtimeStore
from strata.realtime.stream_config import StreamConfig, load_stream_config
from strata.realtime.triggers import load_triggers
from strata.settings import Settings
from strata.tiering.scoring import RecomputeConfig
from strata.timeutil import LOCAL_TZ

log = logging.getLogger("strata.stream")

_POLL_S = 1.0
_STOP_TIMEOUT_S = 30.0


class StreamPool:
    """The workers and the sink of one data root, on the Ray this process is connected to.

    Args:
        settings: runtime settings (data root, namespace).
        redis_url: the Redis of the live state and the snapshot.
        workers: stream workers (default: one per 2 partitions, at most the CPUs).
        config_dir: folder of the YAML configs.
        sink: also run the warehouse sink.
    """

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        workers: int | None = None,
        config_dir: str | None = None,
        sink: bool = True,
    ) -> None:
        import ray

        self.ray = ray
        self.settings = settings
        self.redis_url = redis_url
        self.config_dir = config_dir
        self.config: StreamConfig = load_stream_config(config_dir)
        # the rules and configs the workers need fail here, before any actor starts
        load_triggers(config_dir)
        load_calendar(config_dir)
        RecomputeConfig.load(config_dir)
        store = RealtimeStore(redis_url, settings.redis_namespace, self.config)
        self.partitions = stream_partitions(store.redis, store.keys, self.config.partitions)
        store.close()
        cpus = float(ray.cluster_resources().get("CPU", 1))
        self.n_workers = max(1, min(workers or max(1, int(cpus)), self.partitions))
        self.with_sink = sink
        self._share = min(1.0, cpus / (self.n_workers + 2))
        self.workers: list[Any] = []
        self.runs: list[Any] = []
        self.sink: Any = None
        self.sink_run: Any = None
        self.restarts = 0
        self.started = time.monotonic()
        self.campaigns = CampaignScheduler(self._run_campaigns)

    def start(self) -> None:
        from actors.stream_worker import ACTOR_OPTIONS, StreamWorkerActor

        cfg_json = self.config.model_dump_json()
        data = self.settings.data
        ns = self.settings.redis_namespace
        self.workers = [
            StreamWorkerActor.options(num_cpus=self._share, **ACTOR_OPTIONS).remote(
                i,
                self.n_workers,
                self.partitions,
                self.redis_url,
                ns,
                data,
                cfg_json,
                self.config_dir,
            )
            for i in range(self.n_workers)
        ]
        self.runs = [w.run.remote() for w in self.workers]
        if self.with_sink:
            from actors.event_sink import EventSinkActor

            self.sink = EventSinkActor.remote(
                self.redis_url, data, self.config.model_dump(), ns, self.settings.n_buckets
            )
            self.sink_run = self.sink.run.remote()

    def poll(self) -> dict[str, Any]:
        """Restart the ``run`` of restarted actors, run due campaigns; the pool's counters."""
        ray = self.ray
        for i, ref in enumerate(self.runs):
            done, _ = ray.wait([ref], timeout=0)
            if done:
                try:
                    ray.get(ref)
                except Exception as exc:  # the actor died: Ray restarts it, we re-run it
                    log.warning(
                        "stream worker %d died (%s); restarting: %s", i, type(exc).__name__, exc
                    )
                self.restarts += 1
                self.runs[i] = self.workers[i].run.remote()
        if self.sink_run is not None:
            done, _ = ray.wait([self.sink_run], timeout=0)
            if done:
                try:
                    ray.get(self.sink_run)
                except Exception as exc:
                    log.warning("warehouse sink died (%s); restarting: %s", type(exc).__name__, exc)
                self.restarts += 1
                self.sink_run = self.sink.run.remote()
        self._midnight()
        totals: dict[str, Any] = {}
        try:
            stats = ray.get([w.stats.remote() for w in self.workers], timeout=5)
        except Exception:
            stats = []
        for s in stats:
            for k, v in s.items():
                if isinstance(v, int):
                    totals[k] = totals.get(k, 0) + v
        totals["reload_errors"] = [s["reload_error"] for s in stats if s.get("reload_error")]
        if self.sink is not None:
            with contextlib.suppress(Exception):
                totals["sunk"] = ray.get(self.sink.stats.remote(), timeout=5).get("committed", 0)
        return totals

    def reload(self) -> list[str]:
        """Reload the trigger rules on every worker (what each said)."""
        return list(self.ray.get([w.reload.remote() for w in self.workers], timeout=30))

    def stop(self) -> dict[str, Any]:
        """Stop the workers and the sink (the sink flushes first); their last counters."""
        ray = self.ray
        for w in self.workers:
            w.stop.remote()
        if self.sink is not None:
            self.sink.stop.remote()
        refs = [*self.runs, *([self.sink_run] if self.sink_run is not None else [])]
        ray.wait(refs, num_returns=len(refs), timeout=_STOP_TIMEOUT_S)
        totals = self.poll_quiet()
        if self.sink is not None:
            with contextlib.suppress(Exception):
                totals["sunk"] = ray.get(self.sink.stats.remote(), timeout=5).get("committed", 0)
        for actor in [*self.workers, *([self.sink] if self.sink is not None else [])]:
            ray.kill(actor, no_restart=True)
        return totals

    def poll_quiet(self) -> dict[str, Any]:
        totals: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            for s in self.ray.get([w.stats.remote() for w in self.workers], timeout=5):
                for k, v in s.items():
                    if isinstance(v, int):
                        totals[k] = totals.get(k, 0) + v
        return totals

    def _midnight(self) -> None:
        self.campaigns.tick()

    def _run_campaigns(self, day: dt.date) -> str:
        from jobs.campaigns import run_campaigns

        result = run_campaigns(
            self.settings, day, redis_url=self.redis_url, config_dir=self.config_dir
        )
        return f"{day}: {result.appended} entries"


def local_today() -> dt.date:
    return dt.datetime.now(LOCAL_TZ).date()


class CampaignScheduler:
    """Runs the calendar campaigns once per local date, when the date changes (local
    midnight) while ``strata stream`` runs; a failed run is logged and the loop goes on (the
    operator reruns it with ``strata campaigns run``).

    Args:
        run: runs the campaigns of a date, returns a one-line summary.
        today: the local date now (a clock for tests).
    """

    def __init__(
        self, run: Callable[[dt.date], str], today: Callable[[], dt.date] = local_today
    ) -> None:
        self.run = run
        self.today = today
        self.day = today()
        self.runs: list[str] = []

    def tick(self) -> str | None:
        """Run the new date's campaigns if the date changed since the last tick."""
        day = self.today()
        if day == self.day:
            return None
        self.day = day
        try:
            said = self.run(day)
        except Exception as exc:
            log.warning("calendar campaigns of %s failed: %s", day, exc)
            said = f"{day}: failed ({exc})"
        self.runs.append(said)
        return said


def progress_line(totals: dict[str, Any], elapsed_s: float) -> str:
    rate = totals.get("events", 0) / elapsed_s if elapsed_s > 0 else 0.0
    line = (
        f"events {totals.get('events', 0):,} ({rate:,.0f}/s) · timers {totals.get('timers', 0):,}"
        f" · actions {totals.get('actions', 0):,} · suppressed {totals.get('suppressed', 0):,}"
        f" · dead {totals.get('dead', 0):,} · sunk {totals.get('sunk', 0):,}"
    )
    if totals.get("reload_errors"):
        line += " · [yellow]rules reload failed, old rules kept"
    return line


def command(
    data: str = typer.Option("./data", "--data", envvar="STRATA_DATA", help="Data root."),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Stream workers (default: one per CPU)."
    ),
) -> None:
    """Run the real-time loop: stream workers (trigger rules, actions, live tiers) and the
    warehouse sink, until Ctrl-C. SIGHUP reloads configs/triggers.yaml."""
    settings = Settings(data=data)
    load_stream_config()
    load_triggers()  # a bad rule file fails here, naming file and key
    stop = threading.Event()
    hup = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        hup.set()

    handlers = {signal.SIGINT: on_stop, signal.SIGTERM: on_stop, signal.SIGHUP: on_hup}
    previous = {s: signal.signal(s, h) for s, h in handlers.items()}
    t0 = time.monotonic()
    try:
        with redis_session(settings, supervise=True) as url, ray_session(settings):
            pool = StreamPool(settings, url, workers)
            pool.start()
            console.print(
                f"stream: {pool.n_workers} workers on {pool.partitions} partitions, "
                f"sink on; Ctrl-C stops, SIGHUP reloads the rules"
            )
            totals: dict[str, Any] = {}
            with Live(console=console, refresh_per_second=2, transient=True) as live:
                while not stop.wait(_POLL_S):
                    if hup.is_set():
                        hup.clear()
                        for said in sorted(set(pool.reload())):
                            console.print(f"rules: {said}")
                    totals = pool.poll()
                    live.update(progress_line(totals, time.monotonic() - t0))
            console.print("stopping the stream workers ...")
            totals = {**totals, **pool.stop()}
            rows = [
                ("workers", pool.n_workers),
                ("partitions", pool.partitions),
                ("events processed", totals.get("events", 0)),
                ("timers fired or closed", totals.get("timers", 0)),
                ("actions issued", totals.get("actions", 0)),
                ("suppressed", totals.get("suppressed", 0)),
                ("dead letters", totals.get("dead", 0)),
                ("rows sunk to the warehouse", totals.get("sunk", 0)),
                ("worker restarts", pool.restarts),
                ("campaign runs", ", ".join(pool.campaigns.runs) or "-"),
                ("seconds", round(time.monotonic() - t0, 1)),
            ]
            console.print(summary_table("strata stream", rows))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    run_command(command)
