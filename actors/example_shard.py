"""Per-bucket work of the train job, run as Ray tasks: the example pass and the BG/NBD pass.

Plain functions (callable without Ray, as the tests do) plus their ``ray.remote`` wrappers
(:data:`bucket_examples_task`, :data:`bgnbd_shards_task`). Every computation is in
:mod:`strata.training`; these read a bucket, call it and write Parquet shards. Retries are
safe: the same inputs write the same bytes.
"""

from __future__ import annotations

import posixpath
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from strata.features import (
    DICTIONARY_COLUMNS,
    FEATURE_EVENT_COLUMNS,
    FEATURE_USER_COLUMNS,
    FeatureConfig,
)
from strata.io.paths import bucket_part_file
from strata.io.warehouse import PARQUET_OPTIONS, Warehouse, resolve
from strata.training import (
    BGNBD_FEATURES,
    LABEL_COLUMNS,
    MODEL_FEATURES,
    SPLITS,
    BgnbdParams,
    TrainConfig,
    apply_bgnbd_by_cutoff,
    train_patterns,
    training_examples,
    valid_counts,
)

__all__ = [
    "bgnbd_shards",
    "bgnbd_shards_task",
    "bucket_examples",
    "bucket_examples_task",
    "shard_path",
]


def shard_path(work_dir: str, split: str, bucket: int) -> str:
    """Where one bucket's examples of one split go."""
    return bucket_part_file(posixpath.join(work_dir, split), bucket)


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
        out["valid"][name] = valid_counts(part, MODEL_FEATURES)
        out["positives"][name] = {
            label: float(np.nansum(part.column(label).to_numpy(zero_copy_only=False)))
            for label in LABEL_COLUMNS
        }
        out["labelled"][name] = {
            label: part.num_rows - part.column(label).null_count for label in LABEL_COLUMNS
        }
    out["seconds"] = time.perf_counter() - t0
    return out


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
        valid[split] = valid_counts(table, BGNBD_FEATURES)
    return {"valid": valid}


#: :func:`bucket_examples` as a Ray task (1 CPU; retried up to 3 times).
bucket_examples_task = ray.remote(num_cpus=1, max_retries=3)(bucket_examples)
#: :func:`bgnbd_shards` as a Ray task (1 CPU; retried up to 3 times).
bgnbd_shards_task = ray.remote(num_cpus=1, max_retries=3)(bgnbd_shards)
