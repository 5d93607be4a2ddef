"""`strata recompute`: features, RFM tiers, lifecycle and tags for every user, on Ray actors.

Pass 1: N FeatureShardActors compute per-user features of their buckets and return mergeable
RFM partials. The driver merges them (global cut points) and broadcasts. Pass 2: actors score,
tier and write the snapshot (one Parquet file per bucket). The driver writes the manifest last
(the snapshot is complete), then pass 3: actors write their users into Redis under the new
version and the driver flips the version pointer in one atomic step. Any failure before the
flip discards the new version: the current one stays current.

Run locally (`python -m jobs.recompute --as-of ...`) or on a cluster with
`ray job submit --working-dir . -- python -m jobs.recompute --as-of ...`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import typer

from jobs._errors import ray_error_text, run_command
from jobs._recompute_report import RecomputeResult, print_result
from jobs._runtime import (
    ActorShards,
    as_of_option,
    console,
    ray_session,
    redis_session,
    summary_table,
)
from strata.features import FEATURES_SCHEMA, RfmPartials
from strata.ids import assign
from strata.io.models import ModelError, ModelRegistry
from strata.io.segment_store import SegmentStore, SegmentStoreError, VersionStateError
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from strata.online.codec import snapshot_layout
from strata.schema import SCHEMA_VERSION
from strata.settings import Settings
from strata.tiering.scoring import RecomputeConfig, merge_counts
from strata.tiering.tiers import ScoreHistogram, band_warnings, histogram_rows
from strata.timeutil import AS_OF_HELP, local_iso, to_epoch_ms


class RecomputeError(RuntimeError):
    """The recompute failed; nothing was published."""


class RecomputeJob:
    """One recompute run.

    Args:
        settings: runtime settings (data root, Redis, Ray).
        as_of: the as-of instant (aware datetime).
        actors: number of feature actors (default: the cluster's CPUs).
        publish: write the snapshot into Redis and flip the pointer.
        config_dir: folder of the YAML configs (default: the repository's configs/).
        keep_versions: Redis versions kept for rollback.
        on_phase: test hook called as ``on_phase(phase, actors)`` after each pass.
    """

    def __init__(
        self,
        settings: Settings,
        as_of: dt.datetime,
        actors: int | None = None,
        publish: bool = True,
        config_dir: str | None = None,
        keep_versions: int = 3,
        on_phase: Callable[[str, list[Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.as_of = as_of
        self.as_of_ms = to_epoch_ms(as_of)
        self.n_actors = actors
        self.publish = publish
        self.keep_versions = keep_versions
        self.on_phase = on_phase
        # invalid configs fail here, before any work
        self.config = RecomputeConfig.load(config_dir)

    def run(self) -> RecomputeResult:
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        warehouse = Warehouse(self.settings.data)
        buckets = warehouse.user_buckets()
        if not buckets:
            raise RecomputeError(f"the warehouse at {warehouse.root} holds no events or users")
        rows = warehouse.bucket_rows("events")
        snapshots = SnapshotStore(self.settings.data)
        previous = snapshots.latest_before(self.as_of_ms)
        model_version, model_status = self._resolve_model()
        version = dt.datetime.now(dt.UTC).strftime("v%Y%m%dT%H%M%S%fZ")
        with ray_session(self.settings) as ray:
            from actors.feature_shard import FeatureShardActor

            cpus = float(ray.cluster_resources().get("CPU", 1))
            n = min(self.n_actors or max(1, int(cpus)), len(buckets))
            # more actors than CPUs share them, rather than wait forever for a free one
            cpus_per_actor = min(1.0, cpus / n)
            plan = [p for p in assign(buckets, n, [rows.get(b, 0) + 1 for b in buckets]) if p]

            def make(i: int, num_cpus: float) -> Any:  # also a lost shard's replacement
                return FeatureShardActor.options(num_cpus=num_cpus).remote(
                    self.settings.data, plan[i], self.as_of_ms, self.config, model_version
                )

            pool = ActorShards(ray, make, len(plan), cpus_per_actor)
            shards = pool.actors  # replaced in place when a node dies
            try:
                t0 = time.perf_counter()
                firsts = pool.gather(lambda s: s.features.remote(), "features")
                merged: RfmPartials = firsts[0]["partials"]
                for f in firsts[1:]:
                    merged = merged.merge(f["partials"])
                timings["features_s"] = time.perf_counter() - t0
                self._hook("features", shards)

                t0 = time.perf_counter()
                partials_ref = ray.put(merged)
                scores = pool.gather(
                    lambda s: s.score.remote(partials_ref, version, previous), "scoring"
                )
                timings["scoring_s"] = time.perf_counter() - t0
                self._hook("scoring", shards)
                # the snapshot is written: the shards' spilled pass-1 features can go
                release = [s.close.remote() for s in shards]
                ray.wait(release, num_returns=len(release), timeout=60)
            except Exception as exc:
                snapshots.delete(version)
                raise RecomputeError(
                    f"recompute failed, nothing published: {ray_error_text(exc)}"
                ) from exc

            tiers = merge_counts([t for s in scores for t in s["tiers"]])
            stages = merge_counts([t for s in scores for t in s["stages"]])
            moves = merge_counts([t for s in scores for t in s["transitions"]])
            users = sum(f["users"] for f in firsts)
            rules = self.config.tiers
            hist = ScoreHistogram.merge_all([s["score_histogram"] for s in scores], rules)
            warnings = band_warnings(hist, rules)
            lasts = [f["last_event_ms"] for f in firsts if f.get("last_event_ms") is not None]
            # the cut points the snapshot was scored with: live re-scores rank against them
            snapshots.write_partials(version, merged)
            manifest: dict[str, Any] = {
                "version": version,
                "as_of": self.as_of.isoformat(),
                "as_of_ms": self.as_of_ms,
                "schema_version": SCHEMA_VERSION,
                "config_sha256": self.config.digest(),
                "previous_version": previous,
                "inputs": {
                    "buckets": len(buckets),
                    "n_buckets": warehouse.n_buckets,
                    "events": warehouse.summary()["events"]["rows"],
                    "users": warehouse.summary()["users"]["rows"],
                    "warehouse_updated_at": warehouse.manifest["updated_at"],
                },
                "outputs": {
                    "users": users,
                    "tiers": tiers,
                    "lifecycle_stages": stages,
                    "score_histogram": hist.to_json(rules),
                },
                "warnings": warnings,
                "transitions": moves,
                "actors": len(shards),
                "predictions": {
                    "model_version": model_version,
                    "status": model_status,
                    # champion/challenger: the method behind each published prediction
                    "sources": ModelRegistry(self.settings.data).prediction_sources(model_version),
                },
                "published": False,
                "timings": timings,
            }
            snapshots.write_manifest(version, manifest)

            published = False
            if self.publish:
                t0 = time.perf_counter()
                try:
                    self._publish(pool, version, users, manifest)
                except Exception as exc:
                    raise RecomputeError(
                        f"publish failed; snapshot {version} kept on disk but not published, "
                        f"the current Redis version is unchanged: {ray_error_text(exc)}"
                    ) from exc
                timings["publish_s"] = time.perf_counter() - t0
                published = True
            timings["total_s"] = time.perf_counter() - t_start
            if pool.replacements:
                manifest["replaced_actors"] = pool.replacements
            manifest["published"] = published
            manifest["timings"] = timings
            snapshots.write_manifest(version, manifest)
            pool.kill()
        return RecomputeResult(
            version=version,
            as_of=self.as_of.isoformat(),
            users=users,
            tiers=tiers,
            stages=stages,
            transitions=moves,
            previous_version=previous,
            published=published,
            snapshot_path=snapshots.path(version),
            model=f"{model_version or '-'} ({model_status})",
            timings=timings,
            max_actor_rss_mb=max(s["max_rss_mb"] for s in scores),
            histogram=histogram_rows(hist, rules),
            warnings=warnings,
            last_event=local_iso(max(lasts)) if lasts else None,
        )

    def _resolve_model(self) -> tuple[str | None, str]:
        """The trained model to score with (or None) and a note for the manifest (the policy
        is :meth:`ModelRegistry.choose_for_scoring`).

        Raises:
            RecomputeError: predictions are required and there is no good model, or the model
                is corrupt / does not fit the features and ``on_model_error`` is ``fail``.
        """
        options = self.config.options
        try:
            choice = ModelRegistry(self.settings.data).choose_for_scoring(
                options.predictions, options.on_model_error, FEATURES_SCHEMA.names
            )
        except ModelError as exc:
            raise RecomputeError(str(exc)) from exc
        if choice.warning:
            console.print(f"[yellow]{choice.warning}")
        return choice.version, choice.note

    def _hook(self, phase: str, shards: list[Any]) -> None:
        if self.on_phase is not None:
            self.on_phase(phase, shards)

    def _publish(
        self, pool: ActorShards, version: str, users: int, manifest: dict[str, Any]
    ) -> None:
        model_version = manifest["predictions"]["model_version"]
        w = self.config.tiers.weights
        layout = snapshot_layout(
            self.config.tiers.tier_names,
            predictions=model_version is not None,
            rfm_weights=(w.recency, w.frequency, w.monetary),  # rfm_score derived, not stored
        )
        # what the online API needs to explain a record and list the tiers, from Redis alone
        meta: dict[str, Any] = {
            "as_of": manifest["as_of"],
            "config_sha256": manifest["config_sha256"],
            "tier_rules": self.config.tiers.model_dump(mode="json"),
            "tiers": manifest["outputs"]["tiers"],
            "lifecycle_stages": manifest["outputs"]["lifecycle_stages"],
            "model_version": model_version,
            "band_counts": manifest["outputs"]["score_histogram"]["bands"],
            "warnings": manifest["warnings"],
        }
        with redis_session(self.settings) as url:
            mode = self.settings.redis_mode if self.settings.redis_url else "standalone"
            store = SegmentStore(url, namespace=self.settings.redis_namespace, mode=mode)
            # packed buckets are whole warehouse buckets: each shard writes one per call
            n_buckets = int(manifest["inputs"]["n_buckets"])
            n_groups = store.plan_n_groups(users, n_buckets=n_buckets, layout=layout)
            try:
                store.begin_version(version, layout, n_groups, meta)
            except VersionStateError:
                raise  # it exists already: another run's, not ours to discard
            except Exception:
                _discard(store, version)  # e.g. Redis restarted between its two writes
                raise
            try:
                layout_json = layout.model_dump_json()
                ns = self.settings.redis_namespace
                pool.gather(
                    lambda s: s.publish.remote(url, ns, version, layout_json, mode), "publishing"
                )
                store.publish(version, keep=self.keep_versions, expected_users=users)
            except Exception:
                _discard(store, version)
                raise
            finally:
                store.close()


#: how long a failed publish retries discarding its version while Redis is unreachable
DISCARD_RETRY_S = 30.0


def _discard(store: SegmentStore, version: str) -> None:
    """Discard a version that failed to publish, retrying while Redis is unreachable (a publish
    that failed because Redis restarted would otherwise leave its keys behind)."""
    deadline = time.monotonic() + DISCARD_RETRY_S
    while True:
        try:
            store.discard(version)
            return
        except SegmentStoreError:
            raise
        except Exception as exc:  # Redis down or restarting
            if time.monotonic() > deadline:
                console.print(
                    f"[yellow]could not discard the unpublished version {version} ({exc}): "
                    "its keys stay in Redis, never served"
                )
                return
            time.sleep(0.2)


def command(
    data: str = typer.Option("./data", "--data", envvar="STRATA_DATA", help="Data root."),
    as_of: dt.datetime = typer.Option(..., "--as-of", help=AS_OF_HELP, parser=as_of_option),
    actors: int | None = typer.Option(None, "--actors", min=1, help="Feature actors."),
    no_publish: bool = typer.Option(False, "--no-publish", help="Snapshot only, no Redis."),
    config_dir: str | None = typer.Option(None, "--config-dir", help="Folder of YAML configs."),
    keep: int = typer.Option(3, "--keep", min=2, help="Redis versions kept for rollback."),
) -> None:
    """Recompute features, tiers and lifecycle for every user; publish to Redis atomically."""
    settings = Settings(data=data)
    job = RecomputeJob(
        settings,
        as_of,
        actors=actors,
        publish=not no_publish,
        config_dir=config_dir,
        keep_versions=keep,
    )
    result = job.run()
    print_result(result, job.config.tiers.tier_names)


def rollback(
    data: str = typer.Option("./data", "--data", envvar="STRATA_DATA", help="Data root."),
    to: str | None = typer.Option(None, "--to", help="Version (default: the previous one)."),
) -> None:
    """Point online lookups back at a previous published version."""
    settings = Settings(data=data)
    with redis_session(settings) as url:
        mode = settings.redis_mode if settings.redis_url else "standalone"
        store = SegmentStore(url, namespace=settings.redis_namespace, mode=mode)
        before = store.current()
        after = store.rollback(to)
        versions = store.versions()
        store.close()
    console.print(
        summary_table(
            "rollback",
            [("was", before or "-"), ("now", after), ("retained", ", ".join(versions))],
        )
    )


if __name__ == "__main__":
    run_command(command)
