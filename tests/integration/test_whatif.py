"""What-if on a small recomputed warehouse: the CLI (``strata whatif``) and the HTTP endpoints
(``POST /v1/whatif``, ``GET /v1/whatif/keys``) over a real app and a real embedded Redis."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.models import WhatIfKeysPublic, WhatIfPublic
from jobs import generate
from jobs.cli import app
from jobs.recompute import RecomputeJob
from strata.io.snapshots import SnapshotStore
from strata.io.whatif_inputs import latest_snapshot, load_whatif_inputs
from strata.reports.whatif import tiers_after
from strata.serving.apikeys import dump_records, new_key
from strata.settings import Settings
from strata.timeutil import parse_as_of
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

#: three weekly snapshots (the history test shares them)
AS_OFS = ("2026-09-17", "2026-09-24", "2026-10-01")
USERS = 600
REPORTS_KEY, REPORTS_REC = new_key("ops", ["reports:read"])
SEGMENTS_KEY, SEGMENTS_REC = new_key("reader", ["segments:read"])


def weekly_snapshots(base: Path) -> str:
    """A generated warehouse with a snapshot per week of :data:`AS_OFS` under ``base`` (built
    once per session; later callers reuse it). Returns the data root."""
    root = base / "weekly" / "data"
    done = base / "weekly" / "done"
    if not done.exists():
        settings = Settings(data=str(root), pseudonym_key=TEST_KEY, n_buckets=8)
        generate.run(settings, users=USERS, days=100, seed=11, end=dt.date(2026, 10, 1))
        for as_of in AS_OFS:
            RecomputeJob(settings, parse_as_of(as_of), actors=2, publish=False).run()
        done.touch()
    return str(root)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> str:
    return weekly_snapshots(tmp_path_factory.getbasetemp())


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["whatif", *args])


def test_unchanged_settings_reproduce_every_stored_tier(data_root: str) -> None:
    """The recompute's rules re-applied to the stored scores give each user's stored tier
    (with hysteresis against the previous snapshot and the churn warning), in every snapshot."""
    store = SnapshotStore(data_root)
    for version in store.versions():
        inputs = load_whatif_inputs(data_root, version)
        assert inputs.users == store.manifest(version)["outputs"]["users"] > 0
        assert np.array_equal(inputs.base_codes(), inputs.stored_codes()), version
        assert inputs.config_matches_snapshot is True
        # an explicit but unchanged setting runs the re-application: the same tier user by user
        same = tiers_after(inputs, {"tiers.hysteresis_margin": "0.02"})
        assert same.to_pylist() == inputs.tier.to_pylist()
        # the score a changed weight is computed from: the stored ranks give the stored score
        w = inputs.rules.weights
        score = w.recency * inputs.rfm_r + w.frequency * inputs.rfm_f + w.monetary * inputs.rfm_m
        assert np.abs(score - inputs.rfm_score).max() <= 1.5e-6
    newest = load_whatif_inputs(data_root)
    assert newest.version == latest_snapshot(store) == store.versions()[-1]
    assert newest.previous_tier.null_count < USERS  # the hysteresis had a previous tier


def test_cli_json_and_table(data_root: str) -> None:
    out = _cli(
        "--data", data_root, "--json",
        "--set", "tiers.bands.high_value.min_score=0.75", "--set", "tiers.weights.recency=0.5",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert {"before", "after", "moves", "cost_change_cny"} <= set(doc)
    WhatIfPublic.model_validate(doc)
    manifest = SnapshotStore(data_root).manifest(doc["version"])
    assert doc["before"] == {t: manifest["outputs"]["tiers"].get(t, 0) for t in doc["before"]}
    users = manifest["outputs"]["users"]
    assert sum(doc["after"].values()) == users == doc["users"]
    assert sum(sum(row.values()) for row in doc["moves"].values()) == users
    assert doc["moved_users"] > 0 and doc["weights"]["frequency"] == pytest.approx(0.25)
    assert doc["cost_change_cny"] == pytest.approx(doc["cost_after_cny"] - doc["cost_before_cny"])
    same = json.loads(_cli("--data", data_root, "--json").stdout)
    assert same["before"] == same["after"] and same["moved_users"] == 0
    assert same["cost_change_cny"] == 0 and same["unreproduced_users"] == 0
    table = _cli("--data", data_root, "--set", "tiers.hysteresis_margin=0")
    assert table.exit_code == 0, table.output
    assert "before -> after" in table.output and "cost change CNY" in table.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "tiers.bands.vip.min_score=0.9"], "tiers.bands.vip.min_score: unknown key"),
        (["--set", "tiers.measures.frequency.window=365d"], "needs a warehouse pass"),
        (["--set", "tiers.bands.potential.min_score=0.85"], "bands must be listed"),
        (["--set", "tiers.weights.recency=x"], "'x' is not a number"),
        (["--set", "tiers.hysteresis_margin"], "expected KEY=VALUE"),
    ],
)
def test_cli_refuses_with_exit_2(data_root: str, args: list[str], message: str) -> None:
    out = _cli("--data", data_root, *args)
    assert out.exit_code == 2 and message in out.output, out.output
    assert "Traceback" not in out.output


def test_cli_without_a_snapshot_exits_2(tmp_path: Path) -> None:
    out = _cli("--data", str(tmp_path / "empty"), "--set", "tiers.hysteresis_margin=0")
    assert out.exit_code == 2 and "no snapshot under" in out.output and "recompute" in out.output


@pytest.fixture
def client(data_root: str, redis_url: str) -> Iterator[TestClient]:
    settings = Settings(
        data=data_root, redis_url=redis_url, api_keys=dump_records([REPORTS_REC, SEGMENTS_REC])
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _auth(key: str = REPORTS_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_http_whatif_equals_the_cli(client: TestClient, data_root: str) -> None:
    body = {"set": {"tiers.bands.high_value.min_score": 0.75, "tiers.weights.recency": 0.5}}
    r = client.post("/v1/whatif", json=body, headers=_auth())
    assert r.status_code == 200, r.text
    cli = _cli(
        "--data", data_root, "--json",
        "--set", "tiers.bands.high_value.min_score=0.75", "--set", "tiers.weights.recency=0.5",
    )  # fmt: skip
    assert r.json() == json.loads(cli.stdout)
    again = client.post("/v1/whatif", json={"set": {}}, headers=_auth()).json()
    assert again["moved_users"] == 0 and again["before"] == r.json()["before"]


def test_http_whatif_refusals_and_scope(client: TestClient) -> None:
    r = client.post(
        "/v1/whatif", json={"set": {"tiers.bands.high_value.min_score": 2}}, headers=_auth()
    )
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "tiers.bands.high_value.min_score" in detail
    r = client.post("/v1/whatif", json={"set": {"tiers.nope": 1}}, headers=_auth())
    assert r.status_code == 422 and "tiers.nope: unknown key" in r.json()["detail"]
    assert client.post("/v1/whatif", json={"set": {}}).status_code == 401
    assert (
        client.post("/v1/whatif", json={"set": {}}, headers=_auth(SEGMENTS_KEY)).status_code == 403
    )
    assert client.get("/v1/whatif/keys", headers=_auth(SEGMENTS_KEY)).status_code == 403


def test_http_keys_are_sliders_the_whatif_accepts(client: TestClient) -> None:
    r = client.get("/v1/whatif/keys", headers=_auth())
    assert r.status_code == 200, r.text
    doc = WhatIfKeysPublic.model_validate(r.json())
    keys = {k.key: k for k in doc.keys}
    assert keys["tiers.bands.high_value.min_score"].value == 0.8
    assert keys["tiers.weights.recency"].value == 0.4
    top = keys["tiers.bands.high_value.min_score"]
    moved = client.post(
        "/v1/whatif", json={"set": {top.key: top.value + 5 * top.step}}, headers=_auth()
    ).json()
    assert moved["after"]["high_value"] < moved["before"]["high_value"]
    assert set(r.json()["keys"][0]) >= {"key", "value", "min", "max", "step"}
