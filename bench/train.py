"""Benchmark: distributed XGBoost (xgboost-ray) vs single-node xgboost on the same matrix.

    python bench/train.py [--data /tmp/strata-bench] [--horizon 30] [--rounds 400]
        [--quality-users 50000]

1. Training examples of every bucket at the cutoff as-of - horizon (the `strata train` example
   pass: Ray tasks, 2 in flight), written as Parquet shards in a scratch folder (deleted at the
   end), timed.
2. The churn model, the same parameters as train.yaml and a fixed number of rounds (no early
   stopping, so both do the same work):
   * xgboost-ray, 2 actors x 1 CPU, each actor reading its share of the shards: timed end to
     end (actor start, data loading, boosting) and boosting only;
   * plain xgboost, nthread=2, in this process over the same rows: timed with the DMatrix
     construction (from an in-memory matrix) and boosting only.
3. Test AUC of both on the test split. Ratio = distributed seconds / single-node seconds.
4. Quality against the classic baselines: the whole `strata train` job (stacked cutoffs,
   BG/NBD features, champion/challenger) on two generated logs of ``--quality-users`` users —
   the rich event log and the same generator's transaction-only log (``--orders-only``: order
   events only, no users table, the shape most platforms start with) — printing the churn AUC
   on the held-out users of the model, the recency rule and BG/NBD, and which one is
   published (the champion).

Data: the shared bench root (bench/_data.py; generated when missing): ``--data`` for parts
1-3, ``<data>-quality`` and ``<data>-quality-orders`` for part 4.

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _data
import numpy as np
import ray
from rich.console import Console
from rich.table import Table

from actors.xgb_distributed import train_distributed, train_single
from jobs.train import build_examples
from strata.features import load_feature_config
from strata.io.models import ModelRegistry
from strata.io.warehouse import Warehouse, read_parts, resolve
from strata.settings import Settings
from strata.timeutil import DAY_MS, parse_as_of, to_epoch_ms
from strata.training import (
    SPLITS,
    TARGETS,
    classification_metrics,
    cutoffs_for,
    feature_matrix,
    load_train_config,
    select_features,
    xgb_params,
)

console = Console()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=_data.DEFAULT_DATA, help="data root (generated if empty)")
    ap.add_argument("--users", type=int, default=_data.DEFAULT_USERS, help="when generating")
    ap.add_argument("--as-of", default=_data.DEFAULT_END)
    ap.add_argument("--horizon", type=int, default=30)
    ap.add_argument("--actors", type=int, default=2, help="xgboost-ray actors (1 CPU each)")
    ap.add_argument("--threads", type=int, default=2, help="single-node xgboost threads")
    ap.add_argument("--rounds", type=int, default=None, help="default: train.yaml")
    ap.add_argument("--target", default="churn", choices=["churn", "repurchase"])
    ap.add_argument("--cpus", type=int, default=2, help="local Ray CPUs")
    ap.add_argument(
        "--quality-users", type=int, default=50_000,
        help="users of the rich and orders-only logs of the baseline comparison (0: skip)",
    )  # fmt: skip
    args = ap.parse_args()

    os.environ.setdefault("STRATA_PSEUDONYM_KEY", _data.BENCH_KEY)
    _data.ensure_generated(args.data, args.users, _data.DEFAULT_DAYS, args.as_of)
    settings = Settings(data=args.data)
    as_of = parse_as_of(args.as_of)
    cfg = load_train_config()
    fc = load_feature_config()
    rounds = args.rounds or cfg.xgboost.num_boost_round
    target = TARGETS[args.target]
    warehouse = Warehouse(settings.data)
    buckets = warehouse.buckets()
    summary = warehouse.summary()
    cutoffs = cutoffs_for(to_epoch_ms(as_of), cfg, args.horizon)
    fs, root = resolve(settings.data)
    registry = ModelRegistry(settings.data)
    work = registry.work_dir(f"bench-{int(time.time())}")

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        ex = build_examples(
            ray, root, work, buckets, warehouse.bucket_rows("events"), cutoffs,
            args.horizon * DAY_MS, fc, cfg, workers=args.cpus,
        )  # fmt: skip
        examples_s = time.perf_counter() - t0
        features, dropped = select_features(ex.valid["train"])
        params = xgb_params(cfg, target)

        # single node: the same rows, loaded once into memory
        t0 = time.perf_counter()
        train = read_parts(fs, ex.files["train"], [*features, target.label])
        valid = read_parts(fs, ex.files["validation"], [*features, target.label])
        test = read_parts(fs, ex.files["test"], [*features, target.label])
        X_train, X_valid, X_test = (feature_matrix(t, features) for t in (train, valid, test))
        y = {
            s: np.asarray(t.column(target.label).to_numpy(), dtype=np.float32)
            for s, t in zip(SPLITS, (train, valid, test), strict=True)
        }
        load_s = time.perf_counter() - t0

        dist, dist_info = train_distributed(
            ex.files["train"], ex.files["validation"], features, target.label,
            target.objective, params, num_actors=args.actors, num_boost_round=rounds,
            early_stopping_rounds=0,
        )  # fmt: skip
        single, single_info = train_single(
            X_train, y["train"], X_valid, y["validation"], target.objective, params,
            nthread=args.threads, num_boost_round=rounds, early_stopping_rounds=0,
            feature_names=features,
        )  # fmt: skip
    finally:
        ray.shutdown()
        registry.delete_work(work.rsplit("/", 1)[-1])

    auc_dist = classification_metrics(y["test"], dist.inplace_predict(X_test))["auc"]
    auc_single = classification_metrics(y["test"], single.inplace_predict(X_test))["auc"]
    ratio_total = dist_info["total_seconds"] / single_info["total_seconds"]
    ratio_boost = dist_info["train_seconds"] / single_info["train_seconds"]

    table = Table(
        title=f"{args.target} model, {rounds} rounds, {ex.rows['train']:,} train rows x "
        f"{len(features)} features"
    )
    for col in ("trainer", "end-to-end s", "boosting s", "test AUC"):
        table.add_column(col, justify="left" if col == "trainer" else "right")
    table.add_row(
        f"xgboost-ray, {dist_info['num_actors']} actors x 1 CPU",
        f"{dist_info['total_seconds']:.2f}",
        f"{dist_info['train_seconds']:.2f}",
        f"{auc_dist:.4f}",
    )
    table.add_row(
        f"xgboost, nthread={args.threads}",
        f"{single_info['total_seconds']:.2f}",
        f"{single_info['train_seconds']:.2f}",
        f"{auc_single:.4f}",
    )
    console.print(table)
    console.print(
        f"distributed / single-node: {ratio_total:.2f}x end to end, {ratio_boost:.2f}x boosting; "
        f"|AUC gap| {abs(auc_dist - auc_single):.4f}"
    )
    figures: dict[str, Any] = {
        "users": summary["users"]["rows"],
        "events": summary["events"]["rows"],
        "buckets": len(buckets),
        "target": args.target,
        "rounds": rounds,
        "examples": ex.rows,
        "features": len(features),
        "dropped_features": dropped,
        "examples_s": round(examples_s, 2),
        "load_matrices_s": round(load_s, 2),
        "distributed_total_s": round(dist_info["total_seconds"], 2),
        "distributed_boost_s": round(dist_info["train_seconds"], 2),
        "single_total_s": round(single_info["total_seconds"], 2),
        "single_boost_s": round(single_info["train_seconds"], 2),
        "ratio_total_distributed_vs_single": round(ratio_total, 3),
        "ratio_boost_distributed_vs_single": round(ratio_boost, 3),
        "auc_distributed": round(auc_dist, 5),
        "auc_single": round(auc_single, 5),
        "auc_gap": round(abs(auc_dist - auc_single), 5),
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if args.quality_users > 0:
        figures["quality"] = quality(args.data, args.quality_users, args.as_of, args.horizon)
    print(json.dumps(figures))


def quality(data: str, users: int, end: str, horizon: int) -> dict[str, Any]:
    """Churn AUC of the model, the recency rule and BG/NBD from the full `strata train` job on
    a rich and an orders-only generated log (held-out users; all cutoffs and the newest one)."""
    from jobs import train as train_job

    out: dict[str, Any] = {}
    table = Table(title=f"churn, next {horizon} days, held-out users ({users:,} users per log)")
    for col in ("log", "model AUC", "recency rule AUC", "BG/NBD AUC", "published", "train s"):
        table.add_column(col, justify="left" if col in ("log", "published") else "right")
    for kind, orders_only in (("rich", False), ("orders_only", True)):
        root = f"{data.rstrip('/')}-quality" + ("-orders" if orders_only else "")
        _data.ensure_generated(root, users, _data.DEFAULT_DAYS, end, orders_only=orders_only)
        t0 = time.perf_counter()
        result = train_job.run(Settings(data=root), parse_as_of(end), horizon, show_progress=False)
        seconds = time.perf_counter() - t0
        churn = result.metrics["churn"]
        auc = {m: churn.get(m, {}).get("auc") for m in ("distributed", "recency_rule", "bgnbd")}
        champion = result.champions["churn"]["method"]
        out[kind] = {
            "auc_model": auc["distributed"],
            "auc_recency_rule": auc["recency_rule"],
            "auc_bgnbd": auc["bgnbd"],
            "champion": champion,
            "train_s": round(seconds, 1),
            "examples": result.examples,
        }
        table.add_row(
            kind, *(f"{a:.4f}" if a is not None else "-" for a in auc.values()), champion,
            f"{seconds:.0f}",
        )  # fmt: skip
    console.print(table)
    return out


if __name__ == "__main__":
    main()
