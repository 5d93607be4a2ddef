"""`strata train`: churn, repurchase and spend models with distributed XGBoost on Ray.

1. Examples: for every cutoff (``cutoffs_for(as-of, horizon)``) each warehouse bucket becomes
   training examples: features as of the cutoff, labels from ``[cutoff, cutoff + horizon)``
   (:func:`strata.training.training_examples`). Ray tasks (at most N in flight, one bucket
   each) write them as Parquet shards ``models/_work/<version>/<split>/part-<bucket>.parquet``
   (deterministic: the same inputs give the same files whatever N) and return mergeable counts.
   Each task also returns the train users' BTYD patterns per cutoff (mergeable counts).
   BG/NBD: the driver fits it per cutoff on those patterns (:mod:`strata.btyd`); Ray tasks
   write the BG/NBD features and base margins into the shards (:func:`fill_bgnbd`).
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
import math
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import typer
from rich.table import Table

from jobs._runtime import (
    BucketTaskError,
    console,
    map_buckets,
    progress,
    ray_session,
    run_command,
    summary_table,
)
from strata.btyd import BgnbdParams, bgnbd_patterns, fit_bgnbd, merge_patterns
from strata.features import (
    DICTIONARY_COLUMNS,
    FEATURE_EVENT_COLUMNS,
    FEATURE_USER_COLUMNS,
    FeatureConfig,
    load_feature_config,
)
from strata.io.models import ModelError, ModelRegistry, new_version
from strata.io.warehouse import PARQUET_OPTIONS, Warehouse, resolve
from strata.settings import Settings
from strata.timeutil import AS_OF_HELP, parse_as_of
from strata.training import (
    BGNBD_FEATURES,
    LABEL_COLUMNS,
    MARGIN_COLUMNS,
    MODEL_FEATURES,
    TrainConfig,
    apply_bgnbd_by_cutoff,
    bgnbd_predictions_by_cutoff,
    choose_champion,
    classification_metrics,
    cutoffs_for,
    data_hash,
    feature_matrix,
    load_train_config,
    monotone_constraints,
    recency_rule,
    regression_metrics,
    training_examples,
)
from strata.training import (
    winner as training_winner,
)

DAY_MS = 86_400_000
#: Split codes of ``training_examples`` (0, 1, 2) and their folder names.
SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: Identity columns of an example (kept in the shards; never model inputs).
KEY_COLUMNS: tuple[str, ...] = ("user_id", "cutoff_ms", "split")


@dataclass(frozen=True)
class Target:
    """One model: its label column and xgboost objective."""

    label: str
    objective: str
    kind: str  # "classification" | "regression"
    extra_params: tuple[tuple[str, Any], ...] = ()


#: The three models. Spend uses Tweedie (log link, variance power 1.5): next-period spend is
#: zero for most users and right-skewed for the rest (a compound Poisson-gamma shape), which
#: squared error fits poorly; Tweedie also never predicts a negative amount.
TARGETS: dict[str, Target] = {
    "churn": Target("label_churn", "binary:logistic", "classification"),
    "repurchase": Target("label_repurchase", "binary:logistic", "classification"),
    "spend": Target("label_spend", "reg:tweedie", "regression", (("tweedie_variance_power", 1.5),)),
}
#: Production parity check: |AUC(distributed) - AUC(single node)| on the test split.
PARITY_MAX_AUC_GAP = 0.005
IMPORTANCE_TOP = 15
#: Method names, in the order they are shown (ties in the winner go to the earlier one).
METHODS: tuple[str, ...] = ("distributed", "single_node", "recency_rule", "bgnbd")


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


# ============================================================================ examples (workers)
def _valid_counts(table: pa.Table, names: tuple[str, ...]) -> dict[str, int]:
    """Non-null, non-NaN values per column (absent columns count 0)."""
    out: dict[str, int] = {}
    for name in names:
        if name not in table.column_names:
            out[name] = 0
            continue
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        out[name] = int(np.count_nonzero(~np.isnan(values)))
    return out


def shard_path(work_dir: str, split: str, bucket: int) -> str:
    """Where one bucket's examples of one split go."""
    return posixpath.join(work_dir, split, f"part-{bucket:05d}.parquet")


