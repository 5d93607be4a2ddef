"""`strata report experiment --from FILE`: the real ``strata`` app on small CSV/Parquet files.

Its JSON equals gbstats 0.8.0 run on sums computed here directly from the rows; user errors
(blank cell, unknown column, bad weights, ...) are one line and exit 2.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# gbstats itself (`make install` puts it in .venv with --no-deps); no skip when it is absent
import gbstats.frequentist.tests as gb_tests
import gbstats.models.statistics as gb_stats
import gbstats.utils as gb_utils
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from jobs import cli
from jobs._errors import USER_ERROR_EXIT

runner = CliRunner()
ARMS = ("control", "coupon10", "coupon20")


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATA_DEBUG", raising=False)


def _units(n: int = 3000, seed: int = 0, split: tuple[float, ...] = (1 / 3,) * 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    arm = rng.choice(np.array(ARMS), n, p=list(split))
    lift = np.select([arm == "coupon10", arm == "coupon20"], [1.05, 1.15], 1.0)
    pre = rng.gamma(2.0, 30.0, n)
    revenue = 0.5 * pre + rng.gamma(2.0, 20.0, n) * lift
    converted = (rng.random(n) < 0.2 * lift).astype(np.int64)
    return pa.table({"arm": arm, "revenue": revenue, "converted": converted, "pre": pre})


def _write(table: pa.Table, path: Path) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    return path


def _report(*args: str) -> Result:
    return runner.invoke(cli.app, ["report", "experiment", *args])


def _json(*args: str) -> dict[str, Any]:
    result = _report(*args, "--json")
    assert result.exit_code == 0, result.output
    start = result.stdout.index("{")
    doc: dict[str, Any] = orjson.loads(result.stdout[start:])
    return doc


def _user_error(result: Result, *expected: str) -> str:
    out = result.output
    assert result.exit_code == USER_ERROR_EXIT, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    for text in expected:
        assert text in out, (text, out)
    return out


def _gb_stat(table: pa.Table, arm: str, metric: str, covariate: str | None) -> Any:
    """gbstats' statistic of one arm, from sums computed here (not by strata)."""
    sel = np.asarray(table.column("arm").to_pylist()) == arm
    y = table.column(metric).to_numpy().astype(float)[sel]
    binary = set(np.unique(table.column(metric).to_numpy())) <= {0, 1}

    def base(v: np.ndarray) -> Any:
        if binary and v is y:
            return gb_stats.ProportionStatistic(n=int(v.size), sum=float(v.sum()))
        return gb_stats.SampleMeanStatistic(
            n=int(v.size), sum=float(v.sum()), sum_squares=float((v * v).sum())
        )

    if covariate is None:
        return base(y)
    x = table.column(covariate).to_numpy().astype(float)[sel]
    return gb_stats.RegressionAdjustedStatistic(
        n=int(y.size),
        post_statistic=base(y),
        pre_statistic=base(x),
        post_pre_sum_of_products=float((y * x).sum()),
        theta=0,
    )


