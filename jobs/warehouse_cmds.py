"""Warehouse maintenance commands: info, compact, vacuum."""

from __future__ import annotations

import time

import typer

from jobs._runtime import console, progress, summary_table
from strata.io.forget import drop_erased_training_shards, drop_erased_truth, expire_snapshots
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import TABLES, Warehouse
from strata.privacy.retention import RetentionConfig, event_cutoff_ms, load_retention_config
from strata.settings import Settings

DataOpt = typer.Option(
    "./data", "--data", envvar="STRATA_DATA", help="Data root (local path or filesystem URI)."
)


def compact_warehouse(wh: Warehouse, events_before_ms: int | None = None) -> dict[str, int]:
    """Rewrite every bucket that is not one sorted file, holds an erased user or (events) an
    event before ``events_before_ms``; returns buckets rewritten per table."""
    todo = [
        (t, b) for t in TABLES for b in wh.buckets(t) if wh.needs_compaction(t, b, events_before_ms)
    ]
    done = {t: 0 for t in TABLES}
    with progress() as bar:
        task = bar.add_task("compacting buckets", total=len(todo))
        for table, bucket in todo:
            if wh.compact_bucket(table, bucket, events_before_ms) is not None:
                done[table] += 1
            bar.advance(task)
    return done


def forget_beyond_warehouse(wh: Warehouse, retention: RetentionConfig) -> dict[str, int]:
    """Snapshot retention, then erased users out of the retained snapshots and the truth file."""
    expired = expire_snapshots(wh.data_root, retention)
    out = {"snapshots deleted (retention)": len(expired), "snapshot rows erased": 0}
    erasure = wh.erasure
    if erasure is not None and erasure.buckets():
        store = SnapshotStore(wh.data_root)
        versions = store.versions()
        with progress() as bar:
            task = bar.add_task("erasing from snapshots", total=len(versions))
            for version in versions:
                out["snapshot rows erased"] += store.drop_erased(version, erasure, wh.n_buckets)
                bar.advance(task)
        out["truth rows erased"] = drop_erased_truth(wh.data_root, erasure, wh.n_buckets)
        out["training shard rows erased"] = drop_erased_training_shards(
            wh.data_root, erasure, wh.n_buckets
        )
    return out


def compact(
    data: str = DataOpt,
    config_dir: str | None = typer.Option(None, "--config-dir", help="Folder of YAML configs."),
) -> None:
    """Rewrite each bucket as one Parquet file sorted by (user_id, ts), without erased users
    and events past retention (configs/retention.yaml); delete snapshots beyond retention."""
    retention = load_retention_config(config_dir)
    wh = Warehouse(Settings(data=data).data)
    t0 = time.perf_counter()
    cutoff = event_cutoff_ms(retention, wh.newest_ms("events"))
    events_before = wh.summary()["events"]["rows"]
    done = compact_warehouse(wh, cutoff)
    wh.reload()
    events_after = wh.summary()["events"]["rows"]
    rest = forget_beyond_warehouse(wh, retention)
    console.print(
        summary_table(
            "compaction",
            [(f"{t} buckets rewritten", n) for t, n in done.items()]
            + [("events removed (erased or past retention)", events_before - events_after)]
            + list(rest.items())
            + [("seconds", time.perf_counter() - t0)],
        )
    )


def info(data: str = DataOpt) -> None:
    """Print what the warehouse holds (from its manifest)."""
    wh = Warehouse(Settings(data=data).data)
    s = wh.summary()
    rows: list[tuple[str, object]] = [
        ("schema version", s["schema_version"]),
        ("buckets", s["n_buckets"]),
    ]
    for t in TABLES:
        rows += [
            (f"{t} rows", s[t]["rows"]),
            (f"{t} files", s[t]["files"]),
            (f"{t} buckets in use", s[t]["buckets"]),
        ]
    rows += [("events from", s["events"]["min_ts"]), ("events to", s["events"]["max_ts"])]
    console.print(summary_table(f"warehouse {wh.root}", rows))


def vacuum(data: str = DataOpt) -> None:
    """Delete part files no commit references (left by failed writers)."""
    wh = Warehouse(Settings(data=data).data)
    removed = wh.vacuum()
    console.print(summary_table("vacuum", [("files removed", len(removed))]))
