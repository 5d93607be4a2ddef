"""The generator's simulated experiment: exposures, assignment, the calibrated true effect,
and its recovery by the experiment engine (unit_outcomes -> unit_statistics -> analyse)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from strata import synth
from strata.config import ConfigError, config_path, load_calendar
from strata.experiments import analyse, unit_statistics
from strata.experiments.assignment import assign_many
from strata.experiments.config import Experiment, load_experiments
from strata.experiments.outcomes import OutcomeWindow, unit_outcomes
from strata.ids import pseudonymise_many
from strata.schema import EXPOSURES_SCHEMA
from strata.synth.experiment import (
    ExperimentPlan,
    ExperimentTruth,
    expected_conversions,
    plan_experiment,
    solve_buy_multiplier,
)
from strata.timeutil import DAY_MS, HOUR_MS, local_midnight_ms

KEY = b"unit-test-key-0123456789abcdef"
NAME = "potential_coupon_value"
START = dt.date(2025, 9, 1)
DAYS = 30
ARMS = ["control", "coupon_20", "holdout"]


def _experiment() -> Experiment:
    e = load_experiments().get(NAME)
    assert e is not None
    return e


def _plan(cfg: synth.GeneratorConfig | None = None, **sim: Any) -> ExperimentPlan:
    cfg = cfg or synth.load_generator_config()
    if sim:
        cfg.experiments[NAME] = cfg.experiments[NAME].model_copy(update=sim)
    e = _experiment()
    return plan_experiment(NAME, e.salt, e.weights, e.holdout, cfg, DAYS, e.analysis_window_days)


def _bucket(
    plan: ExperimentPlan | None, n: int = 3000, seed: int = 5, bucket: int = 2
) -> synth.BucketData:
    raw = synth.raw_user_ids((bucket + 1) * n)[bucket * n :]  # other users in every bucket
    ids = pseudonymise_many(raw.tolist(), KEY)
    return synth.generate_bucket(
        bucket, ids, raw, synth.load_generator_config(), load_calendar(), seed, START, DAYS,
        experiment=plan,
    )  # fmt: skip


@pytest.fixture(scope="module")
def data() -> synth.BucketData:
    return _bucket(_plan())


# ---------------------------------------------------------------------------- calibration
def test_multiplier_reaches_the_relative_effect_exactly() -> None:
    rng = np.random.default_rng(0)
    p = rng.choice([0.45, 0.62], 5000)
    m = rng.poisson(1.2, 5000)
    k = solve_buy_multiplier(p, m, 0.15)
    assert k > 1
    assert expected_conversions(p, m, k) == pytest.approx(1.15 * expected_conversions(p, m))
    down = solve_buy_multiplier(p, m, -0.2)
    assert down < 1
    assert expected_conversions(p, m, down) == pytest.approx(0.8 * expected_conversions(p, m))
    assert solve_buy_multiplier(p, m, 0.0) == 1.0


def test_an_unreachable_effect_takes_the_largest_multiplier() -> None:
    p = np.full(100, 0.5)
    m = np.full(100, 3)  # conversion 0.875: x 1.5 is out of reach
    k = solve_buy_multiplier(p, m, 0.5)
    assert k == pytest.approx(2.0)
    truth = ExperimentTruth(100, expected_conversions(p, m), expected_conversions(p, m, k))
    assert truth.relative_effect == pytest.approx(1 / 0.875 - 1)


def test_truth_merges_as_sums() -> None:
    a, b = ExperimentTruth(10, 5.0, 6.0), ExperimentTruth(30, 15.0, 17.0)
    assert a.merge(b) == ExperimentTruth(40, 20.0, 23.0)
    assert a.merge(b).relative_effect == pytest.approx(0.15)
    assert ExperimentTruth().relative_effect == 0.0


# ---------------------------------------------------------------------------- the plan
def test_plan_takes_the_definition_and_starts_mid_window() -> None:
    plan = _plan()
    assert plan.weights == (("control", 1.0), ("coupon_20", 1.0)) and plan.holdout == 0.05
    assert (plan.arm, plan.baseline, plan.metric) == ("coupon_20", "control", "conversion")
    assert plan.relative_effect == 0.15 and plan.window_days == 14 and plan.start_day == 15


@pytest.mark.parametrize(
    ("sim", "message"),
    [
        ({"arm": "coupon_30"}, r"experiments\.potential_coupon_value\.arm: 'coupon_30' is not"),
        ({"baseline": "coupon_20"}, "arm and baseline are the same"),
        ({"start_fraction": 0.6}, r"30-day window is too short .*start_fraction 0\.6"),
        ({"window_days": 7}, r"window_days is 7 but .* analysis_window_days .* is 14"),
    ],
)
def test_plan_refuses_what_does_not_fit(sim: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _plan(**sim)


def test_plan_needs_a_true_effect() -> None:
    cfg = synth.load_generator_config()
    cfg.experiments.clear()
    e = _experiment()
    with pytest.raises(ValueError, match=r"no experiments\.potential_coupon_value"):
        plan_experiment(NAME, e.salt, e.weights, e.holdout, cfg, DAYS)


def test_unknown_target_persona_is_a_config_error(tmp_path: Path) -> None:
    raw = yaml.safe_load(config_path("generator").read_text(encoding="utf-8"))
    raw["experiments"][NAME]["target_personas"] = ["bargain_hunter"]
    (tmp_path / "generator.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown persona 'bargain_hunter'"):
        synth.load_generator_config(tmp_path)


# ---------------------------------------------------------------------------- exposures
def test_exposures_are_the_targeted_users_at_the_send(data: synth.BucketData) -> None:
    assert data.exposures is not None and data.exposures.schema.equals(EXPOSURES_SCHEMA)
    truth = data.truth.to_pandas().set_index("user_id")
    x = data.exposures.to_pandas()
    assert x["user_id"].is_monotonic_increasing and x["user_id"].is_unique
    personas = truth.loc[x["user_id"], "persona"]
    assert set(personas) == {"occasional_buyer", "declining_user"}
    day = local_midnight_ms(START + dt.timedelta(days=15))
    ts_ms = data.exposures.column("ts").cast(pa.int64()).to_numpy()
    assert ts_ms.min() >= day + 9 * HOUR_MS and ts_ms.max() < day + 21 * HOUR_MS
    # every targeted user who had signed up by the send is exposed, nobody else
    targeted = truth[truth["persona"].isin(["occasional_buyer", "declining_user"])]
    signup = pc.cast(pa.array(targeted["signup_ts"]), pa.int64()).to_numpy()
    assert set(targeted.index[signup < day + 9 * HOUR_MS]) <= set(x["user_id"])
    assert set(x["user_id"]) <= set(targeted.index[signup < day + 21 * HOUR_MS])
    assert set(x["experiment"]) == {NAME} and set(x["source"]) == {"action"}


def test_arms_are_the_shared_hash_and_split_as_weighted(data: synth.BucketData) -> None:
    assert data.exposures is not None
    users = data.exposures.column("user_id").to_pylist()
    e = _experiment()
    assert data.exposures.column("arm").to_pylist() == assign_many(
        e.salt, NAME, users, e.weights, holdout=e.holdout
    )
    counts = pc.value_counts(data.exposures.column("arm")).to_pylist()
    share = {c["values"]: c["counts"] / len(users) for c in counts}
    assert share["holdout"] == pytest.approx(0.05, abs=0.02)
    assert share["control"] == pytest.approx(0.475, abs=0.04)
    assert share["coupon_20"] == pytest.approx(0.475, abs=0.04)


def test_deterministic_with_the_seed(data: synth.BucketData) -> None:
    again = _bucket(_plan())
    assert again.exposures is not None and again.exposures.equals(data.exposures)
    assert again.events.equals(data.events) and again.experiment_truth == data.experiment_truth
    other = _bucket(_plan(), seed=6)
    assert not other.events.equals(data.events)


def test_without_an_experiment_nothing_changes() -> None:
    plain = _bucket(None, n=400)
    assert plain.exposures is None and plain.experiment_truth is None
    aa = _bucket(_plan(relative_effect=0.0), n=400)
    # an effect of 0 treats nobody: the same events as without the experiment
    assert aa.events.equals(plain.events)
    assert aa.experiment_truth is not None and aa.experiment_truth.relative_effect == 0.0


def test_the_planted_effect_is_the_configured_one(data: synth.BucketData) -> None:
    assert data.experiment_truth is not None
    assert data.experiment_truth.exposed == data.exposures.num_rows  # type: ignore[union-attr]
    assert data.experiment_truth.relative_effect == pytest.approx(0.15, abs=1e-9)


# ---------------------------------------------------------------------------- recovery
def _analysis_of(buckets: list[synth.BucketData], covariate: bool = True) -> Any:
    """The engine on the buckets' exposures and events, one bucket at a time, merged."""
    window = OutcomeWindow(window_ms=14 * DAY_MS, pre_window_ms=14 * DAY_MS)
    arms: list[np.ndarray] = []
    metrics: dict[str, list[np.ndarray]] = {"conversion": [], "revenue_per_user": []}
    pre: list[np.ndarray] = []
    for b in buckets:
        assert b.exposures is not None
        out = unit_outcomes(b.exposures, b.events, NAME, window)
        arms.append(np.array([ARMS.index(a) for a in out.arms]))
        for name in metrics:
            metrics[name].append(out.metrics[name])
        pre.append(out.covariate)
    stats = unit_statistics(
        np.concatenate(arms),
        ARMS,
        {k: np.concatenate(v) for k, v in metrics.items()},
        np.concatenate(pre) if covariate else None,
    )
    return analyse(stats, "control", experiment=NAME)


