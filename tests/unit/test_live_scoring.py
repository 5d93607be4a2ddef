"""Live tier refresh (strata.realtime.live): snapshot rows + live orders, re-scored with the
snapshot's cut points by the batch functions; and the RFM partials' JSON form."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from strata.features import (
    IntHistogram,
    LogHistogram,
    RfmMeasures,
    RfmPartials,
    compute_features,
    rfm_partials,
    rfm_scores,
)
from strata.features.rfm import histogram_from_json
from strata.realtime.live import OVERLAY_KEYS, LiveScorer, superseded
from strata.realtime.model import UserState
from strata.schema import TIMESTAMP
from strata.tiering.scoring import RecomputeConfig, align_previous, score_features
from strata.timeutil import DAY_MS, HOUR_MS, local_day, local_iso, parse_as_of, to_epoch_ms

AS_OF = to_epoch_ms(parse_as_of("2026-10-01"))  # local midnight; observation day 2026-09-30
OBS = int(local_day(AS_OF - 1))
CONFIG = RecomputeConfig.load()
CONTRACT_KEYS = (
    "version", "as_of", "tier", "lifecycle_stage", "rfm_r", "rfm_f", "rfm_m", "rfm_score",
    "recency_days", "frequency_90d", "monetary_90d", "last_event_ms", "last_event_at",
)  # fmt: skip
# window edges (days back from the observation day) an order must keep clear of, so that the
# few days between the snapshot and the live evaluation move no snapshot order between windows
EDGES = (29, 59, 89, 179, 364)


def _ts(day_back: int, hour: int = 12) -> int:
    """Epoch ms of ``hour`` local on the day ``day_back`` days before the observation day."""
    return (OBS - day_back) * DAY_MS - 8 * HOUR_MS + hour * HOUR_MS


def _events(orders: list[tuple[int, int, float]]) -> pa.Table:
    """Order events from (user, ts ms, amount)."""
    return pa.table(
        {
            "user_id": pa.array([u for u, _, _ in orders], pa.int64()),
            "ts": pa.array([t for _, t, _ in orders], pa.int64()).cast(TIMESTAMP),
            "event_type": pa.array(["order"] * len(orders)),
            "order_id": pa.array([f"o{i}" for i in range(len(orders))]),
            "amount_cny": pa.array([a for _, _, a in orders], pa.float64()),
        }
    ).sort_by([("user_id", "ascending"), ("ts", "ascending")])


def _users(signups: dict[int, int | None]) -> pa.Table:
    ids = sorted(signups)
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "signup_ts": pa.array([signups[u] for u in ids], pa.int64()).cast(TIMESTAMP),
        }
    )


def _population(n: int = 400, seed: int = 3) -> tuple[list[tuple[int, int, float]], pa.Table]:
    """Order history before AS_OF (clear of the window edges) and users with signups."""
    rng = np.random.default_rng(seed)
    orders: list[tuple[int, int, float]] = []
    signups: dict[int, int | None] = {}
    for u in range(1, n + 1):
        signups[u] = None if u % 7 == 0 else _ts(int(rng.integers(60, 500)))
        k = int(rng.poisson(5)) if u % 5 else 0
        for _ in range(k):
            back = int(rng.integers(0, 400))
            if any(e - 5 <= back <= e + 1 for e in EDGES):
                continue
            orders.append(
                (u, _ts(back, int(rng.integers(8, 22))), round(float(rng.lognormal(4, 1)), 2))
            )
    return orders, _users(signups)


def _rows(table: pa.Table) -> dict[int, dict[str, Any]]:
    """Snapshot rows as SnapshotFeatures returns them (timestamps as epoch ms)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            table = table.set_column(i, field.name, pc.cast(table.column(i), pa.int64()))
    return {r["user_id"]: r for r in table.to_pylist()}


class Snapshot:
    """A batch 'recompute' of a population at AS_OF (features, partials, scored rows)."""

    def __init__(self, orders: list[tuple[int, int, float]], users: pa.Table) -> None:
        self.orders, self.users = orders, users
        self.features = compute_features(_events(orders), users, AS_OF, CONFIG.features)
        self.partials = rfm_partials(self.features, CONFIG.tiers.measures)
        self.scored = score_features(self.features, self.partials, None, AS_OF, CONFIG)
        self.rows = _rows(self.scored)
        self.scorer = LiveScorer(CONFIG, self.partials, AS_OF, "v1", "2026-09-30T16:00:00+00:00")

    def replay(self, live: list[tuple[int, int, float]], at_ms: int) -> dict[int, dict[str, Any]]:
        """The batch result at ``at_ms`` with the live orders in the warehouse, ranked against
        the snapshot's partials, the snapshot tier as the previous tier."""
        feats = compute_features(_events(self.orders + live), self.users, at_ms, CONFIG.features)
        prev = align_previous(feats.column("user_id"), self.scored.select(["user_id", "tier"]))
        return _rows(score_features(feats, self.partials, prev, at_ms, CONFIG))


