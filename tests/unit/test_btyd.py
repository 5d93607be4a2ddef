"""BG/NBD closed forms and fit against lifetimes; the BTYD summary against lifetimes on CDNOW;
the BG/NBD simulator; champion/challenger and monotone constraints."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from lifetimes import BetaGeoFitter
from lifetimes.datasets import load_cdnow_summary
from lifetimes.utils import summary_data_from_transaction_data

from strata.features import FeatureConfig, compute_features
from strata.synth.bgnbd import SimParams, simulate_bgnbd
from strata.timeutil import DAY_MS
from strata.training import (
    choose_champion,
    classification_metrics,
    model_features,
    monotone_constraints,
)
from strata.training.bgnbd import (
    BgnbdParams,
    bgnbd_patterns,
    expected_purchases,
    fit_bgnbd,
    merge_patterns,
    p_alive,
    p_no_purchase,
)
from tests.integration.orders_logs import cdnow_raw, shifted_as_of, shifted_ms

LOCAL = dt.timezone(dt.timedelta(hours=8))


@pytest.fixture(scope="module")
def cdnow_summary() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = load_cdnow_summary()
    return (
        d["frequency"].to_numpy(float),
        d["recency"].to_numpy(float),
        d["T"].to_numpy(float),
    )


@pytest.fixture(scope="module")
def fitter(cdnow_summary: tuple[np.ndarray, np.ndarray, np.ndarray]) -> BetaGeoFitter:
    x, tx, t = cdnow_summary
    return BetaGeoFitter(penalizer_coef=0.001).fit(x, tx, t)


def _params(f: BetaGeoFitter) -> BgnbdParams:
    r, alpha, a, b = (float(f.params_[k]) for k in ("r", "alpha", "a", "b"))
    return BgnbdParams(r=r, alpha=alpha, a=a, b=b)


def test_closed_forms_equal_lifetimes(
    cdnow_summary: tuple[np.ndarray, np.ndarray, np.ndarray], fitter: BetaGeoFitter
) -> None:
    x, tx, t = cdnow_summary
    p = _params(fitter)
    np.testing.assert_allclose(
        p_alive(p, x, tx, t), fitter.conditional_probability_alive(x, tx, t), rtol=1e-9
    )
    for horizon in (7.0, 30.0, 90.0):
        np.testing.assert_allclose(
            expected_purchases(p, horizon, x, tx, t),
            fitter.conditional_expected_number_of_purchases_up_to_time(horizon, x, tx, t),
            rtol=1e-7,
        )
        # a new customer (x = t_x = T = 0): the conditional is lifetimes' unconditional P(X=0)
        np.testing.assert_allclose(
            p_no_purchase(p, horizon, [0.0], [0.0], [0.0]),
            [fitter.probability_of_n_purchases_up_to_time(horizon, 0)],
            rtol=1e-9,
        )


def test_missing_summary_is_nan_and_probabilities_are_bounded(fitter: BetaGeoFitter) -> None:
    p = _params(fitter)
    x, tx, t = np.array([np.nan, 0, 3, 40]), np.array([np.nan, 0, 10, 60]), np.array([5, 5, 80, 61])
    alive = p_alive(p, x, tx, t)
    none = p_no_purchase(p, 90, x, tx, t)
    assert np.isnan(alive[0]) and np.isnan(none[0])
    assert alive[1] == 1.0  # no repeat purchase: BG/NBD cannot have dropped out
    assert ((alive[1:] > 0) & (alive[1:] <= 1) & (none[1:] > 0) & (none[1:] < 1)).all()


def test_fit_on_patterns_equals_lifetimes_fit(
    cdnow_summary: tuple[np.ndarray, np.ndarray, np.ndarray], fitter: BetaGeoFitter
) -> None:
    x, tx, t = cdnow_summary
    half = len(x) // 2
    parts = [
        bgnbd_patterns(x[:half], tx[:half], t[:half]),
        bgnbd_patterns(x[half:], tx[half:], t[half:]),
    ]
    patterns, counts = merge_patterns(parts[::-1])
    whole = bgnbd_patterns(x, tx, t)
    np.testing.assert_array_equal(patterns, whole[0])
    np.testing.assert_array_equal(counts, whole[1])
    fitted = fit_bgnbd(patterns, counts)
    assert fitted.n_customers == len(x)
    np.testing.assert_allclose(fitted.as_tuple(), _params(fitter).as_tuple(), rtol=1e-3)
    with pytest.raises(ValueError, match="at least 10"):
        fit_bgnbd(patterns[:3], np.ones(3, dtype=np.int64))


def _cdnow_events() -> tuple[pa.Table, pd.DataFrame]:
    raw = cdnow_raw()
    days = raw.column("date").to_numpy().astype("datetime64[D]")
    events = pa.table(
        {
            "user_id": raw.column("customer_id"),
            "ts": pa.array(shifted_ms(days), type=pa.int64()),
            "event_type": pa.array(["order"] * raw.num_rows),
            "amount_cny": raw.column("amount"),
        }
    )
    frame = pd.DataFrame(
        {
            "customer_id": raw.column("customer_id").to_numpy(),
            "date": pd.to_datetime(days),
            "amount": raw.column("amount").to_numpy(),
        }
    )
    return events, frame


@pytest.mark.parametrize("as_of", ["1997-10-01", "1998-04-01", "1998-07-01"])
def test_btyd_summary_equals_lifetimes_on_cdnow(as_of: str) -> None:
    """strata's as-of is exclusive (events before local midnight); lifetimes'
    observation_period_end is the last day included: the day before strata's as-of."""
    events, frame = _cdnow_events()
    as_of_ms = int(shifted_as_of(as_of).timestamp() * 1000)
    feats = compute_features(events, None, as_of_ms, FeatureConfig())
    end = pd.Timestamp(as_of) - pd.Timedelta(days=1)
    ref = summary_data_from_transaction_data(
        frame[frame["date"] <= end], "customer_id", "date", "amount",
        observation_period_end=end, freq="D",
    )  # fmt: skip
    ours = feats.to_pandas().set_index("user_id").loc[ref.index]
    np.testing.assert_array_equal(ours["btyd_frequency"], ref["frequency"])
    np.testing.assert_array_equal(ours["btyd_recency"], ref["recency"])
    np.testing.assert_array_equal(ours["btyd_t"], ref["T"])
    np.testing.assert_allclose(ours["btyd_monetary_value"], ref["monetary_value"], rtol=1e-9)
    assert len(ours) == feats.num_rows  # the same customers


