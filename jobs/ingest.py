"""``strata import``: bring your own transaction and event logs into the warehouse.

Reads CSV/TSV (optionally gzip-compressed) or Parquet files in batches, validates and converts
each batch with :func:`strata.ingest.parse_batch` (user ids pseudonymised at this boundary),
writes accepted rows into the warehouse buckets and every rejected row, with its reason, into
``<data>/rejects/import-<UTC time>-<id>.parquet``. The whole import is committed to the
warehouse manifest once, at the end: an import that fails publishes nothing.

Every mapped column is checked in every file before any row is written; personal-data
columns are never read (see :mod:`strata.ingest`). The readers are
:mod:`strata.io.import_files`, the writer of parts and rejects :mod:`strata.io.import_sink`;
this module wires them. Run as ``strata import`` or ``python -m jobs.ingest``.
"""

from __future__ import annotations

import posixpath
import time
import uuid
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field

import pyarrow as pa
import typer
from rich.markup import escape
from rich.table import Table

from jobs._errors import run_command
from jobs._runtime import console, progress
from strata.ingest import (
    DEFAULT_MIN_TIME,
    MAX_SAMPLED_REASONS,
    ColumnMapping,
    PseudonymCache,
    add_samples,
    load_mapping,
    malformed_rejects,
    parse_batch,
    pii_columns_in,
    reason_counts,
    reject_warnings,
    rejects_schema,
)
from strata.io.import_files import InputError, probe, read_batches
from strata.io.import_sink import ImportSink
from strata.io.keys import load_pseudonym_key
from strata.io.warehouse import Warehouse, resolve
from strata.settings import Settings
from strata.timeutil import LOCAL_UTC_OFFSET_HOURS

#: Accepted rows are buffered up to this many, then written as one part per touched bucket.
FLUSH_ROWS = 2_000_000

#: Exit status of an import that accepted no row (its rejects are still written).
NOTHING_ACCEPTED_EXIT = 1


@dataclass
class FileResult:
    """What one input file contributed."""

    path: str
    input_rows: int = 0
    accepted: int = 0
    rejected: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    pii_columns_dropped: list[str] = field(default_factory=list)
    #: distinct offending values of the first rejects per reason (see strata.ingest.reject_role)
    samples: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class ImportResult:
    """Outcome of one import; ``accepted + rejected == input_rows``."""

    input_rows: int
    accepted: int
    rejected: int
    rejects_by_reason: dict[str, int]
    files: list[FileResult]
    rejects_path: str | None
    seconds: float
    import_id: str = ""
    now_ms: int = 0
    #: messages for the user: reasons that rejected everything or most of a file
    warnings: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.input_rows / self.seconds if self.seconds > 0 else 0.0


