"""Per-user experiment outcomes from exposures and orders (strata.experiments.outcomes)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from strata.experiments.outcomes import OutcomeWindow, first_exposures, unit_outcomes
from strata.schema import EVENTS_SCHEMA, TIMESTAMP, conform

DAY = 86_400_000
T = 1_780_000_000_000


def exposures(rows: list[tuple[int, int, str, str]]) -> pa.Table:
    u, ts, exp, arm = zip(*rows, strict=True)
    return pa.table(
        {
            "user_id": pa.array(u, pa.int64()),
            "ts": pa.array(ts, pa.int64()).cast(TIMESTAMP),
            "experiment": list(exp),
            "arm": list(arm),
            "source": ["serve"] * len(u),
        }
    )


def orders(rows: list[tuple[int, int, float, float | None]]) -> pa.Table:
    u, ts, amount, discount = zip(*rows, strict=True)
    table = pa.table(
        {
            "user_id": pa.array(u, pa.int64()),
            "ts": pa.array(ts, pa.int64()).cast(TIMESTAMP),
            "event_type": ["order"] * len(u),
            "amount_cny": pa.array(amount, pa.float64()),
            "discount_cny": pa.array(discount, pa.float64()),
        }
    )
    return conform(table, EVENTS_SCHEMA)


def test_the_first_exposure_decides_the_arm_and_the_start() -> None:
    exp = exposures(
        [(2, T + 5, "e", "b"), (1, T + 3, "e", "a"), (2, T + 1, "e", "a"), (3, T, "other", "x")]
    )
    users, arms, t0 = first_exposures(exp, "e")
    assert users.tolist() == [1, 2] and arms.tolist() == ["a", "a"]
    assert t0.tolist() == [T + 3, T + 1]


def test_outcomes_count_orders_in_the_window_and_spend_before_it() -> None:
    exp = exposures([(1, T, "e", "control"), (2, T, "e", "treat"), (3, T, "e", "treat")])
    ev = orders(
        [
            (1, T - 2 * DAY, 50.0, None),  # before: covariate
            (1, T + DAY, 100.0, 10.0),  # in the window
            (1, T + 20 * DAY, 70.0, None),  # after the window
            (2, T - 40 * DAY, 30.0, None),  # before the pre-window
            (2, T + 2 * DAY, 80.0, 0.0),
            (2, T + 3 * DAY, 20.0, 5.0),
            (9, T + DAY, 999.0, None),  # not exposed
        ]
    )
    w = OutcomeWindow(window_ms=14 * DAY, pre_window_ms=28 * DAY, margin_rate=0.3)
    out = unit_outcomes(exp, ev, "e", w)
    assert out.user_ids.tolist() == [1, 2, 3]
    assert out.arms.tolist() == ["control", "treat", "treat"]
    m = out.metrics
    assert m["conversion"].tolist() == [1, 1, 0]
    assert m["orders_per_user"].tolist() == [1, 2, 0]
    assert m["revenue_per_user"].tolist() == [100, 100, 0]
    assert m["coupon_cost_per_user"].tolist() == [10, 5, 0]
    assert m["margin_per_user"] == pytest.approx([20.0, 25.0, 0.0])
    assert out.covariate.tolist() == [50, 0, 0]
    cut = unit_outcomes(exp, ev, "e", OutcomeWindow(14 * DAY, 28 * DAY, 0.3, until_ms=T + DAY))
    assert cut.metrics["orders_per_user"].tolist() == [0, 0, 0]


def test_no_exposure_or_no_order_gives_empty_or_zero_rows() -> None:
    ev = orders([(1, T, 10.0, None)])
    none = unit_outcomes(exposures([(1, T, "other", "a")]), ev, "e", OutcomeWindow(DAY, DAY))
    assert len(none) == 0
    empty = orders([(5, T, 1.0, None)]).slice(0, 0)
    zero = unit_outcomes(exposures([(1, T, "e", "a")]), empty, "e", OutcomeWindow(DAY, DAY))
    assert zero.metrics["conversion"].tolist() == [0] and np.all(zero.covariate == 0)
