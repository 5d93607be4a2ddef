"""Warehouse: bucketed parts, atomic manifest commits, compaction, unreadable files, the
actions and exposures tables (and manifests written before they existed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from jobs import cli
from strata.ids import bucket_of, pseudonymise_many
from strata.io.warehouse import Warehouse, WarehouseError
from strata.schema import TABLE_SCHEMAS

KEY = b"unit-test-key-0123456789"
runner = CliRunner()


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


def _actions(n_users: int, per_user: int) -> pa.Table:
    ids = pseudonymise_many([f"a{i}" for i in range(n_users)], KEY)
    n = n_users * per_user
    rng = np.random.default_rng(1)
    return pa.table(
        {
            "user_id": np.repeat(ids, per_user),
            "ts": pa.array(rng.integers(0, 10**9, n), pa.timestamp("ms", tz="UTC")),
            "rule": ["cart_abandoned"] * n,
            "action": ["coupon"] * n,
            "key": [f"k{i}" for i in range(n)],
            "value_cny": np.full(n, 5.0),
        }
    )


def _drop_tables(root: Path, *tables: str) -> None:
    """Rewrite the manifest as a strata from before ``tables`` existed wrote it."""
    path = root / "warehouse" / "manifest.json"
    manifest = json.loads(path.read_text())
    for table in tables:
        del manifest["tables"][table]
        for entry in manifest["writes"]:
            entry.pop(f"{table}_rows", None)
    path.write_text(json.dumps(manifest))


def test_actions_are_bucketed_and_sorted_by_user_then_time(tmp_path: Path) -> None:
    wh = Warehouse(str(tmp_path))
    wh.create(4)
    wh.commit(wh.write_partitioned("actions", _actions(30, 4), "a"), "stream")
    for b in wh.buckets("actions"):  # each part is written sorted by (user, ts)
        part = wh.read_bucket("actions", b, ["user_id", "ts"])
        keys = list(zip(part["user_id"].to_pylist(), part["ts"].to_pylist(), strict=True))
        assert keys == sorted(keys) and len(set(part["user_id"].to_pylist())) > 1
        assert np.all(bucket_of(part["user_id"].to_numpy(), 4) == b)
    wh.commit(wh.write_partitioned("actions", _actions(30, 1), "b"), "stream")
    assert wh.summary()["actions"]["rows"] == 150
    assert wh.manifest["writes"][-1]["actions_rows"] == 30
    for b in wh.buckets("actions"):
        part = wh.read_bucket("actions", b, ["user_id", "ts"])
        wh.compact_bucket("actions", b)
        assert wh.is_sorted("actions", b)
        after = wh.read_bucket("actions", b, ["user_id", "ts"])
        keys = list(zip(after["user_id"].to_pylist(), after["ts"].to_pylist(), strict=True))
        assert keys == sorted(keys) and len(keys) == part.num_rows
    table = wh.read_table("actions")
    assert table.num_rows == 150 and table.schema.field("value_cny").type == pa.float64()
    assert table.column("params").null_count == 150  # not given: null, not invented


def test_a_manifest_from_before_the_actions_table_reads_it_as_empty(tmp_path: Path) -> None:
    wh = Warehouse(str(tmp_path))
    wh.create(4)
    wh.commit(wh.write_partitioned("events", _events(20, 2), "a"), "import")
    wh.commit(wh.write_partitioned("events", _events(20, 1, t0=7), "b"), "import")
    _drop_tables(tmp_path, "actions")

    old = Warehouse(str(tmp_path))
    assert old.buckets("actions") == [] and old.bucket_files("actions", 0) == []
    assert old.read_table("actions").schema == TABLE_SCHEMAS["actions"]
    assert old.read_table("actions").num_rows == 0 and not old.is_sorted("actions", 0)
    assert old.summary()["actions"] == {
        "rows": 0, "files": 0, "buckets": 0, "min_ts": None, "max_ts": None
    }  # fmt: skip
    assert old.summary()["events"]["rows"] == 60
    # info and compaction run on it; compaction rewrites the events buckets only
    info = runner.invoke(cli.app, ["info", "--data", str(tmp_path)])
    assert info.exit_code == 0, info.output
    assert "actions rows" in info.output and "events rows" in info.output
    compact = runner.invoke(cli.app, ["compact", "--data", str(tmp_path)])
    assert compact.exit_code == 0, compact.output
    fresh = Warehouse(str(tmp_path))
    assert all(fresh.is_sorted("events", b) for b in fresh.buckets("events"))
    assert fresh.summary()["events"]["rows"] == 60 and fresh.vacuum() == []
    # the first commit of actions adds the table to the manifest
    fresh.commit(fresh.write_partitioned("actions", _actions(5, 2), "c"), "stream")
    on_disk = json.loads((tmp_path / "warehouse" / "manifest.json").read_text())
    assert sum(len(e["parts"]) for e in on_disk["tables"]["actions"]["buckets"].values()) >= 1
    assert Warehouse(str(tmp_path)).summary()["actions"]["rows"] == 10


def _exposures(n_users: int, experiments: tuple[str, ...] = ("coupon_10_vs_20",)) -> pa.Table:
    """Each user's first exposure to each experiment, in no particular order."""
    ids = pseudonymise_many([f"x{i}" for i in range(n_users)], KEY)
    n = n_users * len(experiments)
    rng = np.random.default_rng(2)
    return pa.table(
        {
            "user_id": np.tile(ids, len(experiments)),
            "ts": pa.array(rng.integers(0, 10**9, n), pa.timestamp("ms", tz="UTC")),
            "experiment": np.repeat(experiments, n_users).tolist(),
            "arm": rng.choice(["control", "coupon_20", "holdout"], n).tolist(),
            "source": rng.choice(["serve", "action"], n).tolist(),
        }
    )


