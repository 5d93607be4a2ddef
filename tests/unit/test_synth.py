"""The synthetic data generator: schema, determinism, funnels and persona behaviour."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from strata import synth
from strata.config import CalendarConfig, ConfigError, config_path, load_calendar
from strata.ids import bucket_of, pseudonymise_many
from strata.schema import EVENT_TYPES, EVENTS_SCHEMA, USERS_SCHEMA

KEY = b"unit-test-key-0123456789abcdef"
END = dt.date(2025, 11, 20)
DAYS = 60
N_USERS = 1500


def _generate(
    n: int = N_USERS, days: int = DAYS, seed: int = 7, bucket: int = 3
) -> synth.BucketData:
    raw = synth.raw_user_ids(n)
    ids = pseudonymise_many(raw.tolist(), KEY)
    return synth.generate_bucket(
        bucket,
        ids,
        raw,
        synth.load_generator_config(),
        load_calendar(),
        seed,
        synth.window_start(END, days),
        days,
    )


@pytest.fixture(scope="module")
def data() -> synth.BucketData:
    return _generate()


@pytest.fixture(scope="module")
def frames(data: synth.BucketData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events joined with the truth persona, plus the truth table, as pandas frames."""
    truth = data.truth.to_pandas()
    ev = data.events.to_pandas().merge(truth[["user_id", "persona"]], on="user_id")
    local = ev["ts"].dt.tz_convert("Asia/Shanghai")
    ev["local_day"] = (local.dt.normalize().dt.date - synth.window_start(END, DAYS)).map(
        lambda d: d.days
    )
    ev["weekend"] = local.dt.dayofweek >= 5
    return ev, truth


def _orders(ev: pd.DataFrame) -> pd.DataFrame:
    return ev[ev["event_type"] == "order"]


# ---------------------------------------------------------------------------- shape
def test_tables_conform_to_their_schemas(data: synth.BucketData) -> None:
    assert data.events.schema.equals(EVENTS_SCHEMA)
    assert data.users.schema.equals(USERS_SCHEMA)
    assert data.truth.schema.equals(synth.truth_schema(30))
    assert data.users.num_rows == data.truth.num_rows == N_USERS
    assert pc.count_distinct(data.users["user_id"]).as_py() == N_USERS
    assert data.events.validate(full=True) is None


