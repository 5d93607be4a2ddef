"""`strata import` end to end: files -> warehouse buckets + rejects, one atomic commit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import jobs.ingest as ingest_job
from jobs import cli
from strata.ids import bucket_of, pseudonymise
from strata.ingest import ColumnMapping, MappingError
from strata.io.keys import load_pseudonym_key
from strata.io.warehouse import Warehouse
from strata.settings import Settings

pytestmark = pytest.mark.integration

NOW_MS = 1_717_200_000_000  # 2024-06-01T00:00:00Z
MAPPING = ColumnMapping(
    user_col="member",
    time_col="paid_at",
    amount_col="total",
    time_format="%Y%m%d",
    order_col="order_no",
    category_col="cat",
    event_type_col="kind",
)
HEADER = "member,paid_at,total,order_no,cat,kind,phone,address\n"


def _write_csv(path: Path, n: int, seed: int, bad_every: int = 10) -> Path:
    """n rows; every ``bad_every``-th row has a negative amount."""
    rng = np.random.default_rng(seed)
    lines = [HEADER]
    for i in range(n):
        day = 20240101 + int(rng.integers(0, 28))
        amount = -5 if i % bad_every == bad_every - 1 else round(float(rng.random()) * 100, 2)
        lines.append(
            f"RAWID{int(rng.integers(0, 50))},{day},{amount},O{seed}-{i},fruit,purchase,"
            f"1380000{i:04d},Street {i}\n"
        )
    path.write_text("".join(lines))
    return path


def _run(settings: Settings, files: list[Path], **kw: Any) -> ingest_job.ImportResult:
    return ingest_job.run(
        settings, [str(f) for f in files], MAPPING, now_ms=NOW_MS, show_progress=False, **kw
    )


def _manifest(settings: Settings) -> dict[str, Any]:
    return json.loads((Path(settings.data) / "warehouse" / "manifest.json").read_text())


def test_import_csv_end_to_end(settings: Settings, tmp_path: Path) -> None:
    f = _write_csv(tmp_path / "orders.csv", 500, seed=1)
    result = _run(settings, [f])
    assert (result.input_rows, result.accepted, result.rejected) == (500, 450, 50)
    assert result.rejects_by_reason == {"negative amount": 50}

    wh = Warehouse(settings.data)
    assert wh.n_buckets == 16
    assert wh.summary()["events"]["rows"] == result.accepted
    last = wh.manifest["writes"][-1]
    assert (last["source"], last["events_rows"]) == ("import", 450)
    assert (last["accepted"], last["rejected"], last["input_files"]) == (450, 50, [str(f)])

    key = load_pseudonym_key(settings)
    raw_ids = {f"RAWID{i}" for i in range(50)}
    expected_ids = {pseudonymise(r, key) for r in raw_ids}
    events = wh.read_table("events")
    assert events.num_rows == 450
    assert set(events.column("user_id").to_pylist()) <= expected_ids
    assert set(events.column("event_type").to_pylist()) == {"order"}
    assert set(events.column("category").to_pylist()) == {"fruit"}
    for b in wh.buckets("events"):
        ids = wh.read_bucket("events", b, ["user_id"]).column("user_id").to_numpy()
        assert np.all(bucket_of(ids, 16) == b)

    assert result.rejects_path is not None
    assert result.rejects_path.startswith(str(Path(settings.data) / "rejects" / "import-"))
    rejects = pq.read_table(result.rejects_path)
    assert rejects.num_rows == 50
    assert set(rejects.column("reason").to_pylist()) == {"negative amount"}
    assert sorted(rejects.column("row_number").to_pylist()) == list(range(10, 501, 10))
    assert set(rejects.column("user_id").to_pylist()) <= {str(i) for i in expected_ids}
    assert "phone" not in rejects.column_names and "address" not in rejects.column_names

    # no raw id or personal data anywhere under the data root
    for path in Path(settings.data).rglob("*.parquet"):
        table = pq.read_table(path)
        for col in table.columns:
            for v in col.to_pylist():
                assert "RAWID" not in str(v) and "1380000" not in str(v) and "Street" not in str(v)


def test_second_import_appends(settings: Settings, tmp_path: Path) -> None:
    first = _run(settings, [_write_csv(tmp_path / "a.csv", 200, seed=2)])
    second = _run(settings, [_write_csv(tmp_path / "b.csv", 300, seed=3)])
    wh = Warehouse(settings.data)
    assert wh.summary()["events"]["rows"] == first.accepted + second.accepted == 450
    assert [w["source"] for w in wh.manifest["writes"]][-2:] == ["import", "import"]
    assert first.rejects_path != second.rejects_path
    assert wh.read_table("events").num_rows == 450


def test_mapping_error_in_a_later_file_leaves_the_warehouse_unchanged(
    settings: Settings, tmp_path: Path
) -> None:
    _run(settings, [_write_csv(tmp_path / "a.csv", 100, seed=4)])
    before = _manifest(settings)
    bad = tmp_path / "bad.csv"
    bad.write_text("member,paid_on,total,order_no,cat,kind\nX,20240101,1,O,fruit,order\n")
    with pytest.raises(MappingError, match="paid_at") as err:
        _run(settings, [_write_csv(tmp_path / "b.csv", 100, seed=5), bad])
    assert str(bad) in str(err.value)
    assert _manifest(settings) == before
    assert len(list((Path(settings.data) / "rejects").iterdir())) == 1


def test_failure_midway_publishes_nothing(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(settings, [_write_csv(tmp_path / "a.csv", 100, seed=6)])
    before = _manifest(settings)
    files_before = sorted(p for p in Path(settings.data).rglob("*") if p.is_file())

    calls = {"n": 0}
    real = ingest_job.parse_batch

    def flaky(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kw)

    monkeypatch.setattr(ingest_job, "parse_batch", flaky)
    files = [_write_csv(tmp_path / f"f{i}.csv", 100, seed=10 + i) for i in range(3)]
    with pytest.raises(RuntimeError, match="disk on fire"):
        _run(settings, files, flush_rows=50)  # the first two files' rows were written
    assert _manifest(settings) == before
    # the written parts and the partial rejects file were removed again
    assert sorted(p for p in Path(settings.data).rglob("*") if p.is_file()) == files_before
    assert Warehouse(settings.data).read_table("events").num_rows == 90


def test_cli_command_prints_counts_and_fails_on_bad_mapping(
    settings: Settings, tmp_path: Path
) -> None:
    f = _write_csv(tmp_path / "orders.csv", 50, seed=7)
    mapping = tmp_path / "map.yaml"
    mapping.write_text("user_col: member\ntime_col: paid_at\ntime_format: '%Y%m%d'\n")
    args = ["import", str(f), "--data", settings.data, "--mapping", str(mapping)]
    out = CliRunner().invoke(cli.app, [*args, "--amount-col", "total"])
    assert out.exit_code == 0, out.output
    assert "45" in out.output and "negative amount" in out.output
    assert "phone" in out.output  # named as dropped, never read
    out = CliRunner().invoke(cli.app, [*args, "--amount-col", "amount"])
    assert out.exit_code == 2
    assert "'amount'" in out.output and "orders.csv" in out.output
    assert "Traceback" not in out.output
