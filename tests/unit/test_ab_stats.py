"""The A/B engine equals gbstats 0.8.0 (installed by `make install`, --no-deps) to 1e-9.

Cases: gbstats' own frequentist test cases (their inputs and, rounded to 5 decimals, their
published expectations) and random sufficient statistics of means, proportions and CUPED, each
run through strata and through gbstats live. Plus merge, SRM, Benjamini-Hochberg and analyse().
"""

from __future__ import annotations

import math
from typing import Any

# gbstats itself (`make install` puts it in .venv with --no-deps); no skip when it is absent
import gbstats.frequentist.tests as gb_tests
import gbstats.models.statistics as gb_stats
import gbstats.utils as gb_utils
import numpy as np
import pytest
import scipy.stats

from strata.experiments import (
    ProportionStatistic,
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
    Statistic,
    TestResult,
    analyse,
    benjamini_hochberg,
    check_srm,
    merge_statistics,
    sequential_two_sided_ttest,
    two_sided_ttest,
    unit_statistics,
)

TOL = 1e-9


def test_gbstats_is_0_8_0() -> None:
    import importlib.metadata

    assert importlib.metadata.version("gbstats") == "0.8.0"


def _to_gb(stat: Statistic) -> Any:
    """A fresh gbstats statistic (gbstats' tests mutate theta in place)."""
    if isinstance(stat, SampleMeanStatistic):
        return gb_stats.SampleMeanStatistic(n=stat.n, sum=stat.sum, sum_squares=stat.sum_squares)
    if isinstance(stat, ProportionStatistic):
        return gb_stats.ProportionStatistic(n=stat.n, sum=stat.sum)
    return gb_stats.RegressionAdjustedStatistic(
        n=stat.n,
        post_statistic=_to_gb(stat.post_statistic),
        pre_statistic=_to_gb(stat.pre_statistic),
        post_pre_sum_of_products=stat.post_pre_sum_of_products,
        theta=stat.theta,
    )


def _gbstats_result(
    a: Statistic, b: Statistic, difference: str, sequential: float | None, alpha: float = 0.05
) -> Any:
    if sequential is None:
        config = gb_tests.FrequentistConfig(difference_type=difference, alpha=alpha)
        return gb_tests.TwoSidedTTest(_to_gb(a), _to_gb(b), config).compute_result()
    config = gb_tests.SequentialConfig(
        difference_type=difference, alpha=alpha, sequential_tuning_parameter=sequential
    )
    return gb_tests.SequentialTwoSidedTTest(_to_gb(a), _to_gb(b), config).compute_result()


def _close(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=TOL, abs_tol=TOL)


def _assert_equal(ours: TestResult, theirs: Any) -> None:
    pairs = {
        "effect": (ours.effect, theirs.expected),
        "ci_low": (ours.ci_low, theirs.ci[0]),
        "ci_high": (ours.ci_high, theirs.ci[1]),
        "p_value": (ours.p_value, theirs.p_value),
        "stddev": (ours.stddev, theirs.uplift.stddev),
    }
    bad = {k: v for k, v in pairs.items() if not _close(float(v[0]), float(v[1]))}
    assert not bad, f"strata vs gbstats differ: {bad}"
    assert ours.error == theirs.error_message


def _run(
    a: Statistic, b: Statistic, difference: Any, sequential: float | None, alpha: float = 0.05
) -> TestResult:
    if sequential is None:
        return two_sided_ttest(a, b, difference, alpha)
    return sequential_two_sided_ttest(a, b, difference, alpha, sequential)


# --- gbstats' own cases (packages/stats/tests/frequentist/test_tests.py) --------------------

MEAN_A = SampleMeanStatistic(n=3407, sum=1396.87, sum_squares=52377.9767)
MEAN_B = SampleMeanStatistic(n=3461, sum=2422.7, sum_squares=134698.29)
SEQ_MEAN_A = SampleMeanStatistic(n=3000, sum=1396.87, sum_squares=52377.9767)
RA_A = RegressionAdjustedStatistic(
    n=3000,
    post_statistic=SampleMeanStatistic(n=3000, sum=1396.87, sum_squares=52377.9767),
    pre_statistic=SampleMeanStatistic(n=3000, sum=16.87, sum_squares=527.9767),
    post_pre_sum_of_products=12525,
    theta=0.5,
)
RA_B = RegressionAdjustedStatistic(
    n=3461,
    post_statistic=SampleMeanStatistic(n=3461, sum=2422.7, sum_squares=134698.29),
    pre_statistic=SampleMeanStatistic(n=3461, sum=22.7, sum_squares=1348.29),
    post_pre_sum_of_products=3333,
    theta=0.5,
)

