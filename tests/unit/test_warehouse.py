"""Warehouse: bucketed parts, atomic manifest commits, compaction, unreadable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from strata.ids import bucket_of, pseudonymise_many
from strata.io.warehouse import Warehouse, WarehouseError

KEY = b"unit-test-key-0123456789"


def _events(n_users: int, per_user: int, t0: int = 0) -> pa.Table:
    ids = pseudonymise_many([str(i) for i in range(n_users)], KEY)
    n = n_users * per_user
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "user_id": np.repeat(ids, per_user),
            "ts": pa.array(t0 + rng.integers(0, 10**9, n), pa.timestamp("ms", tz="UTC")),
            "event_type": ["order"] * n,
            "amount_cny": rng.random(n) * 100,
        }
    )


def test_append_commit_read_and_summary(tmp_path: Path) -> None:
    wh = Warehouse(str(tmp_path))
    wh.create(8)
    events = _events(200, 3)
    result = wh.write_partitioned("events", events, "w1")
    assert Warehouse(str(tmp_path)).summary()["events"]["rows"] == 0  # not yet visible
    wh.commit(result, "test")
    fresh = Warehouse(str(tmp_path))
    assert fresh.summary()["events"]["rows"] == 600
    back = fresh.read_table("events")
    assert back.num_rows == 600
    for b in fresh.buckets("events"):
        ids = fresh.read_bucket("events", b, ["user_id"]).column("user_id").to_numpy()
        assert np.all(bucket_of(ids, 8) == b)
    assert sum(fresh.bucket_rows().values()) == 600
    assert fresh.manifest["writes"][-1]["events_rows"] == 600


def test_second_append_then_compaction_sorts_and_merges(tmp_path: Path) -> None:
    wh = Warehouse(str(tmp_path))
    wh.create(4)
    wh.commit(wh.write_partitioned("events", _events(50, 2), "a"), "test")
    wh.commit(wh.write_partitioned("events", _events(50, 2, t0=5), "b"), "test")
    assert not wh.is_sorted("events", 0)
    for b in wh.buckets():
        wh.compact_bucket("events", b)
        assert wh.is_sorted("events", b)
        t = wh.read_bucket("events", b, ["user_id", "ts"])
        keys = list(zip(t.column("user_id").to_pylist(), t.column("ts").to_pylist(), strict=True))
        assert keys == sorted(keys)
    assert wh.summary()["events"]["rows"] == 200
    files = list(Path(tmp_path, "warehouse", "events").rglob("*.parquet"))
    assert len(files) == len(wh.buckets())  # old parts deleted


def test_users_compaction_keeps_last_row(tmp_path: Path) -> None:
    wh = Warehouse(str(tmp_path))
    wh.create(1)
    ids = pseudonymise_many(["1", "2"], KEY)
    wh.commit(
        wh.write_partitioned("users", pa.table({"user_id": ids, "city": ["a", "b"]}), "1"), "t"
    )
    wh.commit(
        wh.write_partitioned("users", pa.table({"user_id": ids[:1], "city": ["c"]}), "2"), "t"
    )
    wh.compact_bucket("users", 0)
    t = wh.read_table("users").sort_by("user_id").to_pydict()
    assert dict(zip(t["user_id"], t["city"], strict=True)) == {int(ids[0]): "c", int(ids[1]): "b"}


def test_uncommitted_parts_are_invisible_and_vacuumed(tmp_path: Path) -> None:
    wh = Warehouse(str(tmp_path))
    wh.create(4)
    wh.write_partitioned("events", _events(20, 1), "orphan")  # writer died before commit
    assert wh.summary()["events"]["rows"] == 0
    assert wh.read_table("events").num_rows == 0
    assert len(wh.vacuum()) > 0
    assert list(Path(tmp_path, "warehouse", "events").rglob("*.parquet")) == []


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(WarehouseError, match="no warehouse"):
        Warehouse(str(tmp_path)).summary()
    wh = Warehouse(str(tmp_path))
    wh.create(2)
    with pytest.raises(WarehouseError, match="already exists"):
        wh.create(2)
    wh.commit(wh.write_partitioned("events", _events(10, 1), "x"), "t")
    b = wh.buckets()[0]
    path = wh.bucket_files("events", b)[0]
    Path(path).write_bytes(b"not parquet")
    with pytest.raises(WarehouseError, match=path.replace("=", ".")):
        wh.read_bucket("events", b)
    with pytest.raises(WarehouseError, match="other buckets"):
        wh.write_bucket("events", 1 - b, _events(10, 1).slice(0, 10), "bad")


def test_filesystem_uri(tmp_path: Path) -> None:
    wh = Warehouse(f"file://{tmp_path}")
    wh.create(2)
    wh.commit(wh.write_partitioned("events", _events(5, 1), "u"), "t")
    assert Warehouse(str(tmp_path)).summary()["events"]["rows"] == 5