def _state(user: int, orders: list[tuple[int, float]]) -> UserState:
    """Live state after the worker saw these (ts, amount) orders."""
    s = UserState(user)
    for ts, amount in orders:
        day = int(local_day(ts))
        n, cny = s.orders.get(day, [0, 0.0])
        s.orders[day] = [n + 1, cny + amount]
        s.last_order_ms = ts if s.last_order_ms is None else max(s.last_order_ms, ts)
        s.first_order_ms = ts if s.first_order_ms is None else min(s.first_order_ms, ts)
        s.last_event_ms = s.last_order_ms
    return s


@pytest.fixture(scope="module")
def snap() -> Snapshot:
    return Snapshot(*_population())


# ------------------------------------------------------------------------- equal to batch
@pytest.mark.parametrize("days_after", [0, 3])
def test_live_equals_the_batch_recompute_with_the_orders_replayed(
    snap: Snapshot, days_after: int
) -> None:
    rng = np.random.default_rng(days_after)
    at_ms = AS_OF + days_after * DAY_MS + 15 * HOUR_MS
    users = [*sorted(rng.choice(np.arange(1, 401), 120, replace=False).tolist()), 9001, 9002]
    live: list[tuple[int, int, float]] = []
    states = []
    for u in users:
        mine = [
            (AS_OF + int(rng.integers(0, days_after * DAY_MS + 15 * HOUR_MS)),
             round(float(rng.lognormal(4.5, 1)), 2))
            for _ in range(int(rng.integers(1, 4)))
        ]  # fmt: skip
        live += [(u, t, a) for t, a in mine]
        states.append(_state(u, mine))
    got = snap.scorer.overlays(states, [snap.rows.get(u) for u in users], at_ms)
    want = snap.replay(live, at_ms)
    tiers_moved = bands_moved = 0
    for u, o in zip(users, got, strict=True):
        w = want[u]
        for key in (
            "tier", "lifecycle_stage", "recency_days", "frequency_90d", "orders_total",
            "recency_band", "frequency_band", "spend_level",
        ):  # fmt: skip
            assert o[key] == w[key], (u, key, o[key], w[key])
        assert o["ltv_cny"] == pytest.approx(w["ltv_cny"], abs=1e-6)
        assert o["arpu_30d_cny"] == pytest.approx(w["arpu_30d_cny"], abs=1e-6)
        for key in ("rfm_r", "rfm_f", "rfm_m", "rfm_score", "monetary_90d"):
            assert o[key] == pytest.approx(w[key], abs=1e-6), (u, key)
        assert o["tier_rule"] == w["tier_rule"] and o["lifecycle_rule"] == w["lifecycle_rule"]
        tiers_moved += u in snap.rows and o["tier"] != snap.rows[u]["tier"]
        bands_moved += u in snap.rows and o["recency_band"] != snap.rows[u]["recency_band"]
    assert tiers_moved > 0  # the live orders changed something the test can see
    assert bands_moved > 0  # lapsed users who ordered again are within_30d


def test_overlay_has_the_contract_keys_and_the_snapshot_identity(snap: Snapshot) -> None:
    ts = AS_OF + 2 * HOUR_MS
    state = _state(5, [(ts, 30.0)])
    state.last_event_ms = ts + 60_000  # a later app visit
    o = snap.scorer.overlay(5, state, snap.rows[5], ts + 120_000)
    assert tuple(o)[: len(CONTRACT_KEYS)] == CONTRACT_KEYS and tuple(o) == OVERLAY_KEYS
    assert o["version"] == "v1" and o["as_of"] == "2026-09-30T16:00:00+00:00"
    assert o["last_event_ms"] == ts + 60_000 and o["last_event_at"] == local_iso(ts + 60_000)
    assert o["last_order_ms"] == ts and o["recency_days"] == 0
    assert o["recency_band"] == "within_30d"
    assert o["previous_tier"] == snap.rows[5]["tier"]
    with pytest.raises(ValueError, match="state of user"):
        snap.scorer.overlay(6, state, snap.rows[5], ts)