def test_exposures_are_bucketed_sorted_and_keep_every_column(tmp_path: Path) -> None:
    wh = Warehouse(str(tmp_path))
    wh.create(4)
    given = _exposures(40, ("coupon_10_vs_20", "trial_invite"))
    wh.commit(wh.write_partitioned("exposures", given, "a"), "stream")
    assert wh.manifest["writes"][-1]["exposures_rows"] == 80
    for b in wh.buckets("exposures"):  # each part sorted by (user, ts), one bucket's users
        part = wh.read_bucket("exposures", b, ["user_id", "ts"])
        keys = list(zip(part["user_id"].to_pylist(), part["ts"].to_pylist(), strict=True))
        assert keys == sorted(keys) and len(set(part["user_id"].to_pylist())) > 1
        assert np.all(bucket_of(part["user_id"].to_numpy(), 4) == b)
    wh.commit(wh.write_partitioned("exposures", _exposures(10, ("third",)), "b"), "stream")
    for b in wh.buckets("exposures"):
        wh.compact_bucket("exposures", b)
        assert wh.is_sorted("exposures", b)
    table = wh.read_table("exposures")
    assert table.schema == TABLE_SCHEMAS["exposures"]
    assert table.column_names == ["user_id", "ts", "experiment", "arm", "source"]
    assert wh.summary()["exposures"]["rows"] == 90 and wh.vacuum() == []

    def rows(t: pa.Table) -> list[tuple[object, ...]]:
        d = t.to_pydict()
        return sorted(zip(*(d[c] for c in t.column_names), strict=True))

    # compaction reorders rows and drops none: every column of every row is kept
    assert rows(table.filter(pc.field("experiment") != "third")) == rows(
        given.cast(TABLE_SCHEMAS["exposures"])
    )


def test_a_missing_required_exposure_column_is_refused(tmp_path: Path) -> None:
    wh = Warehouse(str(tmp_path))
    wh.create(2)
    with pytest.raises(ValueError, match="'arm'"):
        wh.write_partitioned("exposures", _exposures(3).drop_columns(["arm"]), "a")
    with pytest.raises(ValueError, match="not in the exposures schema"):
        wh.write_partitioned(
            "exposures", _exposures(3).append_column("phone", pa.array(["1"] * 3)), "b"
        )
    assert wh.summary()["exposures"]["rows"] == 0


def test_a_manifest_from_before_the_exposures_table_reads_it_as_empty(tmp_path: Path) -> None:
    wh = Warehouse(str(tmp_path))
    wh.create(4)
    wh.commit(wh.write_partitioned("events", _events(20, 2), "a"), "import")
    wh.commit(wh.write_partitioned("actions", _actions(5, 2), "b"), "stream")
    wh.commit(wh.write_partitioned("events", _events(20, 1, t0=7), "c"), "import")
    _drop_tables(tmp_path, "exposures")

    old = Warehouse(str(tmp_path))
    assert old.buckets("exposures") == [] and old.bucket_files("exposures", 0) == []
    assert old.read_table("exposures").schema == TABLE_SCHEMAS["exposures"]
    assert old.read_table("exposures").num_rows == 0 and not old.is_sorted("exposures", 0)
    assert old.read_bucket("exposures", 3, ["experiment", "arm"]).num_rows == 0
    assert old.summary()["exposures"] == {
        "rows": 0, "files": 0, "buckets": 0, "min_ts": None, "max_ts": None
    }  # fmt: skip
    assert old.summary()["events"]["rows"] == 60 and old.summary()["actions"]["rows"] == 10
    info = runner.invoke(cli.app, ["info", "--data", str(tmp_path)])
    assert info.exit_code == 0, info.output
    assert "exposures rows" in info.output and "actions rows" in info.output
    compact = runner.invoke(cli.app, ["compact", "--data", str(tmp_path)])
    assert compact.exit_code == 0, compact.output
    fresh = Warehouse(str(tmp_path))
    assert all(fresh.is_sorted("events", b) for b in fresh.buckets("events"))
    assert fresh.summary()["events"]["rows"] == 60 and fresh.vacuum() == []
    # the first commit of exposures adds the table; the others are untouched
    fresh.commit(fresh.write_partitioned("exposures", _exposures(6), "d"), "stream")
    on_disk = json.loads((tmp_path / "warehouse" / "manifest.json").read_text())
    assert sum(len(e["parts"]) for e in on_disk["tables"]["exposures"]["buckets"].values()) >= 1
    after = Warehouse(str(tmp_path)).summary()
    assert after["exposures"]["rows"] == 6 and after["actions"]["rows"] == 10
    assert after["events"]["rows"] == 60