def bucket_examples(
    data_root: str,
    work_dir: str,
    bucket: int,
    cutoffs_ms: list[int],
    horizon_ms: int,
    feature_config: FeatureConfig,
    cfg: TrainConfig,
) -> dict[str, Any]:
    """Training examples of one bucket for every cutoff, written as one file per split.

    Runs as a Ray task (retries are safe: the same inputs write the same files). Reads only
    the event columns the bucket carries, string columns dictionary-encoded.

    Returns:
        ``bucket``, ``rows`` / ``files`` / ``valid`` (non-null count per model feature) /
        ``positives`` (label sums) / ``labelled`` (non-null labels) per split, and ``seconds``.
    """
    t0 = time.perf_counter()
    warehouse = Warehouse(data_root)
    given = set(warehouse.bucket_columns("events", bucket))
    events = warehouse.read_bucket(
        "events",
        bucket,
        [c for c in FEATURE_EVENT_COLUMNS if c in given],
        read_dictionary=[c for c in DICTIONARY_COLUMNS if c.split(".")[0] in given],
    )
    users = warehouse.read_bucket("users", bucket, list(FEATURE_USER_COLUMNS))
    parts = [
        training_examples(events, users, c, c + horizon_ms, feature_config, cfg) for c in cutoffs_ms
    ]
    table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    split = np.asarray(table.column("split").to_numpy(zero_copy_only=False))
    fs, _ = resolve(data_root)
    out: dict[str, Any] = {
        "bucket": bucket,
        "rows": {},
        "files": {},
        "valid": {},
        "positives": {},
        "labelled": {},
        "patterns": train_patterns(table, split),
    }
    for code, name in enumerate(SPLITS):
        rows = np.flatnonzero(split == code)
        out["rows"][name] = int(rows.size)
        if rows.size == 0:
            continue
        part = table.take(pa.array(rows))
        path = shard_path(work_dir, name, bucket)
        fs.create_dir(posixpath.dirname(path), recursive=True)
        pq.write_table(part, path, filesystem=fs, **PARQUET_OPTIONS)
        out["files"][name] = path
        out["valid"][name] = _valid_counts(part, MODEL_FEATURES)
        out["positives"][name] = {
            label: float(np.nansum(part.column(label).to_numpy(zero_copy_only=False)))
            for label in LABEL_COLUMNS
        }
        out["labelled"][name] = {
            label: part.num_rows - part.column(label).null_count for label in LABEL_COLUMNS
        }
    out["seconds"] = time.perf_counter() - t0
    return out


