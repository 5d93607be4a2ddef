"""Unit tests of strata.training: no leakage across the cutoff, exact labels, a stable user
split, honest nulls for imported logs, metrics against hand-computed values, the baselines
and the config."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from strata import synth
from strata.config import ConfigError, load_calendar
from strata.features import FeatureConfig, compute_features, load_feature_config
from strata.ids import bucket_of, pseudonymise_many
from strata.schema import EVENTS_SCHEMA, TIMESTAMP
from strata.timeutil import DAY_MS
from strata.training import (
    BASELINE_COLUMNS,
    BEHAVIOUR_COLUMNS,
    EXAMPLES_SCHEMA,
    LABEL_COLUMNS,
    MODEL_FEATURES,
    MODEL_FEATURES_SCHEMA,
    SplitFractions,
    TrainConfig,
    bgnbd_baseline,
    classification_metrics,
    cutoffs_for,
    data_hash,
    feature_matrix,
    labels,
    load_train_config,
    model_features,
    recency_rule,
    regression_metrics,
    split_of,
    stacked_examples,
    training_examples,
    winner,
)

LOCAL = dt.timezone(dt.timedelta(hours=8))
KEY = b"unit-test-key-0123456789abcdef"


def local_ms(text: str) -> int:
    """UTC epoch ms of a local (UTC+8) time 'YYYY-MM-DD HH:MM'."""
    return int(
        dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=LOCAL).timestamp() * 1000
    )


CUTOFF = local_ms("2025-12-01 00:00")
END = CUTOFF + 30 * DAY_MS
FEATURE_LABEL_FREE = [c for c in EXAMPLES_SCHEMA.names if c not in LABEL_COLUMNS]


def events_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> pa.Table:
    """Events from dicts with 'user', 'ts' (ms), 'type' (default order) and extra columns."""
    data: dict[str, list[Any]] = {name: [None] * len(rows) for name in EVENTS_SCHEMA.names}
    for i, r in enumerate(rows):
        data["user_id"][i] = r["user"]
        data["ts"][i] = r["ts"]
        data["event_type"][i] = r.get("type", "order")
        for key in ("order_id", "amount_cny", "discount_cny", "coupon_id", "categories", "rating"):
            if key in r:
                data[key][i] = r[key]
    arrays = [
        pa.array(data["ts"], pa.int64()).cast(TIMESTAMP)
        if f.name == "ts"
        else pa.array(data[f.name], f.type)
        for f in EVENTS_SCHEMA
    ]
    table = pa.Table.from_arrays(arrays, schema=EVENTS_SCHEMA)
    return table.select(columns) if columns else table


@pytest.fixture(scope="module")
def fconfig() -> FeatureConfig:
    return load_feature_config()


@pytest.fixture(scope="module")
def cfg() -> TrainConfig:
    return TrainConfig()


# ---------------------------------------------------------------------------- synthetic data
SYNTH_END = dt.date(2025, 11, 20)
SYNTH_DAYS = 150


@pytest.fixture(scope="module")
def bucket() -> synth.BucketData:
    """1500 generated users over 150 days; the last 30 days serve as the label window."""
    raw = synth.raw_user_ids(1500)
    ids = pseudonymise_many(raw.tolist(), KEY)
    return synth.generate_bucket(
        3,
        ids,
        raw,
        synth.load_generator_config(),
        load_calendar(),
        11,
        synth.window_start(SYNTH_END, SYNTH_DAYS),
        SYNTH_DAYS,
    )


@pytest.fixture(scope="module")
def synth_window() -> tuple[int, int]:
    end = synth.local_midnight_ms(SYNTH_END)
    return end - 30 * DAY_MS, end


@pytest.fixture(scope="module")
def examples(
    bucket: synth.BucketData, synth_window: tuple[int, int], fconfig: FeatureConfig
) -> pa.Table:
    cutoff, end = synth_window
    return training_examples(bucket.events, bucket.users, cutoff, end, fconfig, TrainConfig())


def _np(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False))


# ---------------------------------------------------------------------------- leakage
def _ts_ms(events: pa.Table) -> np.ndarray:
    return _np(events, "ts").astype("datetime64[ms]").astype(np.int64)


def _with(events: pa.Table, name: str, values: pa.Array) -> pa.Table:
    i = events.schema.get_field_index(name)
    return events.set_column(i, events.schema.field(i), values)


def _assert_features_equal(a: pa.Table, b: pa.Table) -> None:
    assert a.select(FEATURE_LABEL_FREE).equals(b.select(FEATURE_LABEL_FREE))


def test_leakage_future_events_change_only_labels(
    bucket: synth.BucketData, synth_window: tuple[int, int], fconfig: FeatureConfig
) -> None:
    cutoff, end = synth_window
    cfg = TrainConfig()
    events = bucket.events
    base = training_examples(events, bucket.users, cutoff, end, fconfig, cfg)
    assert base.schema.equals(EXAMPLES_SCHEMA)
    assert base.num_rows > 1000
    ts = _ts_ms(events)
    future = ts >= cutoff
    assert future.sum() > 10_000 and (~future).sum() > 10_000
    rng = np.random.default_rng(0)

    # 1. change every amount (and discount) at or after the cutoff
    amount = _np(events, "amount_cny").astype(np.float64)
    new_amount = np.where(future, amount * 3 + 1, amount)
    changed = _with(events, "amount_cny", pa.array(new_amount, pa.float64(), mask=np.isnan(amount)))
    # 2. delete most events at or after the cutoff
    deleted = events.filter(pa.array(~future | (rng.random(len(ts)) < 0.2)))
    # 3. add events at or after the cutoff: copies of old rows, for the same users and for
    #    users never seen before, the first ones exactly at the cutoff instant
    old = np.flatnonzero(~future)[:5000]
    copies = events.take(pa.array(old))
    shifted = np.full(len(old), cutoff, dtype=np.int64) + np.arange(len(old)) * 60_000
    copies = _with(copies, "ts", pa.array(shifted).cast(TIMESTAMP))
    strangers = _with(copies, "user_id", pa.array(np.arange(len(old), dtype=np.int64) + 7))
    added = pa.concat_tables([events, copies, strangers])

    for variant in (changed, deleted, added):
        other = training_examples(variant, bucket.users, cutoff, end, fconfig, cfg)
        _assert_features_equal(base, other)
    # the labels did see the changes
    assert not base.equals(training_examples(changed, bucket.users, cutoff, end, fconfig, cfg))
    assert not base.equals(training_examples(deleted, bucket.users, cutoff, end, fconfig, cfg))


def test_leakage_events_after_the_window_change_nothing(
    bucket: synth.BucketData, synth_window: tuple[int, int], fconfig: FeatureConfig
) -> None:
    cutoff, _ = synth_window
    end = cutoff + 20 * DAY_MS  # a shorter window, so generated events lie after it
    cfg = TrainConfig()
    events = bucket.events
    base = training_examples(events, bucket.users, cutoff, end, fconfig, cfg)
    after = _ts_ms(events) >= end
    assert after.sum() > 1000
    amount = _np(events, "amount_cny").astype(np.float64)
    changed = _with(
        events,
        "amount_cny",
        pa.array(np.where(after, amount + 50, amount), pa.float64(), mask=np.isnan(amount)),
    )
    deleted = events.filter(pa.array(~after))
    extra = _with(
        events.slice(0, 2000), "ts", pa.array(np.full(2000, end, np.int64)).cast(TIMESTAMP)
    )
    added = pa.concat_tables([events, extra])
    for variant in (changed, deleted, added):
        assert training_examples(variant, bucket.users, cutoff, end, fconfig, cfg).equals(base)


def test_features_are_compute_features_at_the_cutoff(
    bucket: synth.BucketData,
    synth_window: tuple[int, int],
    fconfig: FeatureConfig,
    examples: pa.Table,
) -> None:
    cutoff, _ = synth_window
    feats = compute_features(bucket.events, bucket.users, cutoff, fconfig)
    buyers = feats.filter(pc.greater_equal(feats.column("orders_total"), 1))
    assert _np(examples, "user_id").tolist() == _np(buyers, "user_id").tolist()
    assert set(_np(examples, "cutoff_ms").tolist()) == {cutoff}
    for name in ("recency_days", "monetary_90d", "frequency_30d", "btyd_t"):
        np.testing.assert_array_equal(
            _np(examples, name), _np(buyers, name).astype(np.float32).astype(np.float64)
        )
    for name in BASELINE_COLUMNS:
        assert examples.schema.field(name).type == pa.float64()


# ---------------------------------------------------------------------------- labels
def test_labels_exact_with_boundaries() -> None:
    c, e = CUTOFF, END
    rep = c + 7 * DAY_MS
    rows: list[dict[str, Any]] = [
        {"user": 1, "ts": c - 1, "amount_cny": 99.0},  # a feature, not a label
        {"user": 1, "ts": e, "amount_cny": 50.0},  # the window end is exclusive
        {"user": 2, "ts": c, "amount_cny": 10.0},  # the cutoff instant is a label
        {"user": 3, "ts": rep - 1, "amount_cny": 5.0},
        {"user": 3, "ts": rep, "amount_cny": 7.0},
        {"user": 4, "ts": rep, "amount_cny": 20.0},  # day 8: an order, not a repurchase
        {"user": 5, "ts": c + DAY_MS, "order_id": "A", "amount_cny": 3.0},  # two line rows
        {"user": 5, "ts": c + DAY_MS, "order_id": "A", "amount_cny": 4.0},
        {"user": 6, "ts": c + DAY_MS, "type": "item_view"},
        {"user": 6, "ts": c + DAY_MS, "type": "add_to_cart"},
        {"user": 7, "ts": e - 1, "amount_cny": 1.5},
        {"user": 9, "ts": c + 2 * DAY_MS, "amount_cny": None},  # null amount counts 0
        {"user": 9, "ts": c + 3 * DAY_MS, "amount_cny": float("nan")},
    ]
    events = events_table(rows)
    ids = np.array([7, 3, 1, 2, 4, 5, 6, 8, 9, 3])  # any order, a repeat, user 8 unseen
    got = labels(events, ids, c, e, 7)
    assert got.column_names == list(LABEL_COLUMNS)
    assert got.schema.field("label_churn").type == pa.int8()
    assert got.schema.field("label_spend").type == pa.float64()
    assert got.column("label_churn").to_pylist() == [0, 0, 1, 0, 0, 0, 1, 1, 0, 0]
    assert got.column("label_repurchase").to_pylist() == [0, 1, 0, 1, 0, 1, 0, 0, 1, 1]
    assert got.column("label_spend").to_pylist() == [1.5, 12.0, 0, 10.0, 20.0, 7.0, 0, 0, 0, 12.0]

    # dictionary-encoded event types give the same labels; no event_type: every row an order
    dict_events = events.set_column(2, "event_type", pc.dictionary_encode(events["event_type"]))
    assert labels(dict_events, ids, c, e, 7).equals(got)
    no_type = labels(events.drop_columns(["event_type"]), ids, c, e, 7)
    assert no_type.column("label_churn").to_pylist()[6] == 0  # user 6's views now count
    # no amount column: spend is unknown, not 0
    no_amount = labels(events.drop_columns(["amount_cny"]), ids, c, e, 7)
    assert no_amount.column("label_spend").null_count == len(ids)
    assert no_amount.column("label_churn").equals(got.column("label_churn"))
    with pytest.raises(ValueError, match="after cutoff"):
        labels(events, ids, c, c, 7)


def test_order_at_the_cutoff_is_label_not_feature(fconfig: FeatureConfig, cfg: TrainConfig) -> None:
    rows: list[dict[str, Any]] = [
        {"user": 2, "ts": CUTOFF - 5 * DAY_MS, "amount_cny": 30.0},
        {"user": 2, "ts": CUTOFF, "amount_cny": 10.0},
        {"user": 3, "ts": CUTOFF, "amount_cny": 10.0},  # no order before: not in the population
    ]
    ex = training_examples(events_table(rows), None, CUTOFF, END, fconfig, cfg)
    assert ex.column("user_id").to_pylist() == [2]
    assert ex.column("orders_total").to_pylist() == [1.0]
    assert ex.column("monetary_30d").to_pylist() == [30.0]
    assert ex.column("label_churn").to_pylist() == [0]
    assert ex.column("label_spend").to_pylist() == [10.0]


def test_population_min_orders(fconfig: FeatureConfig) -> None:
    rows: list[dict[str, Any]] = [
        {"user": 1, "ts": CUTOFF - 3 * DAY_MS, "amount_cny": 1.0},
        {"user": 2, "ts": CUTOFF - 3 * DAY_MS, "amount_cny": 1.0},
        {"user": 2, "ts": CUTOFF - 2 * DAY_MS, "amount_cny": 1.0},
        {"user": 3, "ts": CUTOFF - 2 * DAY_MS, "type": "app_visit"},
    ]
    users = pa.table(
        {
            "user_id": pa.array([4], pa.int64()),
            "signup_ts": pa.array([0], pa.int64()).cast(TIMESTAMP),
        }
    )
    one = training_examples(events_table(rows), users, CUTOFF, END, fconfig, TrainConfig())
    assert one.column("user_id").to_pylist() == [1, 2]
    two = training_examples(
        events_table(rows), users, CUTOFF, END, fconfig, TrainConfig(min_orders=2)
    )
    assert two.column("user_id").to_pylist() == [2]


# ---------------------------------------------------------------------------- split
def test_split_stable_fractions_and_independent_of_buckets(cfg: TrainConfig) -> None:
    # pinned: a change of the hash would move users between train and test
    assert split_of(np.arange(12), cfg).tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 2, 0]
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 2**63 - 1, 100_000, dtype=np.int64)
    s = split_of(ids, cfg)
    assert s.dtype == np.int8
    assert np.array_equal(s, split_of(ids.copy(), TrainConfig()))
    assert np.array_equal(s[123:124], split_of(ids[123:124], cfg))  # element-wise
    shares = np.bincount(s, minlength=3) / len(s)
    np.testing.assert_allclose(shares, [0.7, 0.15, 0.15], atol=0.01)

    for id_set in (ids, np.arange(100_000, dtype=np.int64)):  # random and structured ids
        split = split_of(id_set, cfg)
        buckets = bucket_of(id_set, 16)
        table = np.zeros((16, 3))
        np.add.at(table, (buckets, split), 1)
        expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True)
        expected /= table.sum()
        chi2 = float(((table - expected) ** 2 / expected).sum())
        assert chi2 < 70  # 30 degrees of freedom: p ~ 1e-4

    other = TrainConfig(split=SplitFractions(train=0.5, validation=0.25, test=0.25))
    s2 = split_of(ids, other)
    assert np.all(s2[s == 2] == 2)  # the test side only grows as train shrinks: one hash


def test_stacked_examples_keep_each_user_on_one_side(
    bucket: synth.BucketData, synth_window: tuple[int, int], fconfig: FeatureConfig
) -> None:
    _, end = synth_window
    cfg = TrainConfig(cutoffs=3, cutoff_step_days=20)
    cuts = cutoffs_for(end, cfg)
    assert cuts == [end - 30 * DAY_MS, end - 50 * DAY_MS, end - 70 * DAY_MS]
    assert cutoffs_for(end, cfg, horizon_days=10)[0] == end - 10 * DAY_MS
    ex = stacked_examples(bucket.events, bucket.users, end, fconfig, cfg)
    assert ex.schema.equals(EXAMPLES_SCHEMA)
    assert sorted(set(_np(ex, "cutoff_ms").tolist()), reverse=True) == cuts
    pairs = {(u, s) for u, s in zip(_np(ex, "user_id"), _np(ex, "split"), strict=True)}
    assert len(pairs) == len(set(_np(ex, "user_id").tolist()))


# ---------------------------------------------------------------------------- model features
def test_imported_purchase_log_features_are_null_not_zero(fconfig: FeatureConfig) -> None:
    rng = np.random.default_rng(1)
    rows: list[dict[str, Any]] = [
        {"user": int(u), "ts": CUTOFF - int(rng.integers(1, 200 * DAY_MS)), "amount_cny": 20.0}
        for u in rng.integers(1, 40, 300)
    ]
    rows += [{"user": 1, "ts": CUTOFF + DAY_MS, "amount_cny": 5.0}]
    for columns in (["user_id", "ts", "amount_cny", "event_type"], ["user_id", "ts", "amount_cny"]):
        events = events_table(rows, columns)
        ex = training_examples(events, None, CUTOFF, END, fconfig, TrainConfig())
        assert ex.num_rows > 20
        null = {name for name in MODEL_FEATURES if ex.column(name).null_count == ex.num_rows}
        must_be_null = {
            *(f"share_{c}" for c in ("vegetables", "fruit", "seafood", "daily_goods")),
            "top_category",
            "coupon_order_share",
            "avg_discount_depth",
            "coupon_only_share",
            "discount_sensitivity",
            "price_sensitivity",
            "channel",
            "device",
            "age_band",
            "gender",
            "tenure_days",
            "mean_rating",
            "cart_to_order_rate",
            *BEHAVIOUR_COLUMNS,
        }
        assert must_be_null <= null
        for name in ("recency_days", "frequency_90d", "monetary_90d", "btyd_t", "aov_cny"):
            assert ex.column(name).null_count == 0
        assert ex.column("weekend_share").null_count == 0  # activity from the orders
        assert ex.column("label_spend").to_pylist()[0] == 5.0


def test_model_features_codes_and_derived(fconfig: FeatureConfig) -> None:
    as_of = local_ms("2026-01-01 00:00")
    rows: list[dict[str, Any]] = [
        {"user": 1, "ts": local_ms("2025-12-01 09:00"), "amount_cny": 50.0, "coupon_id": "C"},
        {"user": 1, "ts": local_ms("2025-12-11 09:00"), "amount_cny": 50.0, "coupon_id": "C"},
        {"user": 1, "ts": local_ms("2025-12-21 09:00"), "amount_cny": 50.0},
        {"user": 1, "ts": local_ms("2025-12-22 09:00"), "type": "item_view"},
        {"user": 2, "ts": local_ms("2025-12-30 20:00"), "amount_cny": 200.0},
    ]
    users = pa.Table.from_pylist(
        [
            {"user_id": 1, "signup_ts": local_ms("2025-11-21 23:00"), "channel": "ads"},
            {"user_id": 2, "signup_ts": None, "channel": "tv"},
        ],
        schema=pa.schema(
            [("user_id", pa.int64()), ("signup_ts", pa.int64()), ("channel", pa.string())]
        ),
    )
    users = users.set_column(1, "signup_ts", users["signup_ts"].cast(TIMESTAMP))
    feats = compute_features(events_table(rows), users, as_of, fconfig)
    mf = model_features(feats)
    assert mf.schema.equals(MODEL_FEATURES_SCHEMA)
    assert mf.column_names == ["user_id", *MODEL_FEATURES]
    assert len(set(MODEL_FEATURES)) == len(MODEL_FEATURES)
    get = {name: mf.column(name).to_pylist() for name in mf.column_names}
    assert get["user_id"] == [1, 2]
    # observation day 2025-12-31: user 1 signed up on 11-21, bought 12-01, 12-11, 12-21
    assert get["tenure_days"] == [40.0, None]
    assert get["interpurchase_days"] == [10.0, None]
    assert get["overdue_ratio"] == [1.0, None]
    assert get["channel"] == [1.0, None]  # "ads" is CHANNELS[1]; "tv" is not a channel
    assert get["price_sensitivity"] == [0.0, 1.0]  # coupon_sensitive, quality_sensitive
    assert get["active_slot"] == [0.0, 3.0]  # morning, evening
    assert get["views"] == [1.0, 0.0]  # behaviour is logged in this table
    assert get["negative_reviews"] == [None, None]  # no rated review
    # behaviour_logged=False nulls the interaction counts; the matrix has NaN for nulls
    off = model_features(feats, behaviour_logged=False)
    assert off.column("views").null_count == 2
    m = feature_matrix(mf, ["views", "tenure_days", "channel"])
    assert m.dtype == np.float32 and m.flags.c_contiguous and m.shape == (2, 3)
    np.testing.assert_array_equal(m[0], [1.0, 40.0, 1.0])
    assert np.isnan(m[1, 1:]).all()
    with pytest.raises(ValueError, match=r"missing.*'nope'.*'nada'"):
        feature_matrix(mf, ["views", "nope", "nada"])
    with pytest.raises(ValueError, match="not numeric"):
        feature_matrix(feats, ["channel"])
    with pytest.raises(ValueError, match="compute_features"):
        model_features(feats.drop_columns(["views"]))


def test_feature_matrix_on_examples(examples: pa.Table) -> None:
    m = feature_matrix(examples, MODEL_FEATURES)
    assert m.shape == (examples.num_rows, len(MODEL_FEATURES))
    nan_share = np.isnan(m).mean(axis=0)
    assert nan_share[MODEL_FEATURES.index("recency_days")] == 0
    assert nan_share[MODEL_FEATURES.index("tenure_days")] == 0  # generated users have signups


# ---------------------------------------------------------------------------- metrics
def test_classification_metrics_hand_computed() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.4, 0.8, 0.8, 0.9])
    m = classification_metrics(y, p)
    # pairs (pos, neg): 0.4 beats 0.1, ties 0.4 -> 1.5; 0.8 -> 2.5; 0.9 -> 3; of 9 pairs
    assert m["auc"] == pytest.approx(7 / 9)
    # thresholds 0.9: P 1, R 1/3; 0.8 (tie group): P 2/3, R 2/3; 0.4: P 3/5, R 1
    assert m["pr_auc"] == pytest.approx(1 / 3 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    expected_ll = -np.mean([math.log(q) for q in (0.9, 0.6, 0.4, 0.8, 0.2, 0.9)])
    assert m["log_loss"] == pytest.approx(expected_ll)
    assert m["base_rate"] == 0.5 and m["n"] == 6
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))

    assert classification_metrics([1, 0], [0.8, 0.3])["log_loss"] == pytest.approx(
        -(math.log(0.8) + math.log(0.7)) / 2
    )
    clipped = classification_metrics([1, 0], [0.0, 1.0])["log_loss"]
    assert clipped == pytest.approx(-math.log(1e-15), rel=1e-4)  # finite, not inf
    assert classification_metrics([1, 0, 1], [0.2, 0.2, 0.2])["auc"] == 0.5
    assert classification_metrics([1, 1], [0.2, 0.3])["auc"] is None
    assert classification_metrics([0, 0], [0.2, 0.3])["pr_auc"] is None
    with pytest.raises(ValueError, match="binary"):
        classification_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics([0, 1], [0.1, float("nan")])


def test_auc_matches_pairwise_count() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 1)  # many ties
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert classification_metrics(y, p)["auc"] == pytest.approx(pairs / (len(pos) * len(neg)))


def test_calibration_bins() -> None:
    p = np.arange(20) / 20
    y = (np.arange(20) % 2).astype(int)
    cal = classification_metrics(y, p)["calibration"]
    assert [b["bin"] for b in cal] == list(range(10))
    assert [b["n"] for b in cal] == [2] * 10
    assert cal[0]["mean_p"] == pytest.approx(0.025)
    assert cal[9]["mean_p"] == pytest.approx(0.925)
    assert all(b["observed"] == 0.5 for b in cal)
    small = classification_metrics([0, 1, 1], [0.1, 0.5, 0.9])["calibration"]
    assert len(small) == 10 and sum(b["n"] for b in small) == 3
    assert any(b["n"] == 0 and b["mean_p"] is None for b in small)


def test_regression_metrics_and_winner() -> None:
    m = regression_metrics(np.array([1, 2, 3, 4]), np.array([1, 2, 3, 5]))
    assert m["mae"] == 0.25 and m["rmse"] == 0.5 and m["n"] == 4
    assert m["r2"] == pytest.approx(1 - 1 / 5)
    assert regression_metrics([2, 2], [1, 3])["r2"] is None
    assert winner({"rule": {"auc": 0.7}, "xgb": {"auc": 0.8}, "bgnbd": {"auc": None}}) == "xgb"
    assert winner({"a": {"auc": 0.8}, "b": {"auc": 0.8}}) == "a"
    with pytest.raises(ValueError):
        winner({"a": {"auc": None}})


def test_data_hash_stable_and_order_free(examples: pa.Table) -> None:
    h = data_hash(examples)
    assert h == data_hash(examples.take(pa.array(np.arange(examples.num_rows)[::-1])))
    flipped = examples.set_column(
        examples.schema.get_field_index("label_churn"),
        "label_churn",
        pc.subtract(pa.scalar(1, pa.int8()), examples.column("label_churn")),
    )
    assert data_hash(flipped) != h
    ids = _np(examples, "user_id")
    assert data_hash(ids) == data_hash(ids[::-1].copy()) != h


# ---------------------------------------------------------------------------- baselines
def test_recency_rule_has_signal(examples: pa.Table) -> None:
    y = _np(examples, "label_churn")
    assert 0.05 < y.mean() < 0.95
    scores = recency_rule(examples)
    assert classification_metrics(y, scores["churn"])["auc"] > 0.6
    rep = _np(examples, "label_repurchase")
    assert classification_metrics(rep, scores["repurchase"])["auc"] > 0.6
    spend = regression_metrics(_np(examples, "label_spend"), scores["spend"])
    assert spend["r2"] is not None and spend["r2"] > 0
    np.testing.assert_array_equal(scores["spend"], _np(examples, "monetary_30d"))
    longer = recency_rule(examples, horizon_days=60)["spend"]
    np.testing.assert_allclose(longer, _np(examples, "monetary_90d") * 60 / 90, rtol=1e-6)


def test_bgnbd_baseline(examples: pa.Table) -> None:
    split = _np(examples, "split")
    train, test = examples.filter(pa.array(split != 2)), examples.filter(pa.array(split == 2))
    out = bgnbd_baseline(train, test, 30, 7, sample_users=800, seed=0)
    assert set(out) >= {"churn", "repurchase", "expected_purchases", "p_alive", "spend"}
    for v in out.values():
        assert len(v) == test.num_rows and np.isfinite(v).all()
    assert ((out["churn"] >= 0) & (out["churn"] <= 1)).all()
    assert (out["repurchase"] <= 1 - out["churn"] + 1e-12).all()  # within 7 <= within 30 days
    y = _np(test, "label_churn")
    assert classification_metrics(y, out["churn"])["auc"] > 0.6

    # same history length and frequency: the longer inactive, the likelier churned
    t = 100.0
    recency = np.array([0.0, 5, 20, 40, 80])
    probe = pa.table(
        {
            "btyd_frequency": pa.array(np.full(5, 8.0)),
            "btyd_recency": pa.array(t - recency),
            "btyd_t": pa.array(np.full(5, t)),
        }
    )
    churn = bgnbd_baseline(train, probe, 30, 7, 800, 0)["churn"]
    assert np.all(np.diff(churn) > 0)
    assert "spend" not in bgnbd_baseline(train, probe, 30, 7, 800, 0)
    # same sample, same answer
    again = bgnbd_baseline(train, test, 30, 7, sample_users=800, seed=0)
    np.testing.assert_array_equal(again["churn"], out["churn"])

    with pytest.raises(ValueError, match="at least 10"):
        bgnbd_baseline(train.slice(0, 5), test, 30, 7, 800, 0)


# ---------------------------------------------------------------------------- config
def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return tmp_path


def test_repository_config_loads() -> None:
    cfg = load_train_config()
    assert cfg.horizon_days == 30 and cfg.repurchase_days == 7
    assert cfg.split.train == pytest.approx(0.7)
    assert cfg.xgboost.max_depth == 4 and cfg.xgboost.num_boost_round == 400
    assert cfg.cutoffs == 4 and cfg.monotone and cfg.boost_from_bgnbd and cfg.time_holdout


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"split": {"train": 0.7, "validation": 0.2, "test": 0.2}}, "sum to 1"),
        ({"horizon_days": 7, "repurchase_days": 7}, "repurchase_days"),
        ({"horizont_days": 30}, r"unknown key 'horizont_days'.*allowed keys:.*horizon_days"),
        ({"xgboost": {"depth": 3}}, r"xgboost.depth.*allowed keys:.*max_depth"),
        ({"cutoffs": 13}, "cutoffs"),
        ({"split": {"train": 0.85, "validation": 0.0, "test": 0.15}}, "early_stopping"),
    ],
)
def test_config_errors(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_train_config(_write(tmp_path, data))


def test_config_validation_zero_without_early_stopping(tmp_path: Path) -> None:
    data = {
        "split": {"train": 0.85, "validation": 0.0, "test": 0.15},
        "xgboost": {"early_stopping_rounds": 0},
    }
    assert load_train_config(_write(tmp_path, data)).split.validation == 0.0


def _shard(bucket: int, rows: int, churned: float) -> dict[str, Any]:
    from strata.training import SPLITS

    return {
        "bucket": bucket,
        "rows": {"train": rows, "test": 1},
        "files": {s: f"/w/{s}/part-{bucket:05d}.parquet" for s in ("train", "test")},
        "valid": {"train": {"recency_days": rows}},
        "positives": {"train": {"label_churn": churned}},
        "labelled": {s: {"label_churn": 1} for s in SPLITS},
        "patterns": {5: (np.array([[1.0, 2.0, 3.0]]), np.array([rows]))},
        "seconds": 0.5,
    }


def test_example_partials_merge_is_order_independent_with_a_neutral_empty() -> None:
    """Bucket results merge to the same partial whatever the order tasks finished in."""
    from strata.training import ExamplePartials

    shards = [_shard(7, 3, 1.0), _shard(2, 4, 2.0), _shard(5, 1, 0.0)]
    a = ExamplePartials.merge_all(shards)
    b = ExamplePartials.merge_all(shards[::-1])
    assert a.files == b.files and a.rows == b.rows and a.positives == b.positives
    assert a.files["train"] == [f"/w/train/part-{b_:05d}.parquet" for b_ in (2, 5, 7)]
    assert a.rows["train"] == 8 and a.valid["train"]["recency_days"] == 8
    assert a.buckets == 3 and a.task_seconds == 1.5
    np.testing.assert_array_equal(a.patterns[5][1], [8])
    one = ExamplePartials.of_shard(shards[0])
    assert ExamplePartials.empty().merge(one).rows == one.rows
    assert a.empty_splits() == ["validation"]
    assert a.unlabelled() == [
        "label_churn (train)",
        "label_repurchase (train)",
        "label_spend (train)",
        "label_repurchase (test)",
        "label_spend (test)",
    ]


def test_holdout_by_time_needs_an_older_window_that_ends_by_the_newest_cutoff() -> None:
    from strata.training import holdout_by_time

    def part(cuts: list[int]) -> pa.Table:
        return pa.table({"cutoff_ms": pa.array(cuts, pa.int64())})

    day = DAY_MS
    train, valid, test = part([0, 30 * day, 60 * day]), part([0, 60 * day]), part([0, 60 * day])
    got = holdout_by_time(train, valid, test, [60 * day, 30 * day, 0], 30)
    assert got is not None
    newest, older, tr, va, te = got
    assert newest == 60 * day and older == [30 * day, 0]
    assert (tr.num_rows, va.num_rows, te.num_rows) == (2, 1, 1)
    assert holdout_by_time(train, valid, test, [60 * day, 30 * day], 31) is None
    assert holdout_by_time(train, valid, test, [60 * day], 30) is None


# ---------------------------------------------------------------------------- evaluation
def _at_cutoff(table: pa.Table, cutoff_ms: int) -> pa.Table:
    i = table.schema.get_field_index("cutoff_ms")
    values = pa.array(np.full(table.num_rows, cutoff_ms), table.schema.field(i).type)
    return table.set_column(i, table.schema.field(i), values)


def _two_cutoffs(examples: pa.Table, synth_window: tuple[int, int]) -> tuple[pa.Table, dict]:
    """The examples at the cutoff and again 30 days earlier, and a meta without BG/NBD fits."""
    from strata.training import cutoff_iso

    newest = synth_window[0]
    cutoffs = [newest, newest - 30 * DAY_MS]
    table = pa.concat_tables([examples, _at_cutoff(examples, cutoffs[1])])
    return table, {"cutoffs_ms": cutoffs, "cutoffs": [cutoff_iso(c) for c in cutoffs]}


def _perfect(table: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    from strata.training import TARGETS

    out = {}
    for name, t in TARGETS.items():
        y = _np(table, t.label).astype(np.float64)
        out[name] = {"distributed": y, "single_node": 0.9 * y + 0.05}
    return out


def test_evaluate_test_scores_every_method_and_the_newest_cutoff_alone(
    examples: pa.Table, synth_window: tuple[int, int]
) -> None:
    from strata.training.evaluation import evaluate_test

    table, meta = _two_cutoffs(examples, synth_window)
    metrics, newest, notes = evaluate_test(table, _perfect(table), meta, 30, 7)
    assert notes == ["BG/NBD baseline skipped: no cutoff could be fitted"]
    assert set(metrics["churn"]) == {"distributed", "single_node", "recency_rule"}
    assert metrics["churn"]["distributed"]["auc"] == 1.0
    assert metrics["churn"]["distributed"]["n"] == table.num_rows
    assert newest["churn"]["distributed"]["n"] == examples.num_rows
    assert "calibration" in metrics["churn"]["distributed"]
    assert "calibration" not in newest["churn"]["distributed"]
    assert metrics["spend"]["distributed"]["rmse"] < 1e-3  # y is float32
    one = {"cutoffs_ms": meta["cutoffs_ms"][:1], "cutoffs": meta["cutoffs"][:1]}
    _, newest_one, _ = evaluate_test(examples, _perfect(examples), one, 30, 7)
    assert newest_one == {}  # one cutoff: nothing to compare


def test_conclude_parity_winners_champions_and_notes(
    examples: pa.Table, synth_window: tuple[int, int]
) -> None:
    from strata.training.evaluation import Outcome, conclude, final_meta

    table, meta = _two_cutoffs(examples, synth_window)
    metrics, _, _ = _metrics(table, meta)
    out = conclude(metrics, {}, True, ["earlier"])
    assert out.problems == [] and out.parity["churn"]["ok"]
    assert out.winners == {
        "churn": "distributed",
        "repurchase": "distributed",
        "spend": "distributed",
    }
    assert {c["method"] for c in out.champions.values()} == {"model"}
    assert out.notes[0] == "earlier" and out.notes[1].startswith("no time holdout check")
    assert conclude(metrics, {}, False, []).notes == []
    block = final_meta(out, {}, {}, metrics, {}, {}, {"churn": [("a", 2.0)]}, {"x_s": 1.0})
    assert block["status"] == "good" and block["importance_gain"] == {"churn": [["a", 2.0]]}
    assert set(block["baselines"]["churn"]) == {"single_node", "recency_rule"}
    failed = Outcome(out.parity, ["churn: bad"], out.winners, out.champions, out.notes)
    assert final_meta(failed, {}, {}, metrics, {}, {}, {}, {})["status"] == "failed"


def _metrics(table: pa.Table, meta: dict) -> Any:
    from strata.training.evaluation import evaluate_test

    return evaluate_test(table, _perfect(table), meta, 30, 7)


def test_time_holdout_check_trains_the_classifiers_on_older_cutoffs_only(
    examples: pa.Table, synth_window: tuple[int, int], cfg: TrainConfig
) -> None:
    from strata.training import MODEL_FEATURES, cutoff_iso
    from strata.training.evaluation import Split, time_holdout_check

    table, meta = _two_cutoffs(examples, synth_window)
    newest, older = meta["cutoffs_ms"]
    calls: list[tuple[str, set[int], set[int], int]] = []

    def fit_predict(name: str, tr: Split, va: Split, te: Split) -> np.ndarray:
        cut = {int(c) for c in _np(tr.table, "cutoff_ms")}
        calls.append((name, cut, {int(c) for c in _np(te.table, "cutoff_ms")}, tr.X.shape[1]))
        return te.label(f"label_{name}").astype(np.float64)

    params = {newest: None, older: None}
    features = list(MODEL_FEATURES[:5])
    got = time_holdout_check(table, table, table, features, cfg, 30, params, fit_predict)
    assert [c[0] for c in calls] == ["churn", "repurchase"]  # classifiers only
    assert all(c[1] == {older} and c[2] == {newest} and c[3] == 5 for c in calls)
    assert set(got) == {"churn", "repurchase"}
    assert got["churn"]["cutoff"] == cutoff_iso(newest)
    assert got["churn"]["train_cutoffs"] == [cutoff_iso(older)]
    assert got["churn"]["rows"]["test"] == examples.num_rows
    assert set(got["churn"]["metrics"]) == {"distributed", "recency_rule"}  # no BG/NBD fit
    assert got["churn"]["metrics"]["distributed"]["auc"] == 1.0
    assert (
        time_holdout_check(
            examples, examples, examples, features, cfg, 30, {newest: None}, fit_predict
        )
        == {}
    )


def test_margins_bgnbd_block_and_models_block(examples: pa.Table, cfg: TrainConfig) -> None:
    from strata.training import MARGIN_COLUMNS, BgnbdParams
    from strata.training.evaluation import Split, bgnbd_block, margin_column, models_block

    assert margin_column({"bgnbd": {"boost_from": True}}, "churn") == MARGIN_COLUMNS["churn"]
    assert margin_column({"bgnbd": {"boost_from": False}}, "churn") is None
    assert margin_column({}, "spend") is None
    split = Split.of(examples, ["recency_days"])
    assert split.X.shape == (examples.num_rows, 1) and split.X.dtype == np.float32
    assert split.label("label_churn").dtype == np.float32 and split.margin(None) is None
    fit = BgnbdParams(r=0.5, alpha=10.0, a=0.8, b=2.0)
    block, notes = bgnbd_block({2: None, 1: fit}, [2, 1], True, ["x"])
    assert block["boost_from"] is False
    assert notes == ["x", "models not boosted from BG/NBD: the newest cutoff has no fit"]
    block, notes = bgnbd_block({2: fit, 1: None}, [2, 1], True, [])
    assert block["boost_from"] is True and notes == []
    assert bgnbd_block({2: fit}, [2], False, [])[0]["boost_from"] is False
    infos = {n: {"rounds": 3} for n in ("churn", "repurchase", "spend")}
    models = models_block(cfg, ["recency_days"], infos, {"bgnbd": {"boost_from": True}})
    assert models["churn"]["file"] == "churn.ubj" and models["churn"]["rounds"] == 3
    assert models["spend"]["base_margin"] == "bgnbd"
    assert models_block(cfg, ["recency_days"], infos, {})["spend"]["base_margin"] is None


def test_start_meta_digests_the_warehouse_and_configs(
    cfg: TrainConfig, fconfig: FeatureConfig
) -> None:
    from strata.training.evaluation import start_meta

    manifest = {"n_buckets": 4, "tables": {"events": {"rows": 3}}, "updated_at": "t"}
    a = start_meta("2025-12-01T00:00:00+08:00", 5, 30, cfg, [5], manifest, 2, fconfig)
    b = start_meta(
        "2025-12-01T00:00:00+08:00", 5, 30, cfg, [5], {**manifest, "updated_at": "u"}, 2, fconfig
    )
    c = start_meta("x", 5, 30, cfg, [5], {**manifest, "n_buckets": 8}, 2, fconfig)
    assert a["data"]["sha256"] == b["data"]["sha256"] != c["data"]["sha256"]
    assert a["data"]["warehouse_updated_at"] == "t" and a["data"]["buckets"] == 2
    other = cfg.model_copy(update={"repurchase_days": 3})
    d = start_meta("x", 5, 30, other, [5], manifest, 2, fconfig)
    assert d["config"]["train_sha256"] != a["config"]["train_sha256"]
    assert d["config"]["features_sha256"] == a["config"]["features_sha256"]


def test_horizon_and_example_problems(cfg: TrainConfig) -> None:
    from strata.training import ExamplePartials, horizon_problem

    assert horizon_problem(cfg, 30) is None
    assert horizon_problem(cfg, 0) == "--horizon must be at least 1 day, got 0"
    assert "must be smaller than the horizon" in (horizon_problem(cfg, cfg.repurchase_days) or "")
    shards = [_shard(7, 3, 1.0), _shard(2, 4, 2.0)]
    ex = ExamplePartials.merge_all(shards)
    assert (ex.problem() or "").startswith("split(s) ['validation'] have no examples")
    assert ex.files_by_bucket() == {
        2: ["/w/train/part-00002.parquet", "/w/test/part-00002.parquet"],
        7: ["/w/train/part-00007.parquet", "/w/test/part-00007.parquet"],
    }
    ex.add_valid({"train": {"recency_days": 2, "bgnbd_p_alive": 5}})
    assert ex.valid["train"]["recency_days"] == 9 and ex.valid["train"]["bgnbd_p_alive"] == 5
    ex.rows["validation"] = 1
    ex.labelled = {s: {k: 10 for k in LABEL_COLUMNS} for s in ex.labelled}
    assert ex.problem() is None
    ex.labelled["test"]["label_spend"] = 0
    assert ex.problem() == (
        "labels missing for label_spend (test): the spend label needs amount_cny in the events"
    )


# =========================================================================== short history
#: A BG/NBD fit on 45 days of history (400 generated users): a and b drift to ~0.
_DEGENERATE = {"r": 3.1459, "alpha": 11.9113, "a": 2.7198e-22, "b": 2.0089e-15}


def test_expected_purchases_on_a_degenerate_short_history_fit_is_finite() -> None:
    from strata.training import BgnbdParams, expected_purchases, p_alive

    params = BgnbdParams(**_DEGENERATE, n_customers=200)
    big_t = np.array([1.0, 5.0, 14.0])
    for x in (0.0, 1.0, 2.0, 5.0):
        xs, tx = np.full(3, x), np.minimum(big_t, 3.0) if x else np.zeros(3)
        got = expected_purchases(params, 30, xs, tx, big_t)
        assert np.isfinite(got).all(), (x, got)  # x = 1 was inf (2F1 with c = a + b ~ 0)
        # a ~ 0: nobody drops out, the NBD expectation (r + x) / (alpha + T) * t remains
        nbd = (params.r + x) / (params.alpha + big_t) * 30 * p_alive(params, xs, tx, big_t)
        np.testing.assert_allclose(got, nbd, rtol=1e-5)


def test_bgnbd_features_on_a_short_window_are_null_or_finite_never_inf() -> None:
    from strata.training import BgnbdParams, add_bgnbd_features
    from strata.training._arrow import f32_array

    table = pa.table(
        {
            "btyd_frequency": pa.array([0.0, 1.0, 1.0, None]),
            "btyd_recency": pa.array([0.0, 2.0, 9.0, None]),
            "btyd_t": pa.array([3.0, 4.0, 14.0, None]),
        }
    )
    out = add_bgnbd_features(table, BgnbdParams(**_DEGENERATE, n_customers=200), 30)
    for name in ("bgnbd_p_alive", "bgnbd_expected", "bgnbd_p_churn"):
        values = out.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        assert not np.isinf(values).any(), name
        assert np.isfinite(values[:3]).all() and np.isnan(values[3]), name
    # inf and float32 overflow have no value a model can use: missing
    arr = f32_array(np.array([1.0, np.inf, -np.inf, 1e300, np.nan]))
    assert arr.to_pylist() == [1.0, None, None, None, None]


def test_cutoff_plan_on_a_60_day_history_keeps_the_newest_cutoff(cfg: TrainConfig) -> None:
    from strata.training import MIN_HISTORY_DAYS, cutoff_iso, history_start_ms, plan_cutoffs

    as_of = 1_790_784_000_000  # 2026-10-01 local midnight
    configured = cutoffs_for(as_of, cfg)
    assert cfg.cutoffs == 4 and cfg.cutoff_step_days == 30 and cfg.horizon_days == 30
    plan = plan_cutoffs(as_of, cfg, 30, as_of - 60 * DAY_MS)
    # cutoff 1 is 30 days after the first event; cutoff 2 sits on it, 3 and 4 before it
    assert plan.kept == configured[:1] and plan.dropped == configured[1:]
    assert plan.history_days == 60 and plan.problem() is None
    note = plan.note()
    assert note is not None and "trained on 1 of the 4 cutoffs" in note and "134 days" in note
    assert plan.meta()["cutoffs_dropped"] == [cutoff_iso(c) for c in configured[1:]]
    # enough history for all: nothing dropped, no note
    full = plan_cutoffs(as_of, cfg, 30, as_of - (30 + 90 + MIN_HISTORY_DAYS) * DAY_MS)
    assert full.kept == configured and full.note() is None and full.days_for_all == 134
    # a cutoff needs MIN_HISTORY_DAYS before it: 43 days of history serve none
    short = plan_cutoffs(as_of, cfg, 30, as_of - 43 * DAY_MS)
    assert short.kept == []
    problem = short.problem()
    assert problem is not None
    for word in ("horizon_days (30)", "cutoffs (4)", "cutoff_step_days (30)", "43.0 days", "44"):
        assert word in problem
    assert "no event" in (plan_cutoffs(as_of, cfg, 30, None).problem() or "")
    manifest = {
        "tables": {
            "events": {
                "buckets": {
                    "0": {"parts": [{"min_ts_ms": 5}, {"min_ts_ms": None}]},
                    "1": {"parts": [{"min_ts_ms": 3}]},
                }
            }
        }
    }
    assert history_start_ms(manifest) == 3
