"""`strata report tiers` on real recomputes: a small generated warehouse, three snapshots a
week apart, the report on Modin (local Ray) checked against a direct computation from the
snapshot Parquet and the warehouse, equal to the pandas engine's, and its written files."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from jobs import cli, generate
from jobs.recompute import RecomputeJob
from strata.io.reports import ReportStore
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from strata.settings import Settings
from strata.timeutil import DAY_MS, parse_as_of, to_epoch_ms
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

END = dt.date(2026, 10, 1)
AS_OFS = [parse_as_of(d) for d in ("2026-09-17", "2026-09-24", "2026-10-01")]
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> str:
    root = str(tmp_path_factory.mktemp("report_tiers") / "data")
    settings = Settings(data=root, pseudonym_key=TEST_KEY, n_buckets=8)
    generate.run(settings, users=1200, days=100, seed=11, end=END)
    for as_of in AS_OFS:
        RecomputeJob(settings, as_of, publish=False).run()
    return root


def _report(data: str, *args: str) -> dict[str, Any]:
    out = runner.invoke(cli.app, ["report", "tiers", "--data", data, "--json", *args])
    assert out.exit_code == 0, out.output
    doc: dict[str, Any] = orjson.loads(out.stdout)
    return doc


def _flatten(doc: Any, path: str = "") -> dict[str, Any]:
    """{"snapshots[0].tiers.potential.users": 12, ...}: every leaf of a JSON document."""
    if isinstance(doc, dict):
        return {k: v for key, x in doc.items() for k, v in _flatten(x, f"{path}.{key}").items()}
    if isinstance(doc, list):
        return {k: v for i, x in enumerate(doc) for k, v in _flatten(x, f"{path}[{i}]").items()}
    return {path: doc}


def _direct(data: str, version: str, as_of_ms: int) -> tuple[pa.Table, dict[str, float]]:
    """The snapshot's user/tier/stage columns and each tier's revenue in the 30-day period,
    straight from the Parquet files with pyarrow."""
    snap = SnapshotStore(data).read(version, columns=["user_id", "tier", "lifecycle_stage"])
    ev = Warehouse(data).read_table("events", ["user_id", "ts", "event_type", "amount_cny"])
    ts = ev.column("ts").cast(pa.int64())
    keep = pc.and_(
        pc.equal(ev.column("event_type"), "order"),
        pc.and_(pc.greater_equal(ts, as_of_ms - 30 * DAY_MS), pc.less(ts, as_of_ms)),
    )
    orders = ev.filter(keep).join(snap, "user_id", join_type="inner")
    sums = orders.group_by("tier").aggregate([("amount_cny", "sum")]).to_pylist()
    return snap, {r["tier"]: r["amount_cny_sum"] for r in sums}


def test_report_on_modin_equals_a_direct_computation(data: str) -> None:
    doc = _report(data)  # the default engine: Modin on the session's Ray
    versions = SnapshotStore(data).versions()
    assert [s["version"] for s in doc["snapshots"]] == versions
    assert [s["as_of"] for s in doc["snapshots"]] == [a.isoformat() for a in AS_OFS]
    assert len(doc["transitions"]) == 2
    snaps = []
    for s, as_of in zip(doc["snapshots"], AS_OFS, strict=True):
        snap, revenue = _direct(data, s["version"], to_epoch_ms(as_of))
        snaps.append(snap)
        assert s["users"] == snap.num_rows
        assert sum(t["share"] for t in s["tiers"].values()) == pytest.approx(1.0)
        tiers = dict(zip(*np.unique(snap.column("tier").to_numpy(False), return_counts=True),
                         strict=True))  # fmt: skip
        for name, m in s["tiers"].items():
            n = int(tiers.get(name, 0))
            assert m["users"] == n
            if n:
                assert m["arpu_cny"] == pytest.approx(revenue.get(name, 0.0) / n)
        assert sum(s["lifecycle"].values()) == snap.num_rows
        assert (
            s["lifecycle"]["churned"]
            == pc.sum(pc.equal(snap.column("lifecycle_stage"), "churned")).as_py()
        )
    # matrix rows: the users of the from-tier that are in both snapshots
    for t, prev, cur in zip(doc["transitions"], snaps, snaps[1:], strict=False):
        both = prev.join(cur.select(["user_id"]), "user_id", join_type="inner")
        for name, row in t["matrix"].items():
            expected = pc.sum(pc.equal(both.column("tier"), name)).as_py() or 0
            assert sum(row.values()) == expected
            for to, n in row.items():
                rules = t["by_rule"].get(name, {}).get(to, {})
                assert sum(rules.values()) == n
    # the users generated over the 100 days keep arriving: the newer snapshots have new ones
    assert sum(m["new_users"] for m in doc["snapshots"][2]["tiers"].values()) == (
        snaps[2].num_rows - snaps[1].join(snaps[2].select(["user_id"]), "user_id").num_rows
    )

    # the pandas engine runs the same code: the same document
    other = _report(data, "--engine", "pandas")
    for key in ("report_version", "generated_at"):
        assert other.pop(key) != doc.pop(key)
    # (float sums in another order: equal to the last few bits)
    flat_other, flat_doc = _flatten(other), _flatten(doc)
    assert flat_other.keys() == flat_doc.keys()
    for key, value in flat_doc.items():
        if isinstance(value, float):
            assert flat_other[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert flat_other[key] == value, key

    # the written files: the JSON document and its long tables
    store = ReportStore(data)
    assert len(store.versions()) == 2
    written = store.latest()
    assert written is not None and written.snapshots[0].version == versions[0]
    rows = store.read_table(store.versions()[0], "tiers").num_rows
    assert rows == 3 * len(doc["tier_order"])
    moves = store.read_table(store.versions()[0], "transitions")
    assert set(moves.column_names) == {
        "from_version", "to_version", "from_tier", "to_tier", "rule", "users",
    }  # fmt: skip
    first = moves.filter(pc.equal(moves.column("to_version"), versions[1]))
    assert pc.sum(first.column("users")).as_py() == sum(
        sum(r.values()) for r in doc["transitions"][0]["matrix"].values()
    )


def test_the_dashboard_shows_the_reports_numbers_and_the_whatif_moves_users(
    data: str, redis_url: str
) -> None:
    """The real path a new user takes: `strata report tiers --json` over real recomputes, then
    the dashboard page over the same data root. Its embedded numbers are the report's (shares
    and ARPU rounded by the one documented rule, counts under k suppressed), and the what-if
    endpoint the dashboard's form posts to moves users when a threshold rises."""
    import html
    import re

    from fastapi.testclient import TestClient

    from api.app import create_app
    from strata.reports.suppress import DECIMALS, pct, round_half_up
    from strata.serving.apikeys import dump_records, new_key

    doc = _report(data)
    key, rec = new_key("dash", ["reports:read"])
    settings = Settings(data=data, redis_url=redis_url, api_keys=dump_records([rec]))
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        page = client.get("/dashboard", headers=auth)
        assert page.status_code == 200, page.text
        found = re.search(r'<script type="application/json" id="dash-data">(.*?)</script>',
                          page.text, re.S)  # fmt: skip
        assert found is not None
        view = orjson.loads(html.unescape(found.group(1)))["view"]
        assert [s["version"] for s in view["snapshots"]] == [s["version"] for s in doc["snapshots"]]
        shown = 0
        for snap, rep in zip(view["snapshots"], doc["snapshots"], strict=True):
            for tier, m in rep["tiers"].items():
                cell = snap["tiers"][tier]
                if m["users"] < 10:
                    assert cell["users"] == "<10" or m["users"] == 0
                    continue
                shown += 1
                assert cell["users"] == m["users"]
                assert cell["share_pct"] == pct(m["share"])
                assert cell["arpu_cny"] == round_half_up(m["arpu_cny"], DECIMALS["cny"])
        assert shown >= 6
        last = view["transitions"][-1]["matrix"]
        for frm, row in doc["transitions"][-1]["matrix"].items():
            for to, n in row.items():
                assert last[frm][to] == (n if n == 0 or n >= 10 else "<10")

        keys = client.get("/v1/whatif/keys", headers=auth).json()["keys"]
        band = next(k for k in keys if k["key"] == "tiers.bands.high_value.min_score")
        raised = round(min(band["max"], band["value"] + 0.1), 4)
        resp = client.post("/v1/whatif", headers=auth, json={"set": {band["key"]: raised}})
        assert resp.status_code == 200, resp.text
        result = resp.json()
        assert result["after"]["high_value"] < result["before"]["high_value"]
        assert sum(result["after"].values()) == sum(result["before"].values())
        assert sum(result["moves"]["high_value"].values()) == result["before"]["high_value"]