def train_patterns(table: pa.Table, split: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Distinct BTYD summaries (with counts) of the train users, per cutoff: the mergeable
    input of the BG/NBD fit at that cutoff."""
    cut = np.asarray(table.column("cutoff_ms").to_numpy(zero_copy_only=False), dtype=np.int64)
    cols = [
        np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
        for c in ("btyd_frequency", "btyd_recency", "btyd_t")
    ]
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for c in np.unique(cut):
        rows = (cut == c) & (split == 0)
        out[int(c)] = bgnbd_patterns(*(v[rows] for v in cols))
    return out


@dataclass
class Examples:
    """The merged result of the example pass."""

    files: dict[str, list[str]]
    rows: dict[str, int]
    valid: dict[str, dict[str, int]]
    positives: dict[str, dict[str, float]]
    labelled: dict[str, dict[str, int]]
    buckets: int
    task_seconds: float
    patterns: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def merge_examples(shards: list[dict[str, Any]]) -> Examples:
    """Merge per-bucket results (sums; file lists in bucket order, whatever the task order)."""
    shards = sorted(shards, key=lambda s: s["bucket"])
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    rows = dict.fromkeys(SPLITS, 0)
    valid: dict[str, dict[str, int]] = {s: dict.fromkeys(MODEL_FEATURES, 0) for s in SPLITS}
    positives: dict[str, dict[str, float]] = {s: dict.fromkeys(LABEL_COLUMNS, 0.0) for s in SPLITS}
    labelled: dict[str, dict[str, int]] = {s: dict.fromkeys(LABEL_COLUMNS, 0) for s in SPLITS}
    for shard in shards:
        for split in SPLITS:
            rows[split] += shard["rows"].get(split, 0)
            if split in shard["files"]:
                files[split].append(shard["files"][split])
            for name, n in shard["valid"].get(split, {}).items():
                valid[split][name] += n
            for name, n in shard["positives"].get(split, {}).items():
                positives[split][name] += n
            for name, k in shard["labelled"].get(split, {}).items():
                labelled[split][name] += k
    cutoffs = sorted({c for s in shards for c in s.get("patterns", {})})
    patterns = {
        c: merge_patterns([s["patterns"][c] for s in shards if c in s.get("patterns", {})])
        for c in cutoffs
    }
    return Examples(
        files,
        rows,
        valid,
        positives,
        labelled,
        len(shards),
        sum(s["seconds"] for s in shards),
        patterns,
    )


def fit_bgnbd_by_cutoff(
    ex: Examples, sample_users: int, seed: int
) -> tuple[dict[int, BgnbdParams | None], list[str]]:
    """BG/NBD parameters fitted on the train users at each cutoff (None where the fit is not
    possible: too few users, or it failed), and notes saying why. At most ``sample_users``
    customers per cutoff enter the fit (a seeded draw of the pattern counts)."""
    out: dict[int, BgnbdParams | None] = {}
    notes: list[str] = []
    rng = np.random.default_rng(seed)
    for cutoff, (patterns, counts) in sorted(ex.patterns.items()):
        if counts.sum() > sample_users:
            counts = rng.multivariate_hypergeometric(counts, sample_users)
            patterns, counts = patterns[counts > 0], counts[counts > 0]
        try:
            out[cutoff] = fit_bgnbd(patterns, counts)
        except (ValueError, RuntimeError) as exc:
            out[cutoff] = None
            notes.append(f"BG/NBD at cutoff {_iso_ms(cutoff)} not fitted: {exc}")
    return out, notes


def bgnbd_shards(
    data_root: str,
    files: list[str],
    params_json: dict[int, dict[str, Any] | None],
    horizon_days: int,
    repurchase_days: int,
) -> dict[str, Any]:
    """Fill the BG/NBD features of one bucket's example shards in place (a Ray task; the
    same inputs write the same bytes). Returns the non-null counts per split."""
    params = {
        c: None if p is None else BgnbdParams.model_validate(p) for c, p in params_json.items()
    }
    fs, _ = resolve(data_root)
    valid: dict[str, dict[str, int]] = {}
    for path in files:
        table = pq.read_table(path, filesystem=fs)
        table = apply_bgnbd_by_cutoff(table, params, horizon_days, repurchase_days)
        pq.write_table(table, path, filesystem=fs, **PARQUET_OPTIONS)
        split = posixpath.basename(posixpath.dirname(path))
        valid[split] = _valid_counts(table, BGNBD_FEATURES)
    return {"valid": valid}


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
) -> Examples:
    """Run :func:`bucket_examples` for every bucket on Ray, at most ``workers`` at a time.

    Heaviest buckets go first (shortest makespan); results merge in bucket order.

    Raises:
        TrainError: a bucket failed (after Ray's retries); the others are cancelled.
    """
    task = ray.remote(num_cpus=1, max_retries=3)(bucket_examples)
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
    return merge_examples(results)


def fill_bgnbd(
    ray: Any,
    data_root: str,
    ex: Examples,
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
    by_bucket: dict[int, list[str]] = {}
    for files in ex.files.values():
        for path in files:
            bucket = int(posixpath.basename(path).split("-")[1].split(".")[0])
            by_bucket.setdefault(bucket, []).append(path)
    task = ray.remote(num_cpus=1, max_retries=3)(bgnbd_shards)
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


def bgnbd_meta(params: dict[int, BgnbdParams | None], cutoffs_ms: list[int]) -> dict[str, Any]:
    """The BG/NBD block of meta.json: the parameters per cutoff and those the recompute
    scores with (the newest cutoff's: the latest fit on the train users' history)."""
    per_cutoff = {
        _iso_ms(c): None if params.get(c) is None else params[c].model_dump()  # type: ignore[union-attr]
        for c in cutoffs_ms
    }
    newest = params.get(cutoffs_ms[0]) if cutoffs_ms else None
    return {
        "fitted_on": "train users, at each cutoff (history before the cutoff only)",
        "params_by_cutoff": per_cutoff,
        "scoring_cutoff": _iso_ms(cutoffs_ms[0]) if cutoffs_ms else None,
        "scoring_params": None if newest is None else newest.model_dump(),
    }


# ============================================================================ driver helpers
def select_features(valid_train: dict[str, int]) -> tuple[list[str], list[str]]:
    """Model features = those with at least one value in the train split; and the dropped."""
    kept = [f for f in MODEL_FEATURES if valid_train.get(f, 0) > 0]
    dropped = [f for f in MODEL_FEATURES if valid_train.get(f, 0) == 0]
    return kept, dropped


def read_split(fs: pafs.FileSystem, files: list[str], columns: list[str] | None) -> pa.Table:
    """Concatenate a split's shards (in the given order)."""
    tables = [pq.read_table(f, filesystem=fs, columns=columns) for f in files]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def xgb_params(
    cfg: TrainConfig, target: Target, features: list[str] | None = None
) -> dict[str, Any]:
    """The xgboost parameters of one model (objective and metrics are added by the trainer);
    with ``features``, the monotone constraints where the direction is known
    (``monotone`` in train.yaml, :func:`strata.training.monotone_constraints`)."""
    x = cfg.xgboost
    out = {
        "max_depth": x.max_depth,
        "eta": x.eta,
        "subsample": x.subsample,
        "colsample_bytree": x.colsample_bytree,
        "min_child_weight": x.min_child_weight,
        "lambda": x.reg_lambda,
        "seed": x.seed,
        "tree_method": "hist",
        **dict(target.extra_params),
    }
    if cfg.monotone and features is not None:
        constraints = monotone_constraints(features, target.label.removeprefix("label_"))
        if constraints is not None:
            out["monotone_constraints"] = constraints
    return out


def _fill_nan(p: np.ndarray) -> np.ndarray:
    """Baseline scores with NaN (no BTYD summary) replaced by their mean: a neutral score."""
    p = np.asarray(p, dtype=np.float64)
    bad = ~np.isfinite(p)
    if bad.any():
        p = np.where(bad, np.nanmean(np.where(bad, np.nan, p)) if (~bad).any() else 0.0, p)
    return p


def _label(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float32)


def evaluate(
    target: Target, y: np.ndarray, predictions: dict[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """Test metrics of every method that predicts this target."""
    score = classification_metrics if target.kind == "classification" else regression_metrics
    return {m: score(y, np.asarray(p, dtype=np.float64)) for m, p in predictions.items()}


def winner(target: Target, metrics: dict[str, dict[str, Any]]) -> str:
    """Best method: highest AUC (classification) or lowest RMSE (regression); NaN never wins.

    The contest is between the model (``distributed``) and the baselines; the single-node
    model is the same model trained another way (a parity reference), so it does not compete.
    """
    contenders = {m: metrics[m] for m in METHODS if m in metrics and m != "single_node"}
    classification = target.kind == "classification"
    try:
        return training_winner(
            contenders, "auc" if classification else "rmse", higher_is_better=classification
        )
    except ValueError:
        return next(iter(contenders))  # nothing measurable: the model, listed first


def importance(booster: Any, top: int = IMPORTANCE_TOP) -> list[tuple[str, float]]:
    """Top features by xgboost's ``gain`` (average loss reduction of the splits using it)."""
    scores = booster.get_score(importance_type="gain")
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(name, float(v)) for name, v in ranked[:top]]


def data_digest(warehouse: Warehouse) -> str:
    """SHA-256 of the warehouse's committed content (files, rows, bucket count)."""
    manifest = warehouse.manifest
    payload = {"n_buckets": manifest["n_buckets"], "tables": manifest["tables"]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _digest(model: Any) -> str:
    return hashlib.sha256(model.model_dump_json().encode()).hexdigest()


def _iso_ms(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


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
    as_of_ms = int(as_of.timestamp() * 1000)
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
        "cutoffs": [_iso_ms(c) for c in cutoffs],
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
            empty = [s for s in SPLITS if ex.rows[s] == 0]
            if empty:
                raise TrainError(
                    f"split(s) {empty} have no examples (rows per split: {ex.rows}); "
                    "more users or an earlier cutoff are needed"
                )
            unlabelled = [
                f"{label} ({split})"
                for split in SPLITS
                for label in LABEL_COLUMNS
                if ex.labelled[split][label] < ex.rows[split]
            ]
            if unlabelled:
                raise TrainError(
                    f"labels missing for {', '.join(unlabelled)}: the spend label needs "
                    "amount_cny in the events"
                )
            stage = "BG/NBD features"
            t0 = time.perf_counter()
            params, bg_notes = fit_bgnbd_by_cutoff(ex, cfg.bgnbd_sample_users, cfg.xgboost.seed)
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
    ex: Examples,
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
    ex: Examples,
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
    params = _params_by_cutoff(meta)
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
    problems: list[str] = []
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
            preds["bgnbd"] = _fill_nan(bgnbd[name])
        # non-finite predictions make the metrics raise: the run is then recorded as failed
        metrics[name] = evaluate(target, y, preds)
        if len(meta["cutoffs_ms"]) > 1:  # the newest cutoff alone, comparable to cutoffs: 1
            newest[name] = {
                m: {k: v for k, v in d.items() if k != "calibration"}
                for m, d in evaluate(
                    target, y[at_newest], {m: p[at_newest] for m, p in preds.items()}
                ).items()
            }
    timings["evaluate_s"] = time.perf_counter() - t0

    parity: dict[str, dict[str, Any]] = {}
    for name, target in TARGETS.items():
        if target.kind != "classification":
            d, s = metrics[name]["distributed"]["rmse"], metrics[name]["single_node"]["rmse"]
            parity[name] = {"distributed_rmse": d, "single_node_rmse": s}
            continue
        d, s = metrics[name]["distributed"]["auc"], metrics[name]["single_node"]["auc"]
        if d is None or s is None:  # one class only in the test split
            problems.append(f"{name}: AUC undefined, the test split has one class only")
            parity[name] = {"distributed_auc": d, "single_node_auc": s, "ok": False}
            continue
        gap = abs(float(d) - float(s))
        parity[name] = {
            "distributed_auc": d,
            "single_node_auc": s,
            "auc_gap": gap,
            "max_auc_gap": PARITY_MAX_AUC_GAP,
            "ok": bool(gap <= PARITY_MAX_AUC_GAP),
        }
        if float(d) <= 0.5:
            problems.append(f"{name}: test AUC {d:.4f} is no better than chance")
    winners = {name: winner(t, metrics[name]) for name, t in TARGETS.items()}
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
            "checks": {"parity": parity, "time_holdout": holdout, "newest_cutoff": newest},
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
        parity=parity,
        importance=ranked,
        models=models,
        problems=problems,
        notes=notes,
        work_dir=registry.work_dir(version),
        timings=timings,
    )


def _params_by_cutoff(meta: dict[str, Any]) -> dict[int, BgnbdParams | None]:
    """The BG/NBD parameters of meta.json's ``bgnbd`` block, by cutoff_ms."""
    block = meta.get("bgnbd", {}).get("params_by_cutoff", {})
    out: dict[int, BgnbdParams | None] = {}
    for c, iso in zip(meta["cutoffs_ms"], meta["cutoffs"], strict=True):
        p = block.get(iso)
        out[int(c)] = None if p is None else BgnbdParams.model_validate(p)
    return out


def _margin_column(meta: dict[str, Any], name: str) -> str | None:
    """The base-margin column of model ``name`` (None: not boosted from BG/NBD)."""
    return MARGIN_COLUMNS[name] if meta.get("bgnbd", {}).get("boost_from") else None


def _margin(table: pa.Table, meta: dict[str, Any], name: str) -> np.ndarray | None:
    column = _margin_column(meta, name)
    if column is None:
        return None
    return np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=np.float32)


def _rows(table: pa.Table, mask: np.ndarray) -> pa.Table:
    return table.take(pa.array(np.flatnonzero(mask)))


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

    cuts = sorted(params, reverse=True)
    if not cuts:
        return {}
    newest = cuts[0]
    older = [c for c in cuts[1:] if c + horizon * DAY_MS <= newest]
    if not older:
        return {}

    def cut_of(t: pa.Table) -> np.ndarray:
        return np.asarray(t.column("cutoff_ms").to_numpy(zero_copy_only=False), dtype=np.int64)

    tr = _rows(train, np.isin(cut_of(train), older))
    va = _rows(valid, np.isin(cut_of(valid), older))
    te = _rows(test, cut_of(test) == newest)
    if tr.num_rows == 0 or va.num_rows == 0 or te.num_rows == 0:
        return {}
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
            preds["bgnbd"] = _fill_nan(bg[name])
        metrics = evaluate(target, y, preds)
        out[name] = {
            "cutoff": _iso_ms(newest),
            "train_cutoffs": [_iso_ms(c) for c in older],
            "rows": {"train": tr.num_rows, "validation": va.num_rows, "test": te.num_rows},
            "metrics": {
                m: {k: v for k, v in d.items() if k != "calibration"} for m, d in metrics.items()
            },
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


# ============================================================================ output
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


def metrics_tables(result: TrainResult) -> list[Table]:
    """Test-split metrics: classifiers (churn, repurchase) and the spend regression."""
    cls = Table(title="test metrics: classification", header_style="bold")
    for col in ("target", "method", "AUC", "PR-AUC", "log loss", "base rate", "n"):
        cls.add_column(col, justify="left" if col in ("target", "method") else "right")
    reg = Table(title="test metrics: next-period spend (CNY)", header_style="bold")
    for col in ("method", "MAE", "RMSE", "R²", "n"):
        reg.add_column(col, justify="left" if col == "method" else "right")
    for name, target in TARGETS.items():
        for method in METHODS:
            m = result.metrics.get(name, {}).get(method)
            if m is None:
                continue
            mark = " *" if result.winners.get(name) == method else ""
            if target.kind == "classification":
                cls.add_row(
                    name, method + mark, _fmt(m.get("auc")), _fmt(m.get("pr_auc")),
                    _fmt(m.get("log_loss")), _fmt(m.get("base_rate")), _fmt(m.get("n")),
                )  # fmt: skip
            else:
                reg.add_row(
                    method + mark, _fmt(m.get("mae"), 2), _fmt(m.get("rmse"), 2),
                    _fmt(m.get("r2")), _fmt(m.get("n")),
                )  # fmt: skip
    return [cls, reg]


def calibration_table(metrics: dict[str, Any], title: str) -> Table | None:
    """Calibration deciles (mean predicted vs observed rate), when the metrics carry them."""
    deciles = metrics.get("calibration")
    if not deciles:
        return None
    table = Table(title=title, header_style="bold")
    rows = _calibration_rows(deciles)
    if not rows:
        return None
    for col in rows[0]:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row.values()))
    return table


def _calibration_rows(deciles: Any) -> list[dict[str, Any]]:
    """Normalise the calibration deciles (a list of dicts or a dict of lists) into rows."""
    if isinstance(deciles, dict):
        keys = list(deciles)
        n = len(deciles[keys[0]]) if keys else 0
        return [{k: deciles[k][i] for k in keys} for i in range(n)]
    if isinstance(deciles, list) and deciles and isinstance(deciles[0], dict):
        return list(deciles)
    return []


def importance_table(result: TrainResult) -> Table:
    """Top features by gain, one column pair per model."""
    table = Table(title=f"feature importance (gain, top {IMPORTANCE_TOP})", header_style="bold")
    table.add_column("#", justify="right")
    for name in TARGETS:
        table.add_column(name, overflow="fold")
        table.add_column("gain", justify="right")
    depth = max((len(v) for v in result.importance.values()), default=0)
    for i in range(depth):
        cells = [str(i + 1)]
        for name in TARGETS:
            ranked = result.importance.get(name, [])
            if i < len(ranked):
                cells += [ranked[i][0], f"{ranked[i][1]:,.1f}"]
            else:
                cells += ["", ""]
        table.add_row(*cells)
    return table


def print_result(result: TrainResult) -> None:
    """Metrics, churn calibration, importance and, last, the run summary."""
    for table in metrics_tables(result):
        console.print(table)
    churn = result.metrics.get("churn", {}).get("distributed")
    if churn:
        cal = calibration_table(churn, "churn calibration (test, distributed model)")
        if cal is not None:
            console.print(cal)
    console.print(importance_table(result))
    rows: list[tuple[str, Any]] = [
        ("version", result.version),
        ("status", result.status),
        ("as of", result.as_of),
        ("horizon (days)", result.horizon_days),
        ("cutoffs", ", ".join(result.cutoffs)),
        *[(f"examples {s}", n) for s, n in result.examples.items()],
        ("features used", len(result.features)),
        ("features dropped (no data)", ", ".join(result.dropped_features) or "-"),
    ]
    for name, p in result.parity.items():
        if "auc_gap" in p:
            ok = "ok" if p["ok"] else f"ABOVE {p['max_auc_gap']}"
            rows.append((f"{name} AUC gap distributed vs single", f"{p['auc_gap']:.4f} ({ok})"))
    rows += [(f"winner {k}", v) for k, v in result.winners.items()]
    rows += [
        (f"published {k}", f"{c['method']} ({c['reason']})") for k, c in result.champions.items()
    ]
    rows += [(f"{k} rounds", v.get("rounds", "-")) for k, v in result.models.items()]
    rows += [(k, v) for k, v in result.timings.items()]
    rows += [("models", result.path)]
    if result.work_dir:
        rows.append(("scratch shards kept", result.work_dir))
    rows += [("problem", p) for p in result.problems]
    rows += [("note", n) for n in result.notes]
    console.print(summary_table("train", rows))
    for name, p in result.parity.items():
        if "auc_gap" in p and not p["ok"]:
            console.print(
                f"[yellow]{name}: distributed and single-node AUC differ by "
                f"{p['auc_gap']:.4f} (> {p['max_auc_gap']})"
            )


def command(
    data: str = typer.Option("./data", "--data", help="Data root."),
    as_of: str = typer.Option(..., "--as-of", help=AS_OF_HELP),
    horizon: int | None = typer.Option(
        None, "--horizon", min=1, help="Label window in days (default: train.yaml)."
    ),
    actors: int | None = typer.Option(None, "--actors", min=1, help="Workers / XGBoost actors."),
    config_dir: str | None = typer.Option(None, "--config-dir", help="Folder of YAML configs."),
) -> None:
    """Train churn, repurchase and spend models (distributed XGBoost) and register them."""
    settings = Settings(data=data)
    result = run(settings, parse_as_of(as_of), horizon, actors, config_dir)
    print_result(result)
    if result.status != "good":
        raise typer.Exit(1)


def published(meta: dict[str, Any]) -> str:
    """Which method publishes each target (champion/challenger), e.g. ``churn=model,
    repurchase=bgnbd``; ``-`` for a version without a champion block."""
    block = meta.get("champion") or {}
    return ", ".join(f"{k}={v.get('method', 'model')}" for k, v in block.items()) or "-"


def models(data: str = typer.Option("./data", "--data", help="Data root.")) -> None:
    """List the trained model versions with status, test metrics and winners."""
    registry = ModelRegistry(data)
    versions = registry.versions()
    latest = registry.latest_good()
    table = Table(title=f"models in {registry.root}", header_style="bold")
    for col in (
        "version", "status", "as of", "horizon", "train rows", "churn AUC",
        "repurchase AUC", "spend RMSE", "AUC gap", "winners", "published",
    ):  # fmt: skip
        left = col in ("version", "status", "as of", "winners", "published")
        table.add_column(col, justify="left" if left else "right", no_wrap=col != "winners")
    for version in versions:
        try:
            meta = registry.meta(version)
        except ModelError as exc:
            table.add_row(version, f"unreadable: {exc}", *[""] * 9)
            continue
        m = meta.get("metrics", {})
        gaps = [
            p["auc_gap"]
            for p in meta.get("checks", {}).get("parity", {}).values()
            if "auc_gap" in p
        ]
        status = str(meta.get("status", "?")) + (" (latest)" if version == latest else "")
        table.add_row(
            version,
            status,
            str(meta.get("as_of", "-")),
            str(meta.get("horizon_days", "-")),
            _fmt(meta.get("data", {}).get("examples", {}).get("train")),
            _fmt(m.get("churn", {}).get("auc")),
            _fmt(m.get("repurchase", {}).get("auc")),
            _fmt(m.get("spend", {}).get("rmse"), 2),
            _fmt(max(gaps)) if gaps else "-",
            ", ".join(f"{k}={v}" for k, v in meta.get("winner", {}).items()) or "-",
            published(meta),
        )
    console.print(table)
    if not versions:
        console.print("no model versions yet; run `strata train`")


if __name__ == "__main__":
    run_command(command)