def run(
    settings: Settings,
    files: list[str],
    mapping: ColumnMapping,
    *,
    now_ms: int | None = None,
    flush_rows: int = FLUSH_ROWS,
    show_progress: bool = True,
) -> ImportResult:
    """Import files into the warehouse of ``settings.data``; one commit at the end.

    Args:
        settings: data root, key and bucket count of a new warehouse.
        files: CSV/TSV/TXT (optionally ``.gz``) or Parquet files, local paths or URIs.
        mapping: which columns hold what (checked against every file before any write).
        now_ms: the import time (epoch ms) for the future-timestamp check; default now.
        flush_rows: accepted rows buffered before they are written to the buckets.
        show_progress: draw a progress bar.

    Returns:
        counts per file and in total, reasons of rejects, and the rejects file (if any).

    Raises:
        InputError, MappingError: a file is missing, unreadable or lacks a mapped column
            (before anything is written).
        WarehouseError: the warehouse cannot be opened.
    """
    t0 = time.perf_counter()
    if not files:
        raise InputError("no input files given")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    key = load_pseudonym_key(settings)
    inputs = [probe(path, mapping) for path in files]  # every file checked before any write

    wh = Warehouse(settings.data)
    wh.open_or_create(settings.n_buckets)
    import_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_ms / 1000))
    import_id += "-" + uuid.uuid4().hex[:8]
    _, root = resolve(settings.data)
    rejects_path = posixpath.join(root, "rejects", f"import-{import_id}.parquet")
    sink = ImportSink(
        wh,
        rejects_path,
        rejects_schema(mapping),
        import_id,
        flush_rows,
        mapping.warehouse_columns(),
    )
    pseudonyms = PseudonymCache(key)
    results: list[FileResult] = []
    bar = progress() if show_progress else None
    try:
        with bar if bar is not None else nullcontext():
            total_mib = max(sum(i.size for i in inputs) / (1 << 20), 1.0)
            task = bar.add_task("importing (MiB)", total=total_mib) if bar is not None else None
            done_before = 0
            for inp in inputs:
                fr = FileResult(inp.path, pii_columns_dropped=pii_columns_in(inp.columns))
                reasons: Counter[str] = Counter()
                for b in read_batches(inp, mapping):
                    accepted, rejects = parse_batch(
                        b.table,
                        mapping,
                        key,
                        inp.path,
                        1,
                        now_ms,
                        row_numbers=b.row_numbers,
                        pseudonyms=pseudonyms,
                    )
                    if b.malformed:
                        rejects = pa.concat_tables(
                            [rejects, malformed_rejects(mapping, inp.path, b.malformed)]
                        )
                    fr.input_rows += b.table.num_rows + len(b.malformed)
                    fr.accepted += accepted.num_rows
                    fr.rejected += rejects.num_rows
                    counts = reason_counts(rejects)
                    reasons.update(counts)
                    new = [
                        r
                        for r in counts
                        if r in fr.samples or len(fr.samples) < MAX_SAMPLED_REASONS
                    ]
                    add_samples(fr.samples, rejects, mapping, new)
                    sink.add(accepted, rejects)
                    if bar is not None and task is not None:
                        bar.update(task, completed=(done_before + b.bytes_done) / (1 << 20))
                done_before += inp.size
                fr.rejects_by_reason = dict(reasons.most_common())
                results.append(fr)
            written = sink.finish()
        accepted_n = sum(f.accepted for f in results)
        rejected_n = sum(f.rejected for f in results)
        wh.commit(
            written,
            "import",
            info={
                "import_id": import_id,
                "accepted": accepted_n,
                "rejected": rejected_n,
                "input_files": [i.path for i in inputs],
                "rejects_path": rejects_path if rejected_n else None,
            },
        )
    except BaseException:
        sink.discard()
        raise
    finally:
        sink.close()
    total: Counter[str] = Counter()
    warnings: list[str] = []
    for fr in results:
        total.update(fr.rejects_by_reason)
        warnings += reject_warnings(
            fr.path,
            fr.input_rows,
            fr.accepted,
            fr.rejects_by_reason,
            fr.samples,
            mapping,
            now_ms,
        )
    return ImportResult(
        input_rows=sum(f.input_rows for f in results),
        accepted=accepted_n,
        rejected=rejected_n,
        rejects_by_reason=dict(total.most_common()),
        files=results,
        rejects_path=rejects_path if rejected_n else None,
        seconds=time.perf_counter() - t0,
        import_id=import_id,
        now_ms=now_ms,
        warnings=warnings,
    )


# ---------------------------------------------------------------------------- CLI
def _summary(result: ImportResult) -> list[Table]:
    counts = Table(title="import", header_style="bold")
    counts.add_column("file")
    for name in ("input rows", "accepted", "rejected"):
        counts.add_column(name, justify="right")
    for fr in result.files:
        counts.add_row(
            escape(fr.path), f"{fr.input_rows:,}", f"{fr.accepted:,}", f"{fr.rejected:,}"
        )
    counts.add_row(
        "[bold]total",
        f"{result.input_rows:,}",
        f"{result.accepted:,}",
        f"{result.rejected:,}",
        end_section=True,
    )
    tables = [counts]
    if result.rejects_by_reason:
        reasons = Table(title="rejected by reason", header_style="bold")
        reasons.add_column("reason")
        per_file = len(result.files) > 1
        if per_file:
            for fr in result.files:
                reasons.add_column(escape(posixpath.basename(fr.path)), justify="right")
        reasons.add_column("total", justify="right")
        top = list(result.rejects_by_reason.items())
        shown, rest = top[:20], top[20:]
        for reason, n in shown:
            cells = [f"{fr.rejects_by_reason.get(reason, 0):,}" for fr in result.files]
            reasons.add_row(escape(reason), *(cells if per_file else []), f"{n:,}")
        if rest:
            other = sum(n for _, n in rest)
            pad = [""] * len(result.files) if per_file else []
            reasons.add_row(f"({len(rest)} other reasons)", *pad, f"{other:,}")
        tables.append(reasons)
    return tables


