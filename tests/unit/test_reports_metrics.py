"""Tier-report metrics on small hand-made frames: exact numbers, on the pandas code path.

The same functions run on Modin in tests/integration/test_report_tiers.py.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from strata.reports import frames
from strata.reports.metrics import (
    ReportSpec,
    SnapshotInfo,
    band_counts,
    period_bounds,
    snapshot_counts,
    tiers_report,
)
from strata.reports.model import TiersReport
from strata.reports.tables import report_tables
from strata.timeutil import DAY_MS

A = 1_000 * DAY_MS
TIERS = ("high_value", "potential", "ordinary", "churn_warning")
STAGES = ("new", "growing", "mature", "declining", "churned")
SPEC = ReportSpec(tier_order=TIERS, stage_order=STAGES, period_days=30, strategies=("s1", "s2"))

PREV = pd.DataFrame(
    {
        "user_id": [1, 2, 3, 4, 6],
        "tier": ["high_value", "potential", "ordinary", "potential", "ordinary"],
        "tier_rule": ["band"] * 5,
        "lifecycle_stage": ["mature", "growing", "churned", "mature", "new"],
        "ltv_cny": [500.0, 200.0, 50.0, 100.0, 10.0],
    }
)
# user 4 left (erased), user 5 is new; 2 churned (lost from potential), 3 came back
CUR = pd.DataFrame(
    {
        "user_id": [1, 2, 3, 5, 6],
        "tier": ["high_value", "churn_warning", "potential", "ordinary", "ordinary"],
        "tier_rule": ["hold", "churn_warning", "band", "band", "band"],
        "lifecycle_stage": ["mature", "churned", "growing", "new", "growing"],
        "ltv_cny": [600.0, 200.0, 80.0, None, 12.0],
        "recency_band": ["within_30d", "lapsed_90d", "within_30d", "no_order", "within_30d"],
        "frequency_band": ["weekly", "rarer", "monthly", "rarer", "monthly"],
        "spend_level": ["high", "mid", "low", "low", "low"],
    }
)
ORDERS = pd.DataFrame(
    {
        "user_id": [1, 1, 3, 5, 1, 6],
        # in the period [A - 30 d, A): the first three and the last; A itself is excluded
        "ts_ms": [A - DAY_MS, A - 2 * DAY_MS, A - 5 * DAY_MS, A - 40 * DAY_MS, A, A - 30 * DAY_MS],
        "amount_cny": [100.0, 50.0, 30.0, 20.0, 999.0, 8.0],
        "discount_cny": [5.0, None, 3.0, 0.0, 1.0, 2.0],
    }
)
EXPOSURES = pd.DataFrame(
    {
        "user_id": [1, 3, 2, 6, 1, 1],
        "ts_ms": [A - 3 * DAY_MS, A - 4 * DAY_MS, A - 3 * DAY_MS, A - 1, A - 50 * DAY_MS,
                  A - 2 * DAY_MS],
        "experiment": ["s1", "s1", "s1", "s2", "s2", "not_a_strategy"],
        "arm": ["treatment", "treatment", "holdout", "treatment", "treatment", "treatment"],
    }
)  # fmt: skip
V1 = SnapshotInfo("v1", A - 7 * DAY_MS, "2026-01-01T00:00:00+08:00")
V2 = SnapshotInfo("v2", A, "2026-01-08T00:00:00+08:00")


def _report(engine_frames: dict[str, pd.DataFrame] | None = None) -> TiersReport:
    snaps = engine_frames or {"v1": PREV, "v2": CUR}
    return tiers_report([V1, V2], lambda i: snaps[i.version], ORDERS, SPEC, EXPOSURES)


def test_period_is_half_open_days_before_the_as_of() -> None:
    assert period_bounds(A, 30) == (A - 30 * DAY_MS, A)
    with pytest.raises(ValueError, match="period_days"):
        ReportSpec(tier_order=TIERS, stage_order=STAGES, period_days=0)


def test_shares_arpu_orders_ltv_and_coupon_cost_per_tier() -> None:
    s = _report().snapshots[1]
    assert s.users == 5 and s.period_days == 30
    assert list(s.tiers) == list(TIERS)
    hv, pot, ordi, cw = (s.tiers[t] for t in TIERS)
    assert (hv.users, pot.users, ordi.users, cw.users) == (1, 1, 2, 1)
    assert sum(m.share for m in s.tiers.values()) == pytest.approx(1.0)
    assert ordi.share == pytest.approx(0.4)
    # high value: orders of 100 and 50 in the period (the one at the as-of is not)
    assert hv.arpu_cny == pytest.approx(150.0)
    assert hv.orders_per_user == pytest.approx(2.0)
    assert hv.coupon_cost_cny == pytest.approx(5.0)  # a null discount counts as none
    assert hv.ltv_cny == pytest.approx(600.0)
    assert pot.arpu_cny == pytest.approx(30.0) and pot.coupon_cost_cny == pytest.approx(3.0)
    # ordinary: user 6 ordered 8 exactly at the period's start (in); user 5's order is older
    assert ordi.arpu_cny == pytest.approx(4.0)
    assert ordi.orders_per_user == pytest.approx(0.5)
    assert ordi.ltv_cny == pytest.approx(12.0)  # the null LTV is left out of the mean
    assert cw.arpu_cny == 0.0 and cw.orders_per_user == 0.0


def test_an_empty_tier_has_no_ratios() -> None:
    first = _report().snapshots[0]
    cw = first.tiers["churn_warning"]
    assert cw.users == 0 and cw.share == 0.0
    assert cw.arpu_cny is None and cw.orders_per_user is None and cw.ltv_cny is None
    # the first snapshot has nothing to compare with
    assert first.tiers["potential"].new_users is None
    assert first.tiers["potential"].lost_users is None


def test_new_lost_and_returning_users() -> None:
    s = _report().snapshots[1]
    new = {t: m.new_users for t, m in s.tiers.items()}
    lost = {t: m.lost_users for t, m in s.tiers.items()}
    back = {t: m.returning_users for t, m in s.tiers.items()}
    assert new == {"high_value": 0, "potential": 0, "ordinary": 1, "churn_warning": 0}
    # user 2 was potential and not churned, is churned now: lost, counted under potential
    assert lost == {"high_value": 0, "potential": 1, "ordinary": 0, "churn_warning": 0}
    # user 3 was churned, is growing now: returning, counted under the new tier
    assert back == {"high_value": 0, "potential": 1, "ordinary": 0, "churn_warning": 0}


def test_lifecycle_and_band_counts() -> None:
    report = _report()
    assert report.snapshots[1].lifecycle == {
        "new": 1, "growing": 2, "mature": 1, "declining": 0, "churned": 1,
    }  # fmt: skip
    assert report.snapshots[0].bands == {}  # the older snapshot predates the bands
    bands = report.snapshots[1].bands
    assert bands["recency_band"] == {
        "within_30d": 3, "lapsed_30d": 0, "lapsed_90d": 1, "lapsed_180d": 0, "no_order": 1,
    }  # fmt: skip
    assert bands["frequency_band"] == {"weekly": 1, "monthly": 2, "quarterly": 0, "rarer": 2}
    assert bands["spend_level"] == {"high": 1, "mid": 1, "low": 3}
    counts = snapshot_counts(CUR.drop(columns=["recency_band", "frequency_band"]))
    assert band_counts(counts) == {"spend_level": {"high": 1, "mid": 1, "low": 3}}
    assert counts["users"].sum() == len(CUR)


def test_transition_matrix_rates_and_rules() -> None:
    t = _report().transitions[0]
    assert (t.from_version, t.to_version) == ("v1", "v2")
    assert t.matrix["high_value"] == {
        "high_value": 1, "potential": 0, "ordinary": 0, "churn_warning": 0,
    }  # fmt: skip
    assert t.matrix["potential"]["churn_warning"] == 1  # user 4 left: not in both
    assert sum(t.matrix["potential"].values()) == 1
    assert t.matrix["ordinary"] == {
        "high_value": 0, "potential": 1, "ordinary": 1, "churn_warning": 0,
    }  # fmt: skip
    assert t.rates["ordinary"]["potential"] == pytest.approx(0.5)
    assert "churn_warning" not in t.rates  # nobody was in it before
    assert t.by_rule == {
        "high_value": {"high_value": {"hold": 1}},
        "potential": {"churn_warning": {"churn_warning": 1}},
        "ordinary": {"potential": {"band": 1}, "ordinary": {"band": 1}},
    }


def test_strategy_reach_and_conversion_after_the_first_exposure() -> None:
    s = _report().snapshots[1]
    # user 1: exposed 3 days before, ordered 1 day before -> converted; user 3: exposed after
    # its order -> not; user 2 is holdout; user 1's s2 exposure is before the period;
    # user 6 exposed 1 ms before the as-of, no order after; unknown experiments are ignored
    assert {t: {k: v.model_dump() for k, v in m.items()} for t, m in s.strategies.items()} == {
        "high_value": {"s1": {"reach": 1, "converted": 1, "conversion": 1.0}},
        "potential": {"s1": {"reach": 1, "converted": 0, "conversion": 0.0}},
        "ordinary": {"s2": {"reach": 1, "converted": 0, "conversion": 0.0}},
    }
    assert _report().snapshots[0].strategies == {}


def test_categorical_frames_from_arrow_give_the_same_report() -> None:
    """Snapshots read from Parquet arrive dictionary-encoded: categoricals, same numbers."""

    def cat(df: pd.DataFrame) -> pd.DataFrame:
        table = pa.Table.from_pandas(df, preserve_index=False)
        strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
        table = table.cast(
            pa.schema(
                [
                    pa.field(f.name, pa.dictionary(pa.int32(), pa.string()))
                    if f.name in strings
                    else f
                    for f in table.schema
                ]
            )
        )
        out = frames.from_arrow(table, "pandas")
        assert isinstance(out["tier"].dtype, pd.CategoricalDtype)
        return out  # type: ignore[no-any-return]

    assert _report({"v1": cat(PREV), "v2": cat(CUR)}) == _report()


def test_report_tables_match_the_document() -> None:
    report = _report()
    tables = report_tables(report)
    tiers = tables["tiers"].to_pylist()
    assert len(tiers) == 2 * len(TIERS)
    row = next(r for r in tiers if r["version"] == "v2" and r["tier"] == "ordinary")
    assert row["users"] == 2 and row["arpu_cny"] == pytest.approx(4.0) and row["new_users"] == 1
    moves = tables["transitions"].to_pylist()
    assert sum(r["users"] for r in moves) == 4  # users in both snapshots
    assert {
        "from_version": "v1", "to_version": "v2", "from_tier": "potential",
        "to_tier": "churn_warning", "rule": "churn_warning", "users": 1,
    } in moves  # fmt: skip
    assert tables["bands"].num_rows == 12
    assert tables["strategies"].num_rows == 3
    assert tables["lifecycle"].num_rows == 2 * len(STAGES)


def test_check_engine_names_the_allowed_engines() -> None:
    assert frames.check_engine("pandas") == "pandas"
    with pytest.raises(ValueError, match="modin, pandas"):
        frames.check_engine("spark")


def test_a_move_without_a_rule_is_counted_under_unknown() -> None:
    cur = CUR.assign(tier_rule=[None, "churn_warning", "band", "band", "band"])
    t = tiers_report(
        [V1, V2], lambda i: PREV if i.version == "v1" else cur, ORDERS, SPEC
    ).transitions[0]
    assert t.by_rule["high_value"] == {"high_value": {"unknown": 1}}
    assert sum(sum(row.values()) for row in t.matrix.values()) == 4
