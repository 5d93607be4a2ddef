"""Tiers on a transaction-only log: `strata generate --orders-only`, the recompute's score
histogram and near-empty band warnings, the API's tier gauges, non-default RFM measures."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from jobs import generate
from jobs._recompute_report import print_result
from jobs._runtime import console
from jobs.recompute import RecomputeJob
from strata.config import CONFIG_DIR
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from strata.synth import ORDER_LOG_COLUMNS
from strata.timeutil import parse_as_of
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

END = dt.date(2026, 10, 1)
AS_OF = parse_as_of("2026-10-01")
METRICS_KEY, METRICS_RECORD = new_key("prometheus", ["metrics:read"])
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_KEY}"}


@pytest.fixture(scope="module")
def orders_root(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> str:
    root = str(tmp_path_factory.mktemp("orders_only") / "data")
    settings = Settings(data=root, pseudonym_key=TEST_KEY, n_buckets=8)
    result = generate.run(
        settings, users=800, days=120, seed=5, end=END, only_orders=True, show_progress=False
    )
    assert result.orders_only and result.events == result.orders > 0
    return root


def _copy(root: str, tmp_path: Path, redis_url: str | None = None) -> Settings:
    target = tmp_path / "data"
    shutil.copytree(Path(root) / "warehouse", target / "warehouse")
    return Settings(
        data=str(target),
        pseudonym_key=TEST_KEY,
        redis_url=redis_url,
        api_keys=dump_records([new_key("reader", ["segments:read"])[1], METRICS_RECORD]),
    )


def _configs(tmp_path: Path, old: str, new: str) -> str:
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    path = configs / "tiers.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return str(configs)


def _gauges(text: str, name: str) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(rf'^{name}{{tier="([a-z_]+)"}} ([0-9.e+]+)$', text, re.M)
    }


def test_orders_only_warehouse_holds_only_orders_and_no_users(orders_root: str) -> None:
    wh = Warehouse(orders_root)
    assert wh.buckets("users") == [] and wh.read_table("users").num_rows == 0
    events = wh.read_table("events")
    assert set(events.column("event_type").to_pylist()) == {"order"}
    assert events.column("session_id").null_count == events.num_rows
    assert pc.min(events.column("amount_cny")).as_py() > 0
    for b in wh.buckets("events"):
        assert wh.bucket_columns("events", b) == list(ORDER_LOG_COLUMNS)
    assert wh.manifest["writes"][-1]["orders_only"] is True
    assert (Path(orders_root) / "truth" / "users.parquet").exists()


def test_recompute_on_orders_only_records_histogram_and_sets_gauges(
    orders_root: str, tmp_path: Path, redis_url: str
) -> None:
    settings = _copy(orders_root, tmp_path, redis_url)
    result = RecomputeJob(settings, AS_OF, actors=2).run()
    manifest = SnapshotStore(settings.data).manifest(result.version)
    hist = manifest["outputs"]["score_histogram"]
    assert sum(hist["counts"]) == result.users == sum(hist["bands"].values()) > 0
    assert len(hist["counts"]) == 10 and hist["edges"][0] == 0 and hist["edges"][-1] == 1
    # grocery cadence: every band is populated, nothing to warn about
    assert manifest["warnings"] == result.warnings == []
    assert min(hist["bands"].values()) >= 0.01 * result.users
    assert ("", "", "", "-- 0.8: high_value above, potential below --") in result.histogram
    # users without attributes: the orders-only log has no users table
    snap = SnapshotStore(settings.data).read_bucket(result.version, 0, 8)
    assert snap is not None and snap.column("channel").null_count == snap.num_rows

    with TestClient(create_app(settings)) as client:
        text = client.get("/metrics", headers=METRICS_AUTH).text
    assert _gauges(text, "strata_tier_users") == {
        k: float(v) for k, v in manifest["outputs"]["tiers"].items()
    }
    assert _gauges(text, "strata_tier_empty") == {
        "high_value": 0.0,
        "potential": 0.0,
        "ordinary": 0.0,
    }


def test_a_band_under_one_percent_is_a_warning_and_a_gauge(
    orders_root: str, tmp_path: Path, redis_url: str
) -> None:
    settings = _copy(orders_root, tmp_path, redis_url)
    configs = _configs(tmp_path, "min_score: 0.8", "min_score: 0.999")
    result = RecomputeJob(settings, AS_OF, config_dir=configs).run()
    assert len(result.warnings) == 1
    (warning,) = result.warnings
    assert "'high_value'" in warning and "tiers.yaml bands[0].min_score" in warning
    manifest = SnapshotStore(settings.data).manifest(result.version)
    assert manifest["warnings"] == result.warnings
    with console.capture() as printed:
        print_result(result, ["high_value", "potential", "ordinary", "churn_warning"])
    out = printed.get()
    assert "rfm_score histogram" in out and "<- 0.999:" in out
    assert "warning:" in out and "'high_value'" in out
    assert manifest["outputs"]["score_histogram"]["bands"]["high_value"] < 0.01 * result.users
    with TestClient(create_app(settings)) as client:
        text = client.get("/metrics", headers=METRICS_AUTH).text
    assert _gauges(text, "strata_tier_empty") == {
        "high_value": 1.0,
        "potential": 0.0,
        "ordinary": 0.0,
    }


def test_sparse_category_measures_run_end_to_end(orders_root: str, tmp_path: Path) -> None:
    settings = _copy(orders_root, tmp_path)
    configs = _configs(
        tmp_path,
        "frequency: {window: 90d, per: window,",
        "frequency: {window: lifetime, per: active_month,",
    )
    one = RecomputeJob(settings, AS_OF, actors=1, publish=False, config_dir=configs).run()
    two = RecomputeJob(settings, AS_OF, actors=2, publish=False, config_dir=configs).run()
    assert one.tiers == two.tiers and one.tiers["potential"] > 0.05 * one.users
    store = SnapshotStore(settings.data)
    for version in (one.version, two.version):
        assert store.manifest(version)["warnings"] == []
    a = store.read_bucket(one.version, 3, 8)
    b = store.read_bucket(two.version, 3, 8)
    assert a is not None and b is not None
    assert a.column("rfm_f").equals(b.column("rfm_f"))