DataOpt = typer.Option(
    "./data", "--data", envvar="STRATA_DATA", help="Data root (local path or filesystem URI)."
)


def command(
    files: list[str] = typer.Argument(
        ..., help="CSV/TSV/TXT files with a header (optionally .gz) or Parquet files."
    ),
    data: str = DataOpt,
    user_col: str | None = typer.Option(None, "--user-col", help="Column of the user id."),
    time_col: str | None = typer.Option(None, "--time-col", help="Column of the event time."),
    amount_col: str | None = typer.Option(
        None, "--amount-col", help="Column of the amount in CNY."
    ),
    time_format: str | None = typer.Option(
        None,
        "--time-format",
        help="iso (default), epoch (seconds), epoch_ms, or a strptime format like %Y%m%d.",
    ),
    order_col: str | None = typer.Option(None, "--order-col", help="Column of the order id."),
    category_col: str | None = typer.Option(None, "--category-col", help="Column of the category."),
    coupon_col: str | None = typer.Option(None, "--coupon-col", help="Column of the coupon id."),
    event_type_col: str | None = typer.Option(
        None, "--event-type-col", help="Column of the event type (without: every row is an order)."
    ),
    delimiter: str | None = typer.Option(
        None,
        "--delimiter",
        help="Field separator: one character (default , and tab for .tsv), or 'whitespace' "
        "for runs of spaces/tabs (no quoting).",
    ),
    min_time: str | None = typer.Option(
        None,
        "--min-time",
        help="Earliest accepted event time, inclusive: ISO date (its local midnight, "
        f"UTC+{LOCAL_UTC_OFFSET_HOURS}) or date-time. Default {DEFAULT_MIN_TIME} "
        "(epoch zero and year 0001 are garbage).",
    ),
    max_time: str | None = typer.Option(
        None,
        "--max-time",
        help="End of the accepted event times, exclusive like --as-of (same forms): "
        "--max-time 1998-07-01 keeps June. Default: one day after now.",
    ),
    mapping_file: str | None = typer.Option(
        None, "--mapping", help="YAML column mapping; flags override its keys."
    ),
) -> None:
    """Import transaction or event logs (CSV or Parquet) into the warehouse."""
    mapping = load_mapping(
        mapping_file,
        user_col=user_col,
        time_col=time_col,
        amount_col=amount_col,
        time_format=time_format,
        order_col=order_col,
        category_col=category_col,
        coupon_col=coupon_col,
        event_type_col=event_type_col,
        delimiter=delimiter,
        min_time=min_time,
        max_time=max_time,
    )
    result = run(Settings(data=data), files, mapping)
    for table in _summary(result):
        console.print(table)
    dropped = sorted({c for f in result.files for c in f.pii_columns_dropped})
    if dropped:
        console.print(f"personal-data columns dropped (never read): {escape(', '.join(dropped))}")
    if result.rejects_path:
        console.print(f"rejected rows with reasons: {escape(result.rejects_path)}")
    console.print(
        f"{result.input_rows:,} rows in {result.seconds:,.1f} s "
        f"({result.rows_per_second:,.0f} rows/s); import id {result.import_id}"
    )
    for warning in result.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if result.accepted == 0:
        console.print(
            f"[bold red]import accepted no rows[/] of {result.input_rows:,}; "
            "nothing was added to the warehouse",
            soft_wrap=True,
        )
        raise typer.Exit(NOTHING_ACCEPTED_EXIT)


if __name__ == "__main__":
    run_command(command)
