"""`strata report experiment NAME --data DIR` over a warehouse with a planted effect: users
assigned by the experiment's own hash, exposed, and ordering with known probabilities per arm.
The 95% CI covers the planted effect, the arms' numbers equal the engine on the same units,
the holdout gives the headline margin comparison, and a broken split fires the SRM check."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from jobs.cli import app
from strata.experiments import analyse, unit_statistics
from strata.experiments.config import load_experiments
from strata.io.warehouse import Warehouse
from strata.schema import TIMESTAMP
from strata.timeutil import DAY_MS, local_midnight_ms

EXPERIMENT = "potential_coupon_value"
START = local_midnight_ms(dt.date(2026, 6, 1))
UNTIL = "2026-08-01"
P = {"control": 0.30, "coupon_20": 0.36, "holdout": 0.25}  # conversion in 14 days
N_USERS = 12_000


def build(root: str, seed: int, broken_split: bool = False) -> dict[str, Any]:
    """A warehouse of exposures and orders; returns the planted per-user truth."""
    rng = np.random.default_rng(seed)
    exp = load_experiments().get(EXPERIMENT)
    assert exp is not None and exp.holdout > 0
    users = rng.choice(2**62, N_USERS, replace=False).astype(np.int64)
    arms = np.asarray([exp.assign(int(u)) for u in users], dtype=object)
    if broken_split:  # a bug that drops a third of the control's exposures
        keep = (arms != "control") | (rng.random(N_USERS) > 1 / 3)
        users, arms = users[keep], arms[keep]
    n = len(users)
    t0 = START + rng.integers(0, 20 * DAY_MS, n)
    pre_spend = rng.gamma(2.0, 40.0, n) * (rng.random(n) < 0.6)
    p = np.asarray([P[a] for a in arms.tolist()])
    converts = rng.random(n) < p
    amount = np.round(rng.gamma(3.0, 30.0, n), 2)
    discount = np.where(arms == "coupon_20", 20.0, np.where(arms == "control", 10.0, 0.0))
    wh = Warehouse(root)
    wh.open_or_create(8)
    exposures = pa.table(
        {
            "user_id": users,
            "ts": pa.array(t0).cast(TIMESTAMP),
            "experiment": [EXPERIMENT] * n,
            "arm": arms.tolist(),
            "source": ["action"] * n,
        }
    )
    pre = pre_spend > 0
    order_users = np.concatenate([users[converts], users[pre]])
    order_ts = np.concatenate(
        [t0[converts] + rng.integers(0, 13 * DAY_MS, int(converts.sum())), t0[pre] - 3 * DAY_MS]
    )
    orders = pa.table(
        {
            "user_id": order_users,
            "ts": pa.array(order_ts).cast(TIMESTAMP),
            "event_type": ["order"] * len(order_users),
            "order_id": [f"o{i}" for i in range(len(order_users))],
            "amount_cny": np.concatenate([amount[converts], pre_spend[pre]]),
            "discount_cny": np.concatenate([discount[converts], np.zeros(int(pre.sum()))]),
        }
    )
    result = wh.write_partitioned("exposures", exposures, "exp1")
    result.extend(wh.write_partitioned("events", orders, "ord1"))
    wh.commit(result, source="test")
    return {"users": users, "arms": arms, "converts": converts, "pre": pre_spend,
            "revenue": np.where(converts, amount, 0.0), "discount": discount}  # fmt: skip


def report(root: str, *extra: str) -> dict[str, Any]:
    out = CliRunner().invoke(
        app,
        ["report", "experiment", EXPERIMENT, "--data", root, "--until", UNTIL, "--json", *extra],
    )
    assert out.exit_code == 0, out.output
    return orjson.loads(out.stdout)


def comparison(doc: dict[str, Any], arm: str, baseline: str, metric: str) -> dict[str, Any]:
    return next(
        c
        for c in doc["comparisons"]
        if c["arm"] == arm and c["baseline"] == baseline and c["metric"] == metric
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    root = str(tmp_path_factory.mktemp("exp") / "data")
    return root, build(root, seed=3)


def test_the_ci_covers_the_planted_effect_and_the_numbers_are_the_engines(
    planted: tuple[str, dict[str, Any]],
) -> None:
    root, truth = planted
    doc = report(root, "--no-cuped")
    assert doc["experiment"] == EXPERIMENT and doc["srm_p_value"] > 0.001
    conv = comparison(doc, "coupon_20", "control", "conversion")
    true_rel = P["coupon_20"] / P["control"] - 1
    assert conv["relative"]["ci_low"] < true_rel < conv["relative"]["ci_high"]
    assert conv["relative"]["p_value"] < 0.05 and conv["cuped"] is False
    # the same units through the engine directly
    arm_names = ["control", "coupon_20", "holdout"]
    codes = np.asarray([arm_names.index(a) for a in truth["arms"].tolist()])
    metrics = {"conversion": truth["converts"].astype(float)}
    direct = analyse(unit_statistics(codes, arm_names, metrics), "control")
    want = next(c for c in direct.comparisons if c.arm == "coupon_20")
    assert conv["relative"]["effect"] == pytest.approx(want.relative.effect, abs=1e-12)
    assert conv["absolute"]["p_value"] == pytest.approx(want.absolute.p_value, abs=1e-12)
    users = {a["arm"]: a["users"] for a in doc["arms"]}
    assert users == {a: int((truth["arms"] == a).sum()) for a in arm_names}
    # the headline: margin per user against the standing holdout
    margin = comparison(doc, "coupon_20", "holdout", "margin_per_user")
    assert margin["absolute"]["ci_low"] < margin["absolute"]["ci_high"]


def test_cuped_narrows_the_revenue_ci(planted: tuple[str, dict[str, Any]]) -> None:
    root, _ = planted
    plain = comparison(report(root, "--no-cuped"), "coupon_20", "control", "revenue_per_user")
    cuped = comparison(report(root), "coupon_20", "control", "revenue_per_user")
    assert cuped["cuped"] is True

    def width(c: dict[str, Any]) -> float:
        return float(c["absolute"]["ci_high"] - c["absolute"]["ci_low"])

    # the pre-exposure spend is independent of the outcome here: CUPED must not widen it
    assert width(cuped) <= width(plain) * 1.01


def test_a_broken_split_fires_the_srm_check(tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    build(root, seed=5, broken_split=True)
    out = CliRunner().invoke(
        app, ["report", "experiment", EXPERIMENT, "--data", root, "--until", UNTIL, "--json"]
    )
    assert out.exit_code == 0, out.output
    assert "sample ratio mismatch" in out.stderr
    doc = orjson.loads(out.stdout)
    assert doc["srm_p_value"] < 0.001


def test_unknown_experiment_and_empty_warehouse_are_user_errors(tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    Warehouse(root).open_or_create(4)
    bad = CliRunner().invoke(app, ["report", "experiment", "nope", "--data", root])
    assert bad.exit_code == 2 and "no experiment 'nope'" in bad.output
    empty = CliRunner().invoke(app, ["report", "experiment", EXPERIMENT, "--data", root])
    assert empty.exit_code == 2 and "no exposed user" in empty.output


def test_a_broken_guardrail_is_flagged(planted: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    import shutil

    from strata.config import CONFIG_DIR

    root, _ = planted
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    path = configs / "experiments.yaml"
    text = path.read_text()
    assert "{metric: coupon_cost_per_user, max: 15.0}" in text
    path.write_text(text.replace("{metric: coupon_cost_per_user, max: 15.0}",
                                 "{metric: coupon_cost_per_user, max: 5.0}", 1))  # fmt: skip
    args = ["report", "experiment", EXPERIMENT, "--data", root, "--until", UNTIL, "--json"]
    out = CliRunner().invoke(app, args, env={"STRATA_CONFIG_DIR": str(configs)})
    assert out.exit_code == 0, out.output
    # coupon_20 converts ~36% of users with a 20 CNY discount: ~7.2 CNY per user > 5
    assert "guardrail: coupon_20 has coupon_cost_per_user" in out.stderr
    assert "guardrail: control" not in out.stderr  # ~30% x 10 CNY = 3 < 5
    shipped = CliRunner().invoke(app, args)
    assert "guardrail" not in shipped.stderr


def test_the_dashboard_endpoints_equal_the_commands(
    planted: tuple[str, dict[str, Any]], redis_url: str
) -> None:
    """GET /v1/reports/experiments holds the same analysis as `strata report experiment
    --json`; /v1/reports/rules the same as /v1/rules; both need reports:read."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from strata.serving.apikeys import dump_records, new_key
    from strata.settings import Settings

    root, _ = planted
    reports_key, reports_rec = new_key("dash", ["reports:read"])
    read_key, read_rec = new_key("reader", ["segments:read"])
    settings = Settings(
        data=root, redis_url=redis_url, api_keys=dump_records([reports_rec, read_rec])
    )
    cli = report(root)
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {reports_key}"}
        denied = client.get(
            "/v1/reports/experiments", headers={"Authorization": f"Bearer {read_key}"}
        )
        assert denied.status_code == 403 and "reports:read" in denied.json()["detail"]
        resp = client.get("/v1/reports/experiments", headers=auth)
        assert resp.status_code == 200, resp.text
        doc = resp.json()["experiments"][EXPERIMENT]
        assert doc["arms"] == cli["arms"]
        assert doc["comparisons"] == cli["comparisons"]
        assert doc["srm_p_value"] == cli["srm_p_value"] and doc["exposed"] == N_USERS
        others = [v for k, v in resp.json()["experiments"].items() if k != EXPERIMENT]
        assert all("error" in v for v in others)  # nobody exposed to them: said, not hidden
        # cached until the warehouse changes: the second answer is the same document
        assert client.get("/v1/reports/experiments", headers=auth).json() == resp.json()
        rules = client.get("/v1/reports/rules", headers=auth)
        assert rules.status_code == 200, rules.text
        plain = client.get("/v1/rules", headers={"Authorization": f"Bearer {read_key}"})
        assert rules.json() == plain.json() and "rules" in rules.json()