def test_no_live_orders_at_the_as_of_reproduces_the_snapshot(snap: Snapshot) -> None:
    users = sorted(snap.rows)
    got = snap.scorer.overlays([UserState(u) for u in users], [snap.rows[u] for u in users], AS_OF)
    for u, o in zip(users, got, strict=True):
        row = snap.rows[u]
        assert (o["tier"], o["lifecycle_stage"]) == (row["tier"], row["lifecycle_stage"]), u
        assert o["rfm_score"] == row["rfm_score"] and o["rfm_r"] == row["rfm_r"], u


# ------------------------------------------------------------------------- the cases
def _declining_row(snap: Snapshot, recent: int, before: int) -> dict[str, Any]:
    """A known user with ``before`` orders 31-59 days ago and ``recent`` in the last 30."""
    history = [(777, _ts(33 + i), 60.0) for i in range(before)]
    history += [(777, _ts(3 + i), 60.0) for i in range(recent)]
    feats = compute_features(_events(history), _users({777: _ts(300)}), AS_OF, CONFIG.features)
    row = _rows(score_features(feats, snap.partials, None, AS_OF, CONFIG))[777]
    assert row["lifecycle_stage"] == "declining"
    return row


def test_a_declining_user_who_orders_is_no_longer_declining(snap: Snapshot) -> None:
    row = _declining_row(snap, recent=2, before=6)  # 2 <= 0.35 x 6
    assert row["tier"] == "churn_warning"  # declining and worth >= 100 CNY
    ts = AS_OF + 10 * HOUR_MS
    o = snap.scorer.overlay(777, _state(777, [(ts, 60.0)]), row, ts + 1000)
    assert o["lifecycle_stage"] == "mature"  # 3 > 0.35 x 6; 9 orders, customer for 300 days
    assert o["tier"] != "churn_warning" and o["tier_rule"] != "churn_warning"
    assert o["rfm_r"] > row["rfm_r"] and o["frequency_90d"] == row["frequency_90d"] + 1


def test_one_order_after_the_snapshot_ends_declining_though_the_batch_rule_would_not(
    snap: Snapshot,
) -> None:
    # lifecycle.yaml: declining while orders last 30d <= 0.35 x the 30d before; with nothing
    # in the last 30 days and 3 before, one order (1 <= 1.05) would keep the batch rule's
    # "declining"; the live rule says a user who ordered again after the snapshot is not
    row = _declining_row(snap, recent=0, before=3)
    ts = AS_OF + 10 * HOUR_MS
    one = snap.scorer.overlay(777, _state(777, [(ts, 60.0)]), row, ts + 1000)
    assert one["lifecycle_stage"] in ("growing", "mature")
    assert one["lifecycle_rule"].startswith("ordered again after the snapshot (live): ")
    assert one["tier"] != "churn_warning"
    # without a live order the batch rule stands
    still = snap.scorer.overlay(777, UserState(777), row, ts + 1000)
    assert still["lifecycle_stage"] == "declining"


def test_a_big_order_moves_an_ordinary_user_up_a_band_with_the_snapshot_cut_points(
    snap: Snapshot,
) -> None:
    # the best-scored ordinary user (no order for ~3 months, nothing spent in 90 days)
    u = max((r["rfm_score"], u) for u, r in snap.rows.items() if r["tier"] == "ordinary")[1]
    row = snap.rows[u]
    assert (row["ltv_cny"] or 0) < 100  # not a churn-warning candidate
    ts = AS_OF + 9 * HOUR_MS
    big = float(np.max(snap.features.column("monetary_90d").to_numpy())) + 1.0
    o = snap.scorer.overlay(u, _state(u, [(ts, big)]), row, ts + 1000)
    bands = [b.name for b in CONFIG.tiers.bands]
    assert bands.index(o["tier"]) < bands.index("ordinary")
    assert o["tier_rule"] == "score_band" and o["rfm_score"] > row["rfm_score"] + 0.3
    assert o["rfm_m"] > 0.99 > row["rfm_m"]  # the top of the snapshot's spend ranks
    # the ranks are the snapshot's: the same partials give the same r, f, m for these values
    one = pa.table(
        {
            "recency_days": pa.array([0], pa.int32()),
            "frequency_90d": pa.array([o["frequency_90d"]], pa.int32()),
            "monetary_90d": pa.array([o["monetary_90d"]]),
        }
    )
    w = CONFIG.tiers.weights
    r, f, m, _s = rfm_scores(one, snap.partials, (w.recency, w.frequency, w.monetary))
    assert (o["rfm_r"], o["rfm_f"], o["rfm_m"]) == pytest.approx((r[0], f[0], m[0]), abs=1e-6)