#: (name, a, b, difference, sequential tuning, gbstats' published [expected, ci_low, ci_high,
#: p_value, stddev] rounded to 5 decimals)
GBSTATS_CASES: list[tuple[str, Statistic, Statistic, str, float | None, list[float] | None]] = [
    ("ttest", MEAN_A, MEAN_B, "relative", None, [0.70732, -0.03526, 1.44989, 0.06191, 0.37879]),
    ("ttest_abs", MEAN_A, MEAN_B, "absolute", None, [0.29, 0.04538, 0.53462, 0.02016, 0.12478]),
    (
        "ttest_binom",
        ProportionStatistic(n=28, sum=14),
        ProportionStatistic(n=30, sum=16),
        "relative",
        None,
        [0.06667, -0.47767, 0.61101, 0.80707, 0.2717],
    ),
    (
        "missing_variance",
        SampleMeanStatistic(n=2, sum=1396.87, sum_squares=52377.9767),
        MEAN_B,
        "relative",
        None,
        [0.0, 0.0, 0.0, 1.0, 0.0],
    ),
    (
        "sequential",
        SEQ_MEAN_A,
        MEAN_B,
        "relative",
        1000.0,
        [0.50336, -0.55844, 1.56516, 1.0, 0.33341],
    ),
    (
        "sequential_prop",
        ProportionStatistic(n=3000, sum=1396),
        ProportionStatistic(n=3461, sum=2422),
        "relative",
        5000.0,
        [0.50386, 0.40098, 0.60675, 0.0, 0.03386],
    ),
    # published for a gbstats that kept the given theta 0.5; 0.8.0 fits theta from the data,
    # which makes this case's adjusted variance negative: its default output (checked live)
    ("sequential_ra", RA_A, RA_B, "relative", 5000.0, None),
]


@pytest.mark.parametrize(("name", "a", "b", "difference", "seq", "published"), GBSTATS_CASES)
def test_gbstats_own_cases(
    name: str,
    a: Statistic,
    b: Statistic,
    difference: str,
    seq: float | None,
    published: list[float] | None,
) -> None:
    ours = _run(a, b, difference, seq)
    _assert_equal(ours, _gbstats_result(a, b, difference, seq))
    if published is None:
        assert ours.error == "ZERO_NEGATIVE_VARIANCE"
        return
    got = [ours.effect, ours.ci_low, ours.ci_high, ours.p_value, ours.stddev]
    assert [round(x, 5) for x in got] == pytest.approx(published, abs=1e-5), name


# --- random sufficient statistics -----------------------------------------------------------


def _random_stats(rng: np.random.Generator, kind: str, n: int, lift: float) -> Statistic:
    pre = rng.gamma(2.0, 30.0, n)
    if kind == "proportion":
        y = (rng.random(n) < np.minimum(0.9, 0.2 * (1 + lift) + pre / 3000)).astype(float)
        return ProportionStatistic(n=n, sum=float(y.sum()))
    y = 0.6 * pre + rng.gamma(2.0, 20.0, n) * (1 + lift)
    post = SampleMeanStatistic(n=n, sum=float(y.sum()), sum_squares=float((y * y).sum()))
    if kind == "mean":
        return post
    pre_stat = SampleMeanStatistic(n=n, sum=float(pre.sum()), sum_squares=float((pre**2).sum()))
    return RegressionAdjustedStatistic(
        n=n,
        post_statistic=post,
        pre_statistic=pre_stat,
        post_pre_sum_of_products=float((y * pre).sum()),
    )


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", ["mean", "proportion", "cuped"])
@pytest.mark.parametrize("difference", ["absolute", "relative"])
@pytest.mark.parametrize("seq", [None, 2000.0])
def test_random_cases_equal_gbstats(
    seed: int, kind: str, difference: str, seq: float | None
) -> None:
    rng = np.random.default_rng(seed)
    n_a, n_b = (int(x) for x in rng.integers(9, 3000, 2))
    a = _random_stats(rng, kind, n_a, 0.0)
    b = _random_stats(rng, kind, n_b, float(rng.uniform(-0.2, 0.3)))
    alpha = float(rng.choice([0.05, 0.1, 0.01]))
    ours = _run(a, b, difference, seq, alpha)
    _assert_equal(ours, _gbstats_result(a, b, difference, seq, alpha))
    assert ours.cuped == (kind == "cuped")