def test_gap_statistics() -> None:
    day = DAY_MS
    base = int(dt.datetime(2026, 1, 1, 12, tzinfo=LOCAL).timestamp() * 1000)
    # user 1: purchase days 0, 2, 6, 6 (same day twice), 14 -> gaps 2, 4, 8
    # user 2: days 0, 5 -> one gap; user 3: one day
    ts = [base, base + 2 * day, base + 6 * day, base + 6 * day + 1000, base + 14 * day]
    ts += [base, base + 5 * day, base]
    events = pa.table(
        {
            "user_id": pa.array([1] * 5 + [2] * 2 + [3], type=pa.int64()),
            "ts": pa.array(ts, type=pa.int64()),
            "event_type": pa.array(["order"] * 8),
            "amount_cny": pa.array([10.0] * 8),
        }
    )
    as_of = base + 20 * day
    feats = compute_features(events, None, as_of, FeatureConfig())
    std = feats.column("gap_std_days").to_pylist()
    assert std[0] == pytest.approx(np.std([2, 4, 8])) and std[1] is None and std[2] is None
    mf = model_features(feats)
    cv = mf.column("gap_cv").to_pylist()
    assert cv[0] == pytest.approx(np.std([2, 4, 8]) / (14 / 3), rel=1e-6) and cv[1] is None
    trend = mf.column("order_trend_30d").to_pylist()
    assert trend == [5.0, 2.0, 1.0]  # every order in the last 30 days, none before


def test_simulator_is_seeded_and_follows_bgnbd() -> None:
    a = simulate_bgnbd(3000, 365, seed=3)
    assert a.equals(simulate_bgnbd(3000, 365, seed=3))
    assert not a.equals(simulate_bgnbd(3000, 365, seed=4))
    assert set(a.column_names) == {"customer", "ts", "amount"}
    assert len(set(a.column("customer").to_pylist())) == 3000  # everyone buys once
    assert pa.compute.min(a.column("amount")).as_py() > 0


def test_simulated_log_recovers_its_parameters_and_its_churn_rate() -> None:
    """Fit on a simulated log gives back the parameters, and the closed-form P(no purchase)
    with the true parameters is calibrated on what the simulator did next."""
    truth = SimParams()
    n, obs_days, horizon = 20000, 273, 90
    log = simulate_bgnbd(n, obs_days + horizon, seed=11, params=truth)
    start = dt.datetime(2025, 1, 1, tzinfo=LOCAL)
    ids = np.unique(log.column("customer").to_numpy(zero_copy_only=False), return_inverse=True)[1]
    events = pa.table(
        {
            "user_id": pa.array(ids.astype(np.int64)),
            "ts": log.column("ts"),
            "event_type": pa.array(["order"] * log.num_rows),
            "amount_cny": log.column("amount"),
        }
    )
    cutoff = int((start + dt.timedelta(days=obs_days)).timestamp() * 1000)
    feats = compute_features(events, None, cutoff, FeatureConfig())
    x, tx, t = (feats.column(c).to_numpy() for c in ("btyd_frequency", "btyd_recency", "btyd_t"))
    fitted = fit_bgnbd(*bgnbd_patterns(x, tx, t))
    assert fitted.r == pytest.approx(truth.r, rel=0.15)
    assert fitted.alpha == pytest.approx(truth.alpha, rel=0.35)
    assert fitted.a == pytest.approx(truth.a, rel=0.35)
    assert fitted.b == pytest.approx(truth.b, rel=0.35)
    ts = events.column("ts").to_numpy()
    later = (ts >= cutoff) & (ts < cutoff + horizon * DAY_MS)
    bought = np.zeros(feats.num_rows, dtype=bool)
    bought[np.searchsorted(feats.column("user_id").to_numpy(), ids[later])] = True
    truth_params = BgnbdParams(r=truth.r, alpha=truth.alpha, a=truth.a, b=truth.b)
    churn = p_no_purchase(truth_params, horizon, x, tx, t)
    assert churn.mean() == pytest.approx((~bought).mean(), abs=0.015)
    assert classification_metrics((~bought).astype(int), churn)["auc"] > 0.8