def test_events_sorted_by_user_then_time_and_inside_the_window(data: synth.BucketData) -> None:
    users = data.events["user_id"].to_numpy()
    ts = data.events["ts"].cast(pa.int64()).to_numpy()
    du, dts = np.diff(users), np.diff(ts)
    assert np.all((du > 0) | ((du == 0) & (dts >= 0)))
    start_ms = synth.local_midnight_ms(synth.window_start(END, DAYS))
    assert ts.min() >= start_ms
    assert ts.max() < synth.local_midnight_ms(END)
    assert start_ms == int(
        dt.datetime(2025, 9, 21, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp() * 1000
    )
    users_sorted = data.users["user_id"].to_numpy()
    assert np.all(np.diff(users_sorted) > 0)


def test_every_event_type_occurs(data: synth.BucketData) -> None:
    counts = data.event_counts()
    assert set(counts) == set(EVENT_TYPES)
    assert all(v > 0 for v in counts.values()), counts


def test_user_attributes_are_plausible(data: synth.BucketData) -> None:
    users = data.users.to_pandas()
    assert users["city"].notna().all() and users["region"].notna().all()
    assert users.groupby("city")["region"].nunique().max() == 1
    bd = users["birthday_md"].dropna()
    assert 0.7 < len(bd) / len(users) < 0.97
    assert bd.str.fullmatch(r"(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])").all()
    assert set(users["channel"]) <= {"organic", "ads", "social_share", "offline_referral"}


# ---------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_tables_and_another_seed_does_not() -> None:
    a, b = _generate(300, 21, seed=1), _generate(300, 21, seed=1)
    assert a.events.equals(b.events) and a.users.equals(b.users) and a.truth.equals(b.truth)
    c = _generate(300, 21, seed=2)
    assert not a.events.equals(c.events)


def test_output_does_not_depend_on_input_order() -> None:
    raw = synth.raw_user_ids(200)
    ids = pseudonymise_many(raw.tolist(), KEY)
    cfg, cal = synth.load_generator_config(), load_calendar()
    start = synth.window_start(END, 10)
    a = synth.generate_bucket(0, ids, raw, cfg, cal, 5, start, 10)
    b = synth.generate_bucket(0, ids[::-1], raw[::-1], cfg, cal, 5, start, 10)
    assert a.events.equals(b.events) and a.truth.equals(b.truth)


def test_tiny_buckets_without_orders_or_users() -> None:
    """A small sample spreads few users over many buckets: a bucket may have one user who
    only browses, or none (it failed with an IndexError: `strata demo --users 300`)."""
    cfg, cal = synth.load_generator_config(), load_calendar()
    start = synth.window_start(END, 14)
    raw = synth.raw_user_ids(3)
    ids = pseudonymise_many(raw.tolist(), KEY)
    without_orders = 0
    for seed in range(40):
        for n in (1, 2):
            out = synth.generate_bucket(3, ids[:n], raw[:n], cfg, cal, seed, start, 14)
            assert out.users.num_rows == n
            types = set(out.events.column("event_type").to_pylist())
            without_orders += out.events.num_rows > 0 and "order" not in types
    assert without_orders > 0  # the case that failed was generated
    empty = synth.generate_bucket(3, ids[:0], raw[:0], cfg, cal, 1, start, 14)
    assert empty.events.num_rows == 0 and empty.users.num_rows == 0


# ---------------------------------------------------------------------------- funnels
def test_order_columns_follow_the_conventions(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ev, _ = frames
    orders = _orders(ev)
    assert orders["order_id"].is_unique and orders["order_id"].str.startswith("O").all()
    assert (orders["amount_cny"] > 0).all() and (orders["discount_cny"] >= 0).all()
    assert orders["item_count"].ge(1).all()
    n_cats = orders["categories"].map(len)
    assert n_cats.between(1, 4).all()
    assert (orders["category"] == orders["categories"].map(lambda c: c[0])).all()
    assert orders["categories"].map(lambda c: len(set(c)) == len(c)).all()
    with_coupon = orders["coupon_id"].notna()
    assert (orders.loc[with_coupon, "discount_cny"] > 0).all()
    assert (orders.loc[~with_coupon, "discount_cny"] == 0).all()
    others = ev[ev["event_type"] != "order"]
    assert others["amount_cny"].isna().all() and others["categories"].isna().all()


_ALWAYS = {"user_id", "ts", "event_type"}
_COLUMNS_SET = {
    "app_visit": {"session_id"},
    "community_post": {"session_id"},
    "category_view": {"session_id", "category"},
    "search": {"session_id", "query"},
    "item_view": {"session_id", "item_id", "category"},
    "favourite": {"session_id", "item_id", "category"},
    "share": {"session_id", "item_id", "category"},
    "add_to_cart": {"session_id", "item_id", "category"},
    "remove_from_cart": {"session_id", "item_id", "category"},
    "coupon_claim": {"session_id", "coupon_id"},
    "coupon_use": {"session_id", "order_id", "coupon_id", "discount_cny"},
    "order": {"session_id", "order_id", "amount_cny", "discount_cny", "item_count"}
    | {"categories", "category"},
    "review": {"order_id", "rating"},
    "service_contact": {"order_id"},
}


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_event_type_sets_exactly_its_columns(data: synth.BucketData, event_type: str) -> None:
    rows = data.events.filter(pc.equal(data.events["event_type"], event_type))
    expected = _ALWAYS | _COLUMNS_SET[event_type]
    for name in rows.column_names:
        nulls = rows[name].null_count
        if name in expected:
            assert nulls == 0, (event_type, name)
        elif not (event_type == "order" and name == "coupon_id"):  # only with a coupon
            assert nulls == rows.num_rows, (event_type, name)


def test_sessions_are_funnels(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ev, _ = frames
    in_session = ev[ev["session_id"].notna()]
    firsts = in_session.groupby("session_id").head(1)
    assert (firsts["event_type"] == "app_visit").all()
    assert in_session.groupby("session_id")["user_id"].nunique().max() == 1
    # a coupon use comes right before its order, in the same session
    uses = ev[ev["event_type"] == "coupon_use"]
    orders = _orders(ev).set_index("order_id")
    matched = orders.loc[uses["order_id"]]
    assert (matched["session_id"].to_numpy() == uses["session_id"].to_numpy()).all()
    assert (matched["coupon_id"].to_numpy() == uses["coupon_id"].to_numpy()).all()
    assert (matched["ts"].to_numpy() >= uses["ts"].to_numpy()).all()
    # every order's session has a cart add; a removal follows an add of the same item
    carts = set(ev.loc[ev["event_type"] == "add_to_cart", "session_id"])
    assert set(orders["session_id"]) <= carts
    adds = ev[ev["event_type"] == "add_to_cart"].groupby(["session_id", "item_id"])["ts"].min()
    removes = ev[ev["event_type"] == "remove_from_cart"]
    first_add = adds.loc[list(zip(removes["session_id"], removes["item_id"], strict=True))]
    assert (first_add.to_numpy() <= removes["ts"].to_numpy()).all()
    # abandoned carts exist
    assert len(carts - set(orders["session_id"])) > 0
    searches = ev[ev["event_type"] == "search"]
    assert searches["query"].notna().all() and searches["category"].isna().all()


def test_reviews_and_contacts_follow_their_orders(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    ev, _ = frames
    orders = _orders(ev).set_index("order_id")
    for kind, max_days in (("review", 3), ("service_contact", 2.1)):
        rows = ev[ev["event_type"] == kind]
        assert rows["session_id"].isna().all()
        lag = rows["ts"].to_numpy() - orders.loc[rows["order_id"], "ts"].to_numpy()
        assert (lag > pd.Timedelta(0)).all() and (lag <= pd.Timedelta(days=max_days)).all()
    reviews = ev[ev["event_type"] == "review"]
    assert reviews["rating"].between(1, 5).all()


def test_bad_experiences_get_lower_ratings(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ev, _ = frames
    contacted = set(ev.loc[ev["event_type"] == "service_contact", "order_id"])
    reviews = ev[ev["event_type"] == "review"]
    bad = reviews["order_id"].isin(contacted)
    assert bad.sum() > 20
    assert reviews.loc[bad, "rating"].mean() < 2.6 < 4.0 < reviews.loc[~bad, "rating"].mean()


# ---------------------------------------------------------------------------- personas
def test_every_persona_is_present(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, truth = frames
    shares = truth["persona"].value_counts(normalize=True)
    cfg = synth.load_generator_config()
    assert set(shares.index) == set(cfg.personas)
    for name, p in cfg.personas.items():
        assert abs(shares[name] - p.share) < 0.05


def test_loyal_high_spenders_order_more_and_spend_more_per_order(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    ev, truth = frames
    orders = _orders(ev)
    per_user = truth.groupby("persona")["orders_window"].mean()
    aov = orders.groupby("persona")["amount_cny"].mean()
    assert per_user["loyal_high_spender"] > 3 * per_user["occasional_buyer"]
    assert aov["loyal_high_spender"] > 1.8 * aov["occasional_buyer"]


def test_coupon_hunters_use_the_most_coupons_with_deeper_discounts(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    ev, _ = frames
    orders = _orders(ev).copy()
    orders["with_coupon"] = orders["coupon_id"].notna()
    orders["depth"] = orders["discount_cny"] / (orders["amount_cny"] + orders["discount_cny"])
    share = orders.groupby("persona")["with_coupon"].mean()
    assert share.idxmax() == "coupon_hunter" and share["coupon_hunter"] > 0.6
    depth = orders[orders["with_coupon"]].groupby("persona")["depth"].mean()
    assert depth.idxmax() == "coupon_hunter"
    claims = ev[ev["event_type"] == "coupon_claim"].groupby("persona").size()
    assert claims.idxmax() == "coupon_hunter"


def test_weekend_family_shoppers_buy_at_weekends(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    ev, _ = frames
    weekend_share = _orders(ev).groupby("persona")["weekend"].mean()
    assert weekend_share.idxmax() == "weekend_family_shopper"
    assert weekend_share["weekend_family_shopper"] > 0.5 > weekend_share["loyal_high_spender"]


def test_churned_users_stop_ordering(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ev, truth = frames
    churned = truth[truth["persona"] == "churned_user"]
    assert churned["stopped_on"].notna().all()
    assert (churned["orders_next_30d"] == 0).all() and churned["churned_next_30d"].all()
    hi = synth.load_generator_config().personas["churned_user"].churn_at[1]
    late = _orders(ev)
    late = late[(late["persona"] == "churned_user") & (late["local_day"] >= int(hi * DAYS) + 1)]
    assert late.empty
    assert _orders(ev).query("persona == 'churned_user'").shape[0] > 0


def test_new_users_act_only_after_signup(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ev, truth = frames
    new = truth[truth["persona"] == "new_user"].set_index("user_id")
    start = pd.Timestamp(synth.local_midnight_ms(synth.window_start(END, DAYS)), unit="ms")
    assert (new["signup_ts"] >= start.tz_localize("UTC")).all()
    first = ev[ev["persona"] == "new_user"].groupby("user_id")["ts"].min()
    assert (first > new.loc[first.index, "signup_ts"]).all()
    others = truth[truth["persona"] != "new_user"]
    assert (others["signup_ts"] < start.tz_localize("UTC")).all()


def test_declining_users_order_less_in_the_second_half(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    ev, truth = frames
    orders = _orders(ev)
    declining = orders[orders["persona"] == "declining_user"]
    first = (declining["local_day"] < DAYS // 2).sum()
    second = (declining["local_day"] >= DAYS // 2).sum()
    assert second < 0.8 * first
    churn_rate = truth.groupby("persona")["churned_next_30d"].mean()
    assert churn_rate["declining_user"] > churn_rate["loyal_high_spender"]


def test_volume_is_tuned_for_the_benchmarks(data: synth.BucketData) -> None:
    orders_per_user_day = data.event_counts()["order"] / N_USERS / DAYS
    events_per_user_day = data.events.num_rows / N_USERS / DAYS
    assert 0.2 <= orders_per_user_day <= 0.27
    assert 1.0 <= events_per_user_day <= 1.6


def test_festivals_raise_demand() -> None:
    raw = synth.raw_user_ids(600)
    ids = pseudonymise_many(raw.tolist(), KEY)
    cfg = synth.load_generator_config()
    flat = CalendarConfig(weekday_multipliers=[1.0] * 7)
    start = dt.date(2025, 11, 1)
    base = synth.generate_bucket(0, ids, raw, cfg, flat, 1, start, 14)
    peak = synth.generate_bucket(0, ids, raw, cfg, load_calendar(), 1, start, 14)
    assert peak.event_counts()["order"] > 1.05 * base.event_counts()["order"]


# ---------------------------------------------------------------------------- config
def _write_config(tmp_path: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    raw = yaml.safe_load(config_path("generator").read_text(encoding="utf-8"))
    mutate(raw)
    (tmp_path / "generator.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return tmp_path


def test_shipped_config_is_valid() -> None:
    cfg = synth.load_generator_config()
    assert abs(sum(p.share for p in cfg.personas.values()) - 1) < 1e-9


def test_shares_must_sum_to_one(tmp_path: Path) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["personas"]["churned_user"]["share"] = 0.3

    with pytest.raises(ConfigError, match=r"(?s)generator\.yaml.*shares must sum to 1, got 1\.2"):
        synth.load_generator_config(_write_config(tmp_path, mutate))


def test_unknown_key_is_named_with_the_allowed_ones(tmp_path: Path) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["personas"]["new_user"]["sesions_per_day"] = 1.0

    with pytest.raises(ConfigError) as exc:
        synth.load_generator_config(_write_config(tmp_path, mutate))
    msg = str(exc.value)
    assert "generator.yaml" in msg
    assert "personas.new_user.sesions_per_day: unknown key 'sesions_per_day'" in msg


def test_unknown_top_level_key_lists_the_allowed_ones(tmp_path: Path) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["coupon"] = raw.pop("coupons")

    with pytest.raises(ConfigError) as exc:
        synth.load_generator_config(_write_config(tmp_path, mutate))
    assert "unknown key 'coupon'" in str(exc.value) and "coupons" in str(exc.value)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("personas", "coupon_hunter", "category_mix"), {"candy": 1.0}, "unknown categories"),
        (("personas", "coupon_hunter", "hour_profile"), "brunch", "unknown hour_profile"),
        (("personas", "churned_user", "churn_at"), [0.8, 0.2], "low <= high"),
        (("hour_profiles", "morning"), [1.0] * 23, "24 weights"),
        (("coupons", "tiers_cny"), [5, 3], "ascending"),
        (("personas", "new_user", "buy_prob"), 1.5, "less than or equal to 1"),
    ],
)
def test_invalid_values_are_clear_errors(
    tmp_path: Path, path: tuple[str, ...], value: object, expected: str
) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        node: Any = raw
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    with pytest.raises(ConfigError, match=expected):
        synth.load_generator_config(_write_config(tmp_path, mutate))


def test_window_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="days"):
        _generate(10, 0)


def test_orders_only_keeps_the_orders_and_drops_the_rest(data: synth.BucketData) -> None:
    log = synth.orders_only(data)
    assert log.events.schema.equals(EVENTS_SCHEMA) and log.users.schema.equals(USERS_SCHEMA)
    assert log.users.num_rows == 0
    assert set(log.events.column("event_type").to_pylist()) == {"order"}
    orders = data.events.filter(pc.equal(data.events.column("event_type"), "order"))
    assert log.events.num_rows == orders.num_rows > 0
    for name in EVENTS_SCHEMA.names:
        if name in synth.ORDER_LOG_COLUMNS:
            assert log.events.column(name).equals(orders.column(name)), name
        else:
            assert log.events.column(name).null_count == log.events.num_rows, name
    assert log.truth.equals(data.truth)
    assert log.event_counts()["order"] == data.event_counts()["order"]
    assert sum(log.event_counts().values()) == log.events.num_rows


def test_users_by_bucket_in_chunks_matches_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pseudonymising a chunk at a time gives the same groups as hashing every raw id at once,
    and the integer raw ids are the text ids (what generate_bucket writes)."""
    import strata.synth.users as users_mod

    monkeypatch.setattr(users_mod, "_CHUNK_USERS", 300)
    n, n_buckets = 1000, 7
    groups = synth.users_by_bucket(n, KEY, n_buckets)
    raw = synth.raw_user_ids(n)
    ids = pseudonymise_many(raw.tolist(), KEY)
    buckets = bucket_of(ids, n_buckets)
    assert [b for b, _, _ in groups] == sorted(set(buckets.tolist()))
    for b, g_ids, g_raw in groups:
        assert np.array_equal(g_ids, ids[buckets == b])
        assert g_raw.astype(str).tolist() == raw[buckets == b].tolist()
    assert sum(len(g) for _, g, _ in groups) == n


def test_id_ranges_cover_every_user_once() -> None:
    assert synth.id_ranges(2500, 1000) == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert synth.id_ranges(1000, 1000) == [(0, 1000)]
    assert synth.id_ranges(3, 1_000_000) == [(0, 3)]
    with pytest.raises(ValueError, match="range_users"):
        synth.id_ranges(10, 0)


def test_ranges_gathered_by_offsets_give_the_one_pass_groups() -> None:
    """Each bucket's rows of every range, at the offsets of the ranges' counts, concatenated in
    range order, are exactly the groups of sorting every user at once (same order too)."""
    n, n_buckets = 2300, 7
    groups = synth.users_by_bucket(n, KEY, n_buckets)
    ranges = [synth.range_by_bucket(lo, hi, KEY, n_buckets) for lo, hi in synth.id_ranges(n, 1000)]
    counts = np.stack([c for _, _, c in ranges])
    assert counts.shape == (3, n_buckets) and counts.dtype == np.int32
    assert counts.sum() == n and counts[2].sum() == 300
    offsets = synth.bucket_offsets(counts)
    assert offsets[:, 0].tolist() == [0, 0, 0]
    assert (offsets[:, -1] + counts[:, -1]).tolist() == [1000, 1000, 300]
    for b, g_ids, g_raw in groups:
        parts = [(ids[o : o + c], raw[o : o + c]) for (ids, raw, _), o, c in
                 zip(ranges, offsets[:, b], counts[:, b], strict=True)]  # fmt: skip
        assert np.array_equal(np.concatenate([p[0] for p in parts]), g_ids)
        assert np.array_equal(np.concatenate([p[1] for p in parts]), g_raw)
        assert np.all(bucket_of(g_ids, n_buckets) == b)
    assert [b for b, _, _ in groups] == np.flatnonzero(counts.sum(axis=0)).tolist()


def test_range_files_read_back_each_bucket_and_name_a_truncated_file(tmp_path: Path) -> None:
    """What stage 2 reads from the range files is the bucket's group; a file cut short is an
    error that names it, not a silently smaller bucket."""
    import pyarrow.fs as pafs

    from strata.io.user_ranges import UserRangeFiles, UserRangeFilesError

    n, n_buckets = 1500, 5
    files = UserRangeFiles(pafs.LocalFileSystem(), str(tmp_path / "_staging-x"))
    counts = np.zeros((2, n_buckets), dtype=np.int32)
    for i, (lo, hi) in enumerate(synth.id_ranges(n, 800)):
        ids, raw, counts[i] = synth.range_by_bucket(lo, hi, KEY, n_buckets)
        files.write(i, ids, raw)
    assert Path(files.path(1)).stat().st_size == 700 * 16
    offsets = synth.bucket_offsets(counts)
    for b, g_ids, g_raw in synth.users_by_bucket(n, KEY, n_buckets):
        where = files.bucket(b, counts, offsets)
        assert where.users == len(g_ids) and len(where.slices) == 2
        ids, raw = where.read(files.fs)
        assert ids.dtype == raw.dtype == np.int64
        assert np.array_equal(ids, g_ids) and np.array_equal(raw, g_raw)
    last = files.bucket(n_buckets - 1, counts, offsets)
    with open(files.path(1), "r+b") as f:
        f.truncate(700 * 16 - 16)
    with pytest.raises(UserRangeFilesError, match=r"range-000001\.bin.*truncated"):
        last.read(files.fs)
    Path(files.path(0)).unlink()
    with pytest.raises(UserRangeFilesError, match=r"range-000000\.bin: cannot read"):
        files.bucket(0, counts, offsets).read(files.fs)
    files.remove()
    assert not Path(files.dir).exists()
    files.remove()  # nothing left: no error
