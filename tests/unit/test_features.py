"""Unit tests of strata.features: hand-built buckets with known answers, lifetimes parity,
shard-independent RFM ranks, and config validation."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from strata.config import ConfigError
from strata.features import (
    DICTIONARY_COLUMNS,
    FEATURE_COLUMNS,
    FEATURES_SCHEMA,
    FeatureConfig,
    IntHistogram,
    LogHistogram,
    RfmMeasures,
    RfmPartials,
    compute_features,
    load_feature_config,
    money_bin,
    percentile_rank,
    rfm_partials,
    rfm_scores,
)
from strata.schema import CATEGORIES, EVENTS_SCHEMA, TIMESTAMP, USERS_SCHEMA
from strata.timeutil import DAY_MS

LOCAL = dt.timezone(dt.timedelta(hours=8))


def local_ms(text: str) -> int:
    """UTC epoch ms of a local (UTC+8) time 'YYYY-MM-DD HH:MM'."""
    return int(
        dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=LOCAL).timestamp() * 1000
    )


AS_OF = local_ms("2026-01-01 00:00")  # observation day: 2025-12-31


def events_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> pa.Table:
    """Events from dicts with 'user', 'at' (local time text) or 'ts' (ms), 'type' and extras."""
    data: dict[str, list[Any]] = {name: [] for name in EVENTS_SCHEMA.names}
    for r in rows:
        for name in EVENTS_SCHEMA.names:
            data[name].append(None)
        data["user_id"][-1] = r["user"]
        data["ts"][-1] = r["ts"] if "ts" in r else local_ms(r["at"])
        data["event_type"][-1] = r.get("type", "order")
        for key in ("order_id", "amount_cny", "discount_cny", "coupon_id", "categories", "rating"):
            if key in r:
                data[key][-1] = r[key]
    arrays = []
    for field in EVENTS_SCHEMA:
        if field.name == "ts":
            arrays.append(pa.array(data["ts"], pa.int64()).cast(TIMESTAMP))
        else:
            arrays.append(pa.array(data[field.name], field.type))
    table = pa.Table.from_arrays(arrays, schema=EVENTS_SCHEMA)
    return table.select(columns) if columns else table


def users_table(rows: list[dict[str, Any]]) -> pa.Table:
    data: dict[str, list[Any]] = {name: [r.get(name) for r in rows] for name in USERS_SCHEMA.names}
    data["user_id"] = [r["user"] for r in rows]
    data["signup_ts"] = [local_ms(r["signup"]) if r.get("signup") else None for r in rows]
    arrays = [
        pa.array(data["signup_ts"], pa.int64()).cast(TIMESTAMP)
        if f.name == "signup_ts"
        else pa.array(data[f.name], f.type)
        for f in USERS_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=USERS_SCHEMA)


@pytest.fixture(scope="module")
def config() -> FeatureConfig:
    return load_feature_config()


def by_user(table: pa.Table) -> dict[int, dict[str, Any]]:
    return {row["user_id"]: row for row in table.to_pylist()}


def features(
    rows: list[dict[str, Any]], config: FeatureConfig, users: pa.Table | None = None, **kw: Any
) -> dict[int, dict[str, Any]]:
    out = compute_features(events_table(rows, **kw), users, AS_OF, config)
    assert out.schema.equals(FEATURES_SCHEMA, check_metadata=False)
    return by_user(out)


# ------------------------------------------------------------------ schema and config
def test_schema_and_columns() -> None:
    assert tuple(FEATURES_SCHEMA.names) == FEATURE_COLUMNS
    assert FEATURE_COLUMNS[0] == "user_id"
    assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)
    for c in CATEGORIES:
        assert f"share_{c}" in FEATURE_COLUMNS


def test_every_column_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "features.md").read_text()
    documented = set(re.findall(r"`([a-z0-9_<>]+)`", doc))
    missing = [
        c for c in FEATURE_COLUMNS if c not in documented and not c.startswith(("share_", "slot_"))
    ]
    assert not missing
    assert "share_<category>" in documented and "slot_<slot>" in documented


def test_repository_config_is_the_default() -> None:
    assert load_feature_config() == FeatureConfig()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("windows:\n  funel_days: 90\n", "unknown key 'funel_days'"),
        ("weekend_daytype_min: 1.5\n", "weekend_daytype_min"),
        ("price_sensitivity:\n  coupon_share_min: -0.1\n", "price_sensitivity.coupon_share_min"),
        ("time_slots:\n  morning: 6\n  noon: 5\n", "must increase strictly"),
        ("time_slots:\n  night: 24\n", "time_slots.night"),
        ("windows:\n  funnel_days: 0\n", "windows.funnel_days"),
        ("discount_sensitivity:\n  depth_cap: 0\n", "discount_sensitivity.depth_cap"),
    ],
)
def test_config_validation_errors(tmp_path: Path, yaml_text: str, message: str) -> None:
    (tmp_path / "features.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_feature_config(tmp_path)
    assert message in str(err.value)
    assert "features.yaml" in str(err.value)


def test_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_feature_config(tmp_path)


def test_time_slots_cover_the_day() -> None:
    slots = FeatureConfig().time_slots.hour_to_slot()
    assert slots.tolist() == [4] * 6 + [0] * 5 + [1] * 3 + [2] * 4 + [3] * 4 + [4] * 2
    midnight_morning = FeatureConfig.model_validate(
        {"time_slots": {"morning": 0, "noon": 10, "afternoon": 13, "evening": 17, "night": 21}}
    )
    assert midnight_morning.time_slots.hour_to_slot()[0] == 0


# ------------------------------------------------------------------ RFM and BTYD
def test_rfm_known_answers(config: FeatureConfig) -> None:
    rows = [
        # user 1: orders at 200, 120, 60, 10 days ago and one earlier today (local)
        {"user": 1, "at": "2025-06-14 09:00", "order_id": "a", "amount_cny": 10.0},  # 200 d
        {"user": 1, "at": "2025-09-02 20:00", "order_id": "b", "amount_cny": 20.0},  # 120 d
        {"user": 1, "at": "2025-11-01 12:00", "order_id": "c", "amount_cny": 30.0},  # 60 d
        {"user": 1, "at": "2025-12-21 23:30", "order_id": "d", "amount_cny": 40.0},  # 10 d
        {"user": 1, "at": "2025-12-31 08:00", "order_id": "e", "amount_cny": 50.0},  # obs day
        # user 2: one order, exactly on the 30-day window's first local day
        {"user": 2, "at": "2025-12-02 00:00", "order_id": "f", "amount_cny": 7.5},
        # user 3: no order
        {"user": 3, "at": "2025-12-30 10:00", "type": "item_view"},
    ]
    f = features(rows, config)
    u1, u2, u3 = f[1], f[2], f[3]
    assert u1["recency_days"] == 0
    assert (u1["frequency_30d"], u1["frequency_90d"], u1["frequency_180d"]) == (2, 3, 4)
    assert (u1["monetary_30d"], u1["monetary_90d"], u1["monetary_180d"]) == (90.0, 120.0, 140.0)
    assert (u1["frequency_prev_90d"], u1["monetary_prev_90d"]) == (1, 20.0)
    assert (u1["orders_total"], u1["spend_total_cny"], u1["aov_cny"]) == (5, 150.0, 30.0)
    assert u1["first_order_ts"].timestamp() * 1000 == local_ms("2025-06-14 09:00")
    assert u1["last_order_ts"].timestamp() * 1000 == local_ms("2025-12-31 08:00")
    assert (u1["ltv_cny"], u1["arpu_30d_cny"]) == (150.0, 90.0)
    # 2025-12-02 is the first day of the 30-day window ending 2025-12-31
    assert (u2["recency_days"], u2["frequency_30d"], u2["monetary_30d"]) == (29, 1, 7.5)
    assert u3["recency_days"] is None and u3["aov_cny"] is None
    assert u3["first_order_ts"] is None and u3["last_order_ts"] is None
    assert (u3["frequency_90d"], u3["orders_total"], u3["spend_total_cny"]) == (0, 0, 0.0)
    for c in ("btyd_frequency", "btyd_recency", "btyd_t", "btyd_monetary_value"):
        assert u3[c] is None


def test_btyd_known_answers(config: FeatureConfig) -> None:
    rows = [
        {"user": 1, "at": "2025-12-01 09:00", "amount_cny": 10.0},
        {"user": 1, "at": "2025-12-01 23:59", "amount_cny": 5.0},  # same local day
        {"user": 1, "at": "2025-12-02 00:01", "amount_cny": 8.0},  # next local day
        {"user": 1, "at": "2025-12-11 12:00", "amount_cny": 4.0},
        {"user": 2, "at": "2025-12-20 12:00", "amount_cny": 9.0},
    ]
    f = features(rows, config)
    assert (f[1]["btyd_frequency"], f[1]["btyd_recency"], f[1]["btyd_t"]) == (2.0, 10.0, 30.0)
    assert f[1]["btyd_monetary_value"] == 6.0  # (8 + 4) / 2, first day excluded
    assert (f[2]["btyd_frequency"], f[2]["btyd_recency"], f[2]["btyd_t"]) == (0.0, 0.0, 11.0)
    assert f[2]["btyd_monetary_value"] == 0.0
    assert f[1]["recency_days"] == f[1]["btyd_t"] - f[1]["btyd_recency"]


def _lifetimes_summary(rows: list[tuple[int, int, float]], as_of_ms: int) -> Any:
    import pandas as pd
    from lifetimes.utils import summary_data_from_transaction_data

    df = pd.DataFrame(rows, columns=["user", "ts", "amount"])
    df = df[df["ts"] < as_of_ms]
    # local-time naive datetimes; observation end = local date of (as_of - 1 ms)
    df["when"] = pd.to_datetime(df["ts"] + 8 * 3_600_000, unit="ms")
    end = pd.to_datetime(as_of_ms - 1 + 8 * 3_600_000, unit="ms").normalize()
    return summary_data_from_transaction_data(
        df, "user", "when", "amount", observation_period_end=end, freq="D"
    )


@pytest.mark.parametrize("cents", [False, True])
@pytest.mark.parametrize("as_of_text", ["2026-01-01 00:00", "2025-12-20 15:37"])
def test_btyd_matches_lifetimes(config: FeatureConfig, cents: bool, as_of_text: str) -> None:
    rng = np.random.default_rng(7)
    as_of = local_ms(as_of_text)
    n_users = 300
    n = 4000
    user = rng.integers(1, n_users + 1, n)
    ts = as_of - rng.integers(-20 * DAY_MS, 400 * DAY_MS, n)  # some after as-of
    # dyadic amounts add exactly in any order; cents exercise rounding (near-exact)
    amount = np.round(rng.uniform(1, 300, n), 2) if cents else rng.integers(4, 1200, n) / 4
    order = np.lexsort((ts, user))
    user, ts, amount = user[order], ts[order], amount[order]
    table = pa.table(
        {
            "user_id": pa.array(user, pa.int64()),
            "ts": pa.array(ts, pa.int64()).cast(TIMESTAMP),
            "amount_cny": pa.array(amount),
        }
    )
    ours = by_user(compute_features(table, None, as_of, config))
    expected = _lifetimes_summary(
        list(zip(user.tolist(), ts.tolist(), amount.tolist(), strict=True)), as_of
    )
    assert set(expected.index) == {u for u, r in ours.items() if r["orders_total"] > 0}
    for uid, row in expected.iterrows():
        got = ours[uid]
        assert got["btyd_frequency"] == row["frequency"]
        assert got["btyd_recency"] == row["recency"]
        assert got["btyd_t"] == row["T"]
        if cents:
            assert got["btyd_monetary_value"] == pytest.approx(
                row["monetary_value"], rel=1e-12, abs=1e-12
            )
        else:
            assert got["btyd_monetary_value"] == row["monetary_value"]


# ------------------------------------------------------------------ orders
def test_line_level_orders_counted_once(config: FeatureConfig) -> None:
    t = "2025-12-30 10:00"
    rows = [
        {"user": 1, "at": t, "order_id": "A", "amount_cny": 10.0, "categories": ["fruit"]},
        {"user": 1, "at": t, "order_id": "B", "amount_cny": 1.0, "categories": ["dairy_eggs"]},
        {"user": 1, "at": t, "order_id": "A", "amount_cny": 5.0, "categories": ["seafood"]},
        {"user": 1, "at": t, "amount_cny": 2.0},  # no id: its own order
        {"user": 1, "at": t, "amount_cny": 2.0},
        {"user": 1, "at": "2025-12-30 11:00", "order_id": "A", "amount_cny": 3.0},  # other ts
        {"user": 2, "at": t, "order_id": "A", "amount_cny": 4.0},  # same id, other user
    ]
    f = features(rows, config)
    assert f[1]["orders_total"] == 5  # A, B, two without id, A at another time
    assert f[1]["spend_total_cny"] == 23.0
    assert f[1]["aov_cny"] == 23.0 / 5
    assert f[1]["btyd_frequency"] == 0.0  # one purchase day
    # category spend is split per row: A's lines keep their own categories
    assert f[1]["share_fruit"] == pytest.approx(10 / 16)
    assert f[1]["share_seafood"] == pytest.approx(5 / 16)
    assert f[1]["share_dairy_eggs"] == pytest.approx(1 / 16)
    assert f[2]["orders_total"] == 1
    # without order ids every order row is an order
    f2 = features(rows, config, columns=["user_id", "ts", "event_type", "amount_cny"])
    assert f2[1]["orders_total"] == 6


def test_line_level_coupon_and_discount_merge(config: FeatureConfig) -> None:
    t = "2025-12-30 10:00"
    rows: list[dict[str, Any]] = [
        {"user": 1, "at": t, "order_id": "A", "amount_cny": 60.0, "discount_cny": 10.0},
        {
            "user": 1,
            "at": t,
            "order_id": "A",
            "amount_cny": 20.0,
            "discount_cny": 10.0,
            "coupon_id": "c",
        },
        {
            "user": 1,
            "at": "2025-12-29 10:00",
            "order_id": "B",
            "amount_cny": 100.0,
            "discount_cny": 0.0,
        },
    ]
    f = features(rows, config)[1]
    assert f["orders_total"] == 2
    assert f["coupon_order_share"] == 0.5
    assert f["avg_discount_depth"] == pytest.approx((20 / 100 + 0.0) / 2)


# ------------------------------------------------------------------ leakage, nulls, imports
def test_events_at_or_after_as_of_are_ignored(config: FeatureConfig) -> None:
    before: list[dict[str, Any]] = [
        {"user": 1, "at": "2025-12-31 23:59", "order_id": "a", "amount_cny": 10.0},
        {"user": 1, "at": "2025-12-20 10:00", "type": "item_view"},
        {"user": 2, "at": "2025-10-01 10:00", "type": "app_visit"},
    ]
    after: list[dict[str, Any]] = [
        {"user": 1, "ts": AS_OF, "order_id": "x", "amount_cny": 99.0, "coupon_id": "c"},
        {"user": 1, "at": "2026-01-05 10:00", "type": "item_view"},
        {"user": 2, "at": "2026-01-02 10:00", "order_id": "y", "amount_cny": 5.0},
        {"user": 9, "at": "2026-01-02 10:00", "type": "app_visit"},  # only future events
    ]
    rows = sorted(before + after, key=lambda r: (r["user"], r.get("ts") or local_ms(r["at"])))
    clean = compute_features(events_table(before), None, AS_OF, config)
    mixed = compute_features(events_table(rows), None, AS_OF, config)
    assert mixed.equals(clean)
    assert 9 not in by_user(mixed)


def test_users_table(config: FeatureConfig) -> None:
    users = users_table(
        [
            {"user": 5, "signup": "2025-01-01 00:00", "channel": "ads", "city": "old"},
            {
                "user": 1,
                "signup": "2025-03-01 00:00",
                "channel": "organic",
                "city": "hangzhou",
                "age_band": "25-34",
            },
            {
                "user": 5,
                "signup": "2025-02-01 00:00",
                "channel": "social_share",
                "city": "shanghai",
            },  # last wins
            {"user": 7, "signup": "2026-01-01 00:00", "channel": "ads"},  # signup == as-of: in
            {"user": 8, "signup": "2026-01-01 00:01", "channel": "ads"},  # after as-of: out
            {"user": 6, "signup": None, "device": "ios"},  # unknown signup: in
        ]
    )
    rows = [{"user": 2, "at": "2025-12-01 10:00", "type": "app_visit"}]
    f = features(rows, config, users=users)
    assert sorted(f) == [1, 2, 5, 6, 7]
    assert (f[5]["channel"], f[5]["city"]) == ("social_share", "shanghai")
    assert f[5]["signup_ts"].timestamp() * 1000 == local_ms("2025-02-01 00:00")
    assert (f[1]["channel"], f[1]["age_band"], f[1]["gender"]) == ("organic", "25-34", None)
    assert f[6]["device"] == "ios" and f[6]["signup_ts"] is None
    assert f[2]["channel"] is None and f[2]["signup_ts"] is None  # events only
    # users without events: zero counts, null rates, unknown price sensitivity
    u = f[7]
    assert (u["orders_total"], u["views"], u["visits"], u["active_days_30d"]) == (0, 0, 0, 0)
    assert u["recency_days"] is None and u["weekend_share"] is None and u["top_category"] is None
    assert u["price_sensitivity"] == "unknown" and u["discount_sensitivity"] is None


def test_users_without_orders(config: FeatureConfig) -> None:
    rows = [
        {"user": 1, "at": "2025-12-30 10:00", "type": "item_view"},
        {"user": 1, "at": "2025-12-30 10:05", "type": "add_to_cart"},
        {"user": 1, "at": "2025-12-30 10:06", "type": "app_visit"},
    ]
    u = features(rows, config)[1]
    assert (u["orders_total"], u["frequency_30d"], u["monetary_90d"], u["ltv_cny"]) == (
        0,
        0,
        0.0,
        0.0,
    )
    assert u["cart_to_order_rate"] == 0.0  # one add-to-cart, no order
    for c in (
        "recency_days",
        "aov_cny",
        "btyd_t",
        "coupon_order_share",
        "avg_discount_depth",
        "coupon_only_share",
        "discount_sensitivity",
        "top_category",
        "share_fruit",
        "mean_rating",
    ):
        assert u[c] is None, c
    assert u["price_sensitivity"] == "unknown"
    assert u["active_slot"] == "morning"  # the visit counts as activity


def test_imported_purchase_log(config: FeatureConfig) -> None:
    """Only user/ts/amount: order features computed, everything else null or 0, not invented."""
    rows = [
        {"user": 1, "at": "2025-12-01 09:00", "amount_cny": 10.0},
        {"user": 1, "at": "2025-12-13 20:00", "amount_cny": 30.0},  # Saturday evening
        {"user": 2, "at": "2025-07-01 12:00", "amount_cny": 5.0},
    ]
    table = events_table(rows, columns=["user_id", "ts", "amount_cny"])
    f = by_user(compute_features(table, pa.table({}), AS_OF, config))
    u = f[1]
    assert (u["orders_total"], u["spend_total_cny"], u["recency_days"]) == (2, 40.0, 18)
    assert (u["btyd_frequency"], u["btyd_recency"], u["btyd_monetary_value"]) == (1.0, 12.0, 30.0)
    assert u["weekend_share"] == 0.5 and u["slot_evening"] == 0.5 and u["slot_morning"] == 0.5
    assert u["active_slot"] == "morning"  # tie: first slot in order
    for c in (
        "coupon_order_share",
        "avg_discount_depth",
        "coupon_only_share",
        "discount_sensitivity",
        "top_category",
        "mean_rating",
        "channel",
        "signup_ts",
        "cart_to_order_rate",
        *(f"share_{c}" for c in CATEGORIES),
    ):
        assert u[c] is None, c
    assert u["price_sensitivity"] == "unknown"
    assert (u["views"], u["add_to_carts"], u["reviews"], u["visits"]) == (0, 0, 0, 0)
    assert u["active_days_30d"] == 1  # 2025-12-01 is before the 30-day window
    assert f[2]["frequency_180d"] == 0 and f[2]["orders_total"] == 1


# ------------------------------------------------------------------ preferences
def test_category_preference(config: FeatureConfig) -> None:
    rows = [
        {
            "user": 1,
            "at": "2025-05-01 10:00",
            "amount_cny": 1000.0,
            "categories": ["seafood"],
        },  # > 180 d
        {
            "user": 1,
            "at": "2025-12-01 10:00",
            "amount_cny": 30.0,
            "categories": ["fruit", "vegetables", "unknown_cat"],
        },
        {"user": 1, "at": "2025-12-02 10:00", "amount_cny": 20.0, "categories": ["fruit"]},
        {"user": 1, "at": "2025-12-03 10:00", "amount_cny": 50.0},  # no categories: not in shares
        {
            "user": 2,
            "at": "2025-12-03 10:00",
            "amount_cny": 10.0,
            "categories": ["meat_poultry", "fruit"],
        },
        {"user": 3, "at": "2025-12-03 10:00", "amount_cny": 10.0, "categories": []},
    ]
    f = features(rows, config)
    u = f[1]
    assert u["share_fruit"] == pytest.approx(30 / 50)
    assert u["share_vegetables"] == pytest.approx(10 / 50)
    assert u["share_seafood"] == 0.0
    assert sum(u[f"share_{c}"] for c in CATEGORIES) == pytest.approx(0.8)  # 10 CNY unknown
    assert u["top_category"] == "fruit"
    assert f[2]["top_category"] == "fruit"  # tie: first in CATEGORIES order
    assert f[3]["top_category"] is None and f[3]["share_fruit"] is None


def test_price_sensitivity_labels(config: FeatureConfig) -> None:
    def orders(user: int, specs: list[tuple[float, float, bool]]) -> list[dict[str, Any]]:
        out = []
        for i, (amount, discount, coupon) in enumerate(specs):
            r: dict[str, Any] = {
                "user": user,
                "at": f"2025-12-{10 + i:02d} 10:00",
                "order_id": f"{user}-{i}",
                "amount_cny": amount,
                "discount_cny": discount,
            }
            if coupon:
                r["coupon_id"] = "c"
            out.append(r)
        return out

    rows = (
        orders(1, [(50, 5, True), (50, 5, True), (50, 0, False)])  # coupon share 2/3
        + orders(2, [(85, 15, False), (100, 0, False)])  # depth (0.15 + 0) / 2 < 0.15 ...
        + orders(3, [(85, 15, False)])  # depth 0.15: coupon_sensitive
        + orders(4, [(200, 0, False), (150, 0, False)])  # aov 175, no coupon: quality
        + orders(5, [(200, 0, True), (150, 0, False)])  # coupon share 0.5: sensitive
        + orders(6, [(50, 0, False)])  # cheap, no coupon: insensitive
    )
    f = features(rows, config)
    assert f[1]["price_sensitivity"] == "coupon_sensitive"
    assert f[1]["coupon_order_share"] == pytest.approx(2 / 3)
    assert f[1]["avg_discount_depth"] == pytest.approx((5 / 55 * 2) / 3)
    assert f[2]["price_sensitivity"] == "price_insensitive"
    assert f[3]["price_sensitivity"] == "coupon_sensitive"
    assert f[4]["price_sensitivity"] == "quality_sensitive"
    assert f[5]["price_sensitivity"] == "coupon_sensitive"
    assert f[6]["price_sensitivity"] == "price_insensitive"
    # discount_sensitivity = 0.5 * coupon share + 0.5 * min(1, depth / 0.3)
    assert f[3]["discount_sensitivity"] == pytest.approx(0.5 * 0 + 0.5 * 0.5)
    assert f[1]["discount_sensitivity"] == pytest.approx(0.5 * 2 / 3 + 0.5 * (10 / 165) / 0.3)
    assert f[1]["coupon_only_share"] == pytest.approx(2 / 3)


def test_coupon_only_share_is_recent(config: FeatureConfig) -> None:
    rows = [
        {"user": 1, "at": "2025-03-01 10:00", "amount_cny": 10.0, "coupon_id": "c"},
        {"user": 1, "at": "2025-03-02 10:00", "amount_cny": 10.0, "coupon_id": "c"},
        {"user": 1, "at": "2025-12-01 10:00", "amount_cny": 10.0},
        {"user": 2, "at": "2025-03-01 10:00", "amount_cny": 10.0},
    ]
    f = features(rows, config)
    assert f[1]["coupon_order_share"] == pytest.approx(2 / 3)  # to date
    assert f[1]["coupon_only_share"] == 0.0  # last 90 days
    assert f[2]["coupon_only_share"] is None and f[2]["coupon_order_share"] == 0.0


def test_active_time(config: FeatureConfig) -> None:
    rows = [
        {"user": 1, "at": "2025-12-06 05:59", "type": "app_visit"},  # Sat, night
        {"user": 1, "at": "2025-12-06 06:00", "type": "app_visit"},  # Sat, morning
        {"user": 1, "at": "2025-12-08 11:00", "type": "app_visit"},  # Mon, noon
        {"user": 1, "at": "2025-12-09 22:00", "amount_cny": 5.0},  # Tue, night (an order)
        {"user": 1, "at": "2025-12-09 21:59", "type": "item_view"},  # views are not activity
        {"user": 1, "at": "2025-08-01 15:00", "type": "app_visit"},  # outside 90 days
        {"user": 2, "at": "2025-12-13 14:00", "type": "app_visit"},  # Sat afternoon
        {"user": 2, "at": "2025-12-14 18:00", "type": "app_visit"},  # Sun evening
        {"user": 2, "at": "2025-12-15 18:00", "type": "app_visit"},  # Mon evening
    ]
    f = features(rows, config)
    u = f[1]
    assert u["weekend_share"] == 0.5
    assert (u["slot_night"], u["slot_morning"], u["slot_noon"], u["slot_afternoon"]) == (
        0.5,
        0.25,
        0.25,
        0.0,
    )
    assert u["active_slot"] == "night" and u["active_daytype"] == "weekend"
    assert f[2]["weekend_share"] == pytest.approx(2 / 3) and f[2]["active_slot"] == "evening"
    assert f[2]["active_daytype"] == "weekend"


def test_funnel_and_interaction(config: FeatureConfig) -> None:
    types = [
        ("item_view", 3),
        ("category_view", 2),
        ("search", 2),
        ("add_to_cart", 4),
        ("remove_from_cart", 1),
        ("favourite", 1),
        ("share", 2),
        ("coupon_claim", 3),
        ("coupon_use", 1),
        ("service_contact", 1),
        ("community_post", 2),
        ("app_visit", 5),
        ("unknown_type", 3),
    ]
    rows: list[dict[str, Any]] = []
    for name, count in types:
        rows += [
            {"user": 1, "at": f"2025-12-{10 + i:02d} 10:00", "type": name} for i in range(count)
        ]
    rows += [
        {"user": 1, "at": "2025-12-20 10:00", "type": "review", "rating": 5},
        {"user": 1, "at": "2025-12-21 10:00", "type": "review", "rating": 2},
        {"user": 1, "at": "2025-12-22 10:00", "type": "review", "rating": 1},
        {"user": 1, "at": "2025-12-22 10:01", "type": "review"},  # no rating
        {"user": 1, "at": "2025-12-23 10:00", "order_id": "o1", "amount_cny": 10.0},
        {"user": 1, "at": "2025-12-24 10:00", "order_id": "o2", "amount_cny": 10.0},
        # older than the 90-day funnel window: not counted
        {"user": 1, "at": "2025-09-01 10:00", "type": "item_view"},
        {"user": 1, "at": "2025-09-01 10:00", "type": "review", "rating": 1},
        {"user": 1, "at": "2025-09-01 11:00", "order_id": "o0", "amount_cny": 10.0},
    ]
    rows.sort(key=lambda r: local_ms(r["at"]))
    u = features(rows, config)[1]
    assert (u["views"], u["searches"], u["add_to_carts"], u["cart_removals"]) == (5, 2, 4, 1)
    assert (u["favourites"], u["shares"], u["coupon_claims"], u["coupon_uses"]) == (1, 2, 3, 1)
    assert (u["reviews"], u["negative_reviews"], u["service_contacts"]) == (4, 2, 1)
    assert (u["community_posts"], u["visits"]) == (2, 5)
    assert u["mean_rating"] == pytest.approx(8 / 3)
    assert u["cart_to_order_rate"] == 0.5  # 2 orders in 90 days / 4 add-to-carts
    # distinct local days in 2025-12-02 .. 2025-12-31 with any event: 10th-14th, 20th-24th
    assert u["active_days_30d"] == 10


def test_active_days_use_local_days(config: FeatureConfig) -> None:
    rows = [
        {"user": 1, "at": "2025-12-01 23:59", "type": "item_view"},  # before the 30-day window
        {"user": 1, "at": "2025-12-02 00:00", "type": "item_view"},  # first day of window
        {"user": 1, "at": "2025-12-02 23:59", "type": "search"},
        {"user": 1, "at": "2025-12-03 00:00", "type": "search"},  # 16:00 UTC the day before
    ]
    assert features(rows, config)[1]["active_days_30d"] == 2


# ------------------------------------------------------------------ input forms
def _random_bucket(seed: int = 3, n_users: int = 200, n: int = 6000) -> tuple[pa.Table, pa.Table]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from features_micro import make_bucket

    return make_bucket(
        n_users=n_users, n_orders=n // 5, n_events=n, seed=seed, as_of_ms=AS_OF + 5 * DAY_MS
    )


def test_unsorted_dictionary_and_chunked_inputs_agree(
    config: FeatureConfig, tmp_path: Path
) -> None:
    events, users = _random_bucket()
    expected = compute_features(events, users, AS_OF, config)
    assert expected.num_rows == 200
    rng = np.random.default_rng(0)
    shuffled = events.take(pa.array(rng.permutation(events.num_rows)))
    assert compute_features(shuffled, users, AS_OF, config).equals(expected)
    path = tmp_path / "b.parquet"
    pq.write_table(events, path, row_group_size=1000)
    read = pq.read_table(path, read_dictionary=list(DICTIONARY_COLUMNS))
    assert read.column("event_type").num_chunks > 1
    assert pa.types.is_dictionary(read.schema.field("event_type").type)
    assert compute_features(read, users, AS_OF, config).equals(expected)
    chunked = pa.concat_tables([events.slice(0, 1234), events.slice(1234)])
    assert compute_features(chunked, users, AS_OF, config).equals(expected)
    chunked_shuffled = pa.concat_tables([shuffled.slice(0, 777), shuffled.slice(777)])
    assert compute_features(chunked_shuffled, users, AS_OF, config).equals(expected)


def test_empty_inputs(config: FeatureConfig) -> None:
    empty = EVENTS_SCHEMA.empty_table()
    out = compute_features(empty, USERS_SCHEMA.empty_table(), AS_OF, config)
    assert out.num_rows == 0 and out.schema.equals(FEATURES_SCHEMA, check_metadata=False)
    users = users_table([{"user": 3, "signup": "2025-01-01 00:00", "channel": "ads"}])
    out = compute_features(empty, users, AS_OF, config)
    assert out.column("user_id").to_pylist() == [3]
    events, _ = _random_bucket()
    assert compute_features(events, None, local_ms("2020-01-01 00:00"), config).num_rows == 0


# ------------------------------------------------------------------ RFM partials and scores
def test_int_histogram_ranks_are_exact() -> None:
    values = np.array([0, 1, 1, 3, 3, 3, 7])
    h = IntHistogram.of(values)
    probe = np.array([0, 1, 2, 3, 7, 8, -1])
    brute = [(np.sum(values < v) + 0.5 * np.sum(values == v)) / len(values) for v in probe]
    assert percentile_rank(probe, h).tolist() == brute
    assert percentile_rank(probe, h, n=14).tolist() == [b / 2 for b in brute]
    assert (
        percentile_rank(probe, IntHistogram.of(np.array([], dtype=np.int64))).tolist() == [0.0] * 7
    )
    with pytest.raises(ValueError):
        IntHistogram.of(np.array([-1]))


def test_money_bins() -> None:
    assert money_bin(np.array([0.0, -3.0, np.nan, 0.001, 0.01, 1e9])).tolist()[:5] == [
        0,
        0,
        0,
        1,
        2,
    ]
    assert money_bin(np.array([1e9]))[0] == money_bin(np.array([1e12]))[0]
    edge = 0.01 * 1.005**1500  # a bin's lower edge (about 17.7 CNY)
    b = money_bin(np.array([edge * 1.0001, edge * 1.0049, edge * 1.0051]))
    assert b[0] == b[1] != b[2]  # 0.5 % bins
    h = LogHistogram.of(np.array([0.0, 10.0, 10.0, 20.0]))
    assert percentile_rank(np.array([10.0, 20.0, 0.0]), h).tolist() == [0.5, 0.875, 0.125]


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_partials_are_shard_independent(config: FeatureConfig, shards: int) -> None:
    events, users = _random_bucket(seed=11, n_users=400, n=12000)
    whole = compute_features(events, users, AS_OF, config)
    p_whole = rfm_partials(whole)
    expected = rfm_scores(whole, p_whole)

    ids = whole.column("user_id").to_numpy()
    shard_of = {
        int(u): int(s)
        for u, s in zip(
            ids, np.random.default_rng(shards).integers(0, shards, len(ids)), strict=True
        )
    }
    ev_shard = np.array([shard_of[int(u)] for u in events.column("user_id").to_numpy()])
    us_shard = np.array([shard_of[int(u)] for u in users.column("user_id").to_numpy()])
    parts = []
    merged = RfmPartials.empty()
    for s in range(shards):
        f = compute_features(
            events.filter(pa.array(ev_shard == s)),
            users.filter(pa.array(us_shard == s)),
            AS_OF,
            config,
        )
        parts.append(f)
        merged = merged.merge(rfm_partials(f))
    assert merged.n_users == p_whole.n_users
    assert np.array_equal(merged.frequency.counts, p_whole.frequency.counts)
    assert np.array_equal(merged.monetary.counts, p_whole.monetary.counts)
    # features per user do not depend on the split either
    assert pa.concat_tables(parts).sort_by("user_id").equals(whole)

    got = {}
    for f in parts:
        r, fr, m, score = rfm_scores(f, merged)
        for i, uid in enumerate(f.column("user_id").to_pylist()):
            got[uid] = (r[i], fr[i], m[i], score[i])
    for i, uid in enumerate(ids.tolist()):
        assert got[uid] == (expected[0][i], expected[1][i], expected[2][i], expected[3][i])


def test_rfm_scores_conventions(config: FeatureConfig) -> None:
    rows = [
        {"user": 1, "at": "2025-12-30 10:00", "amount_cny": 100.0},  # recent, big
        {"user": 1, "at": "2025-12-29 10:00", "amount_cny": 100.0},
        {"user": 2, "at": "2025-11-01 10:00", "amount_cny": 10.0},  # older, small
        {"user": 3, "at": "2025-01-01 10:00", "amount_cny": 10.0},  # no order in 90 days
        {"user": 4, "at": "2025-12-30 10:00", "type": "app_visit"},  # never ordered
    ]
    f = compute_features(events_table(rows), None, AS_OF, config)
    r, fr, m, score = rfm_scores(f, rfm_partials(f))
    # recency ranks: users 1 (1 day), 2 (60 d), 3 (364 d); user 4 has none -> 0
    assert r.tolist() == [1 - 0.5 / 4, 1 - 1.5 / 4, 1 - 2.5 / 4, 0.0]
    assert fr.tolist() == [(3 + 0.5) / 4, (2 + 0.5) / 4, 0.0, 0.0]
    assert m.tolist() == [(3 + 0.5) / 4, (2 + 0.5) / 4, 0.0, 0.0]
    assert score == pytest.approx(0.4 * r + 0.3 * fr + 0.3 * m)
    assert np.all((score >= 0) & (score <= 1))
    with pytest.raises(ValueError):
        rfm_scores(f, rfm_partials(f), weights=(0.5, 0.5, 0.5))


# ------------------------------------------------------------------ long windows and measures
def test_long_window_columns(config: FeatureConfig) -> None:
    rows = [
        {"user": 1, "at": "2024-11-01 10:00", "amount_cny": 5.0},  # 426 days back: lifetime only
        {"user": 1, "at": "2025-03-01 10:00", "amount_cny": 20.0},  # 306 days back
        {"user": 1, "at": "2025-12-31 23:00", "amount_cny": 30.0},  # the observation day
        {"user": 2, "at": "2025-12-31 09:00", "amount_cny": 7.0},  # first order today
        {"user": 3, "at": "2025-12-30 10:00", "type": "app_visit"},  # never ordered
        {"user": 4, "at": "2025-12-02 10:00", "amount_cny": 1.0},  # 30 days, both counted
        {"user": 5, "at": "2025-12-01 10:00", "amount_cny": 1.0},  # 31 days
    ]
    f = compute_features(events_table(rows), None, AS_OF, config)
    assert f.column("frequency_365d").to_pylist() == [2, 1, 0, 1, 1]
    assert f.column("monetary_365d").to_pylist() == [50.0, 7.0, 0.0, 1.0, 1.0]
    # 426 days -> ceil(426 / 30.4375) = 14 months; 1 day -> 1; 30 -> 1; 31 -> 2; none -> null
    assert f.column("active_months").to_pylist() == [14, 1, None, 1, 2]


def test_percentile_rank_ties() -> None:
    h = IntHistogram.of(np.array([0, 1, 1, 3]))
    probe = np.array([1, 3])
    assert percentile_rank(probe, h, ties="average").tolist() == [0.5, 0.875]
    assert percentile_rank(probe, h, ties="min").tolist() == [0.25, 0.75]
    assert percentile_rank(probe, h, ties="max").tolist() == [0.75, 1.0]
    with pytest.raises(ValueError, match="ties"):
        percentile_rank(probe, h, ties="dense")


def test_measures_windows_zeros_and_rate(config: FeatureConfig) -> None:
    rows = [
        {"user": 1, "at": "2025-12-30 10:00", "amount_cny": 100.0},  # recent
        {"user": 2, "at": "2025-03-01 10:00", "amount_cny": 300.0},  # 10 months ago, big
        {"user": 2, "at": "2025-03-02 10:00", "amount_cny": 300.0},
        {"user": 3, "at": "2025-06-01 10:00", "amount_cny": 50.0},  # 7 months ago, small
        {"user": 4, "at": "2025-12-30 10:00", "type": "app_visit"},  # never ordered
    ]
    f = compute_features(events_table(rows), None, AS_OF, config)
    # default: only user 1 ordered in 90 days, ranked above the 3 users at 0
    _, fr, m, _ = rfm_scores(f, rfm_partials(f))
    assert fr.tolist() == [(3 + 0.5) / 4, 0.0, 0.0, 0.0]
    # lifetime: user 2 (2 orders, 600) ranks first, user 3 (1 order, 50) shares f with user 1
    life = RfmMeasures.model_validate(
        {"frequency": {"window": "lifetime"}, "monetary": {"window": "lifetime"}}
    )
    _, fr, m, _ = rfm_scores(f, rfm_partials(f, life), measures=life)
    assert fr.tolist() == [(1 + 1.0) / 4, (3 + 0.5) / 4, (1 + 1.0) / 4, 0.0]
    assert m.tolist() == [(2 + 0.5) / 4, (3 + 0.5) / 4, (1 + 0.5) / 4, 0.0]
    # zeros excluded: buyers ranked among the 3 buyers only
    excl = RfmMeasures.model_validate(
        {
            "frequency": {"window": "lifetime", "zeros": "excluded"},
            "monetary": {"window": "lifetime", "zeros": "excluded"},
        }
    )
    _, fr, m, _ = rfm_scores(f, rfm_partials(f, excl), measures=excl)
    assert m.tolist() == [1.5 / 3, 2.5 / 3, 0.5 / 3, 0.0]
    # orders per active month: user 1 1/1, user 2 2/11, user 3 1/8 (lifetime)
    rate = RfmMeasures.model_validate({"frequency": {"window": "lifetime", "per": "active_month"}})
    p = rfm_partials(f, rate)
    assert isinstance(p.frequency, LogHistogram)
    _, fr, _, _ = rfm_scores(f, p, measures=rate)
    assert fr.tolist() == [3.5 / 4, 2.5 / 4, 1.5 / 4, 0.0]
    # recency window: a last order older than 180 days counts as none
    rec = RfmMeasures.model_validate({"recency": {"window": "180d"}})
    r, _, _, _ = rfm_scores(f, rfm_partials(f, rec), measures=rec)
    assert r[0] > 0 and r[1] == 0 and r[2] == 0 and r[3] == 0
    with pytest.raises(ValueError, match="different frequency measures"):
        p.merge(rfm_partials(f))


@pytest.mark.parametrize("shards", [2, 4])
def test_long_window_partials_are_shard_independent(config: FeatureConfig, shards: int) -> None:
    events, users = _random_bucket(seed=5, n_users=300, n=9000)
    whole = compute_features(events, users, AS_OF, config)
    ms = RfmMeasures.model_validate(
        {
            "recency": {"window": "365d", "ties": "min"},
            "frequency": {"window": "lifetime", "per": "active_month", "zeros": "excluded"},
            "monetary": {"window": "365d", "ties": "max", "zeros": "excluded"},
        }
    )
    expected = rfm_scores(whole, rfm_partials(whole, ms), measures=ms)
    ids = whole.column("user_id").to_numpy()
    shard = np.random.default_rng(shards).integers(0, shards, len(ids))
    parts = [whole.filter(pa.array(shard == s)) for s in range(shards)]
    merged = RfmPartials.empty(ms)
    for part in parts:
        merged = merged.merge(rfm_partials(part, ms))
    got = np.zeros((4, len(ids)))
    for s, part in enumerate(parts):
        got[:, shard == s] = np.vstack(rfm_scores(part, merged, measures=ms))
    assert np.array_equal(got, np.vstack(expected))


def test_measures_config_names_key_and_allowed_values(tmp_path: Path) -> None:
    from strata.config import load_yaml

    bad = tmp_path / "m.yaml"
    bad.write_text("frequency: {window: 60d}\n")
    with pytest.raises(ConfigError, match=r"frequency\.window: .*'365d' or 'lifetime'"):
        load_yaml(bad, RfmMeasures)
    bad.write_text("monetary: {per: active_month}\n")
    with pytest.raises(ConfigError, match="unknown key 'per'; allowed keys: ties, window, zeros"):
        load_yaml(bad, RfmMeasures)
    bad.write_text("recency: {ties: dense}\n")
    with pytest.raises(ConfigError, match=r"recency\.ties: .*'average', 'min' or 'max'"):
        load_yaml(bad, RfmMeasures)
