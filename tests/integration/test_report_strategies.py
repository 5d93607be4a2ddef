"""`strata report strategies` over a real recompute: every strategy's snapshot population is
split by its standing holdout, and its numbers are the users' orders in the window."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import orjson
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from jobs import generate
from jobs.cli import app
from jobs.recompute import RecomputeJob
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from strata.settings import Settings
from strata.strategies.config import load_strategies
from strata.timeutil import local_midnight_ms, parse_as_of
from tests.conftest import TEST_KEY

AS_OF = "2026-10-01"
SINCE = "2026-09-01"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> str:
    data = str(tmp_path_factory.mktemp("strat") / "data")
    settings = Settings(data=data, pseudonym_key=TEST_KEY, n_buckets=8)
    generate.run(settings, users=1500, days=60, seed=21, end=dt.date(2026, 10, 1))
    RecomputeJob(settings, parse_as_of(AS_OF), actors=2, publish=False).run()
    return data


def test_each_strategy_is_its_population_split_by_its_standing_holdout(root: str) -> None:
    out = CliRunner().invoke(
        app,
        ["report", "strategies", "--data", root, "--since", SINCE, "--until", AS_OF, "--json",
         "--no-cuped"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    doc = orjson.loads(out.stdout)
    assert doc["window"]["since"].startswith("2026-09-01T00:00:00")
    store = SnapshotStore(root)
    snap = store.read(store.versions()[-1], columns=["user_id", "tier"])
    config = load_strategies()
    strategy = config.get("potential_targeted_coupon")
    assert strategy is not None
    row = next(
        r for r in doc["strategies"]
        if r["strategy"] == strategy.name and r["target"] == "potential"
    )  # fmt: skip
    members = snap.filter(pc.equal(snap.column("tier"), "potential")).column("user_id")
    ids = np.asarray(members.to_numpy())
    held = np.asarray([config.in_holdout(strategy, int(u)) for u in ids.tolist()])
    assert row["reach"] == int((~held).sum()) and row["holdout_users"] == int(held.sum())
    assert row["holdout_users"] > 0
    # conversion of the treated = users with an order in [since, as_of)
    events = Warehouse(root).read_table("events", ["user_id", "ts", "event_type"])
    orders = events.filter(pc.equal(events.column("event_type"), "order"))
    ts = orders.column("ts").cast("int64").to_numpy()
    lo, hi = local_midnight_ms(dt.date(2026, 9, 1)), local_midnight_ms(dt.date(2026, 10, 1))
    buyers = set(orders.column("user_id").to_numpy()[(ts >= lo) & (ts < hi)].tolist())
    treated = ids[~held]
    want = np.mean([u in buyers for u in treated.tolist()])
    conv = row["metrics"]["conversion"]
    assert conv["treated"] == pytest.approx(want, abs=1e-12)
    revenue = row["metrics"]["revenue_per_user"]
    assert revenue["absolute"]["ci_low"] < revenue["absolute"]["ci_high"], row
    assert set(row["metrics"]) == {"conversion", "revenue_per_user", "margin_per_user"}
    # the table view runs too
    table = CliRunner().invoke(
        app, ["report", "strategies", "--data", root, "--since", SINCE, "--until", AS_OF]
    )
    assert table.exit_code == 0 and "strategies vs their standing" in table.output


def test_an_empty_window_is_a_user_error(root: str) -> None:
    out = CliRunner().invoke(
        app, ["report", "strategies", "--data", root, "--since", AS_OF, "--until", SINCE]
    )
    assert out.exit_code == 2 and "window is empty" in out.output
