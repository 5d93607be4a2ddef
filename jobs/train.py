"""`strata train`: churn, repurchase and spend models with distributed XGBoost on Ray.

1. Examples: for every cutoff (``cutoffs_for(as-of, horizon)``) each warehouse bucket becomes
   training examples: features as of the cutoff, labels from ``[cutoff, cutoff + horizon)``
   (:func:`strata.training.training_examples`). Ray tasks (:mod:`actors.example_shard`, at most
   N in flight, one bucket each) write them as Parquet shards
   ``models/_work/<version>/<split>/part-<bucket>.parquet``
   (deterministic: the same inputs give the same files whatever N) and return mergeable counts.
   Each task also returns the train users' BTYD patterns per cutoff (mergeable counts).
   BG/NBD: the driver fits it per cutoff on those patterns (:mod:`strata.training.bgnbd`); Ray
   tasks write the BG/NBD features and base margins into the shards (:func:`fill_bgnbd`).
2. Features: the model feature list is every ``MODEL_FEATURES`` column with at least one value
   in the train split. A feature the data never carries (an import without coupons or
   categories) is dropped and recorded, never zero-filled.
3. Train: xgboost-ray (N actors x 1 CPU, :mod:`actors.xgb_distributed`) trains the three models
   over the shards with early stopping on the validation split; plain xgboost trains the same
   models on the same rows in the driver (the single-node baseline and parity check).
4. Evaluate on the test split: distributed, single-node, the recency rule and BG/NBD. The
   distributed and single-node AUCs must agree within 0.005 (recorded). Winner per target;
   a time-holdout check (older cutoffs only, scored at the newest); the champion per target
   (the model, or the best baseline when the model does not beat it), which the recompute
   publishes.
5. Save: the registry writes the boosters and then ``meta.json`` (the commit marker). The
   scratch shards are deleted on success and kept (path printed) when anything failed.

Run locally (``python -m jobs.train --as-of ... --horizon 30``) or on a cluster with
``ray job submit --working-dir . -- python -m jobs.train ...``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import typer

from jobs._runtime import (
    BucketTaskError,
    as_of_option,
    console,
    map_buckets,
    progress,
    ray_session,
    run_command,
)
from jobs._train_report import print_result, print_versions
from strata.features import FeatureConfig, load_feature_config
from strata.io.models import ModelError, ModelRegistry, new_version
from strata.io.warehouse import Warehouse, resolve
from strata.settings import Settings
from strata.timeutil import AS_OF_HELP, DAY_MS, to_epoch_ms
from strata.training import (
    IMPORTANCE_TOP,
    KEY_COLUMNS,
    LABEL_COLUMNS,
    MARGIN_COLUMNS,
    PARITY_MAX_AUC_GAP,
    SPLITS,
    TARGETS,
    BgnbdParams,
    ExamplePartials,
    Target,
    TrainConfig,
    best_method,
    bgnbd_meta,
    bgnbd_predictions_by_cutoff,
    choose_champion,
    cutoff_iso,
    cutoffs_for,
    data_hash,
    evaluate,
    feature_matrix,
    fill_missing_scores,
    fit_bgnbd_by_cutoff,
    holdout_by_time,
    importance,
    load_train_config,
    params_by_cutoff,
    parity,
    recency_rule,
    select_features,
    without_calibration,
    xgb_params,
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


@dataclass
class TrainResult:
    """What one ``strata train`` run produced."""

    version: str
    status: str
    path: str
    as_of: str
    horizon_days: int
    cutoffs: list[str]
    examples: dict[str, int]
    features: list[str]
    dropped_features: list[str]
    metrics: dict[str, dict[str, dict[str, Any]]]
    winners: dict[str, str]
    champions: dict[str, dict[str, Any]]
    parity: dict[str, dict[str, Any]]
    importance: dict[str, list[tuple[str, float]]]
    models: dict[str, dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    work_dir: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


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
    try:
        results: list[dict[str, Any]] = map_buckets(
            ray,
            ordered,
            lambda b: b,
            lambda b: task.remote(data_root, work_dir, b, cutoffs_ms, horizon_ms, fc_ref, cfg_ref),
            workers,
            "training examples",
            show_progress,
        )
    except BucketTaskError as exc:
        raise TrainError(
            f"training examples of bucket {exc.bucket} failed: "
            f"{type(exc.cause).__name__}: {exc.cause}"
        ) from exc
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

    by_bucket: dict[int, list[str]] = {}
    for files in ex.files.values():
        for path in files:
            bucket = int(posixpath.basename(path).split("-")[1].split(".")[0])
            by_bucket.setdefault(bucket, []).append(path)
    params_json = {c: None if p is None else p.model_dump() for c, p in params.items()}
    ref = ray.put(params_json)
    try:
        results: list[dict[str, Any]] = map_buckets(
            ray,
            sorted(by_bucket),
            lambda b: b,
            lambda b: task.remote(data_root, by_bucket[b], ref, horizon_days, repurchase_days),
            workers,
            "BG/NBD features",
            show_progress,
        )
    except BucketTaskError as exc:
        raise TrainError(
            f"BG/NBD features of bucket {exc.bucket} failed: "
            f"{type(exc.cause).__name__}: {exc.cause}"
        ) from exc
    for result in results:
        for split, counts in result["valid"].items():
            for name, k in counts.items():
                ex.valid[split][name] = ex.valid[split].get(name, 0) + k


# ============================================================================ driver helpers
def read_split(fs: pafs.FileSystem, files: list[str], columns: list[str] | None) -> pa.Table:
    """Concatenate a split's shards (in the given order)."""
    tables = [pq.read_table(f, filesystem=fs, columns=columns) for f in files]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _label(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float32)


