"""The dashboard's small-cell suppression and its one rounding rule (strata/reports/suppress.py)."""

from __future__ import annotations

import pytest

from strata.reports.suppress import (
    hidden,
    pct,
    round_half_up,
    suppress_count,
    suppress_experiment,
    suppress_group,
    suppress_rules,
    suppress_tiers_report,
    suppress_whatif,
)
from tests.dashboard_report import EXPERIMENTS, RULES, WHATIF_RESULT, build_report


@pytest.mark.parametrize(
    ("value", "decimals", "want"),
    [
        (0.125, 2, 0.13),  # Python's round() gives 0.12
        (2.675, 2, 2.68),  # binary 2.67499999... but written 2.675
        (-123.455, 2, -123.46),  # half away from zero
        (12.35, 1, 12.4),
        (53.3, 1, 53.3),
        (None, 2, None),
    ],
)
def test_round_half_up(value: float | None, decimals: int, want: float | None) -> None:
    assert round_half_up(value, decimals) == want


def test_pct_is_a_rounded_percentage() -> None:
    assert pct(0.533) == 53.3 and pct(0.12345) == 12.3 and pct(0.00049) == 0.0 and pct(None) is None


@pytest.mark.parametrize(("n", "want"), [(0, 0), (1, None), (9, None), (10, 10), (533, 533)])
def test_counts_under_k_are_suppressed(n: int, want: int | None) -> None:
    assert suppress_count(n, 10) == want


def test_one_suppressed_cell_beside_a_total_takes_the_next_smallest_with_it() -> None:
    # 7 = 1000 - 120 - 340 - 533 would follow from the total: 120 goes too
    assert suppress_group({"a": 120, "b": 340, "c": 533, "d": 7}, 10) == {
        "a": None,
        "b": 340,
        "c": 533,
        "d": None,
    }
    # two suppressed cells already hide each other; zeros never count as the complement
    assert suppress_group({"a": 3, "b": 4, "c": 500}, 10) == {"a": None, "b": None, "c": 500}
    assert suppress_group({"a": 0, "b": 4, "c": 500}, 10) == {"a": 0, "b": None, "c": None}
    assert suppress_group({"a": 50, "b": 60}, 10) == {"a": 50, "b": 60}


def test_the_report_view_hides_small_cells_and_what_derives_from_them() -> None:
    view = suppress_tiers_report(build_report().model_dump(), 10)
    first, second = view["snapshots"][0], view["snapshots"][1]
    cw = first["tiers"]["churn_warning"]  # 7 users
    assert cw["users"] == "<10" and cw["share_pct"] == "<10"
    assert cw["arpu_cny"] == cw["ltv_cny"] == cw["orders_per_user"] == "<10"
    assert first["tiers"]["high_value"]["users"] == "<10"  # secondary suppression
    assert first["hidden_share_pct"] == 12.7  # (120 + 7) / 1000, the pooled hidden tiers
    assert first["tiers"]["ordinary"] == {
        "users": 533,
        "share_pct": 53.3,
        "arpu_cny": 25.13,  # 25.125 half up
        "orders_per_user": 1.55,
        "ltv_cny": 500.01,  # 500.005 half up
        "coupon_cost_cny": 140.0,
        "new_users": 25,
        "lost_users": 12,
        "returning_users": 0,
    }
    assert first["tiers"]["potential"]["new_users"] == "<10"  # 3
    assert second["tiers"]["churn_warning"]["users"] == 27
    # declining 95 hides with churned 5 (else 5 = total - the rest)
    assert first["lifecycle"] == {
        "new": 100,
        "growing": 300,
        "mature": 500,
        "declining": "<10",
        "churned": "<10",
    }
    assert first["lifecycle_pct"]["mature"] == 50.0 and first["lifecycle_pct"]["churned"] == "<10"
    assert first["lifecycle_hidden_pct"] == 10.0
    assert first["bands"]["recency_band"]["no_order"] == "<10"
    assert first["bands"]["recency_band"]["lapsed_180d"] == "<10"  # secondary
    assert first["strategies"]["churn_warning"]["win_back"] == {
        "reach": "<10",
        "converted": "<10",
        "conversion_pct": "<10",
    }
    assert first["strategies"]["high_value"]["vip_care"]["conversion_pct"] == 37.0
    tr = view["transitions"][0]
    assert tr["matrix"]["high_value"]["potential"] == "<10"  # 8
    assert tr["rate_pct"]["high_value"]["potential"] == "<10"
    assert tr["matrix"]["high_value"]["high_value"] == 110
    assert tr["rate_pct"]["high_value"]["high_value"] == 91.7
    assert tr["matrix"]["high_value"]["churn_warning"] == 0
    assert tr["by_rule"]["high_value"]["potential"]["score_band"] == "<10"
    assert tr["by_rule"]["ordinary"]["potential"] == {"score_band": 30, "hysteresis_hold": 14}
    # a rule's share of a shown cell under k would follow from the cell: its sibling goes too
    report = build_report()
    report.transitions[0].by_rule["ordinary"]["potential"] = {
        "score_band": 40,
        "hysteresis_hold": 4,
    }
    split = suppress_tiers_report(report.model_dump(), 10)["transitions"][0]["by_rule"]
    assert split["ordinary"]["potential"] == {"score_band": "<10", "hysteresis_hold": "<10"}


def test_k_comes_from_the_caller() -> None:
    view = suppress_tiers_report(build_report().model_dump(), 5)
    assert view["snapshots"][0]["tiers"]["churn_warning"]["users"] == 7
    assert hidden(5) == "<5"


def test_rules_experiments_and_whatif_are_suppressed_too() -> None:
    rules = suppress_rules(RULES, 10)
    assert rules[0]["fired"] == 240 and rules[0]["converted"] == 57
    assert rules[0]["revenue_cny"] == 4321.01 and rules[0]["suppressed"] == {
        "cooldown": 31,
        "cap": "<10",
    }
    assert rules[1]["fired"] == rules[1]["converted"] == rules[1]["revenue_cny"] == "<10"
    exp = suppress_experiment(EXPERIMENTS["experiments"]["coupon_depth"], 10, 0.001)
    assert exp["srm_status"] == "ok" and exp["srm_p_value"] == 0.4123
    assert exp["comparisons"][0]["absolute"] == {
        "effect": 0.655,
        "ci_low": 0.123,
        "ci_high": 1.186,
        "p_value": 0.0123,
    }
    small = {**EXPERIMENTS["experiments"]["coupon_depth"], "srm_p_value": 0.0001}
    small["arms"] = [{**small["arms"][0]}, {**small["arms"][1], "users": 4}]
    exp = suppress_experiment(small, 10, 0.001)
    assert exp["srm_status"] == "mismatch"
    assert exp["arms"][1]["users"] == "<10" and exp["arms"][1]["metrics"] == {
        "margin_per_user": "<10"
    }
    assert exp["comparisons"][0]["hidden"] and exp["comparisons"][0]["absolute"] is None
    whatif = suppress_whatif(WHATIF_RESULT, 10)
    assert whatif["before"]["high_value"] == 140
    # potential's row adds up to its 365 users before: 4 hides 361 with it
    assert whatif["moves"]["potential"] == {"potential": "<10", "ordinary": "<10"}
    assert whatif["moves"]["high_value"] == {"high_value": 95, "potential": 45}
    assert whatif["cost_change_cny"] == -123.46