def test_cuped_with_a_constant_covariate_reverts_to_the_plain_test() -> None:
    post_a = SampleMeanStatistic(n=100, sum=520.0, sum_squares=3100.0)
    post_b = SampleMeanStatistic(n=110, sum=640.0, sum_squares=4200.0)
    const_a = SampleMeanStatistic(n=100, sum=300.0, sum_squares=900.0)
    const_b = SampleMeanStatistic(n=110, sum=330.0, sum_squares=990.0)
    a = RegressionAdjustedStatistic(100, post_a, const_a, 3.0 * 520.0)
    b = RegressionAdjustedStatistic(110, post_b, const_b, 3.0 * 640.0)
    ours = two_sided_ttest(a, b, "relative")
    assert not ours.cuped
    _assert_equal(ours, _gbstats_result(a, b, "relative", None))
    assert ours == two_sided_ttest(post_a, post_b, "relative")


def test_zero_baseline_is_gbstats_default_output() -> None:
    a, b = ProportionStatistic(n=50, sum=0), ProportionStatistic(n=50, sum=7)
    for difference in ("absolute", "relative"):
        ours = two_sided_ttest(a, b, difference)
        assert ours.error == "ZERO_NEGATIVE_BASELINE_VARIATION"
        _assert_equal(ours, _gbstats_result(a, b, difference, None))


def test_cuped_reduces_the_variance_of_a_correlated_metric() -> None:
    rng = np.random.default_rng(3)
    a = _random_stats(rng, "cuped", 2000, 0.0)
    b = _random_stats(rng, "cuped", 2000, 0.1)
    assert isinstance(a, RegressionAdjustedStatistic)
    assert isinstance(b, RegressionAdjustedStatistic)
    adjusted = two_sided_ttest(a, b, "absolute")
    plain = two_sided_ttest(a.post_statistic, b.post_statistic, "absolute")
    assert adjusted.stddev < 0.8 * plain.stddev


# --- merge ----------------------------------------------------------------------------------


def test_merged_shards_equal_the_whole() -> None:
    rng = np.random.default_rng(11)
    y = rng.gamma(2.0, 10.0, 1000)
    x = rng.gamma(2.0, 5.0, 1000)
    conv = (rng.random(1000) < 0.3).astype(float)
    codes = np.zeros(1000, dtype=np.int64)
    whole = unit_statistics(codes, ["a"], {"y": y, "c": conv}, covariate=x)["a"]
    parts = [
        unit_statistics(codes[s], ["a"], {"y": y[s], "c": conv[s]}, covariate=x[s])["a"]
        for s in (slice(0, 123), slice(123, 700), slice(700, 1000))
    ]
    for metric in ("y", "c"):
        merged = parts[0][metric]
        for p in parts[1:]:
            merged = merge_statistics(merged, p[metric])
        for attr in ("n", "mean", "variance", "covariance"):
            assert math.isclose(
                getattr(merged, attr), getattr(whole[metric], attr), rel_tol=1e-12
            ), (metric, attr)


def test_merge_refuses_mixed_kinds() -> None:
    with pytest.raises(ValueError, match="one type"):
        merge_statistics(ProportionStatistic(3, 1), SampleMeanStatistic(3, 1.0, 1.0))


def test_unit_statistics_match_numpy() -> None:
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 3, 500)
    y = rng.normal(10, 3, 500)
    conv = (rng.random(500) < 0.4).astype(float)
    stats = unit_statistics(codes, ["c", "t1", "t2"], {"y": y, "conv": conv})
    for i, arm in enumerate(["c", "t1", "t2"]):
        sel = codes == i
        s = stats[arm]["y"]
        assert isinstance(s, SampleMeanStatistic)
        assert s.n == sel.sum()
        assert math.isclose(s.mean, y[sel].mean(), rel_tol=1e-12)
        assert math.isclose(s.variance, y[sel].var(ddof=1), rel_tol=1e-9)
        p = stats[arm]["conv"]
        assert isinstance(p, ProportionStatistic)
        assert p.sum == conv[sel].sum()