def test_a_user_unknown_to_the_snapshot_who_orders_is_new(snap: Snapshot) -> None:
    ts = AS_OF + 11 * HOUR_MS
    o = snap.scorer.overlay(123456789, _state(123456789, [(ts, 88.0)]), None, ts + 5000)
    assert o["lifecycle_stage"] == "new"
    assert o["lifecycle_rule"] == "first order < 30 days ago"
    assert o["previous_tier"] is None and o["tier"] in CONFIG.tiers.tier_names
    assert (o["recency_days"], o["frequency_90d"], o["monetary_90d"]) == (0, 1, 88.0)
    assert o["orders_total"] == 1 and o["rfm_r"] > 0.9


# ------------------------------------------------------------------------- which orders count
def test_orders_the_snapshot_covers_are_not_counted_twice(snap: Snapshot) -> None:
    u = next(u for u, r in snap.rows.items() if (r["orders_total"] or 0) >= 3)
    row = snap.rows[u]
    last = row["last_order_ts"]
    # the stream saw the snapshot's last order too (before the as-of), then one after it
    state = _state(u, [(last, 10.0), (AS_OF + HOUR_MS, 20.0)])
    o = snap.scorer.overlay(u, state, row, AS_OF + 2 * HOUR_MS)
    assert o["orders_total"] == row["orders_total"] + 1


def test_orders_after_the_snapshot_last_order_count_even_before_the_as_of(snap: Snapshot) -> None:
    # an order the warehouse sink had not committed when the recompute ran
    u = next(u for u, r in snap.rows.items() if r["last_order_ts"] and r["recency_days"] > 5)
    row = snap.rows[u]
    late = AS_OF - 2 * HOUR_MS
    o = snap.scorer.overlay(u, _state(u, [(late, 10.0)]), row, AS_OF + HOUR_MS)
    assert o["orders_total"] == row["orders_total"] + 1 and o["recency_days"] == 1


def test_a_mid_day_as_of_splits_its_day_only_when_the_stream_started_after_it() -> None:
    as_of = AS_OF + 12 * HOUR_MS  # noon
    history = [(1, _ts(10), 50.0), (1, AS_OF + 9 * HOUR_MS, 40.0), (2, _ts(8), 20.0)]
    feats = compute_features(_events(history), None, as_of, CONFIG.features)
    partials = rfm_partials(feats, CONFIG.tiers.measures)
    rows = _rows(score_features(feats, partials, None, as_of, CONFIG))
    scorer = LiveScorer(CONFIG, partials, as_of, "v", "x")
    after = as_of + 2 * HOUR_MS
    # user 1: the stream saw the 09:00 order (in the snapshot) and one at 14:00: the day's
    # bucket holds both and cannot be split, so it is left out; recency still follows it
    both = scorer.overlay(
        1, _state(1, [(AS_OF + 9 * HOUR_MS, 40.0), (after, 5.0)]), rows[1], after + 1
    )
    assert both["orders_total"] == 2 and both["last_order_ms"] == after
    # user 2: every live order is after the as-of, so the whole day counts
    only = scorer.overlay(2, _state(2, [(after, 5.0)]), rows[2], after + 1)
    assert only["orders_total"] == 2 and only["recency_days"] == 0


def test_superseded_once_a_snapshot_covers_the_last_live_order() -> None:
    o = {"last_order_ms": AS_OF + 5}
    assert not superseded(o, AS_OF) and not superseded(o, AS_OF + 5)
    assert superseded(o, AS_OF + 6) and superseded({}, AS_OF)


def test_partials_of_another_frequency_measure_are_refused(snap: Snapshot) -> None:
    monthly = RfmMeasures.model_validate({"frequency": {"per": "active_month"}})
    other = rfm_partials(snap.features, monthly)
    with pytest.raises(ValueError, match="frequency measure"):
        LiveScorer(CONFIG, other, AS_OF, "v", "x")


