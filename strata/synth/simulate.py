"""Synthetic grocery behaviour: latent personas turned into events, users and ground truth.

One call of :func:`generate_bucket` simulates every user of one warehouse bucket, fully
vectorised (numpy + pyarrow, no per-event Python loop). Its random stream is
``np.random.default_rng([seed, bucket])`` and users are processed in ``user_id`` order, so a
bucket's output depends only on (seed, bucket, its users, config, window), never on how
buckets are spread over workers.

Window: the ``days`` local days (UTC+8, :data:`strata.timeutil.LOCAL_UTC_OFFSET_HOURS`) before
``end``: events have ``start 00:00 local <= ts < end 00:00 local`` with ``start = end - days``.
Timestamps are stored in UTC; every rhythm (weekday, hour, festival) is local. After the window
``horizon_days`` more days are simulated only to label the ground truth (orders and spend
next month, churn); none of those events are emitted.

Model, per user: a persona (configs/generator.yaml) gives a base session rate, multiplied per
local day by the weekly rhythm, festival peaks (``calendar.yaml``, raised to the persona's
festival sensitivity), a weekend multiplier, a lifecycle trend (ramp-up after signup, decay,
stop at a churn day) and a per-user gamma-distributed activity level. Sessions per (user, day)
are Poisson. Each session is an ``app_visit`` followed by a funnel: category views, searches and
item views, favourites, add-to-cart (sometimes removed again), coupon claims, and with the
persona's conversion probability an order (preceded by ``coupon_use`` when a coupon is applied);
cart sessions without an order are abandoned carts. Shares and community posts are rare session
events. Orders have lognormal basket values (persona AOV x per-user spend level), 1-4
categories drawn from the user's own category mix (a Dirichlet draw around the persona's),
and some go badly: a bad order is reviewed more often, with low ratings, and often leads to a
``service_contact``; a recent bad order also raises the chance of stopping next month.

Column conventions of the emitted events (every other column is null):

- ``app_visit``, ``community_post``: session_id.
- ``category_view``: session_id, category.
- ``search``: session_id, query (category stays null).
- ``item_view``, ``favourite``, ``share``, ``add_to_cart``, ``remove_from_cart``: session_id,
  item_id, category; a removal repeats the item of the session's first add_to_cart.
- ``coupon_claim``: session_id, coupon_id.
- ``coupon_use``: session_id, order_id, coupon_id, discount_cny (just before its order).
- ``order``: session_id, order_id, amount_cny (paid, after the discount), discount_cny (0.0
  without a coupon), coupon_id (when one is used), item_count, categories (1-4 distinct) and
  category = categories[0], the basket's main category. item_id stays null.
- ``review``: order_id, rating (1-5), 30 minutes to 3 days after the order.
- ``service_contact``: order_id, 10 minutes to 2 days after the order.

Ids: ``session_id = (bucket + 1) * 10**10 + n`` and ``order_id = "O" + str((bucket + 1) *
10**10 + n)`` with ``n`` counting within the bucket, so both are unique across buckets;
``item_id = (category index + 1) * 10**6 + popularity rank`` (Zipf popularity). Reviews and
service contacts happen outside a session (``session_id`` null).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from strata.config import CalendarConfig
from strata.schema import (
    AGE_BANDS,
    CATEGORIES,
    CHANNELS,
    DEVICES,
    EVENT_TYPES,
    EVENTS_SCHEMA,
    GENDERS,
    TIMESTAMP,
    USERS_SCHEMA,
    EventType,
)
from strata.synth.config import ITEM_ID_STRIDE, CatalogueConfig, GeneratorConfig
from strata.synth.experiment import ExperimentPlan, ExperimentTruth, simulate_exposures
from strata.timeutil import DAY_MS, HOUR_MS, local_midnight_ms

_EPOCH = dt.date(1970, 1, 1)
_ID_STRIDE = 10**10
#: Longest window (and horizon) generate_bucket accepts: keeps ms offsets within 40 bits.
MAX_DAYS = 10_000

#: Search vocabulary per category (what users type).
QUERY_WORDS: dict[str, tuple[str, ...]] = {
    "vegetables": ("西红柿", "黄瓜", "菠菜", "土豆", "西兰花", "生菜", "青椒", "胡萝卜"),
    "fruit": ("草莓", "苹果", "香蕉", "车厘子", "芒果", "葡萄", "橙子", "西瓜"),
    "meat_poultry": ("五花肉", "排骨", "牛腩", "鸡胸肉", "鸡翅", "羊肉卷", "牛排", "猪里脊"),
    "seafood": ("基围虾", "三文鱼", "大闸蟹", "鲈鱼", "扇贝", "带鱼", "生蚝", "小龙虾"),
    "dairy_eggs": ("鸡蛋", "牛奶", "酸奶", "奶酪", "黄油", "鹌鹑蛋"),
    "grain_oil": ("大米", "面粉", "花生油", "挂面", "小米", "酱油"),
    "snacks_drinks": ("薯片", "坚果", "可乐", "矿泉水", "巧克力", "饼干", "果汁"),
    "daily_goods": ("纸巾", "洗洁精", "垃圾袋", "保鲜膜", "洗衣液", "牙膏"),
}


def window_start(end: dt.date, days: int) -> dt.date:
    """First local day of the ``days``-day window that ends (exclusively) at ``end``."""
    return end - dt.timedelta(days=days)


def truth_schema(horizon_days: int = 30) -> pa.Schema:
    """Schema of the ground-truth table (one row per user; never read by feature code)."""
    h = f"next_{horizon_days}d"
    return pa.schema(
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("raw_user_id", pa.string(), nullable=False),
            pa.field("bucket", pa.int32(), nullable=False),
            pa.field("persona", pa.string(), nullable=False),
            pa.field("signup_ts", TIMESTAMP, nullable=False),
            pa.field("activity", pa.float64(), nullable=False),
            pa.field("stopped_on", pa.date32()),
            pa.field("orders_window", pa.int32(), nullable=False),
            pa.field("spend_window_cny", pa.float64(), nullable=False),
            pa.field(f"sessions_{h}", pa.int32(), nullable=False),
            pa.field(f"orders_{h}", pa.int32(), nullable=False),
            pa.field(f"spend_{h}_cny", pa.float64(), nullable=False),
            pa.field(f"churned_{h}", pa.bool_(), nullable=False),
        ],
        metadata={"strata.table": "truth"},
    )


@dataclass(frozen=True)
class BucketData:
    """What :func:`generate_bucket` produces for one bucket."""

    events: pa.Table
    users: pa.Table
    truth: pa.Table
    #: the simulated experiment's exposures (EXPOSURES_SCHEMA) and truth, when one ran
    exposures: pa.Table | None = None
    experiment_truth: ExperimentTruth | None = None

    def event_counts(self) -> dict[str, int]:
        """Rows per event type (every type listed, zeros included)."""
        counts = dict.fromkeys(EVENT_TYPES, 0)
        if self.events.num_rows:
            vc = pc.value_counts(self.events.column("event_type")).to_pylist()
            counts.update({row["values"]: int(row["counts"]) for row in vc})
        return counts


def _cdf(weights: np.ndarray) -> np.ndarray:
    """Row-wise cumulative distribution, last column exactly 1."""
    w = np.asarray(weights, dtype=np.float64)
    c = np.cumsum(w, axis=-1)
    c /= c[..., -1:]
    c[..., -1] = 1.0
    return c


def _draw(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    """``size`` indices drawn from one categorical distribution."""
    cdf = _cdf(weights)
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def _draw_grouped(rng: np.random.Generator, cdfs: np.ndarray, group: np.ndarray) -> np.ndarray:
    """One index per row, drawn from the cdf of the row's group (few groups)."""
    u = rng.random(len(group))
    out = np.zeros(len(group), dtype=np.int64)
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        out[rows] = np.searchsorted(cdfs[g], u[rows], side="right")
    return np.minimum(out, cdfs.shape[1] - 1)