# --- SRM and Benjamini-Hochberg --------------------------------------------------------------

SRM_CASES = [
    ([1000, 1000], [0.5, 0.5]),
    ([1000, 1200], [0.5, 0.5]),
    ([300, 330, 290], [1.0, 1.0, 1.0]),
    ([5000, 4800, 100], [0.45, 0.45, 0.1]),
    ([120, 80], [0.6, 0.4]),
    ([10, 20, 30], [0.0, 0.5, 0.5]),
    ([0, 0], [0.5, 0.5]),
]


@pytest.mark.parametrize(("users", "weights"), SRM_CASES)
def test_check_srm_equals_gbstats(users: list[int], weights: list[float]) -> None:
    assert _close(check_srm(users, weights), float(gb_utils.check_srm(users, weights)))


def test_srm_of_a_broken_split_is_small_and_of_a_fair_one_is_not() -> None:
    assert check_srm([5000, 5600], [0.5, 0.5]) < 0.001
    assert check_srm([5000, 5050], [0.5, 0.5]) > 0.1


def test_benjamini_hochberg_equals_scipy() -> None:
    rng = np.random.default_rng(2)
    for m in (1, 2, 5, 17):
        p = rng.uniform(0, 0.2, m).tolist()
        expected = scipy.stats.false_discovery_control(p, method="bh")
        assert benjamini_hochberg(p) == pytest.approx(list(expected), abs=1e-12)
    assert benjamini_hochberg([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.04, 0.04])
    assert benjamini_hochberg([]) == []


# --- analyse ---------------------------------------------------------------------------------


def _experiment(n_by_arm: dict[str, int], seed: int = 0) -> dict[str, dict[str, Statistic]]:
    rng = np.random.default_rng(seed)
    names = list(n_by_arm)
    codes = np.repeat(np.arange(len(names)), list(n_by_arm.values()))
    y = rng.gamma(2.0, 10.0, codes.size) * (1 + 0.1 * codes)
    conv = (rng.random(codes.size) < 0.2 + 0.02 * codes).astype(float)
    return unit_statistics(codes, names, {"revenue": y, "conversion": conv})


def test_analyse_compares_every_arm_with_the_control_as_gbstats() -> None:
    stats = _experiment({"t1": 900, "control": 1000, "t2": 950})
    result = analyse(stats, "control", experiment="x", correction="bh")
    doc = result.to_json()
    assert [a["arm"] for a in doc["arms"]] == ["control", "t1", "t2"]
    assert [(c["arm"], c["metric"]) for c in doc["comparisons"]] == [
        ("t1", "revenue"),
        ("t1", "conversion"),
        ("t2", "revenue"),
        ("t2", "conversion"),
    ]
    assert set(doc) == {"experiment", "srm_p_value", "arms", "comparisons"}
    assert set(doc["comparisons"][0]["absolute"]) == {"effect", "ci_low", "ci_high", "p_value"}
    raw = [c.relative.p_value for c in result.comparisons]
    assert [c["relative"]["p_value"] for c in doc["comparisons"]] == benjamini_hochberg(raw)
    for c in result.comparisons:
        theirs = _gbstats_result(
            stats["control"][c.metric], stats[c.arm][c.metric], "absolute", None
        )
        _assert_equal(c.absolute, theirs)
    assert _close(doc["srm_p_value"], float(gb_utils.check_srm([1000, 900, 950], [1, 1, 1])))
    assert result.warnings == []


def test_analyse_flags_srm_and_low_traffic() -> None:
    broken = analyse(_experiment({"control": 5000, "t": 5600}), "control")
    assert broken.srm_mismatch
    assert any("sample ratio mismatch" in w for w in broken.warnings)
    tiny = analyse(_experiment({"control": 20, "t": 7}), "control")
    assert tiny.low_traffic_arms == ["t"]
    assert any("not enough traffic" in w for w in tiny.warnings)
    weighted = analyse(
        _experiment({"control": 5000, "t": 5600}), "control", weights={"control": 5, "t": 5.6}
    )
    assert not weighted.srm_mismatch


def test_analyse_refuses_an_unknown_control() -> None:
    with pytest.raises(ValueError, match="control arm 'nope'"):
        analyse(_experiment({"a": 10, "b": 10}), "nope")