def data_digest(warehouse: Warehouse) -> str:
    """SHA-256 of the warehouse's committed content (files, rows, bucket count)."""
    manifest = warehouse.manifest
    payload = {"n_buckets": manifest["n_buckets"], "tables": manifest["tables"]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _digest(model: Any) -> str:
    return hashlib.sha256(model.model_dump_json().encode()).hexdigest()


def _ray_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return str(cause) if cause is not None else str(exc)


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
    if horizon < 1:
        raise TrainError(f"--horizon must be at least 1 day, got {horizon}")
    if cfg.repurchase_days >= horizon:
        raise TrainError(
            f"repurchase_days ({cfg.repurchase_days}) in train.yaml must be smaller than the "
            f"horizon ({horizon} days)"
        )
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    as_of_ms = to_epoch_ms(as_of)
    cutoffs = list(cutoffs_for(as_of_ms, cfg, horizon))
    if not cutoffs:
        raise TrainError(f"no cutoff with a {horizon}-day horizon fits before {as_of.isoformat()}")
    warehouse = Warehouse(settings.data)
    buckets = sorted(set(warehouse.buckets("events")) | set(warehouse.buckets("users")))
    if not buckets:
        raise TrainError(f"the warehouse at {warehouse.root} holds no events or users")
    weights = warehouse.bucket_rows("events")
    registry = ModelRegistry(settings.data)
    version = new_version()
    work = registry.work_dir(version)
    fs, root = resolve(settings.data)
    # workers may run in another working directory: hand them an absolute local path
    data_root = settings.data if "://" in settings.data else root
    meta: dict[str, Any] = {
        "as_of": as_of.isoformat(),
        "as_of_ms": as_of_ms,
        "horizon_days": horizon,
        "repurchase_days": cfg.repurchase_days,
        "cutoffs_ms": cutoffs,
        "cutoffs": [cutoff_iso(c) for c in cutoffs],
        "data": {
            "sha256": data_digest(warehouse),
            "warehouse_updated_at": warehouse.manifest.get("updated_at"),
            "buckets": len(buckets),
        },
        "config": {
            "train": cfg.model_dump(mode="json"),
            "train_sha256": _digest(cfg),
            "features_sha256": _digest(feature_config),
        },
    }
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
            empty = ex.empty_splits()
            if empty:
                raise TrainError(
                    f"split(s) {empty} have no examples (rows per split: {ex.rows}); "
                    "more users or an earlier cutoff are needed"
                )
            unlabelled = ex.unlabelled()
            if unlabelled:
                raise TrainError(
                    f"labels missing for {', '.join(unlabelled)}: the spend label needs "
                    "amount_cny in the events"
                )
            stage = "BG/NBD features"
            t0 = time.perf_counter()
            params, bg_notes = fit_bgnbd_by_cutoff(
                ex.patterns, cfg.bgnbd_sample_users, cfg.xgboost.seed
            )
            fill_bgnbd(ray, data_root, ex, params, horizon, cfg.repurchase_days, n, show_progress)
            timings["bgnbd_s"] = time.perf_counter() - t0
            meta["bgnbd"] = bgnbd_meta(params, cutoffs)
            # boosting needs the newest cutoff's fit (the one scoring uses); rows of an older
            # cutoff without a fit (too few customers then) start from margin 0
            boost = cfg.boost_from_bgnbd and params.get(cutoffs[0]) is not None
            if cfg.boost_from_bgnbd and not boost:
                bg_notes.append("models not boosted from BG/NBD: the newest cutoff has no fit")
            meta["bgnbd"]["boost_from"] = boost
            meta["notes"] = bg_notes

            stage = "examples"
            features, dropped = select_features(ex.valid["train"])
            if not features:
                raise TrainError("no model feature has a value in the train split")
            meta["features"] = features
            meta["feature_types"] = dict.fromkeys(features, "float32")
            meta["dropped_features"] = dropped

            stage = "distributed training"
            # more actors than CPUs would wait forever for their placement group
            n_train = max(1, min(n, cpus))
            boosters: dict[str, Any] = {}
            infos: dict[str, dict[str, Any]] = {}
            bar = progress() if show_progress else None
            bar_task = bar.add_task("training (xgboost-ray)", total=len(TARGETS)) if bar else None
            if bar:
                bar.start()
            try:
                for name, target in TARGETS.items():
                    booster, info = _train_distributed(
                        ex, features, target, cfg, n_train,
                        fs if "://" in settings.data else None, _margin_column(meta, name),
                    )  # fmt: skip
                    boosters[name], infos[name] = booster, info
                    if bar and bar_task is not None:
                        bar.advance(bar_task)
            finally:
                if bar:
                    bar.stop()
            timings["train_distributed_s"] = sum(i["total_seconds"] for i in infos.values())
    except TrainError as exc:
        _record_failure(registry, version, meta, stage, str(exc), timings)
        raise TrainError(f"{exc} (scratch shards kept in {work})") from exc
    except Exception as exc:
        _record_failure(registry, version, meta, stage, _ray_error(exc), timings)
        raise TrainError(
            f"training failed during {stage}: {_ray_error(exc)}; version {version} recorded "
            f"as failed, scratch shards kept in {work}"
        ) from exc

    try:
        stage = "single-node training and evaluation"
        result = _finish(
            registry, version, meta, ex, features, dropped, boosters, infos, cfg, horizon,
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


def _train_distributed(
    ex: ExamplePartials,
    features: list[str],
    target: Target,
    cfg: TrainConfig,
    n_actors: int,
    filesystem: pafs.FileSystem | None,
    base_margin: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    from actors.xgb_distributed import train_distributed

    return train_distributed(
        ex.files["train"],
        ex.files["validation"],
        features,
        target.label,
        target.objective,
        xgb_params(cfg, target, features),
        num_actors=n_actors,
        num_boost_round=cfg.xgboost.num_boost_round,
        early_stopping_rounds=cfg.xgboost.early_stopping_rounds,
        filesystem=filesystem,
        base_margin=base_margin,
    )


def _finish(
    registry: ModelRegistry,
    version: str,
    meta: dict[str, Any],
    ex: ExamplePartials,
    features: list[str],
    dropped: list[str],
    boosters: dict[str, Any],
    infos: dict[str, dict[str, Any]],
    cfg: TrainConfig,
    horizon: int,
    nthread: int,
    fs: pafs.FileSystem,
    timings: dict[str, float],
) -> TrainResult:
    """Single-node baseline, evaluation on the test split, checks and the registry save."""
    from actors.xgb_distributed import train_single

    labels = list(LABEL_COLUMNS)
    t0 = time.perf_counter()
    train = read_split(fs, ex.files["train"], None)
    valid = read_split(fs, ex.files["validation"], None)
    test = read_split(fs, ex.files["test"], None)
    X_train = feature_matrix(train, features)
    X_valid = feature_matrix(valid, features)
    X_test = feature_matrix(test, features)
    meta["data"]["examples_sha256"] = data_hash(
        pa.concat_tables([t.select([*KEY_COLUMNS, *labels]) for t in (train, valid, test)])
    )
    timings["load_matrices_s"] = time.perf_counter() - t0

    single: dict[str, Any] = {}
    single_infos: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for name, target in TARGETS.items():
        single[name], single_infos[name] = train_single(
            X_train,
            _label(train, target.label),
            X_valid,
            _label(valid, target.label),
            target.objective,
            xgb_params(cfg, target, features),
            nthread=nthread,
            num_boost_round=cfg.xgboost.num_boost_round,
            early_stopping_rounds=cfg.xgboost.early_stopping_rounds,
            feature_names=features,
            margin_train=_margin(train, meta, name),
            margin_valid=_margin(valid, meta, name),
        )
    timings["train_single_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rule = recency_rule(test, horizon, cfg.repurchase_days)
    notes: list[str] = list(meta.get("notes", []))
    params = params_by_cutoff(meta)
    # BG/NBD fitted on the train users' history at each test row's cutoff (the same fit
    # whose outputs are model features); a cutoff without a fit has no BG/NBD baseline
    bgnbd: dict[str, np.ndarray] = {}
    if any(p is not None for p in params.values()):
        bgnbd = bgnbd_predictions_by_cutoff(test, params, horizon, cfg.repurchase_days)
    else:
        notes.append("BG/NBD baseline skipped: no cutoff could be fitted")
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    newest: dict[str, dict[str, dict[str, Any]]] = {}
    at_newest = (
        np.asarray(test.column("cutoff_ms").to_numpy(zero_copy_only=False)) == meta["cutoffs_ms"][0]
    )
    for name, target in TARGETS.items():
        y = _label(test, target.label)
        preds: dict[str, np.ndarray] = {
            "distributed": boosters[name].inplace_predict(
                X_test, base_margin=_margin(test, meta, name)
            ),
            "single_node": single[name].inplace_predict(
                X_test, base_margin=_margin(test, meta, name)
            ),
        }
        if name in rule:
            preds["recency_rule"] = rule[name]
        if name in bgnbd:
            preds["bgnbd"] = fill_missing_scores(bgnbd[name])
        # non-finite predictions make the metrics raise: the run is then recorded as failed
        metrics[name] = evaluate(target, y, preds)
        if len(meta["cutoffs_ms"]) > 1:  # the newest cutoff alone, comparable to cutoffs: 1
            newest[name] = without_calibration(
                evaluate(target, y[at_newest], {m: p[at_newest] for m, p in preds.items()})
            )
    timings["evaluate_s"] = time.perf_counter() - t0

    checks, problems = parity(metrics)
    winners = {name: best_method(t, metrics[name]) for name, t in TARGETS.items()}
    t0 = time.perf_counter()
    holdout = (
        time_holdout_check(train, valid, test, features, cfg, horizon, params, nthread, meta)
        if cfg.time_holdout
        else {}
    )
    timings["time_holdout_s"] = time.perf_counter() - t0
    if cfg.time_holdout and not holdout:
        notes.append(
            "no time holdout check: no older cutoff's label window ends by the newest cutoff "
            "(it needs cutoffs x cutoff_step_days > horizon)"
        )
    champions = {
        name: choose_champion(
            metrics[name], t.kind == "classification", holdout.get(name, {}).get("metrics")
        )
        for name, t in TARGETS.items()
    }
    for name, c in champions.items():
        if c["method"] != "model":
            notes.append(f"{name}: published scores come from {c['method']}: {c['reason']}")
    ranked = {name: importance(b) for name, b in boosters.items()}
    status = "failed" if problems else "good"
    models = {
        name: {
            "file": f"{name}.ubj",
            "label": t.label,
            "objective": t.objective,
            "params": xgb_params(cfg, t, features),
            "base_margin": "bgnbd" if _margin_column(meta, name) else None,
            **{k: v for k, v in infos[name].items()},
        }
        for name, t in TARGETS.items()
    }
    meta.update(
        {
            "status": status,
            "problems": problems,
            "notes": notes,
            "models": models,
            "single_node": single_infos,
            "metrics": {name: m["distributed"] for name, m in metrics.items()},
            "baselines": {
                name: {k: v for k, v in m.items() if k != "distributed"}
                for name, m in metrics.items()
            },
            "winner": winners,
            "champion": champions,
            "checks": {"parity": checks, "time_holdout": holdout, "newest_cutoff": newest},
            "importance_gain": {k: [[f, g] for f, g in v] for k, v in ranked.items()},
            "timings": timings,
        }
    )
    try:
        path = registry.save(version, boosters, meta)
    except ModelError:
        registry.delete(version)
        raise
    return TrainResult(
        version=version,
        status=status,
        path=path,
        as_of=meta["as_of"],
        horizon_days=horizon,
        cutoffs=meta["cutoffs"],
        examples=dict(ex.rows),
        features=features,
        dropped_features=dropped,
        metrics=metrics,
        winners=winners,
        champions=champions,
        parity=checks,
        importance=ranked,
        models=models,
        problems=problems,
        notes=notes,
        work_dir=registry.work_dir(version),
        timings=timings,
    )


def _margin_column(meta: dict[str, Any], name: str) -> str | None:
    """The base-margin column of model ``name`` (None: not boosted from BG/NBD)."""
    return MARGIN_COLUMNS[name] if meta.get("bgnbd", {}).get("boost_from") else None


def _margin(table: pa.Table, meta: dict[str, Any], name: str) -> np.ndarray | None:
    column = _margin_column(meta, name)
    if column is None:
        return None
    return np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=np.float32)


def time_holdout_check(
    train: pa.Table,
    valid: pa.Table,
    test: pa.Table,
    features: list[str],
    cfg: TrainConfig,
    horizon: int,
    params: dict[int, BgnbdParams | None],
    nthread: int,
    meta: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """The classifiers checked on a cutoff held out by time as well as by user.

    A single-node model trained (same parameters) only on the cutoffs whose label windows end
    by the newest cutoff (no label it sees lies in the newest window), scored on the test users
    at the newest cutoff against the recency rule and BG/NBD there. Empty when no older cutoff
    qualifies (e.g. ``cutoffs: 1``).

    Returns:
        per classifier: ``cutoff``, ``train_cutoffs``, ``rows`` and ``metrics`` per method.
    """
    from actors.xgb_distributed import train_single

    rows = holdout_by_time(train, valid, test, list(params), horizon)
    if rows is None:
        return {}
    newest, older, tr, va, te = rows
    X_tr, X_va, X_te = (feature_matrix(t, features) for t in (tr, va, te))
    rule = recency_rule(te, horizon, cfg.repurchase_days)
    bg = bgnbd_predictions_by_cutoff(te, params, horizon, cfg.repurchase_days)
    out: dict[str, dict[str, Any]] = {}
    for name, target in TARGETS.items():
        if target.kind != "classification":
            continue
        booster, _ = train_single(
            X_tr, _label(tr, target.label), X_va, _label(va, target.label), target.objective,
            xgb_params(cfg, target, features), nthread=nthread,
            num_boost_round=cfg.xgboost.num_boost_round,
            early_stopping_rounds=cfg.xgboost.early_stopping_rounds, feature_names=features,
            margin_train=_margin(tr, meta, name), margin_valid=_margin(va, meta, name),
        )  # fmt: skip
        y = _label(te, target.label)
        preds = {
            "distributed": booster.inplace_predict(X_te, base_margin=_margin(te, meta, name)),
            "recency_rule": rule[name],
        }
        if np.isfinite(bg[name]).any():
            preds["bgnbd"] = fill_missing_scores(bg[name])
        metrics = evaluate(target, y, preds)
        out[name] = {
            "cutoff": cutoff_iso(newest),
            "train_cutoffs": [cutoff_iso(c) for c in older],
            "rows": {"train": tr.num_rows, "validation": va.num_rows, "test": te.num_rows},
            "metrics": without_calibration(metrics),
        }
    return out


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
        registry.delete(version)
        registry.save(
            version,
            {},
            {**meta, "status": "failed", "problems": [f"{stage}: {error}"], "timings": timings},
        )
    except Exception as exc:  # the original error matters more than this one
        console.print(f"[yellow]could not record failed version {version}: {exc}")


# ============================================================================ commands
def command(
    data: str = typer.Option("./data", "--data", help="Data root."),
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


def models(data: str = typer.Option("./data", "--data", help="Data root.")) -> None:
    """List the trained model versions with status, test metrics and winners."""
    print_versions(ModelRegistry(data))


if __name__ == "__main__":
    run_command(command)
