"""Where ``strata import`` writes before its one commit: warehouse parts and the rejects file.

:class:`ImportSink` writes accepted rows as uncommitted warehouse parts on a background thread
and streams rejects into one Parquet file; the job commits what :meth:`ImportSink.finish`
returns, or calls :meth:`ImportSink.discard` when the import fails.
"""

from __future__ import annotations

import contextlib
import posixpath
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from strata.io.warehouse import PARQUET_OPTIONS, Warehouse, WriteResult, resolve


class ImportSink:
    """Where an import's rows go before its commit: warehouse parts and the rejects file.

    Accepted rows are buffered up to ``flush_rows`` and written, one part per touched bucket,
    by one background thread while the next rows are parsed (Arrow and Parquet release the
    GIL); at most one chunk is in flight, which bounds memory. Rejects stream into one Parquet
    file, created at the first reject.
    """

    def __init__(
        self,
        wh: Warehouse,
        rejects_path: str,
        schema: pa.Schema,
        import_id: str,
        flush_rows: int,
        columns: list[str],
    ) -> None:
        self.wh = wh
        self.columns = columns
        self.fs, _ = resolve(wh.data_root)
        self.rejects_path = rejects_path
        self.schema = schema
        self.import_id = import_id
        self.flush_rows = flush_rows
        self.written = WriteResult()
        self.rejected = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._chunk = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strata-import")
        self._in_flight: Future[WriteResult] | None = None
        self._rejects: pq.ParquetWriter | None = None

    def add(self, accepted: pa.Table, rejects: pa.Table) -> None:
        """Buffer accepted rows (written once ``flush_rows`` are buffered) and write rejects."""
        if rejects.num_rows:
            if self._rejects is None:
                self.fs.create_dir(posixpath.dirname(self.rejects_path), recursive=True)
                self._rejects = pq.ParquetWriter(
                    self.rejects_path, self.schema, filesystem=self.fs, **PARQUET_OPTIONS
                )
            self._rejects.write_table(rejects)
            self.rejected += rejects.num_rows
        if accepted.num_rows:
            self._pending.append(accepted)
            self._pending_rows += accepted.num_rows
            if self._pending_rows >= self.flush_rows:
                self._flush()

    def _wait(self) -> None:
        if self._in_flight is not None:
            done, self._in_flight = self._in_flight, None
            self.written.extend(done.result())

    def _flush(self) -> None:
        self._wait()
        if self._pending_rows:
            table = pa.concat_tables(self._pending)
            write_id = f"import-{self.import_id}-{self._chunk:04d}"
            self._in_flight = self._pool.submit(
                self.wh.write_partitioned, "events", table, write_id, self.columns
            )
            self._chunk += 1
        self._pending, self._pending_rows = [], 0

    def finish(self) -> WriteResult:
        """Write what is buffered, wait for it and close the rejects file."""
        self._flush()
        self._wait()
        if self._rejects is not None:
            self._rejects.close()
            self._rejects = None
        return self.written

    def discard(self) -> None:
        """Best-effort removal of everything written (nothing of it was committed)."""
        with contextlib.suppress(Exception):
            self._wait()
        try:
            if self._rejects is not None:
                self._rejects.close()
            if self.fs.get_file_info(self.rejects_path).type == pafs.FileType.File:
                self.fs.delete_file(self.rejects_path)
            for part in self.written.parts:
                d = self.wh.bucket_dir(part.table, part.bucket)
                self.fs.delete_file(posixpath.join(d, part.name))
        except (OSError, pa.ArrowException):
            pass  # orphans are invisible to readers and swept by `strata vacuum`

    def close(self) -> None:
        """Stop the writer thread (after :meth:`finish` or :meth:`discard`)."""
        self._pool.shutdown(wait=True)
