"""`strata train`: churn, repurchase and spend models with distributed XGBoost on Ray.

Wiring only (docs/models.md describes the method): examples per cutoff and bucket on Ray tasks
(:mod:`actors.example_shard`), BG/NBD fitted per cutoff on their merged patterns and written
into the shards, the three models on xgboost-ray (:mod:`actors.xgb_distributed`), then the
single-node baseline, evaluation against the recency rule and BG/NBD, the time holdout and the
champion per target (:mod:`strata.training.evaluation`), and the registry save (``meta.json``
last, the commit marker; scratch shards kept when anything failed).

Run locally (``python -m jobs.train --as-of ... --horizon 30``) or on a cluster with
``ray job submit --working-dir . -- python -m jobs.train ...``.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pyarrow.fs as pafs
import typer

from jobs._errors import BucketTaskError, ray_error_text, run_command
from jobs._runtime import as_of_option, console, map_buckets, progress, ray_session
from jobs._train_report import TrainResult, print_result, print_versions
from strata.features import FeatureConfig, load_feature_config
from strata.io.models import ModelError, ModelRegistry, new_version
from strata.io.paths import is_remote, worker_root
from strata.io.warehouse import Warehouse, read_parts, resolve
from strata.settings import Settings
from strata.timeutil import AS_OF_HELP, DAY_MS, to_epoch_ms
from strata.training import (
    IMPORTANCE_TOP,
    PARITY_MAX_AUC_GAP,
    SPLITS,
    TARGETS,
    BgnbdParams,
    ExamplePartials,
    TrainConfig,
    fit_bgnbd_by_cutoff,
    history_start_ms,
    horizon_problem,
    importance,
    load_train_config,
    params_by_cutoff,
    plan_cutoffs,
    select_features,
)
from strata.training.evaluation import (
    Split,
    bgnbd_block,
    conclude,
    evaluate_test,
    examples_digest,
    final_meta,
    margin_column,
    models_block,
    start_meta,
    time_holdout_check,
)

__all__ = [
    "IMPORTANCE_TOP",
    "PARITY_MAX_AUC_GAP",
    "SPLITS",
    "TrainError",
    "TrainResult",
    "command",
    "models",
    "run",
]


class TrainError(RuntimeError):
    """Training failed; no good model version was written."""


# ============================================================================ examples (Ray)
def build_examples(
    ray: Any,
    data_root: str,
    work_dir: str,
    buckets: list[int],
    weights: dict[int, int],
    cutoffs_ms: list[int],
    horizon_ms: int,
    feature_config: FeatureConfig,
    cfg: TrainConfig,
    workers: int,
    show_progress: bool = True,
) -> ExamplePartials:
    """Run :func:`actors.example_shard.bucket_examples` for every bucket on Ray, at most
    ``workers`` at a time.

    Heaviest buckets go first (shortest makespan); results merge in bucket order.

    Raises:
        TrainError: a bucket failed (after Ray's retries); the others are cancelled.
    """
    from actors.example_shard import bucket_examples_task as task

    fc_ref, cfg_ref = ray.put(feature_config), ray.put(cfg)
    ordered = sorted(buckets, key=lambda b: (-weights.get(b, 0), b))
    results = _map_buckets(
        ray, ordered,
        lambda b: task.remote(data_root, work_dir, b, cutoffs_ms, horizon_ms, fc_ref, cfg_ref),
        workers, "training examples", show_progress,
    )  # fmt: skip
    return ExamplePartials.merge_all(results)


def fill_bgnbd(
    ray: Any,
    data_root: str,
    ex: ExamplePartials,
    params: dict[int, BgnbdParams | None],
    horizon_days: int,
    repurchase_days: int,
    workers: int,
    show_progress: bool = True,
) -> None:
    """Write the BG/NBD features into every example shard (one Ray task per bucket) and
    add their non-null counts to ``ex.valid``.

    Raises:
        TrainError: a bucket failed (after Ray's retries).
    """
    from actors.example_shard import bgnbd_shards_task as task

    by_bucket = ex.files_by_bucket()
    params_json = {c: None if p is None else p.model_dump() for c, p in params.items()}
    ref = ray.put(params_json)
    results = _map_buckets(
        ray, sorted(by_bucket),
        lambda b: task.remote(data_root, by_bucket[b], ref, horizon_days, repurchase_days),
        workers, "BG/NBD features", show_progress,
    )  # fmt: skip
    for result in results:
        ex.add_valid(result["valid"])


# ============================================================================ driver helpers
def _map_buckets(
    ray: Any, buckets: list[int], submit: Any, workers: int, what: str, show_progress: bool
) -> list[dict[str, Any]]:
    """:func:`jobs._runtime.map_buckets` with a failed bucket as a :class:`TrainError`."""
    try:
        results: list[dict[str, Any]] = map_buckets(
            ray, buckets, lambda b: b, submit, workers, what, show_progress
        )
    except BucketTaskError as exc:
        raise TrainError(
            f"{what} of bucket {exc.bucket} failed: {type(exc.cause).__name__}: {exc.cause}"
        ) from exc
    return results


# ============================================================================ the job
def run(
    settings: Settings,
    as_of: dt.datetime,
    horizon_days: int | None = None,
    actors: int | None = None,
    config_dir: str | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train, evaluate and register the churn, repurchase and spend models.

    Args:
        settings: data root and Ray address.
        as_of: the as-of instant (aware datetime); no event at or after it is used.
        horizon_days: label window after each cutoff (default: train.yaml's ``horizon_days``).
        actors: example workers and training actors (default: the cluster's CPUs).
        config_dir: folder of the YAML configs (default: the repository's configs/).
        show_progress: draw progress bars.

    Returns:
        The result; ``status`` is ``good`` or ``failed`` (models saved but not served,
        with the reasons in ``problems``).

    Raises:
        ConfigError: a config file is invalid (before any work).
        TrainError: no data, no cutoff fits, or a stage crashed (a ``failed`` version with
            the error is recorded and the scratch shards are kept).
    """
    # configs first: a typo fails here, before Ray starts
    cfg = load_train_config(config_dir)
    feature_config = load_feature_config(config_dir)
    horizon = int(horizon_days or cfg.horizon_days)
    if problem := horizon_problem(cfg, horizon):
        raise TrainError(problem)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    as_of_ms = to_epoch_ms(as_of)
    warehouse = Warehouse(settings.data)
    buckets = warehouse.user_buckets()
    if not buckets:
        raise TrainError(f"the warehouse at {warehouse.root} holds no events or users")
    # the cutoffs the history serves (a young log: the newest ones); none: stop before any work
    plan = plan_cutoffs(as_of_ms, cfg, horizon, history_start_ms(warehouse.manifest))
    if problem := plan.problem():
        raise TrainError(problem)
    cutoffs = plan.kept
    warehouse.check_parts()  # an unreadable part fails here, before any scratch or version
    weights = warehouse.bucket_rows("events")
    registry = ModelRegistry(settings.data)
    version = new_version()
    work = registry.work_dir(version)
    fs, _ = resolve(settings.data)
    data_root = worker_root(settings.data)
    meta = start_meta(
        as_of.isoformat(), as_of_ms, horizon, cfg, cutoffs, warehouse.manifest, len(buckets),
        feature_config, plan.meta(),
    )  # fmt: skip
    stage = "examples"
    try:
        with ray_session(settings) as ray:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            n = actors or cpus
            t0 = time.perf_counter()
            ex = build_examples(
                ray, data_root, work, buckets, weights, cutoffs, horizon * DAY_MS,
                feature_config, cfg, workers=n, show_progress=show_progress,
            )  # fmt: skip
            timings["examples_s"] = time.perf_counter() - t0
            meta["data"]["examples"] = ex.rows
            meta["data"]["positives"] = ex.positives
            if problem := ex.problem():
                raise TrainError(problem)
            stage = "BG/NBD features"
            t0 = time.perf_counter()
            params, bg_notes = fit_bgnbd_by_cutoff(
                ex.patterns, cfg.bgnbd_sample_users, cfg.xgboost.seed
            )
            fill_bgnbd(ray, data_root, ex, params, horizon, cfg.repurchase_days, n, show_progress)
            timings["bgnbd_s"] = time.perf_counter() - t0
            meta["bgnbd"], meta["notes"] = bgnbd_block(
                params, cutoffs, cfg.boost_from_bgnbd, bg_notes
            )
            meta["notes"][:0] = [n for n in [plan.note()] if n]

            stage = "examples"
            features, dropped = select_features(ex.valid["train"])
            if not features:
                raise TrainError("no model feature has a value in the train split")
            meta["features"] = features
            meta["feature_types"] = dict.fromkeys(features, "float32")
            meta["dropped_features"] = dropped

            stage = "distributed training"
            from actors import xgb_distributed

            # more actors than CPUs would wait forever for their placement group
            n_train = max(1, min(n, cpus))
            boosters: dict[str, Any] = {}
            infos: dict[str, dict[str, Any]] = {}
            bar = progress()
            bar.disable = not show_progress  # rich's own switch: no live display, no output
            with bar:
                bar_task = bar.add_task("training (xgboost-ray)", total=len(TARGETS))
                for name in TARGETS:
                    boosters[name], infos[name] = xgb_distributed.train_target_distributed(
                        ex.files["train"], ex.files["validation"], features, name, cfg, n_train,
                        fs if is_remote(settings.data) else None, margin_column(meta, name),
                    )  # fmt: skip
                    bar.advance(bar_task)
            timings["train_distributed_s"] = sum(i["total_seconds"] for i in infos.values())
    except TrainError as exc:
        _record_failure(registry, version, meta, stage, str(exc), timings)
        raise TrainError(f"{exc} (scratch shards kept in {work})") from exc
    except Exception as exc:
        _record_failure(registry, version, meta, stage, ray_error_text(exc), timings)
        raise TrainError(
            f"training failed during {stage}: {ray_error_text(exc)}; version {version} recorded "
            f"as failed, scratch shards kept in {work}"
        ) from exc

    try:
        stage = "single-node training and evaluation"
        result = _finish(
            registry, version, meta, ex, features, boosters, infos, cfg, horizon,
            n_train, fs, timings,
        )  # fmt: skip
    except Exception as exc:
        _record_failure(registry, version, meta, stage, str(exc), timings)
        raise TrainError(
            f"training failed during {stage}: {exc}; version {version} recorded as failed, "
            f"scratch shards kept in {work}"
        ) from exc
    if result.status == "good":
        registry.delete_work(version)
        result.work_dir = None
    timings["total_s"] = time.perf_counter() - t_start
    result.timings = timings
    return result


def _finish(
    registry: ModelRegistry,
    version: str,
    meta: dict[str, Any],
    ex: ExamplePartials,
    features: list[str],
    boosters: dict[str, Any],
    infos: dict[str, dict[str, Any]],
    cfg: TrainConfig,
    horizon: int,
    nthread: int,
    fs: pafs.FileSystem,
    timings: dict[str, float],
) -> TrainResult:
    """Single-node baseline, evaluation on the test split, checks and the registry save."""
    from actors.xgb_distributed import predict, single_node_fit_predict, train_single_targets

    t0 = time.perf_counter()
    tables = [read_parts(fs, ex.files[s], None) for s in SPLITS]
    train, valid, test = (Split.of(t, features) for t in tables)
    meta["data"]["examples_sha256"] = examples_digest(tables)
    timings["load_matrices_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    single, single_infos = train_single_targets(train, valid, features, cfg, nthread, meta)
    timings["train_single_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    preds = {
        name: {
            "distributed": predict(boosters[name], test, margin_column(meta, name)),
            "single_node": predict(single[name], test, margin_column(meta, name)),
        }
        for name in TARGETS
    }
    metrics, newest, notes = evaluate_test(test.table, preds, meta, horizon, cfg.repurchase_days)
    timings["evaluate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    holdout: dict[str, dict[str, Any]] = {}
    if cfg.time_holdout:
        fit_predict = single_node_fit_predict(features, cfg, nthread, meta)
        params = params_by_cutoff(meta)
        holdout = time_holdout_check(
            train.table, valid.table, test.table, features, cfg, horizon, params, fit_predict
        )
    timings["time_holdout_s"] = time.perf_counter() - t0
    outcome = conclude(metrics, holdout, cfg.time_holdout, [*meta.get("notes", []), *notes])
    ranked = {name: importance(b) for name, b in boosters.items()}
    models = models_block(cfg, features, infos, meta)
    meta.update(
        final_meta(outcome, models, single_infos, metrics, holdout, newest, ranked, timings)
    )
    try:
        path = registry.save(version, boosters, meta)
    except ModelError:
        registry.delete(version)
        raise
    return TrainResult.of(version, path, meta, metrics, ranked, registry.work_dir(version))


def _record_failure(
    registry: ModelRegistry,
    version: str,
    meta: dict[str, Any],
    stage: str,
    error: str,
    timings: dict[str, float],
) -> None:
    """Record a crashed run as a ``failed`` version (no models), for `strata models`."""
    try:
        registry.save_failed(version, meta, f"{stage}: {error}", timings)
    except Exception as exc:  # the original error matters more than this one
        console.print(f"[yellow]could not record failed version {version}: {exc}")


# ============================================================================ commands
def command(
    data: str = typer.Option("./data", "--data", envvar="STRATA_DATA", help="Data root."),
    as_of: dt.datetime = typer.Option(..., "--as-of", help=AS_OF_HELP, parser=as_of_option),
    horizon: int | None = typer.Option(
        None, "--horizon", min=1, help="Label window in days (default: train.yaml)."
    ),
    actors: int | None = typer.Option(None, "--actors", min=1, help="Workers / XGBoost actors."),
    config_dir: str | None = typer.Option(None, "--config-dir", help="Folder of YAML configs."),
) -> None:
    """Train churn, repurchase and spend models (distributed XGBoost) and register them."""
    settings = Settings(data=data)
    result = run(settings, as_of, horizon, actors, config_dir)
    print_result(result)
    if result.status != "good":
        raise typer.Exit(1)


def models(
    data: str = typer.Option("./data", "--data", envvar="STRATA_DATA", help="Data root."),
) -> None:
    """List the trained model versions with status, test metrics and winners."""
    print_versions(ModelRegistry(data))


if __name__ == "__main__":
    run_command(command)
