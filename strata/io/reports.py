"""Versioned tier reports: ``<data root>/reports/tiers/<version>/``.

A report is ``report.json`` (a :class:`strata.reports.model.TiersReport`) plus the Parquet
tables it was built from (e.g. ``tiers.parquet``, ``transitions.parquet``: long tables other
tools read). ``report.json`` is written last and marks the report complete, as a snapshot's
manifest does: readers ignore folders without it, so a failed run leaves nothing in view.
Works on any pyarrow filesystem (the data root may be ``s3://...``).
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from strata.io.paths import complete_folders
from strata.io.warehouse import PARQUET_OPTIONS, WarehouseError, commit_file, resolve
from strata.reports.model import TiersReport

REPORT = "report.json"


class ReportStore:
    """Reader and writer of the tier reports under one data root."""

    def __init__(self, data_root: str) -> None:
        self.fs, root = resolve(data_root)
        self.root = posixpath.join(root, "reports", "tiers")

    def path(self, version: str) -> str:
        return posixpath.join(self.root, version)

    def write(
        self,
        report: TiersReport,
        tables: dict[str, pa.Table] | None = None,
        *,
        now: dt.datetime | None = None,
    ) -> TiersReport:
        """Write the tables, then ``report.json``; returns the report with its version and
        generation time set. Versions sort by creation time."""
        at = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        version = at.strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]
        report = report.model_copy(
            update={"report_version": version, "generated_at": at.isoformat()}
        )
        base = self.path(version)
        self.fs.create_dir(base, recursive=True)
        for name, table in (tables or {}).items():
            pq.write_table(
                table,
                posixpath.join(base, f"{name}.parquet"),
                filesystem=self.fs,
                **PARQUET_OPTIONS,
            )
        data = report.model_dump_json(indent=1).encode()
        commit_file(self.fs, posixpath.join(base, REPORT), data)
        return report

    def versions(self) -> list[str]:
        """Complete report versions, oldest first."""
        return complete_folders(self.fs, self.root, REPORT)

    def read(self, version: str) -> TiersReport:
        """One report.

        Raises:
            WarehouseError: missing, incomplete or not a valid report document.
        """
        path = posixpath.join(self.path(version), REPORT)
        try:
            with self.fs.open_input_stream(path) as f:
                return TiersReport.model_validate(json.loads(f.read().decode()))
        except FileNotFoundError as exc:
            raise WarehouseError(f"report {version} is missing or incomplete ({path})") from exc
        except (ValueError, ValidationError) as exc:
            raise WarehouseError(f"report {version}: bad report document {path}: {exc}") from exc

    def latest(self) -> TiersReport | None:
        """The newest complete report, or None when none was written yet."""
        versions = self.versions()
        return self.read(versions[-1]) if versions else None

    def read_table(self, version: str, name: str) -> pa.Table:
        """One of the Parquet tables a report was written with."""
        return pq.read_table(
            posixpath.join(self.path(version), f"{name}.parquet"), filesystem=self.fs
        )
