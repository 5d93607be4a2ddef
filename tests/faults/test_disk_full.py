"""Disk full (a small tmpfs) while writing a snapshot or importing: one clear message naming
what and where (exit 2, no traceback), the warehouse manifest byte-identical, nothing
half-written visible to readers, and the leftovers cleaned by vacuum or the next good run."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from jobs._errors import USER_ERROR_EXIT
from jobs.cli import app
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from tests.faults.conftest import AS_OF, tree_digest

pytestmark = pytest.mark.integration

IMPORT_ARGS = [
    "--user-col", "member", "--time-col", "paid_at", "--amount-col", "total",
    "--time-format", "%Y%m%d", "--order-col", "order_no",
]  # fmt: skip


@contextlib.contextmanager
def _mount_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (the full disk) needs root")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _one_error(args: list[str], where: Path) -> str:
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    out = result.output
    assert result.exit_code == USER_ERROR_EXIT, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out[-3000:]
    assert "No space left" in errors[0] and str(where) in errors[0], errors[0]
    assert "Traceback" not in out
    return errors[0]


def test_disk_full_while_writing_a_snapshot(small_warehouse: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(small_warehouse / "warehouse", data / "warehouse")
    snapshots = data / "snapshots"
    manifest = Path(Warehouse(str(data)).manifest_path).read_bytes()
    with _mount_tmpfs(snapshots, "96k"):  # the snapshot takes ~400 KiB
        _one_error(["recompute", "--no-publish", "--data", str(data), "--as-of", AS_OF], snapshots)
        assert Path(Warehouse(str(data)).manifest_path).read_bytes() == manifest
        assert SnapshotStore(str(data)).versions() == []
        leftovers = tree_digest(snapshots)
    # room again: the next run succeeds and no leftover of the failed one stays
    result = CliRunner().invoke(
        app, ["recompute", "--no-publish", "--data", str(data), "--as-of", AS_OF]
    )
    assert result.exit_code == 0, result.output[-3000:]
    (version,) = SnapshotStore(str(data)).versions()
    assert [p.name for p in snapshots.iterdir()] == [version], leftovers


def _orders_csv(path: Path, n: int, seed: int) -> Path:
    """``n`` orders with random ids and amounts (high entropy: Parquet cannot squeeze them)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 10**12, n)
    days = 20240101 + rng.integers(0, 28, n)
    amounts = np.round(rng.random(n) * 1000, 2)
    lines = ["member,paid_at,total,order_no\n"]
    lines += [
        f"U{u},{d},{a},O{seed}-{i}-{u}\n"
        for i, (u, d, a) in enumerate(zip(users, days, amounts, strict=True))
    ]
    path.write_text("".join(lines))
    return path


def test_disk_full_while_importing(tmp_path: Path) -> None:
    small = _orders_csv(tmp_path / "small.csv", 50, seed=1)
    big = _orders_csv(tmp_path / "big.csv", 40_000, seed=2)
    with _mount_tmpfs(tmp_path / "data", "256k") as data:
        args = ["--data", str(data), *IMPORT_ARGS]
        ok = CliRunner().invoke(app, ["import", str(small), *args])
        assert ok.exit_code == 0, ok.output[-3000:]
        wh = Warehouse(str(data))
        manifest = Path(wh.manifest_path).read_bytes()
        rows = wh.read_table("events").num_rows
        _one_error(["import", str(big), *args], data)
        assert Path(wh.manifest_path).read_bytes() == manifest
        assert Warehouse(str(data)).read_table("events").num_rows == rows
        referenced = {Path(p) for b in wh.buckets("events") for p in wh.bucket_files("events", b)}
        leftovers = set((data / "warehouse").rglob("*.parquet")) - referenced
        print(f"{len(leftovers)} uncommitted parts before vacuum")
        vacuum = CliRunner().invoke(app, ["vacuum", "--data", str(data)])
        assert vacuum.exit_code == 0, vacuum.output[-3000:]
        assert re.search(rf"files removed\D+{len(leftovers)}\b", vacuum.output), vacuum.output
        assert set((data / "warehouse").rglob("*.parquet")) == referenced
        assert not list((data / "warehouse").rglob(".*.tmp"))
