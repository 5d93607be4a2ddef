"""Warehouse maintenance commands: info, compact, vacuum."""

from __future__ import annotations

import time

import typer

from jobs._runtime import console, progress, summary_table
from strata.io.warehouse import TABLES, Warehouse
from strata.settings import Settings

DataOpt = typer.Option("./data", "--data", help="Data root (local path or filesystem URI).")


def compact_warehouse(wh: Warehouse) -> dict[str, int]:
    """Rewrite every bucket that is not yet one sorted file; returns buckets rewritten per table."""
    todo = [(t, b) for t in TABLES for b in wh.buckets(t) if not wh.is_sorted(t, b)]
    done = {t: 0 for t in TABLES}
    with progress() as bar:
        task = bar.add_task("compacting buckets", total=len(todo))
        for table, bucket in todo:
            if wh.compact_bucket(table, bucket) is not None:
                done[table] += 1
            bar.advance(task)
    return done


def compact(data: str = DataOpt) -> None:
    """Rewrite each bucket as one Parquet file sorted by (user_id, ts)."""
    wh = Warehouse(Settings(data=data).data)
    t0 = time.perf_counter()
    done = compact_warehouse(wh)
    console.print(
        summary_table(
            "compaction",
            [(f"{t} buckets rewritten", n) for t, n in done.items()]
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
