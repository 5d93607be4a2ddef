"""`strata generate --experiment NAME` on a local Ray: exposures committed into the warehouse,
truth/experiments.json, determinism, and the planted effect recovered bucket by bucket."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from jobs import cli, generate
from strata.experiments import analyse, check_srm, merge_statistics, unit_statistics
from strata.experiments.config import load_experiments
from strata.experiments.outcomes import OutcomeWindow, unit_outcomes
from strata.io.warehouse import Warehouse
from strata.settings import Settings
from strata.timeutil import DAY_MS
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

NAME = "potential_coupon_value"
END = dt.date(2025, 10, 8)
USERS = 6000
DAYS = 30
ARMS = ["control", "coupon_20", "holdout"]


def _settings(root: Path) -> Settings:
    return Settings(data=str(root / "data"), pseudonym_key=SecretStr(TEST_KEY), n_buckets=8)


def _run(settings: Settings, **kwargs: Any) -> generate.GenerateResult:
    args: dict[str, Any] = {"users": USERS, "days": DAYS, "seed": 4, "end": END}
    args.update(kwargs)
    return generate.run(settings, show_progress=False, **args)


@pytest.fixture(scope="module")
def generated(
    ray_local: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, generate.GenerateResult]:
    settings = _settings(tmp_path_factory.mktemp("genexp"))
    return settings, _run(settings, experiment=NAME)


def test_exposures_are_committed_for_targeted_users_only(
    generated: tuple[Settings, generate.GenerateResult],
) -> None:
    settings, result = generated
    wh = Warehouse(settings.data)
    exposures = wh.read_table("exposures")
    assert exposures.num_rows == sum(result.exposed.values()) > USERS * 0.3
    assert wh.manifest["writes"][-1]["exposures_rows"] == exposures.num_rows
    assert wh.manifest["writes"][-1]["experiment"] == NAME
    truth = pq.read_table(Path(settings.data) / "truth" / "users.parquet").to_pandas()
    persona = truth.set_index("user_id")["persona"]
    exposed = exposures.column("user_id").to_numpy()
    assert len(np.unique(exposed)) == len(exposed)
    assert set(persona.loc[exposed]) == {"occasional_buyer", "declining_user"}
    # nearly every targeted user is exposed (all but those signing up after the send)
    targeted = persona.isin(["occasional_buyer", "declining_user"]).sum()
    assert 0.95 * targeted <= len(exposed) <= targeted
    assert set(exposures.column("source").to_pylist()) == {"action"}


def test_arms_follow_the_hash_and_split_as_weighted(
    generated: tuple[Settings, generate.GenerateResult],
) -> None:
    settings, result = generated
    exposures = Warehouse(settings.data).read_table("exposures")
    experiment = load_experiments().get(NAME)
    assert experiment is not None
    users = exposures.column("user_id").to_pylist()
    arms = exposures.column("arm").to_pylist()
    assert arms == [experiment.assign(u) for u in users]
    counts = {c["values"]: c["counts"] for c in pc.value_counts(exposures["arm"]).to_pylist()}
    assert counts == result.exposed
    assert check_srm([counts[a] for a in ARMS], [0.475, 0.475, 0.05]) > 0.001


def test_truth_file_holds_the_planted_effect(
    generated: tuple[Settings, generate.GenerateResult],
) -> None:
    settings, result = generated
    doc = json.loads((Path(settings.data) / "truth" / "experiments.json").read_text())
    assert doc == {
        NAME: {
            "arm": "coupon_20",
            "baseline": "control",
            "metric": "conversion",
            "relative_effect": pytest.approx(0.15, abs=1e-9),
        }
    }
    assert result.true_effect == doc[NAME]["relative_effect"]


def test_engine_on_the_warehouse_buckets_covers_the_truth(
    generated: tuple[Settings, generate.GenerateResult],
) -> None:
    settings, _ = generated
    wh = Warehouse(settings.data)
    truth = json.loads((Path(settings.data) / "truth" / "experiments.json").read_text())[NAME]
    window = OutcomeWindow(window_ms=14 * DAY_MS, pre_window_ms=14 * DAY_MS)
    merged: dict[str, dict[str, Any]] | None = None
    for b in wh.buckets("exposures"):
        out = unit_outcomes(
            wh.read_bucket("exposures", b), wh.read_bucket("events", b), NAME, window
        )
        codes = np.array([ARMS.index(a) for a in out.arms], dtype=np.int64)
        stats = unit_statistics(codes, ARMS, {"conversion": out.metrics["conversion"]})
        merged = (
            stats
            if merged is None
            else {
                arm: {m: merge_statistics(merged[arm][m], s) for m, s in stats[arm].items()}
                for arm in ARMS
            }
        )
    assert merged is not None
    (c,) = [
        c for c in analyse(merged, "control", experiment=NAME).comparisons if c.arm == "coupon_20"
    ]
    assert c.relative.ci_low <= truth["relative_effect"] <= c.relative.ci_high
    assert c.relative.ci_low > 0


def test_deterministic_and_an_overwrite_without_it_drops_the_experiment(
    generated: tuple[Settings, generate.GenerateResult], tmp_path: Path
) -> None:
    settings, _ = generated
    other = _settings(tmp_path)
    _run(other, experiment=NAME)
    a, b = Warehouse(settings.data), Warehouse(other.data)
    for bucket in a.buckets("exposures"):
        (pa_,) = a.bucket_files("exposures", bucket)
        (pb,) = b.bucket_files("exposures", bucket)
        assert Path(pa_).read_bytes() == Path(pb).read_bytes()
    _run(other, users=300, overwrite=True)
    b.reload()
    assert b.read_table("exposures").num_rows == 0
    assert not (Path(other.data) / "truth" / "experiments.json").exists()


def test_command_line_refuses_an_unknown_or_unfitting_experiment(
    ray_local: Any, tmp_path: Path
) -> None:
    data = str(tmp_path / "cli")
    args = ["generate", "--data", data, "--users", "200", "--end", "2025-10-08"]
    unknown = CliRunner().invoke(cli.app, [*args, "--days", "30", "--experiment", "nope"])
    assert unknown.exit_code == 2
    assert "--experiment nope: not in experiments.yaml" in unknown.output
    short = CliRunner().invoke(cli.app, [*args, "--days", "20", "--experiment", NAME])
    assert short.exit_code == 2 and "20-day window is too short" in short.output
    ok = CliRunner().invoke(cli.app, [*args, "--days", "30", "--experiment", NAME])
    assert ok.exit_code == 0, ok.output
    assert f"experiment {NAME}" in ok.output and "planted" in ok.output


def test_the_report_command_recovers_the_shipped_experiment(
    generated: tuple[Settings, generate.GenerateResult],
) -> None:
    settings, _ = generated
    truth = json.loads((Path(settings.data) / "truth" / "experiments.json").read_text())[NAME]
    args = ["report", "experiment", NAME, "--data", settings.data, "--json"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (c,) = [
        c
        for c in doc["comparisons"]
        if (c["arm"], c["baseline"], c["metric"]) == (truth["arm"], truth["baseline"], "conversion")
    ]
    assert c["cuped"] is True
    assert c["relative"]["ci_low"] <= truth["relative_effect"] <= c["relative"]["ci_high"]
    assert doc["srm_p_value"] > 0.001
