"""A small tier report built by hand from the contract (strata/reports/model.py), written
through ReportStore: what the dashboard tests render. Three weekly snapshots, cells under 10
users (to be suppressed) and figures whose rounding differs from Python's round()."""

from __future__ import annotations

from pathlib import Path

from strata.io.reports import ReportStore
from strata.reports.model import (
    SnapshotReport,
    StrategyMetrics,
    TierMetrics,
    TiersReport,
    Transition,
)

TIERS = ["high_value", "potential", "ordinary", "churn_warning"]
STAGES = ["new", "growing", "mature", "declining", "churned"]
VERSIONS = ["20261103T000000-aaaa01", "20261110T000000-aaaa02", "20261117T000000-aaaa03"]
#: users per tier in each snapshot; churn_warning stays under k = 10 in the first one
USERS = [
    {"high_value": 120, "potential": 340, "ordinary": 533, "churn_warning": 7},
    {"high_value": 131, "potential": 352, "ordinary": 490, "churn_warning": 27},
    {"high_value": 140, "potential": 365, "ordinary": 455, "churn_warning": 40},
]


def _snapshot(i: int) -> SnapshotReport:
    users = USERS[i]
    total = sum(users.values())
    tiers = {
        t: TierMetrics(
            users=n,
            share=n / total,
            arpu_cny=round(10.125 + 7.5 * j + i, 6),
            orders_per_user=round(2.345 - 0.4 * j, 6),
            ltv_cny=round(800.005 - 150 * j + 3 * i, 6),
            coupon_cost_cny=round(120.0 + 10 * j, 6),
            new_users=3 if t == "potential" else 25,
            lost_users=12,
            returning_users=0,
        )
        for j, (t, n) in enumerate(users.items())
    }
    return SnapshotReport(
        version=VERSIONS[i],
        as_of=f"2026-11-{3 + 7 * i:02d}T00:00:00+08:00",
        users=total,
        period_days=7,
        tiers=tiers,
        lifecycle={
            "new": 100 + i,
            "growing": 300,
            "mature": 500 - i,
            "declining": 95,
            "churned": 5,
        },
        bands={
            "recency_band": {
                "within_30d": 600,
                "lapsed_30d": 250,
                "lapsed_90d": 100,
                "lapsed_180d": 46,
                "no_order": 4,
            },
            "frequency_band": {"weekly": 200, "monthly": 400, "quarterly": 300, "rarer": 100},
            "spend_level": {"high": 200, "mid": 500, "low": 300},
        },
        strategies={
            "high_value": {"vip_care": StrategyMetrics(reach=100, converted=37, conversion=0.37)},
            "churn_warning": {"win_back": StrategyMetrics(reach=6, converted=2, conversion=1 / 3)},
        },
    )


def _transition(i: int) -> Transition:
    matrix = {
        "high_value": {"high_value": 110, "potential": 8, "ordinary": 2, "churn_warning": 0},
        "potential": {"high_value": 21, "potential": 300, "ordinary": 15, "churn_warning": 4},
        "ordinary": {"high_value": 0, "potential": 44 + i, "ordinary": 460, "churn_warning": 20},
        "churn_warning": {"high_value": 0, "potential": 0, "ordinary": 3, "churn_warning": 4},
    }
    rates = {
        f: {t: n / max(sum(row.values()), 1) for t, n in row.items()} for f, row in matrix.items()
    }
    by_rule = {
        "potential": {"high_value": {"score_band": 21}},
        "ordinary": {
            "potential": {"score_band": 30 + i, "hysteresis_hold": 14},
            "churn_warning": {"churn_warning": 20},
        },
        "high_value": {"potential": {"score_band": 8}},
    }
    return Transition(
        from_version=VERSIONS[i],
        to_version=VERSIONS[i + 1],
        matrix=matrix,
        rates=rates,
        by_rule=by_rule,
    )


def build_report() -> TiersReport:
    """The hand-built report (not yet written)."""
    return TiersReport(
        tier_order=TIERS,
        stage_order=STAGES,
        snapshots=[_snapshot(i) for i in range(len(VERSIONS))],
        transitions=[_transition(i) for i in range(len(VERSIONS) - 1)],
    )


def write_report(data_root: Path) -> TiersReport:
    """Write the report under ``data_root`` through ReportStore; the written document."""
    return ReportStore(str(data_root)).write(build_report())


RULES = {
    "rules": [
        {
            "name": "cart_abandon",
            "kind": "absence",
            "active": True,
            "fired": 240,
            "suppressed": {"cooldown": 31, "cap": 4},
            "converted": 57,
            "revenue_cny": 4321.005,
            "coupon_cost_cny": 210.5,
            "by_tier": {},
        },
        {
            "name": "vip_streak",
            "kind": "streak",
            "active": True,
            "fired": 6,
            "suppressed": {},
            "converted": 2,
            "revenue_cny": 88.0,
            "coupon_cost_cny": 10.0,
            "by_tier": {},
        },
    ]
}
EXPERIMENTS = {
    "experiments": {
        "coupon_depth": {
            "experiment": "coupon_depth",
            "srm_p_value": 0.41234,
            "arms": [
                {
                    "arm": "control",
                    "users": 500,
                    "metrics": {"margin_per_user": {"mean": 12.3456, "stddev": 3.0}},
                },
                {
                    "arm": "deep",
                    "users": 510,
                    "metrics": {"margin_per_user": {"mean": 13.0004, "stddev": 3.1}},
                },
            ],
            "comparisons": [
                {
                    "arm": "deep",
                    "baseline": "control",
                    "metric": "margin_per_user",
                    "cuped": True,
                    "absolute": {
                        "effect": 0.6548,
                        "ci_low": 0.1234,
                        "ci_high": 1.1862,
                        "p_value": 0.0123,
                    },
                    "relative": {
                        "effect": 0.053,
                        "ci_low": 0.01,
                        "ci_high": 0.096,
                        "p_value": 0.0123,
                    },
                },
            ],
        }
    }
}
WHATIF_KEYS = {
    "keys": [
        {
            "key": "tiers.bands.high_value.min_score",
            "value": 0.8,
            "min": 0.5,
            "max": 0.99,
            "step": 0.01,
        },
        {"key": "tiers.weights.recency", "value": 0.3, "min": 0.0, "max": 1.0, "step": 0.05},
    ]
}
WHATIF_RESULT = {
    "before": {"high_value": 140, "potential": 365, "ordinary": 455, "churn_warning": 40},
    "after": {"high_value": 95, "potential": 406, "ordinary": 459, "churn_warning": 40},
    "moves": {
        "high_value": {"high_value": 95, "potential": 45},
        "potential": {"potential": 361, "ordinary": 4},
    },
    "cost_change_cny": -123.455,
}
