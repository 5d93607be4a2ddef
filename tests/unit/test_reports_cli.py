"""`strata report tiers --engine pandas` on hand-written snapshot and warehouse files (no Ray):
the JSON document, the written report files and the one-line user errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from jobs import cli
from jobs._errors import USER_ERROR_EXIT
from strata.ids import bucket_of
from strata.io.reports import ReportStore
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from strata.schema import TIMESTAMP
from strata.timeutil import DAY_MS

runner = CliRunner()
N_BUCKETS = 4
AS_OF = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
AS_OF_MS = int(AS_OF.timestamp() * 1000)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATA_DEBUG", raising=False)


def _snapshot(data: str, version: str, as_of_ms: int, rows: dict[str, list[object]]) -> None:
    store = SnapshotStore(data)
    table = pa.table(rows)
    buckets = bucket_of(table.column("user_id").to_numpy(), N_BUCKETS)
    for b in range(N_BUCKETS):
        store.write_bucket(version, b, N_BUCKETS, table.filter(pa.array(buckets == b)))
    iso = dt.datetime.fromtimestamp(as_of_ms / 1000, dt.UTC).isoformat()
    store.write_manifest(version, {"version": version, "as_of_ms": as_of_ms, "as_of": iso})


def _orders(data: str, rows: list[tuple[int, int, float, float]]) -> None:
    wh = Warehouse(data)
    wh.create(N_BUCKETS)
    n = len(rows)
    table = pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "ts": pa.array([r[1] for r in rows], pa.int64()).cast(TIMESTAMP),
            "event_type": ["order"] * (n - 1) + ["item_view"],
            "amount_cny": [r[2] for r in rows],
            "discount_cny": [r[3] for r in rows],
        }
    )
    result = wh.write_partitioned("events", table, "t1")
    # user 2 got a strategy of configs/strategies.yaml 5 days before v2's as-of and ordered
    # after it; user 1 is in that strategy's holdout; user 3 was exposed to something else
    exposures = pa.table(
        {
            "user_id": pa.array([2, 1, 3], pa.int64()),
            "ts": pa.array([AS_OF_MS - 5 * DAY_MS] * 3, pa.int64()).cast(TIMESTAMP),
            "experiment": ["potential_targeted_coupon", "potential_targeted_coupon", "other"],
            "arm": ["treatment", "holdout", "treatment"],
            "source": ["action"] * 3,
        }
    )
    result.extend(wh.write_partitioned("exposures", exposures, "t1"))
    wh.commit(result, "test")


@pytest.fixture
def data(tmp_path: Path) -> str:
    root = str(tmp_path / "data")
    week = 7 * DAY_MS
    _snapshot(
        root,
        "v1",
        AS_OF_MS - week,
        {
            "user_id": [1, 2, 3],
            "tier": ["high_value", "potential", "ordinary"],
            "tier_rule": ["band"] * 3,
            "lifecycle_stage": ["mature", "growing", "churned"],
            "ltv_cny": [300.0, 100.0, 20.0],
            "recency_days": [1, 2, 3],  # not read: the report projects its columns
        },
    )
    _snapshot(
        root,
        "v2",
        AS_OF_MS,
        {
            "user_id": [1, 2, 3, 4],
            "tier": ["high_value", "high_value", "ordinary", "ordinary"],
            "tier_rule": ["band", "band", "hold", "band"],
            "lifecycle_stage": ["mature", "mature", "growing", "new"],
            "ltv_cny": [350.0, 200.0, 20.0, 5.0],
            "recency_band": ["within_30d", "within_30d", "lapsed_90d", "within_30d"],
            "frequency_band": ["weekly", "monthly", "rarer", "rarer"],
            "spend_level": ["high", "high", "low", "low"],
        },
    )
    _orders(
        root,
        [
            (1, AS_OF_MS - 2 * DAY_MS, 50.0, 5.0),
            (2, AS_OF_MS - 3 * DAY_MS, 30.0, 0.0),
            (1, AS_OF_MS - 9 * DAY_MS, 40.0, 4.0),  # in both periods
            (4, AS_OF_MS - 1 * DAY_MS, 999.0, 0.0),  # the item_view row: not an order
        ],
    )
    return root


def test_json_document_and_written_files(data: str) -> None:
    out = runner.invoke(cli.app, ["report", "tiers", "--data", data, "--engine", "pandas",
                                  "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    doc = orjson.loads(out.stdout)  # nothing else on stdout
    assert [s["version"] for s in doc["snapshots"]] == ["v1", "v2"]
    assert doc["tier_order"][0] == "high_value" and doc["tier_order"][-1] == "churn_warning"
    v1, v2 = doc["snapshots"]
    assert v1["tiers"]["high_value"]["arpu_cny"] == pytest.approx(40.0)
    assert v1["bands"] == {}
    hv = v2["tiers"]["high_value"]
    assert hv["users"] == 2 and hv["share"] == pytest.approx(0.5)
    assert hv["arpu_cny"] == pytest.approx((50.0 + 30.0 + 40.0) / 2)
    assert hv["orders_per_user"] == pytest.approx(1.5)
    assert hv["coupon_cost_cny"] == pytest.approx(9.0)
    assert hv["ltv_cny"] == pytest.approx(275.0)
    assert v2["tiers"]["ordinary"]["arpu_cny"] == 0.0
    assert v2["tiers"]["ordinary"]["new_users"] == 1
    assert v2["tiers"]["ordinary"]["returning_users"] == 1
    assert v2["bands"]["spend_level"] == {"high": 2, "mid": 0, "low": 2}
    assert v2["lifecycle"]["mature"] == 2
    assert v2["strategies"] == {
        "high_value": {"potential_targeted_coupon": {"reach": 1, "converted": 1, "conversion": 1.0}}
    }
    assert v1["strategies"] == {}  # the exposure is after v1's as-of
    (t,) = doc["transitions"]
    assert t["matrix"]["potential"]["high_value"] == 1
    assert t["by_rule"]["ordinary"]["ordinary"] == {"hold": 1}

    store = ReportStore(data)
    (version,) = store.versions()
    assert doc["report_version"] == version
    assert store.read(version).model_dump(mode="json") == doc
    tiers = store.read_table(version, "tiers").to_pylist()
    assert {(r["version"], r["tier"]): r["users"] for r in tiers}[("v2", "ordinary")] == 2
    moves = store.read_table(version, "transitions").to_pylist()
    assert sum(r["users"] for r in moves) == 3


def test_from_to_select_snapshots_and_tables_print(data: str) -> None:
    out = runner.invoke(cli.app, ["report", "tiers", "--data", data, "--engine", "pandas",
                                  "--from", "v2", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    doc = orjson.loads(out.stdout)
    assert [s["version"] for s in doc["snapshots"]] == ["v2"] and doc["transitions"] == []
    out = runner.invoke(cli.app, ["report", "tiers", "--data", data, "--engine", "pandas",
                                  "--to", "v1"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "strata report tiers" in out.stdout and "high_value" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "v9"], "--from v9: no such snapshot; retained: v1, v2"),
        (["--to", "nope"], "--to nope: no such snapshot; retained: v1, v2"),
        (["--from", "v2", "--to", "v1"], "--from v2 is newer than --to v1"),
        (["--engine", "spark"], "--engine: engine 'spark' is not one of modin, pandas"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(data: str, args: list[str], message: str) -> None:
    out = runner.invoke(cli.app, ["report", "tiers", "--data", data, "--engine", "pandas",
                                  *args])  # fmt: skip
    assert out.exit_code == USER_ERROR_EXIT, out.output
    assert message in out.output
    assert "Traceback" not in out.output
    assert ReportStore(data).versions() == []


def test_no_snapshots_is_a_user_error(tmp_path: Path) -> None:
    out = runner.invoke(cli.app, ["report", "tiers", "--data", str(tmp_path), "--engine",
                                  "pandas"])  # fmt: skip
    assert out.exit_code == USER_ERROR_EXIT
    assert "no snapshots: run `strata recompute` first" in out.output
