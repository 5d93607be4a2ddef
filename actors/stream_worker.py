"""The stream worker: a Ray actor that owns partitions of the live event streams.

Thin: reads entries and due timers from Redis (:mod:`strata.io.realtime_store`), runs the
pure round (:mod:`strata.realtime.batch` around the rule engine), refreshes live tiers
(:mod:`strata.realtime.live`) and commits each partition's round atomically with its XACKs.
Worker ``i`` of ``n`` owns the partitions ``p`` with ``p % n == i``, each under a lease; Ray
restarts a dead worker (``max_restarts=-1``) and the driver calls :meth:`StreamWorker.run`
again. Rules reload when configs/triggers.yaml changes (or on :meth:`reload`, which
``strata stream`` calls on SIGHUP); a bad file keeps the old rules and says why.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import ray

from strata.config import ConfigError, config_path, load_calendar
from strata.experiments.config import load_experiments
from strata.io.exposure_log import Exposure, ExposureLog
from strata.io.realtime_store import LeaseLost, PartitionReader, RealtimeStore, read_new
from strata.io.redis_client import CLIENT_ERRORS
from strata.io.segment_reader import READ_ERRORS
from strata.io.segment_store import SegmentStore
from strata.io.snapshot_features import SnapshotFeatures
from strata.io.warehouse import WarehouseError
from strata.realtime.batch import BatchProcessor, EffectBatch, Entry, RoundWork
from strata.realtime.engine import TriggerEngine
from strata.realtime.keys import WORKER_GROUP
from strata.realtime.live import LiveScorer
from strata.realtime.live_view import merge_live, parse_overlay
from strata.realtime.model import Firing, Segment
from strata.realtime.stream_config import StreamConfig
from strata.realtime.triggers import TriggerConfig, load_triggers
from strata.strategies.config import load_strategies
from strata.strategies.delivery import Playbook
from strata.tiering.scoring import RecomputeConfig
from strata.timeutil import from_epoch_ms

log = logging.getLogger("strata.stream")

_VERSION_CHECK_S = 1.0
_RULES_CHECK_S = 2.0
_HEARTBEAT_S = 2.0
#: Redis failures of either client mode (a cluster's own exceptions are no RedisError)
_REDIS_ERRORS = (*READ_ERRORS, *CLIENT_ERRORS)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class StreamWorker:
    """Processes the partitions it owns until :meth:`stop`.

    Args:
        index: this worker's number (0..n_workers-1).
        n_workers: workers in the pool.
        partitions: stream partitions (the value fixed in Redis).
        redis_url: Redis of the live state and the published snapshot.
        namespace: Settings.redis_namespace.
        data_root: the data root (snapshots, for the live tier refresh).
        config_json: the StreamConfig as JSON.
        config_dir: folder of the YAML configs (triggers.yaml, calendar.yaml, tiers...).
    """

    def __init__(
        self,
        index: int,
        n_workers: int,
        partitions: int,
        redis_url: str,
        namespace: str,
        data_root: str,
        config_json: str,
        config_dir: str | None = None,
    ) -> None:
        self.index = index
        self.config = StreamConfig.model_validate_json(config_json)
        self.config_dir = config_dir
        self.data_root = data_root
        self.store = RealtimeStore(redis_url, namespace, self.config, partitions)
        self.snapshot = SegmentStore(redis_url, namespace=namespace)
        self.consumer = f"w{index}"
        self.readers = [
            PartitionReader(self.store, p, WORKER_GROUP, self.consumer)
            for p in range(partitions)
            if p % n_workers == index
        ]
        self.recompute_config = RecomputeConfig.load(config_dir)
        self._stop = threading.Event()
        self._crash_before_commit = False
        self._rules_path = config_path("triggers", config_dir)
        self._rules_mtime = self._mtime()
        self.rules: TriggerConfig = load_triggers(config_dir)
        self.processor = self._processor(self.rules)
        self.playbook = self._playbook()
        self.exposures = ExposureLog(self.store.redis, namespace, partitions=partitions)
        self.reload_error: str | None = None
        self._version: str | None = None
        self._live: LiveScorer | None = None
        self._features: SnapshotFeatures | None = None
        self._rescore: dict[int, set[int]] = {}
        self._checked_version = 0.0
        self._checked_rules = 0.0
        self._beat = 0.0
        self.counters = {
            "events": 0,
            "timers": 0,
            "actions": 0,
            "suppressed": 0,
            "dead": 0,
            "rounds": 0,
            "lease_lost": 0,
            "errors": 0,
            "redis_errors": 0,
        }
        # published by run(), which retries while Redis is down: a constructor that raised
        # (Redis restarting as Ray restarts this actor) would end the actor for good
        self._rules_published = False

    # ------------------------------------------------------------------ control
    def run(self) -> dict[str, int]:
        """Process owned partitions until :meth:`stop`; returns the counters."""
        self._stop.clear()
        # everything this process holds by now (Ray, pyarrow, the configs, the clients) lives
        # as long as it does: out of the collector's way, so the full collections that the
        # rounds' many short-lived objects trigger do not walk it each time (bench/stream.py:
        # 27,500-28,500 -> 31,200-32,300 events/s processed by 2 workers)
        gc.freeze()
        while not self._stop.is_set():
            try:
                self._housekeeping()
                owned = [r for r in self.readers if r.acquire()]
                if not owned:
                    self._stop.wait(self.config.lease_ms / 5000)
                    continue
                self._round(owned)
            except _REDIS_ERRORS as exc:
                # Redis restarted or unreachable: the client reconnects on the next call;
                # uncommitted rounds are pending and processed again
                self.counters["redis_errors"] += 1
                log.warning("stream worker %d: Redis error (%s); retrying", self.index, exc)
                for r in self.readers:
                    r.recovering = True
                self._stop.wait(0.5)
        with contextlib.suppress(*_REDIS_ERRORS):
            for r in self.readers:
                r.release()
        return dict(self.counters)

    def stop(self) -> None:
        """Ask :meth:`run` to finish its round and return."""
        self._stop.set()

    def stats(self) -> dict[str, Any]:
        """Counters, owned partitions and the last reload error."""
        return {
            **self.counters,
            "partitions": [r.partition for r in self.readers if r.owned],
            "reload_error": self.reload_error,
            "version": self._version,
        }

    def reload(self) -> str:
        """Reload configs/triggers.yaml; a bad file keeps the old rules. Returns what
        happened, in words."""
        try:
            rules = load_triggers(self.config_dir)
        except ConfigError as exc:
            self.reload_error = str(exc)
            log.warning("rules not reloaded, keeping the old ones: %s", exc)
            return f"kept the old rules: {exc}"
        try:
            playbook = self._playbook()
        except ConfigError as exc:
            self.reload_error = str(exc)
            log.warning("strategies/experiments not reloaded, keeping the old ones: %s", exc)
            return f"kept the old rules: {exc}"
        self.rules = rules
        self.processor = self._processor(rules)
        self.playbook = playbook
        self.reload_error = None
        self.store.publish_rules(rules.summary())
        return f"reloaded {len(rules.rules)} rules"

    def pid(self) -> int:
        return os.getpid()

    def inject_crash_before_commit(self) -> None:
        """Fault injection (tests, chaos drills): the process exits right before its next
        commit, as a kill between processing and XACK would."""
        self._crash_before_commit = True

    # ------------------------------------------------------------------ internals
    def _playbook(self) -> Playbook:
        return Playbook(load_strategies(self.config_dir), load_experiments(self.config_dir))

    def _processor(self, rules: TriggerConfig) -> BatchProcessor:
        engine = TriggerEngine(
            rules,
            load_calendar(self.config_dir),
            max_event_age_ms=self.config.max_event_age_s * 1000,
        )
        return BatchProcessor(engine, self.config.max_deliveries)

    def _mtime(self) -> float | None:
        try:
            return Path(self._rules_path).stat().st_mtime
        except OSError:
            return None

    def _housekeeping(self) -> None:
        if not self._rules_published:
            self.store.publish_rules(self.rules.summary())
            self._rules_published = True
        now = time.monotonic()
        if now - self._checked_rules >= _RULES_CHECK_S:
            self._checked_rules = now
            mtime = self._mtime()
            if mtime != self._rules_mtime:
                self._rules_mtime = mtime
                self.reload()
        if now - self._checked_version >= _VERSION_CHECK_S:
            self._checked_version = now
            self._check_version()
        if now - self._beat >= _HEARTBEAT_S:
            self._beat = now
            for r in self.readers:
                if r.owned:
                    self.store.heartbeat(
                        r.partition,
                        {
                            "worker": self.index,
                            "pid": os.getpid(),
                            "at": _now_ms(),
                            "events": self.counters["events"],
                        },
                    )

    def _check_version(self) -> None:
        version = self.snapshot.current()
        if version == self._version:
            return
        self._version = version
        self._live = None
        self._features = None
        if version is None:
            return
        try:
            features = SnapshotFeatures(self.data_root, version)
            self._live = LiveScorer.for_snapshot(self.recompute_config, features)
            self._features = features
            if features.config_sha256 and features.config_sha256 != self.recompute_config.digest():
                log.warning(
                    "snapshot %s was computed with other tier/lifecycle configs than these: "
                    "live tiers follow the current configs",
                    version,
                )
        except (OSError, ValueError, KeyError, WarehouseError) as exc:
            log.warning("live tiers off for snapshot %s: %s", version, exc)
            return
        # a new snapshot supersedes the live deltas it covers: re-score users whose live
        # orders are newer than its as-of, their overlays from the old version are ignored
        for r in self.readers:
            users = self.store.live_users_since(r.partition, features.as_of_ms)
            if users:
                self._rescore.setdefault(r.partition, set()).update(users)

    def _round(self, owned: list[PartitionReader]) -> None:
        cfg = self.config
        now = _now_ms()
        by_partition = read_new(
            self.store.redis, owned, cfg.batch_size, cfg.block_ms
        )  # recovering partitions return their pending entries
        due = self.store.due_timers([r.partition for r in owned], now, cfg.timer_batch)
        for reader in owned:
            entries = by_partition.get(reader.partition, [])
            timers = due.get(reader.partition, [])
            rescore = self._rescore.pop(reader.partition, set())
            if not entries and not timers and not rescore:
                continue
            try:
                self._process(reader, entries, timers, rescore, now)
            except LeaseLost:
                self.counters["lease_lost"] += 1
                reader.owned = False
                reader.held = None
            except _REDIS_ERRORS as exc:
                # Redis (on a cluster: the node of a budget, of the snapshot, ...) failed, not
                # the entries: keep them for the next round as they are, so that the outage
                # does not count as deliveries and dead-letter good entries
                self.counters["redis_errors"] += 1
                log.warning("partition %d: Redis error (%s); retrying", reader.partition, exc)
                reader.held = entries
                if rescore:
                    self._rescore.setdefault(reader.partition, set()).update(rescore)
            except Exception as exc:  # an entry the engine cannot handle: isolate it
                self.counters["errors"] += 1
                log.warning(
                    "partition %d: round failed (%s), retrying entries one by one",
                    reader.partition,
                    exc,
                )
                reader.recovering = True
                if rescore:
                    self._rescore.setdefault(reader.partition, set()).update(rescore)
                reader.batch_limit = 1
        self.counters["rounds"] += 1

    def _process(
        self,
        reader: PartitionReader,
        entries: list[Entry],
        timers: list[bytes],
        rescore: set[int],
        now: int,
    ) -> None:
        proc = self.processor
        work = proc.start(entries, timers, now)
        users = work.user_ids
        for u in rescore:
            if u not in work.states:
                users.append(u)
        raw_states, overlays = self.store.load_states_and_overlays(users)
        states = dict(zip(users, raw_states, strict=True))
        segments = self._segments(users, overlays)
        proc.evaluate(work, states, segments)
        exposures: list[Exposure] = []
        candidates = proc.screen(work, lambda f: self._deliver(f, work, segments, exposures))
        batch = proc.finish(work, self.store.reserve(candidates))
        self._overlays(reader.partition, work, batch, rescore, now)
        if self._crash_before_commit and not batch.is_empty():
            os._exit(1)
        # before the commit: a replay after a crash logs nothing twice (first exposures only)
        self.exposures.log(exposures)
        self.store.commit(reader.partition, WORKER_GROUP, reader.token, batch)
        c = self.counters
        c["events"] += len(entries)
        c["timers"] += len(timers)
        c["actions"] += len(batch.firings)
        c["suppressed"] += len(batch.suppressions)
        c["dead"] += len(batch.dead)

    def _deliver(
        self,
        firing: Firing,
        work: RoundWork,
        segments: dict[int, Segment | None],
        exposures: list[Exposure],
    ) -> tuple[Firing | None, str | None]:
        seg = segments.get(firing.user_id)
        state = work.states.get(firing.user_id)
        now = work.now_ms
        tags = [t for t, until in (state.tags.items() if state else ()) if until > now]
        decision = self.playbook.decide(
            firing,
            seg.tier if seg else None,
            seg.lifecycle_stage if seg else None,
            tags,
            from_epoch_ms(firing.issued_ms).date(),
        )
        exposures.extend(
            Exposure(x.experiment, x.arm, x.user_id, x.ts, source="action")
            for x in decision.exposures
        )
        return decision.firing, decision.reason

    def _segments(
        self, users: list[int], overlays: list[bytes | None]
    ) -> dict[int, Segment | None]:
        out: dict[int, Segment | None] = {}
        if not users:
            return out
        for start in range(0, len(users), self.snapshot.max_batch):
            chunk = users[start : start + self.snapshot.max_batch]
            version, records = self.snapshot.get_many(chunk)
            for i, (u, rec) in enumerate(zip(chunk, records, strict=True)):
                if version is None:
                    out[u] = None
                    continue
                merged, _, _ = merge_live(rec, parse_overlay(overlays[start + i]), version)
                out[u] = Segment.of(merged)
        return out

    def _overlays(
        self,
        partition: int,
        work: RoundWork,
        batch: EffectBatch,
        rescore: set[int],
        now: int,
    ) -> None:
        live, features = self._live, self._features
        users = set(work.ordered) | rescore
        if live is None or features is None or not users:
            return
        ids = [
            u
            for u in sorted(users)
            if u in work.states and work.states[u].last_order_ms is not None
        ]
        if not ids:
            return
        rows = features.rows(ids)
        states = [work.states[u] for u in ids]
        for u, state, overlay in zip(
            ids, states, live.overlays(states, [rows.get(u) for u in ids], now), strict=True
        ):
            batch.overlays[u] = orjson.dumps(overlay)
            assert state.last_order_ms is not None
            batch.overlay_order_ms[u] = state.last_order_ms


#: Ray restarts a dead worker; the driver calls ``run`` again
StreamWorkerActor = ray.remote(max_restarts=-1, max_task_retries=0)(StreamWorker)
#: ``.options(**ACTOR_OPTIONS)``: ``stop``/``stats``/``reload`` are answered while ``run`` loops
ACTOR_OPTIONS: dict[str, Any] = {"max_concurrency": 4}