def _conversion(analysis: Any, arm: str = "coupon_20") -> Any:
    (c,) = [c for c in analysis.comparisons if c.arm == arm and c.metric == "conversion"]
    return c.relative


def test_the_engine_recovers_the_planted_effect() -> None:
    plan = _plan()
    buckets = [_bucket(plan, n=4000, seed=1, bucket=b) for b in range(4)]
    truth = ExperimentTruth()
    for b in buckets:
        assert b.experiment_truth is not None
        truth = truth.merge(b.experiment_truth)
    assert truth.relative_effect == pytest.approx(0.15, abs=1e-9)
    for covariate in (True, False):
        rel = _conversion(_analysis_of(buckets, covariate))
        assert rel.ci_low <= truth.relative_effect <= rel.ci_high
        assert rel.ci_low > 0 and rel.p_value < 0.001  # a 15% lift on ~5k users is clear
    # the holdout is untreated: no effect against the control
    assert _conversion(_analysis_of(buckets), "holdout").p_value > 0.05


def test_an_aa_experiment_finds_nothing() -> None:
    plan = _plan(relative_effect=0.0)
    buckets = [_bucket(plan, n=4000, seed=1, bucket=b) for b in range(4)]
    rel = _conversion(_analysis_of(buckets))
    assert rel.p_value > 0.05 and rel.ci_low < 0 < rel.ci_high