def _draw_rows(rng: np.random.Generator, cdf_rows: np.ndarray) -> np.ndarray:
    """One index per row of a (rows x k) cdf matrix (per-user distributions)."""
    u = rng.random(int(cdf_rows.shape[0]))
    idx = (cdf_rows <= u[:, None]).sum(axis=1)
    return np.minimum(idx, cdf_rows.shape[1] - 1)


def _weights_vector(weights: dict[str, float], names: Sequence[str]) -> np.ndarray:
    return np.array([weights.get(name, 0.0) for name in names], dtype=np.float64)


class _Personas:
    """The persona table as arrays indexed by persona number."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        items = list(cfg.personas.items())
        self.names = [k for k, _ in items]
        ps = [p for _, p in items]

        def col(name: str) -> np.ndarray:
            return np.array([float(getattr(p, name)) for p in ps])

        self.share = col("share")
        self.sessions_per_day = col("sessions_per_day")
        self.activity_shape = col("activity_shape")
        self.buy_prob = col("buy_prob")
        self.abandon_prob = col("abandon_prob")
        self.item_views = col("item_views_per_session")
        self.weekend_multiplier = col("weekend_multiplier")
        self.festival_sensitivity = col("festival_sensitivity")
        self.aov_cny = col("aov_cny")
        self.aov_sigma = col("aov_sigma")
        self.coupon_use_prob = col("coupon_use_prob")
        self.coupon_claims = col("coupon_claims_per_session")
        self.discount_share = col("discount_share")
        self.churn_next_prob = col("churn_next_prob")
        self.ramp_days = col("ramp_days")
        self.ramp_start = col("ramp_start")
        self.half_life = col("decline_half_life_days")
        self.favourite_prob = col("favourite_prob")
        self.share_prob = col("share_prob")
        self.post_prob = col("community_post_prob")
        default_bad = cfg.experience.bad_experience_prob
        self.bad_prob = np.array(
            [default_bad if p.bad_experience_prob is None else p.bad_experience_prob for p in ps]
        )
        self.in_window = np.array([p.signup == "in_window" for p in ps])
        self.signup_lo = np.array([p.signup_days_before[0] for p in ps])
        self.signup_hi = np.array([p.signup_days_before[1] for p in ps])
        self.trend = np.array([p.trend for p in ps])
        self.churn_lo = np.array([p.churn_at[0] for p in ps])
        self.churn_hi = np.array([p.churn_at[1] for p in ps])
        self.category_mix = np.array([_weights_vector(p.category_mix, CATEGORIES) for p in ps])
        self.category_mix /= self.category_mix.sum(axis=1, keepdims=True)
        self.channel_cdf = _cdf(np.array([_weights_vector(p.channels, CHANNELS) for p in ps]))
        self.age_cdf = _cdf(
            np.array([_weights_vector(p.age_bands or cfg.age_bands, AGE_BANDS) for p in ps])
        )
        self.hour_cdf = _cdf(np.array([cfg.hour_profiles[p.hour_profile] for p in ps]))


# Session funnel: columns of the per-session count matrix, in the order events happen.
_SESSION_EVENTS: tuple[EventType, ...] = (
    EventType.APP_VISIT,
    EventType.CATEGORY_VIEW,
    EventType.SEARCH,
    EventType.ITEM_VIEW,
    EventType.FAVOURITE,
    EventType.ADD_TO_CART,
    EventType.REMOVE_FROM_CART,
    EventType.COUPON_CLAIM,
    EventType.COUPON_USE,
    EventType.ORDER,
    EventType.SHARE,
    EventType.COMMUNITY_POST,
)
_COL = {e: i for i, e in enumerate(_SESSION_EVENTS)}
_TYPE_CODE = {e: EVENT_TYPES.index(e.value) for e in EventType}
_COL_TYPE = np.array([_TYPE_CODE[e] for e in _SESSION_EVENTS], dtype=np.int8)
# Position of each funnel step inside a session, in steps of the session's pace:
# base + width * U(0, 1). Ranges are ordered so that a removal follows every add, a coupon
# use directly precedes its order, and shares/posts come last.
_STAGE: dict[EventType, tuple[float, float]] = {
    EventType.APP_VISIT: (0.0, 0.0),
    EventType.CATEGORY_VIEW: (0.3, 1.5),
    EventType.SEARCH: (0.3, 1.5),
    EventType.ITEM_VIEW: (0.5, 3.0),
    EventType.FAVOURITE: (1.0, 2.5),
    EventType.ADD_TO_CART: (1.2, 2.8),
    EventType.REMOVE_FROM_CART: (4.05, 0.4),
    EventType.COUPON_CLAIM: (0.5, 3.5),
    EventType.COUPON_USE: (4.5, 0.3),
    EventType.ORDER: (4.85, 0.1),
    EventType.SHARE: (5.0, 1.0),
    EventType.COMMUNITY_POST: (5.2, 1.5),
}
_STAGE_BASE = np.array([_STAGE[e][0] for e in _SESSION_EVENTS])
_STAGE_WIDTH = np.array([_STAGE[e][1] for e in _SESSION_EVENTS])
_HAS_CATEGORY = np.isin(
    np.arange(len(_SESSION_EVENTS)),
    [
        _COL[e]
        for e in (
            EventType.CATEGORY_VIEW,
            EventType.ITEM_VIEW,
            EventType.FAVOURITE,
            EventType.ADD_TO_CART,
            EventType.SHARE,
        )
    ],
)
_HAS_ITEM = _HAS_CATEGORY & (np.arange(len(_SESSION_EVENTS)) != _COL[EventType.CATEGORY_VIEW])

_EVENT_TYPE_ARRAY = pa.array(EVENT_TYPES, pa.string())
_CATEGORY_ARRAY = pa.array(CATEGORIES, pa.string())
_WORDS = [w for c in CATEGORIES for w in QUERY_WORDS[c]]
_WORD_ARRAY = pa.array(_WORDS, pa.string())
_WORD_COUNT = np.array([len(QUERY_WORDS[c]) for c in CATEGORIES])
_WORD_OFFSET = np.concatenate([[0], np.cumsum(_WORD_COUNT)[:-1]])
_MMDD = pa.array(
    [(dt.date(2001, 1, 1) + dt.timedelta(days=i)).strftime("%m-%d") for i in range(365)]
)


def _coupon_ids(tiers: Sequence[float]) -> pa.Array:
    return pa.array([f"CPN-{round(t):03d}" for t in tiers], pa.string())


def _popularity_rank(rng: np.random.Generator, cat: CatalogueConfig, size: int) -> np.ndarray:
    """Item ranks 0..items-1 with power-law (Zipf-like) popularity, by inverse CDF."""
    s = 1.0 - cat.popularity_zipf
    top = (cat.items_per_category + 1.0) ** s - 1.0
    x = (1.0 + rng.random(size) * top) ** (1.0 / s)
    return np.minimum(x.astype(np.int64) - 1, cat.items_per_category - 1)


def _masked(values: np.ndarray, mask: np.ndarray, type_: pa.DataType) -> pa.Array:
    """Arrow array of ``values`` with nulls where ``mask`` is true."""
    return pa.array(values, type=type_, mask=mask)


def _take(dictionary: pa.Array, codes: np.ndarray) -> pa.Array:
    """``dictionary[codes]`` with nulls where a code is negative."""
    return dictionary.take(pa.array(codes.astype(np.int32), mask=codes < 0))


# ---------------------------------------------------------------------------- generation
@dataclass
class _Users:
    persona: np.ndarray
    signup_ms: np.ndarray
    signup_day: np.ndarray  # local day index in the window; -1: signed up before it
    activity: np.ndarray
    spend_level: np.ndarray
    coupon_affinity: np.ndarray
    category_cdf: np.ndarray  # n x len(CATEGORIES)
    log_mix: np.ndarray
    stop_day: np.ndarray  # first inactive day index (>= days + horizon: never)


def _draw_users(
    rng: np.random.Generator,
    cfg: GeneratorConfig,
    pt: _Personas,
    n: int,
    start_ms: int,
    days: int,
    span: int,
) -> tuple[_Users, dict[str, pa.Array]]:
    persona = _draw(rng, pt.share, n)
    in_window = pt.in_window[persona]
    lo, hi = pt.signup_lo[persona], pt.signup_hi[persona]
    before_ms = start_ms - ((lo + (hi - lo) * rng.random(n)) * DAY_MS).astype(np.int64)
    signup_day = np.where(in_window, rng.integers(0, days, n), -1)
    signup_hour = _draw_grouped(rng, pt.hour_cdf, persona)
    within_ms = start_ms + signup_day * DAY_MS + signup_hour * HOUR_MS
    within_ms += (rng.random(n) * HOUR_MS).astype(np.int64)
    signup_ms = np.where(in_window, within_ms, before_ms)

    shape = pt.activity_shape[persona]
    activity = rng.gamma(shape, 1.0 / shape)
    sigma = cfg.orders.user_spend_sigma
    spend_level = np.exp(rng.normal(0.0, sigma, n) - sigma * sigma / 2)
    p = np.clip(pt.coupon_use_prob[persona], 1e-3, 1 - 1e-3)
    coupon_affinity = rng.beta(p * 8.0, (1 - p) * 8.0)
    alpha = cfg.orders.category_concentration * pt.category_mix[persona] + 1e-3
    mix = rng.gamma(alpha)
    mix /= mix.sum(axis=1, keepdims=True)

    stop_day = np.full(n, span, dtype=np.int64)
    churns = pt.trend[persona] == "churn"
    frac = pt.churn_lo[persona] + (pt.churn_hi[persona] - pt.churn_lo[persona]) * rng.random(n)
    stop_day[churns] = np.floor(frac[churns] * days).astype(np.int64)

    age = _draw_grouped(rng, pt.age_cdf, persona)
    gender = _draw(rng, _weights_vector(cfg.genders, GENDERS), n)
    city = _draw(rng, np.array([c.weight for c in cfg.cities]), n)
    device = _draw(rng, _weights_vector(cfg.devices, DEVICES), n)
    channel = _draw_grouped(rng, pt.channel_cdf, persona)
    birthday = rng.integers(0, 365, n)
    birthday_known = rng.random(n) < cfg.birthday_known_share
    attributes = {
        "age_band": _take(pa.array(AGE_BANDS), age),
        "gender": _take(pa.array(GENDERS), gender),
        "region": _take(pa.array([c.region for c in cfg.cities]), city),
        "city": _take(pa.array([c.name for c in cfg.cities]), city),
        "device": _take(pa.array(DEVICES), device),
        "channel": _take(pa.array(CHANNELS), channel),
        "birthday_md": _take(_MMDD, np.where(birthday_known, birthday, -1)),
    }
    users = _Users(
        persona=persona,
        signup_ms=signup_ms,
        signup_day=signup_day,
        activity=activity,
        spend_level=spend_level,
        coupon_affinity=coupon_affinity,
        category_cdf=_cdf(mix),
        log_mix=np.log(mix + 1e-12),
        stop_day=stop_day,
    )
    return users, attributes


def _session_rates(
    rng: np.random.Generator,
    pt: _Personas,
    u: _Users,
    calendar: CalendarConfig,
    start: dt.date,
    span: int,
) -> np.ndarray:
    """Expected sessions per (user, local day) over the window and the horizon."""
    d = np.arange(span)
    weekday = (start.weekday() + d) % 7
    weekly = np.array(calendar.weekday_multipliers)[weekday]
    festival = np.array(calendar.day_multipliers(start, span)) / weekly
    weekend = weekday >= 5
    day_factor = (
        weekly[None, :]
        * festival[None, :] ** pt.festival_sensitivity[:, None]
        * np.where(weekend[None, :], pt.weekend_multiplier[:, None], 1.0)
    )
    p = u.persona
    lam = (pt.sessions_per_day[p] * u.activity)[:, None] * day_factor[p]
    age = d[None, :] - u.signup_day[:, None]
    lam[(u.signup_day[:, None] >= 0) & (age < 0)] = 0.0
    trend = pt.trend[p]
    ramp = np.flatnonzero(trend == "ramp_up")
    if len(ramp):
        r0 = pt.ramp_start[p[ramp]][:, None]
        grown = np.clip(age[ramp] / pt.ramp_days[p[ramp]][:, None], 0.0, 1.0)
        lam[ramp] *= r0 + (1.0 - r0) * grown
    decline = np.flatnonzero(trend == "decline")
    half_life = pt.half_life[p[decline]] * np.exp(rng.normal(0.0, 0.25, len(decline)))
    if len(decline):
        lam[decline] *= 0.5 ** (d[None, :] / half_life[:, None])
    lam[d[None, :] >= u.stop_day[:, None]] = 0.0
    return lam


@dataclass
class _Orders:
    """Orders of one bucket (one per buying session, in session order) or of the horizon."""

    user: np.ndarray
    gross: np.ndarray
    discount: np.ndarray
    paid: np.ndarray
    tier: np.ndarray  # coupon tier index; -1: no coupon


def _price_orders(
    rng: np.random.Generator,
    pt: _Personas,
    u: _Users,
    tiers: np.ndarray,
    user: np.ndarray,
    coupon_used: np.ndarray,
) -> _Orders:
    p = u.persona[user]
    m = len(user)
    gross = pt.aov_cny[p] * u.spend_level[user] * np.exp(pt.aov_sigma[p] * rng.standard_normal(m))
    gross = np.round(np.maximum(gross, 6.0), 2)
    target = gross * pt.discount_share[p] * rng.uniform(0.6, 1.4, m)
    tier = np.clip(np.searchsorted(tiers, target, side="right") - 1, 0, len(tiers) - 1)
    discount = np.where(coupon_used, np.round(np.minimum(tiers[tier], gross * 0.5), 2), 0.0)
    paid = np.round(gross - discount, 2)
    return _Orders(user, gross, discount, paid, np.where(coupon_used, tier, -1))


@dataclass
class _Sessions:
    user: np.ndarray
    day: np.ndarray  # local day index in the window
    day_ms: np.ndarray  # local midnight of that day, UTC ms
    start_ms: np.ndarray
    pace_ms: np.ndarray  # time per funnel step

    def __len__(self) -> int:
        return len(self.user)


def _sessions(
    rng: np.random.Generator,
    cfg: GeneratorConfig,
    pt: _Personas,
    u: _Users,
    lam: np.ndarray,
    start_ms: int,
    days: int,
) -> _Sessions:
    """Poisson sessions per (user, day) of the window, with their start times."""
    counts = rng.poisson(lam[:, :days])
    new = np.flatnonzero((u.signup_day >= 0) & (u.signup_day < u.stop_day))
    counts[new, u.signup_day[new]] = np.maximum(counts[new, u.signup_day[new]], 1)
    flat = counts.ravel()
    cells = np.flatnonzero(flat)
    user = np.repeat(cells // days, flat[cells])
    day = np.repeat(cells % days, flat[cells])
    ns = len(user)
    day_ms = start_ms + day * DAY_MS
    hour = _draw_grouped(rng, pt.hour_cdf, u.persona[user])
    start = day_ms + hour * HOUR_MS + (rng.random(ns) * HOUR_MS).astype(np.int64)
    # a new user's sessions on the signup day start after the signup
    after = u.signup_ms[user] + 1000
    room = np.maximum(day_ms + DAY_MS - 900_000 - after, 0)
    late = after + (rng.random(ns) * room).astype(np.int64)
    start = np.where(day == u.signup_day[user], late, start)
    pace = (cfg.funnel.seconds_per_step * 1000.0) * (0.2 + rng.exponential(0.8, ns))
    return _Sessions(user, day, day_ms, start, pace)


@dataclass
class _Rows:
    """Event rows as int64 code columns (-1: null), before they become Arrow columns."""

    user: np.ndarray  # user index in the bucket
    ts: np.ndarray  # UTC ms
    type: np.ndarray  # index into EVENT_TYPES
    session: np.ndarray  # session index in the bucket
    item: np.ndarray
    category: np.ndarray
    query: np.ndarray  # index into the search vocabulary
    order: np.ndarray  # order index in the bucket
    tier: np.ndarray  # coupon tier index
    rating: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence[_Rows]) -> _Rows:
        return cls(
            **{
                name: np.concatenate([getattr(p, name) for p in parts])
                for name in cls.__dataclass_fields__
            }
        )

    def take(self, idx: np.ndarray) -> _Rows:
        return _Rows(**{name: getattr(self, name)[idx] for name in self.__dataclass_fields__})


def _session_events(
    rng: np.random.Generator,
    cfg: GeneratorConfig,
    pt: _Personas,
    u: _Users,
    s: _Sessions,
    tiers: np.ndarray,
    buy_multiplier: np.ndarray | None = None,
) -> tuple[_Rows, np.ndarray, np.ndarray]:
    """Expand every session into its funnel events.

    ``buy_multiplier`` (per session) scales the buy probability (a simulated treatment); the
    random draws are the same with or without it.

    Returns:
        the rows (``order`` and ``tier`` of coupon uses and orders still unset), whether each
        session buys, and whether it applies a coupon.
    """
    ns = len(s)
    persona = u.persona[s.user]
    f = cfg.funnel
    buy_prob = pt.buy_prob[persona]
    if buy_multiplier is not None:
        buy_prob = np.minimum(buy_prob * buy_multiplier, 1.0)
    buy = rng.random(ns) < buy_prob
    cart = buy | (rng.random(ns) < pt.abandon_prob[persona])
    coupon_used = buy & (rng.random(ns) < u.coupon_affinity[s.user])
    counts = np.zeros((ns, len(_SESSION_EVENTS)), dtype=np.int64)
    counts[:, _COL[EventType.APP_VISIT]] = 1
    counts[:, _COL[EventType.CATEGORY_VIEW]] = rng.poisson(f.category_views_per_session, ns)
    counts[:, _COL[EventType.SEARCH]] = rng.poisson(f.searches_per_session, ns)
    counts[:, _COL[EventType.ITEM_VIEW]] = rng.poisson(pt.item_views[persona])
    counts[:, _COL[EventType.FAVOURITE]] = rng.random(ns) < pt.favourite_prob[persona]
    counts[:, _COL[EventType.ADD_TO_CART]] = cart * (1 + rng.poisson(f.extra_cart_adds, ns))
    counts[:, _COL[EventType.REMOVE_FROM_CART]] = cart & (rng.random(ns) < f.remove_from_cart_prob)
    counts[:, _COL[EventType.COUPON_CLAIM]] = rng.poisson(pt.coupon_claims[persona])
    counts[:, _COL[EventType.COUPON_USE]] = coupon_used
    counts[:, _COL[EventType.ORDER]] = buy
    counts[:, _COL[EventType.SHARE]] = rng.random(ns) < pt.share_prob[persona]
    counts[:, _COL[EventType.COMMUNITY_POST]] = rng.random(ns) < pt.post_prob[persona]

    per_session = counts.sum(axis=1)
    session_first = np.cumsum(per_session) - per_session
    sess = np.repeat(np.arange(ns), per_session)
    col = np.repeat(np.tile(np.arange(len(_SESSION_EVENTS), dtype=np.int8), ns), counts.ravel())
    ne = len(sess)
    user = s.user[sess]
    step = _STAGE_BASE[col] + _STAGE_WIDTH[col] * rng.random(ne)
    ts = s.start_ms[sess] + (step * s.pace_ms[sess]).astype(np.int64)
    ts = np.minimum(ts, s.day_ms[sess] + DAY_MS - 1)  # a session stays in its local day

    category = np.full(ne, -1, dtype=np.int64)
    has_cat = np.flatnonzero(_HAS_CATEGORY[col])
    category[has_cat] = _draw_rows(rng, u.category_cdf[user[has_cat]])
    item = np.full(ne, -1, dtype=np.int64)
    has_item = np.flatnonzero(_HAS_ITEM[col])
    rank = _popularity_rank(rng, cfg.catalogue, len(has_item))
    item[has_item] = (category[has_item] + 1) * ITEM_ID_STRIDE + rank
    # a removal takes back the session's first cart add
    removes = np.flatnonzero(col == _COL[EventType.REMOVE_FROM_CART])
    adds_before = counts[sess[removes], : _COL[EventType.ADD_TO_CART]].sum(axis=1)
    first_add = session_first[sess[removes]] + adds_before
    category[removes] = category[first_add]
    item[removes] = item[first_add]

    query = np.full(ne, -1, dtype=np.int64)
    searches = np.flatnonzero(col == _COL[EventType.SEARCH])
    word_cat = _draw_rows(rng, u.category_cdf[user[searches]])
    offset = (rng.random(len(searches)) * _WORD_COUNT[word_cat]).astype(np.int64)
    query[searches] = _WORD_OFFSET[word_cat] + offset

    tier = np.full(ne, -1, dtype=np.int64)
    claims = np.flatnonzero(col == _COL[EventType.COUPON_CLAIM])
    tier[claims] = _draw(rng, 1.0 / np.sqrt(tiers), len(claims))
    none = np.full(ne, -1, dtype=np.int64)
    rows = _Rows(
        user, ts, _COL_TYPE[col].astype(np.int64), sess, item, category, query, none,
        tier, none.copy(),
    )  # fmt: skip
    return rows, buy, coupon_used


@dataclass
class _Baskets:
    items: np.ndarray
    n_categories: np.ndarray
    categories: np.ndarray  # orders x 4 category indices, the first n_categories used


def _baskets(
    rng: np.random.Generator, cfg: GeneratorConfig, u: _Users, orders: _Orders
) -> _Baskets:
    """Item counts (about basket value / item price) and 1-4 distinct categories per order."""
    no = len(orders.user)
    mean_extra = np.maximum(orders.gross / cfg.orders.avg_item_price_cny - 1, 0.0)
    items = np.minimum(1 + rng.poisson(mean_extra), 500)
    n_cat = np.minimum(1 + rng.binomial(3, cfg.orders.extra_category_prob, no), items)
    # Gumbel top-k: categories drawn from the user's mix without replacement
    keys = u.log_mix[orders.user] + rng.gumbel(size=(no, len(CATEGORIES)))
    return _Baskets(items, n_cat, np.argsort(-keys, axis=1)[:, :4])


def _after_orders(
    rng: np.random.Generator,
    cfg: GeneratorConfig,
    pt: _Personas,
    u: _Users,
    orders: _Orders,
    order_ts: np.ndarray,
    end_ms: int,
) -> tuple[_Rows, np.ndarray]:
    """Reviews and service contacts inside the window; and which orders went badly."""
    exp = cfg.experience
    no = len(orders.user)
    bad = rng.random(no) < pt.bad_prob[u.persona[orders.user]]
    reviewed = rng.random(no) < np.where(bad, exp.review_prob_bad, exp.review_prob_good)
    good_r = np.array(sorted(exp.ratings_good))
    bad_r = np.array(sorted(exp.ratings_bad))
    rating = np.where(
        bad,
        bad_r[_draw(rng, np.array([exp.ratings_bad[k] for k in bad_r]), no)],
        good_r[_draw(rng, np.array([exp.ratings_good[k] for k in good_r]), no)],
    )
    review_ts = order_ts + 1_800_000 + (rng.random(no) * (3 * DAY_MS - 1_800_000)).astype(np.int64)
    contacted = rng.random(no) < np.where(bad, exp.contact_prob_bad, exp.contact_prob_good)
    contact_ts = order_ts + 600_000 + (rng.random(no) * 2 * DAY_MS).astype(np.int64)
    r = np.flatnonzero(reviewed & (review_ts < end_ms))
    c = np.flatnonzero(contacted & (contact_ts < end_ms))
    idx = np.concatenate([r, c])
    none = np.full(len(idx), -1, dtype=np.int64)
    types = np.repeat(
        [_TYPE_CODE[EventType.REVIEW], _TYPE_CODE[EventType.SERVICE_CONTACT]], [len(r), len(c)]
    ).astype(np.int64)
    rows = _Rows(
        user=orders.user[idx],
        ts=np.concatenate([review_ts[r], contact_ts[c]]),
        type=types,
        session=none,
        item=none,
        category=none,
        query=none,
        order=idx,
        tier=none,
        rating=np.concatenate([rating[r], np.full(len(c), -1)]),
    )
    return rows, bad


@dataclass
class _Horizon:
    stop_day: np.ndarray
    sessions: np.ndarray
    orders: np.ndarray
    spend: np.ndarray


def _horizon(
    rng: np.random.Generator,
    cfg: GeneratorConfig,
    pt: _Personas,
    u: _Users,
    lam: np.ndarray,
    tiers: np.ndarray,
    recent_bad: np.ndarray,
    days: int,
) -> _Horizon:
    """Who stops after the window (more likely after a recent bad order), what the rest buy."""
    n, span = lam.shape
    p_stop = pt.churn_next_prob[u.persona] + cfg.experience.churn_boost_after_bad * recent_bad
    stops = (u.stop_day >= span) & (rng.random(n) < np.clip(p_stop, 0.0, 1.0))
    stop_day = np.where(stops, days + (rng.random(n) * (span - days)).astype(np.int64), u.stop_day)
    active = np.arange(days, span)[None, :] < stop_day[:, None]
    sessions = rng.poisson(np.where(active, lam[:, days:], 0.0)).sum(axis=1)
    orders = rng.binomial(sessions, pt.buy_prob[u.persona])
    user = np.repeat(np.arange(n), orders)
    coupon = rng.random(len(user)) < u.coupon_affinity[user]
    priced = _price_orders(rng, pt, u, tiers, user, coupon)
    spend = np.bincount(user, weights=priced.paid, minlength=n)
    return _Horizon(stop_day, sessions, orders, spend)


def _gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` where ``index`` may point at order 0 of a bucket without any order
    (those rows are masked out afterwards): zeros then, not an IndexError."""
    if len(values):
        return values[index]
    return np.zeros(len(index), dtype=values.dtype)