def test_champion_is_the_model_only_when_it_is_at_least_as_good() -> None:
    def m(model: float, bgnbd: float, rule: float) -> dict[str, dict[str, float]]:
        return {
            "distributed": {"auc": model},
            "bgnbd": {"auc": bgnbd},
            "recency_rule": {"auc": rule},
        }

    assert choose_champion(m(0.80, 0.79, 0.70), True)["method"] == "model"
    assert choose_champion(m(0.79, 0.79, 0.70), True)["method"] == "model"  # a tie: the model
    lost = choose_champion(m(0.759, 0.769, 0.763), True)
    assert lost["method"] == "bgnbd" and lost["baseline"] == 0.769 and "worse" in lost["reason"]
    assert choose_champion(m(0.76, 0.75, 0.77), True)["method"] == "recency_rule"
    # good on held-out users, beaten on the cutoff held out by time
    timed = choose_champion(m(0.80, 0.79, 0.70), True, m(0.70, 0.72, 0.60))
    assert timed["method"] == "bgnbd" and "by time" in timed["reason"]
    assert timed["time_holdout"]["model"] == 0.70
    # regression: lower RMSE wins
    spend = {"distributed": {"rmse": 40.0}, "bgnbd": {"rmse": 37.0}, "recency_rule": {"rmse": 50.0}}
    assert choose_champion(spend, False)["method"] == "bgnbd"
    assert choose_champion({"distributed": {"auc": 0.6}}, True)["method"] == "model"


def test_monotone_constraints_follow_the_known_directions() -> None:
    features = ["frequency_90d", "recency_days", "bgnbd_p_alive", "bgnbd_p_churn"]
    assert monotone_constraints(features, "churn") == "(0,1,-1,1)"
    assert monotone_constraints(features, "repurchase") == "(0,-1,1,-1)"
    assert monotone_constraints(features, "spend") is None
    assert monotone_constraints(["frequency_90d"], "churn") is None


def test_bgnbd_features_and_margins_use_each_cutoffs_own_fit() -> None:
    from strata.training import BGNBD_FEATURES, MARGIN_COLUMNS, apply_bgnbd_by_cutoff

    early = BgnbdParams(r=0.3, alpha=5.0, a=0.8, b=2.5)
    late = BgnbdParams(r=0.2, alpha=3.0, a=0.6, b=2.0)
    table = pa.table(
        {
            "cutoff_ms": pa.array([1, 2, 1, 2, 3], type=pa.int64()),
            "btyd_frequency": [2.0, 2.0, 0.0, 5.0, 1.0],
            "btyd_recency": [30.0, 30.0, 0.0, 80.0, 3.0],
            "btyd_t": [60.0, 60.0, 10.0, 90.0, 5.0],
            "spend_total_cny": [90.0, 90.0, 10.0, 300.0, 20.0],
            **{name: pa.nulls(5, pa.float32()) for name in BGNBD_FEATURES},
        }
    )
    out = apply_bgnbd_by_cutoff(table, {1: early, 2: late, 3: None}, 90, 7)
    churn = out.column("bgnbd_p_churn").to_pylist()
    x, tx, t = [2.0, 0.0], [30.0, 0.0], [60.0, 10.0]
    np.testing.assert_allclose([churn[0], churn[2]], p_no_purchase(early, 90, x, tx, t), rtol=1e-6)
    np.testing.assert_allclose(churn[1], p_no_purchase(late, 90, [2.0], [30.0], [60.0]), rtol=1e-6)
    assert churn[0] != churn[1]  # same summary, other cutoff, other fit
    assert churn[4] is None  # no fit at that cutoff
    margin = out.column(MARGIN_COLUMNS["churn"]).to_numpy()
    np.testing.assert_allclose(margin[0], np.log(churn[0] / (1 - churn[0])), rtol=1e-5)
    assert margin[4] == 0.0
    assert out.column("bgnbd_p_alive").to_pylist()[2] == 1.0
