"""Pure checks of the fault handling: the footer check and the full-disk message."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from jobs._errors import user_error_message
from strata.io.warehouse import Warehouse, WarehouseError, WriteResult, write_failed
from strata.schema import TABLE_SCHEMAS


def test_check_parts_names_a_part_whose_rows_differ_from_the_manifest(tmp_path: Path) -> None:
    wh = Warehouse(str(tmp_path / "data"))
    wh.create(n_buckets=1)
    schema = TABLE_SCHEMAS["events"]
    empty = schema.empty_table()
    written = WriteResult()
    written.parts.append(wh.write_bucket("events", 0, empty, "w1"))
    wh.commit(written, "test")
    assert wh.check_parts() == 1
    manifest = json.loads(Path(wh.manifest_path).read_text())
    manifest["tables"]["events"]["buckets"]["0"]["parts"][0]["rows"] = 5
    Path(wh.manifest_path).write_text(json.dumps(manifest))
    with pytest.raises(WarehouseError, match=r"part-w1\.parquet holds 0 rows"):
        Warehouse(str(tmp_path / "data")).check_parts()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_a_user_error_naming_the_file(code: int) -> None:
    err = write_failed(OSError(code, "Error writing bytes to file"), "/d/warehouse/part-1.parquet")
    message = user_error_message(err)
    assert message is not None and "/d/warehouse/part-1.parquet" in message
    assert message.startswith("disk full")
    assert user_error_message(OSError(errno.EIO, "I/O error")) is None  # other OS errors: bugs


def test_write_failed_keeps_the_errno() -> None:
    assert write_failed(OSError(errno.ENOSPC, "x"), "/p").errno == errno.ENOSPC