def _events_table(
    rows: _Rows,
    ids: np.ndarray,
    orders: _Orders,
    baskets: _Baskets,
    id_base: int,
    tiers: Sequence[float],
) -> pa.Table:
    """The Arrow events table of rows already sorted by (user, ts)."""
    is_order = rows.type == _TYPE_CODE[EventType.ORDER]
    has_discount = is_order | (rows.type == _TYPE_CODE[EventType.COUPON_USE])
    oi = np.maximum(rows.order, 0)
    order_rows = rows.order[is_order]
    n_cat = np.where(is_order, _gather(baskets.n_categories, oi), 0)
    offsets = np.concatenate([[0], np.cumsum(n_cat)]).astype(np.int32)
    used = np.arange(4)[None, :] < baskets.n_categories[order_rows][:, None]
    cat_codes = baskets.categories[order_rows][used].astype(np.int32)
    order_ids = pc.binary_join_element_wise(
        "O", pc.cast(pa.array(id_base + np.arange(len(orders.user)), pa.int64()), pa.string()), ""
    )
    return pa.Table.from_arrays(
        [
            pa.array(ids[rows.user], pa.int64()),
            pa.array(rows.ts, TIMESTAMP),
            _EVENT_TYPE_ARRAY.take(pa.array(rows.type.astype(np.int32))),
            _masked(id_base + rows.session, rows.session < 0, pa.int64()),
            _masked(rows.item, rows.item < 0, pa.int64()),
            _take(_CATEGORY_ARRAY, rows.category),
            _take(_WORD_ARRAY, rows.query),
            _take(order_ids, rows.order),
            _masked(_gather(orders.paid, oi), ~is_order, pa.float64()),
            _masked(_gather(orders.discount, oi), ~has_discount, pa.float64()),
            _take(_coupon_ids(tiers), rows.tier),
            _masked(_gather(baskets.items, oi).astype(np.int16), ~is_order, pa.int16()),
            pa.ListArray.from_arrays(
                pa.array(offsets),
                _CATEGORY_ARRAY.take(pa.array(cat_codes)),
                mask=pa.array(~is_order),
            ),
            _masked(rows.rating.astype(np.int8), rows.rating < 0, pa.int8()),
        ],
        schema=EVENTS_SCHEMA,
    )


