"""Experiment assignment (the shared contract) and configs/experiments.yaml validation."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from strata.config import CONFIG_DIR, ConfigError
from strata.experiments.assignment import HOLDOUT, assign, assign_many, unit_of
from strata.experiments.config import ExperimentsConfig, load_experiments, load_experiments_text

TIERS = ["high_value", "potential", "ordinary", "churn_warning"]
IDS = list(range(1_000_000, 1_100_000))  # 100k ids

BASE = """
experiments:
  - name: exp_a
    target: {tiers: [potential]}
    arms:
      - {name: control, weight: 1}
      - {name: coupon_20, weight: 1, overrides: {coupon_value_cny: 20}}
    control: control
    start: 2026-01-01
    end: 2026-01-31
    salt: s1
    primary_metric: conversion
"""


def _load(text: str, strategies: tuple[str, ...] = ()) -> ExperimentsConfig:
    return load_experiments_text(
        text, Path("experiments.yaml"), tier_names=TIERS, strategy_names=strategies
    )


def test_unit_of_follows_the_contract_bytes() -> None:
    digest = hashlib.sha256(b"salt:exp:12345").digest()
    assert unit_of("salt", "exp", 12345) == int.from_bytes(digest[:8], "big") / 2**64
    assert 0.0 <= unit_of("salt", "exp", 12345) < 1.0


def test_assignment_is_deterministic_and_sticky() -> None:
    weights = [("control", 1.0), ("treat", 1.0)]
    first = assign_many("s", "e", IDS[:2000], weights, holdout=0.05)
    assert first == assign_many("s", "e", IDS[:2000], weights, holdout=0.05)
    assert first == [assign("s", "e", u, weights, holdout=0.05) for u in IDS[:2000]]


def test_shares_within_one_percent_of_the_weights_over_100k_ids() -> None:
    weights = [("a", 1.0), ("b", 2.0), ("c", 1.0)]
    counts = Counter(assign_many("salt", "weights", IDS, weights, holdout=0.1))
    n = len(IDS)
    expected = {HOLDOUT: 0.1, "a": 0.9 * 0.25, "b": 0.9 * 0.5, "c": 0.9 * 0.25}
    assert set(counts) == set(expected)
    for arm, share in expected.items():
        assert abs(counts[arm] / n - share) < 0.01, (arm, counts[arm] / n, share)


def test_holdout_is_taken_first_from_the_low_end() -> None:
    weights = [("a", 1.0), ("b", 1.0)]
    arms = assign_many("s", "e", IDS[:5000], weights, holdout=0.2)
    for u, arm in zip(IDS[:5000], arms, strict=True):
        assert (arm == HOLDOUT) == (unit_of("s", "e", u) < 0.2)
    assert abs(arms.count(HOLDOUT) / 5000 - 0.2) < 0.02


def test_two_experiments_assign_independently() -> None:
    weights = [("control", 1.0), ("treat", 1.0)]
    one = assign_many("s1", "exp_one", IDS, weights)
    two = assign_many("s2", "exp_two", IDS, weights)
    table = np.zeros((2, 2))
    for a, b in zip(one, two, strict=True):
        table[a == "treat", b == "treat"] += 1
    p = chi2_contingency(table)[1]
    assert p > 0.001, table
    # the same name and salt would be fully dependent: the test can tell
    same = assign_many("s1", "exp_one", IDS[:1000], weights)
    assert (
        chi2_contingency(
            [[sum(1 for x in same if x == "control"), 0], [0, sum(1 for x in same if x == "treat")]]
        )[1]
        < 1e-6
    )


def test_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        assign("s", "e", 1, [("a", 0.0)])
    with pytest.raises(ValueError, match="holdout"):
        assign("s", "e", 1, [("a", 1.0)], holdout=1.0)


def test_shipped_experiments_load_with_the_example_first() -> None:
    config = load_experiments(CONFIG_DIR)
    first = config.experiments[0]
    assert first.name == "potential_coupon_value"
    assert first.target.tiers == ["potential"]
    assert [a.name for a in first.arms] == ["control", "coupon_20"]
    assert first.primary_metric == "conversion"
    assert first.guardrails[0].metric == "coupon_cost_per_user"


def test_status_by_local_date() -> None:
    e = _load(BASE).experiments[0]
    assert e.status(dt.date(2025, 12, 31)) == "scheduled"
    assert e.status(dt.date(2026, 1, 1)) == "running"
    assert e.status(dt.date(2026, 1, 31)) == "running"
    assert e.status(dt.date(2026, 2, 1)) == "ended"


def test_experiment_assign_uses_salt_name_and_holdout() -> None:
    e = _load(BASE.replace("salt: s1", "salt: s1\n    holdout: 0.3")).experiments[0]
    for u in IDS[:200]:
        expected = assign("s1", "exp_a", u, [("control", 1), ("coupon_20", 1)], holdout=0.3)
        assert e.assign(u) == expected


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("control: control", "control: nope"), "control 'nope' is not an arm"),
        (("tiers: [potential]", "tiers: [vip]"), "experiments.0.target.tiers: unknown tier 'vip'"),
        (("end: 2026-01-31", "end: 2025-01-31"), "is before start"),
        (("primary_metric: conversion", "primary_metric: clicks"), "primary_metric"),
        (("salt: s1", "salt: s1\n    holdot: 0.1"),
         "unknown key 'holdot' (did you mean 'holdout'?)"),
        (("{name: control, weight: 1}", "{name: holdout, weight: 1}"), "reserved"),
        (("{name: control, weight: 1}", "{name: control, weight: 1, strategies: [x]}"),
         "experiments.0.arms.0.strategies: unknown strategy 'x'"),
    ],
)  # fmt: skip
def test_bad_definitions_name_file_and_key(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=r"experiments\.yaml") as err:
        _load(BASE.replace(*edit))
    assert message in str(err.value)


def test_duplicate_experiment_names_are_refused() -> None:
    twice = BASE + BASE.split("experiments:\n", 1)[1]
    with pytest.raises(ConfigError, match="listed twice"):
        _load(twice)