def test_live_scores_with_every_measure_window(snap: Snapshot) -> None:
    tiers = CONFIG.tiers.model_copy(
        update={
            "measures": RfmMeasures.model_validate(
                {
                    "recency": {"window": "365d"},
                    "frequency": {"window": "lifetime", "per": "active_month"},
                    "monetary": {"window": "365d", "zeros": "excluded"},
                }
            )
        }
    )
    config = RecomputeConfig(CONFIG.features, CONFIG.lifecycle, tiers, CONFIG.options)
    partials = rfm_partials(snap.features, tiers.measures)
    scored = score_features(snap.features, partials, None, AS_OF, config)
    rows = _rows(scored)
    scorer = LiveScorer(config, partials, AS_OF, "v", "x")
    at = AS_OF + 15 * HOUR_MS
    live = [(u, AS_OF + 3 * HOUR_MS, 70.0) for u in (2, 3, 4)]
    feats = compute_features(_events(snap.orders + live), snap.users, at, config.features)
    prev = align_previous(feats.column("user_id"), scored.select(["user_id", "tier"]))
    want = _rows(score_features(feats, partials, prev, at, config))
    got = scorer.overlays(
        [_state(u, [(t, a)]) for u, t, a in live], [rows[u] for u, _, _ in live], at
    )
    for (u, _, _), o in zip(live, got, strict=True):
        assert o["rfm_score"] == pytest.approx(want[u]["rfm_score"], abs=1e-6)
        assert o["tier"] == want[u]["tier"]


def test_the_snapshot_churn_p_decides_the_churn_warning_when_it_has_one(snap: Snapshot) -> None:
    row = dict(_declining_row(snap, recent=2, before=6), churn_p=0.9)
    ts = AS_OF + 10 * HOUR_MS
    o = snap.scorer.overlay(777, _state(777, [(ts, 60.0)]), row, ts + 1000)
    assert o["tier"] == "churn_warning"  # the model is not re-run live: its churn_p stands
    low = snap.scorer.overlay(777, _state(777, [(ts, 60.0)]), dict(row, churn_p=0.1), ts + 1)
    assert low["tier"] != "churn_warning"
    # told the snapshot had no model, the lifecycle decides (no longer declining: no warning);
    # told it had one, a user without churn_p (unknown to the model) is not flagged
    declining = _declining_row(snap, recent=2, before=6)
    state = _state(777, [(ts, 1.0)])
    no_model = LiveScorer(CONFIG, snap.partials, AS_OF, "v", "x", with_predictions=False)
    assert no_model.overlay(777, state, row, ts + 1)["tier"] != "churn_warning"
    model = LiveScorer(CONFIG, snap.partials, AS_OF, "v", "x", with_predictions=True)
    still = UserState(777)  # no live order: declining, worth > 100 CNY
    assert no_model.overlay(777, still, declining, AS_OF)["tier"] == "churn_warning"
    assert model.overlay(777, still, declining, AS_OF)["tier"] != "churn_warning"


# ------------------------------------------------------------------------- partials JSON
def test_rfm_partials_round_trip_through_json(snap: Snapshot) -> None:
    import json

    for measures in (
        CONFIG.tiers.measures,
        RfmMeasures.model_validate({"frequency": {"per": "active_month"}}),
    ):
        p = rfm_partials(snap.features, measures)
        back = RfmPartials.from_json(json.loads(json.dumps(p.to_json())))
        assert back.n_users == p.n_users and type(back.frequency) is type(p.frequency)
        for a, b in (
            (p.recency, back.recency),
            (p.frequency, back.frequency),
            (p.monetary, back.monetary),
        ):
            assert np.array_equal(a.counts, b.counts)
        assert all(
            np.array_equal(x, y)
            for x, y in zip(rfm_scores(snap.features, p, measures=measures),
                            rfm_scores(snap.features, back, measures=measures), strict=True)
        )  # fmt: skip
    assert len(p.to_json()["monetary"]["index"]) < 1000  # sparse: only non-empty bins


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "float", "size": 1, "index": [], "count": []},
        {"kind": "int", "size": 2, "index": [2], "count": [1]},
        {"kind": "int", "size": 2, "index": [0], "count": [-1]},
        {"kind": "log", "size": 5, "index": [], "count": []},
        {"kind": "int", "size": 2, "index": [0, 1], "count": [1]},
        {"size": 2},
    ],
)
def test_bad_histogram_json_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        histogram_from_json(bad)


def test_partials_need_an_int_recency_and_money_monetary() -> None:
    log = LogHistogram.of(np.array([1.0])).to_json()
    good = {
        "n_users": 1,
        "recency": IntHistogram.of(np.array([1])).to_json(),
        "frequency": log,
        "monetary": log,
    }
    assert RfmPartials.from_json(good).frequency_per_month()
    with pytest.raises(ValueError, match="int recency"):
        RfmPartials.from_json(dict(good, recency=log))
    with pytest.raises(ValueError, match="missing"):
        RfmPartials.from_json({"n_users": 1})