def generate_bucket(
    bucket: int,
    user_ids: np.ndarray,
    raw_ids: Sequence[str] | np.ndarray,
    cfg: GeneratorConfig,
    calendar: CalendarConfig,
    seed: int,
    start: dt.date,
    days: int,
    horizon_days: int = 30,
    experiment: ExperimentPlan | None = None,
) -> BucketData:
    """Simulate every user of one bucket over the window and the horizon after it.

    Args:
        bucket: the bucket number (part of the random stream and of session/order ids).
        user_ids: pseudonymous int64 ids of the bucket's users.
        raw_ids: their synthetic raw platform ids (ground truth only), aligned with user_ids.
        cfg: generator parameters (configs/generator.yaml).
        calendar: weekly rhythm and festival peaks.
        seed: run seed; with the same inputs the output is identical.
        start: first local day of the window.
        days: window length in local days; events are in [start, start + days).
        horizon_days: days after the window simulated for the truth labels.
        experiment: a simulated experiment (:mod:`strata.synth.experiment`): its exposures
            and the treated users' higher buy probability (its own random stream for the
            send times; the behaviour's draws are the same, but a treated order shifts later
            draws, so other users' events differ from a run without it, in value not in law).

    Returns:
        events (EVENTS_SCHEMA, sorted by user_id then ts), users (USERS_SCHEMA, sorted by
        user_id) and truth (:func:`truth_schema`, sorted by user_id); with an experiment also
        its exposures (EXPOSURES_SCHEMA, sorted by user_id) and truth.
    """
    if not (1 <= days <= MAX_DAYS and 1 <= horizon_days <= MAX_DAYS):
        raise ValueError(f"days and horizon_days must be in 1..{MAX_DAYS}")
    ids = np.asarray(user_ids, dtype=np.int64)
    raw = np.asarray(raw_ids).astype(str)
    if raw.shape != ids.shape:
        raise ValueError("raw_ids must align with user_ids")
    by_id = np.argsort(ids, kind="stable")
    ids, raw = ids[by_id], raw[by_id]
    n = len(ids)
    rng = np.random.default_rng([seed, bucket])
    pt = _Personas(cfg)
    tiers = np.array(cfg.coupons.tiers_cny, dtype=np.float64)
    span = days + horizon_days
    start_ms = local_midnight_ms(start)
    end_ms = start_ms + days * DAY_MS
    id_base = (bucket + 1) * _ID_STRIDE

    u, attributes = _draw_users(rng, cfg, pt, n, start_ms, days, span)
    lam = _session_rates(rng, pt, u, calendar, start, span)
    sessions = _sessions(rng, cfg, pt, u, lam, start_ms, days)
    exposed = None
    if experiment is not None:
        exposed = simulate_exposures(
            experiment, np.random.default_rng([seed, bucket, 1]), start_ms, ids,
            np.asarray(pt.names, dtype=object)[u.persona], u.signup_ms, pt.buy_prob[u.persona],
            sessions.user, sessions.start_ms,
        )  # fmt: skip
    rows, buy, coupon_used = _session_events(
        rng, cfg, pt, u, sessions, tiers, None if exposed is None else exposed.buy_multiplier
    )

    # orders: one per buying session, numbered in session order like their order events
    o_sess = np.flatnonzero(buy)
    orders = _price_orders(rng, pt, u, tiers, sessions.user[o_sess], coupon_used[o_sess])
    baskets = _baskets(rng, cfg, u, orders)
    order_of_session = np.full(len(sessions), -1, dtype=np.int64)
    order_of_session[o_sess] = np.arange(len(o_sess))
    o_event = np.flatnonzero(rows.type == _TYPE_CODE[EventType.ORDER])
    uses = np.flatnonzero(rows.type == _TYPE_CODE[EventType.COUPON_USE])
    rows.order[o_event] = np.arange(len(o_sess))
    rows.order[uses] = order_of_session[rows.session[uses]]
    rows.category[o_event] = baskets.categories[:, 0]
    rows.tier[o_event] = orders.tier
    rows.tier[uses] = orders.tier[rows.order[uses]]

    after, bad = _after_orders(rng, cfg, pt, u, orders, rows.ts[o_event], end_ms)
    recent = bad & (sessions.day[o_sess] >= days - cfg.experience.recent_bad_days)
    recent_bad = np.zeros(n, dtype=bool)
    recent_bad[orders.user[recent]] = True
    horizon = _horizon(rng, cfg, pt, u, lam, tiers, recent_bad, days)

    rows = _Rows.concat([rows, after])
    # one stable int64 sort: user index in the high bits, ms since window start in the low 40
    rows = rows.take(np.argsort((rows.user << 40) | (rows.ts - start_ms), kind="stable"))
    events = _events_table(rows, ids, orders, baskets, id_base, cfg.coupons.tiers_cny)

    users = pa.Table.from_arrays(
        [pa.array(ids, pa.int64()), pa.array(u.signup_ms, TIMESTAMP)]
        + [attributes[name] for name in USERS_SCHEMA.names[2:]],
        schema=USERS_SCHEMA,
    )
    stopped = horizon.stop_day < span
    truth = pa.Table.from_arrays(
        [
            pa.array(ids, pa.int64()),
            pa.array(raw, pa.string()),
            pa.array(np.full(n, bucket, dtype=np.int32)),
            pa.array(pt.names).take(pa.array(u.persona.astype(np.int32))),
            pa.array(u.signup_ms, TIMESTAMP),
            pa.array(u.activity, pa.float64()),
            pa.array(
                ((start - _EPOCH).days + horizon.stop_day).astype(np.int32),
                pa.date32(),
                mask=~stopped,
            ),
            pa.array(np.bincount(orders.user, minlength=n).astype(np.int32)),
            pa.array(np.round(np.bincount(orders.user, weights=orders.paid, minlength=n), 2)),
            pa.array(horizon.sessions.astype(np.int32)),
            pa.array(horizon.orders.astype(np.int32)),
            pa.array(np.round(horizon.spend, 2)),
            pa.array(horizon.orders == 0),
        ],
        schema=truth_schema(horizon_days),
    )
    return BucketData(
        events=events,
        users=users,
        truth=truth,
        exposures=None if exposed is None else exposed.exposures,
        experiment_truth=None if exposed is None else exposed.truth,
    )


#: Columns of an orders-only log (``strata generate --orders-only``): what a shop's order
#: export carries. Sessions, items, queries and ratings are not part of it.
ORDER_LOG_COLUMNS: tuple[str, ...] = (
    "user_id",
    "ts",
    "event_type",
    "order_id",
    "amount_cny",
    "discount_cny",
    "coupon_id",
    "item_count",
    "categories",
)


def orders_only(data: BucketData) -> BucketData:
    """One bucket as a transaction log: its order events only, with :data:`ORDER_LOG_COLUMNS`
    (the other event columns null), and no users (an empty users table). The ground truth is
    unchanged: it describes the same simulated users.
    """
    events = data.events.filter(pc.equal(data.events.column("event_type"), EventType.ORDER.value))
    kept = set(ORDER_LOG_COLUMNS)
    events = pa.Table.from_arrays(
        [
            events.column(f.name) if f.name in kept else pa.nulls(events.num_rows, f.type)
            for f in EVENTS_SCHEMA
        ],
        schema=EVENTS_SCHEMA,
    )
    return BucketData(
        events=events,
        users=USERS_SCHEMA.empty_table(),
        truth=data.truth,
        exposures=data.exposures,
        experiment_truth=data.experiment_truth,
    )