def _assert_gbstats(
    doc: dict[str, Any], table: pa.Table, covariate: str | None, sequential: float | None = None
) -> None:
    assert doc["comparisons"], doc
    for c in doc["comparisons"]:
        for difference in ("absolute", "relative"):
            a = _gb_stat(table, c["baseline"], c["metric"], covariate)
            b = _gb_stat(table, c["arm"], c["metric"], covariate)
            if sequential is None:
                test = gb_tests.TwoSidedTTest(
                    a, b, gb_tests.FrequentistConfig(difference_type=difference)
                )
            else:
                test = gb_tests.SequentialTwoSidedTTest(
                    a,
                    b,
                    gb_tests.SequentialConfig(
                        difference_type=difference, sequential_tuning_parameter=sequential
                    ),
                )
            r = test.compute_result()
            ours = c[difference]
            for key, theirs in (
                ("effect", r.expected),
                ("ci_low", r.ci[0]),
                ("ci_high", r.ci[1]),
                ("p_value", r.p_value),
            ):
                assert math.isclose(ours[key], theirs, rel_tol=1e-9, abs_tol=1e-9), (
                    c["arm"],
                    c["metric"],
                    difference,
                    key,
                )
    users = [a["users"] for a in doc["arms"]]
    assert math.isclose(
        doc["srm_p_value"], gb_utils.check_srm(users, [1] * len(users)), rel_tol=1e-9
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("covariate", [None, "pre"])
def test_json_equals_gbstats(tmp_path: Path, suffix: str, covariate: str | None) -> None:
    table = _units()
    path = _write(table, tmp_path / f"past_test{suffix}")
    args = ["--from", str(path), "--arm-col", "arm", "--metric-col", "revenue"]
    args += ["--metric-col", "converted"]
    if covariate:
        args += ["--covariate-col", covariate]
    doc = _json(*args)
    assert list(doc) == ["experiment", "srm_p_value", "arms", "comparisons"]
    assert doc["experiment"] == "past_test"
    assert [a["arm"] for a in doc["arms"]] == list(ARMS)
    assert [(c["arm"], c["baseline"], c["metric"]) for c in doc["comparisons"]] == [
        ("coupon10", "control", "revenue"),
        ("coupon10", "control", "converted"),
        ("coupon20", "control", "revenue"),
        ("coupon20", "control", "converted"),
    ]
    assert all(c["cuped"] is (covariate is not None) for c in doc["comparisons"])
    assert set(doc["comparisons"][0]["relative"]) == {"effect", "ci_low", "ci_high", "p_value"}
    _assert_gbstats(doc, table, covariate)
    # 0/1 metric: a proportion, stddev sqrt(p (1 - p)); revenue: the sample stddev
    control = doc["arms"][0]["metrics"]
    sel = np.asarray(table.column("arm").to_pylist()) == "control"
    p = table.column("converted").to_numpy()[sel].mean()
    assert math.isclose(control["converted"]["stddev"], math.sqrt(p * (1 - p)), rel_tol=1e-12)
    rev = table.column("revenue").to_numpy()[sel]
    assert math.isclose(control["revenue"]["stddev"], rev.std(ddof=1), rel_tol=1e-9)


def test_sequential_equals_gbstats_and_name_and_control_options(tmp_path: Path) -> None:
    table = _units(seed=4)
    path = _write(table, tmp_path / "units.csv")
    doc = _json(
        "spring_coupon",
        "--from",
        str(path),
        "--arm-col",
        "arm",
        "--metric-col",
        "revenue",
        "--control",
        "coupon10",
        "--sequential",
        "--sequential-tuning",
        "2000",
    )
    assert doc["experiment"] == "spring_coupon"
    assert [a["arm"] for a in doc["arms"]] == ["coupon10", "control", "coupon20"]
    assert {c["baseline"] for c in doc["comparisons"]} == {"coupon10"}
    _assert_gbstats(doc, table, None, sequential=2000.0)


def test_bh_correction_adjusts_the_json_p_values(tmp_path: Path) -> None:
    path = _write(_units(seed=2), tmp_path / "u.csv")
    args = ["--from", str(path), "--arm-col", "arm", "--metric-col", "revenue"]
    args += ["--metric-col", "converted"]
    raw = [c["relative"]["p_value"] for c in _json(*args)["comparisons"]]
    adjusted = [c["relative"]["p_value"] for c in _json(*args, "--correction", "bh")["comparisons"]]
    m = len(raw)
    order = np.argsort(raw)
    expected = np.minimum.accumulate((np.asarray(raw)[order] * m / np.arange(1, m + 1))[::-1])
    want = np.empty(m)
    want[order] = np.minimum(expected[::-1], 1)
    assert adjusted == pytest.approx(list(want), rel=1e-12)
    assert adjusted != raw


def test_srm_fires_on_a_broken_split_unless_weights_say_so(tmp_path: Path) -> None:
    path = _write(_units(n=6000, split=(0.38, 0.31, 0.31)), tmp_path / "broken.parquet")
    args = ["--from", str(path), "--arm-col", "arm", "--metric-col", "revenue"]
    result = _report(*args, "--json")
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert doc["srm_p_value"] < 0.001
    assert "sample ratio mismatch" in result.stderr
    table = _report(*args)
    assert "MISMATCH" in table.stdout and "sample ratio mismatch" in table.stdout
    fair = _json(*args, "--weights", "control=0.38,coupon10=0.31,coupon20=0.31")
    assert fair["srm_p_value"] > 0.001


def test_table_output_has_arms_effects_and_summary(tmp_path: Path) -> None:
    path = _write(_units(), tmp_path / "u.csv")
    result = _report("--from", str(path), "--arm-col", "arm", "--metric-col", "converted")
    assert result.exit_code == 0, result.output
    for text in ("control (control)", "coupon20", "converted", "3,000 units in 3 arms", "SRM"):
        assert text in result.stdout, text


def test_low_traffic_is_flagged(tmp_path: Path) -> None:
    table = pa.table({"arm": ["a"] * 20 + ["b"] * 5, "y": [float(i % 7) for i in range(25)]})
    path = _write(table, tmp_path / "small.csv")
    result = _report("--from", str(path), "--arm-col", "arm", "--metric-col", "y", "--json")
    assert result.exit_code == 0, result.output
    assert "not enough traffic: arm 'b' has 5 users" in result.stderr


def test_blank_metric_cell_is_refused_with_its_row(tmp_path: Path) -> None:
    path = tmp_path / "blank.csv"
    path.write_text("arm,revenue\ncontrol,1.5\ntreatment,2.0\ncontrol,\ntreatment,3\n")
    _user_error(
        _report("--from", str(path), "--arm-col", "arm", "--metric-col", "revenue"),
        "'revenue' is blank at row 3 (line 4)",
    )
    pq_path = tmp_path / "blank.parquet"
    pq.write_table(pa.table({"arm": ["a", "b", "a"], "m": [1.0, None, 2.0]}), pq_path)
    _user_error(
        _report("--from", str(pq_path), "--arm-col", "arm", "--metric-col", "m"),
        "'m' is blank at row 2",
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--arm-col", "variant", "--metric-col", "revenue"], "no column 'variant'"),
        (["--arm-col", "arm", "--metric-col", "revnue"], "no column 'revnue'"),
        (["--arm-col", "arm", "--metric-col", "arm"], "'arm' is not numeric"),
        (["--arm-col", "arm"], "at least one --metric-col"),
        (["--arm-col", "arm", "--metric-col", "revenue", "--control", "x"], "--control 'x'"),
        (["--arm-col", "arm", "--metric-col", "revenue", "--weights", "a=1,b"], "--weights"),
        (
            ["--arm-col", "arm", "--metric-col", "revenue", "--weights", "control=1,other=1"],
            "--weights names arms",
        ),
        (["--arm-col", "arm", "--metric-col", "revenue", "--correction", "holm"], "holm"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    path = _write(_units(n=100), tmp_path / "u.csv")
    _user_error(_report("--from", str(path), *args), expected)


def test_bad_files_and_missing_from_are_user_errors(tmp_path: Path) -> None:
    _user_error(_report("x", "--arm-col", "arm", "--metric-col", "m"), "--from FILE")
    _user_error(
        _report("--from", str(tmp_path / "none.csv"), "--arm-col", "a", "--metric-col", "m"),
        "no such file",
    )
    (tmp_path / "u.xlsx").write_text("x")
    _user_error(
        _report("--from", str(tmp_path / "u.xlsx"), "--arm-col", "a", "--metric-col", "m"),
        "unknown file type",
    )
    one = tmp_path / "one.csv"
    one.write_text("arm,m\na,1\na,2\n")
    _user_error(_report("--from", str(one), "--arm-col", "arm", "--metric-col", "m"), "one arm")
    text = tmp_path / "text.csv"
    text.write_text("arm,m\na,1\nb,oops\n")
    _user_error(_report("--from", str(text), "--arm-col", "arm", "--metric-col", "m"), "'m'")
