"""RFM base bands: recency band, frequency band, spend level (strata.tiering.bands)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from strata.config import ConfigError, load_yaml
from strata.features import RfmMeasures, compute_features, rfm_partials
from strata.tiering.bands import (
    FREQUENCY_BANDS,
    RECENCY_BANDS,
    SPEND_LEVELS,
    RfmBands,
    assign_bands,
    band_conditions,
)
from strata.tiering.explain import explain
from strata.tiering.scoring import RecomputeConfig, score_features
from strata.tiering.tiers import TierRules, load_tier_rules

DAY = 86_400_000
TS = pa.timestamp("ms", tz="UTC")
LOCAL = dt.timezone(dt.timedelta(hours=8))
AS_OF = int(dt.datetime(2026, 10, 1, tzinfo=LOCAL).timestamp() * 1000)
MEASURES = RfmMeasures()


def _features(
    recency: list[int | None],
    f90: list[int] | None = None,
    first_days_ago: list[float | None] | None = None,
    m90: list[float] | None = None,
) -> pa.Table:
    n = len(recency)
    f90 = f90 if f90 is not None else [0] * n
    first = first_days_ago if first_days_ago is not None else [400.0] * n
    m90 = m90 if m90 is not None else [0.0] * n
    return pa.table(
        {
            "recency_days": pa.array(recency, pa.int32()),
            "frequency_30d": pa.array([0] * n, pa.int32()),
            "frequency_90d": pa.array(f90, pa.int32()),
            "frequency_180d": pa.array(f90, pa.int32()),
            "frequency_365d": pa.array(f90, pa.int32()),
            "monetary_90d": pa.array(m90, pa.float64()),
            "first_order_ts": pa.array(
                [None if d is None else AS_OF - int(d * DAY) for d in first], TS
            ),
        }
    )


def _bands(feats: pa.Table, bands: RfmBands | None = None) -> dict[str, list[str]]:
    out = assign_bands(feats, rfm_partials(feats, MEASURES), AS_OF, bands or RfmBands())
    return {k: v.to_pylist() for k, v in out.items()}


def test_defaults_equal_the_shipped_yaml() -> None:
    assert RfmBands() == load_tier_rules().rfm_bands
    assert RfmBands().model_dump() == load_tier_rules().rfm_bands.model_dump()


def test_recency_band_boundaries_and_no_order() -> None:
    got = _bands(_features([0, 30, 31, 90, 91, 180, 181, 2000, None]))["recency_band"]
    assert got == [
        "within_30d",
        "within_30d",
        "lapsed_30d",
        "lapsed_30d",
        "lapsed_90d",
        "lapsed_90d",
        "lapsed_180d",
        "lapsed_180d",
        "no_order",
    ]
    assert set(got) == set(RECENCY_BANDS)


def test_frequency_band_is_orders_per_30_days_with_a_tenure_floor() -> None:
    # 90-day window: 9+ orders weekly, 2-8 monthly, 1 quarterly, none rarer
    feats = _features([1] * 6, f90=[12, 9, 8, 2, 1, 0])
    assert _bands(feats)["frequency_band"] == [
        "weekly",
        "weekly",
        "monthly",
        "monthly",
        "quarterly",
        "rarer",
    ]
    # since the first order when shorter than the window, but over at least 30 days:
    # 3 orders in the first 10 days = 3 per 30 days (weekly); 3 in 45 days = 2 (monthly);
    # one order yesterday: 1 per 30 days (monthly), not a weekly habit
    feats = _features([1, 1, 0], f90=[3, 3, 1], first_days_ago=[9, 44, 0])
    assert _bands(feats)["frequency_band"] == ["weekly", "monthly", "monthly"]
    assert set(FREQUENCY_BANDS) == {"weekly", "monthly", "quarterly", "rarer"}


def test_spend_level_is_a_percentile_among_buyers() -> None:
    spend = list(np.linspace(10, 1000, 100))
    buyers = _features([1] * 100, m90=spend)
    got = _bands(buyers)["spend_level"]
    assert got.count("high") == 20 and got.count("mid") == 40 and got.count("low") == 40
    assert got[-1] == "high" and got[0] == "low"
    # adding users without spend changes no buyer's level (and they are low)
    zeros = _features([None] * 400 + [1] * 100, m90=[0.0] * 400 + spend)
    with_zeros = _bands(zeros)["spend_level"]
    assert with_zeros[400:] == got and set(with_zeros[:400]) == {"low"}
    assert set(SPEND_LEVELS) == {"high", "mid", "low"}


def test_bands_do_not_depend_on_the_sharding() -> None:
    rng = np.random.default_rng(4)
    n = 300
    feats = _features(
        recency=[int(x) for x in rng.integers(0, 400, n)],
        f90=[int(x) for x in rng.poisson(3, n)],
        first_days_ago=[float(x) for x in rng.integers(0, 500, n)],
        m90=[float(x) for x in np.round(rng.lognormal(5, 1, n) * (rng.random(n) > 0.3), 2)],
    )
    whole = _bands(feats)
    a, b = feats.slice(0, 120), feats.slice(120)
    merged = rfm_partials(a, MEASURES).merge(rfm_partials(b, MEASURES))
    parts = [assign_bands(t, merged, AS_OF, RfmBands()) for t in (a, b)]
    for name in whole:
        assert parts[0][name].to_pylist() + parts[1][name].to_pylist() == whole[name]


def test_band_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="increase strictly"):
        RfmBands.model_validate({"recency_days": {"within_30d": 90, "lapsed_30d": 30}})
    with pytest.raises(ValidationError, match="decrease strictly"):
        RfmBands.model_validate({"frequency": {"monthly_min_per_30d": 5}})
    with pytest.raises(ValidationError, match="min_days"):
        RfmBands.model_validate({"frequency": {"window": "30d", "min_days": 60}})
    with pytest.raises(ValidationError, match="below high"):
        RfmBands.model_validate({"spend_level": {"mid_min_percentile": 0.9}})
    base = Path(__file__).resolve().parents[2] / "configs" / "tiers.yaml"
    bad = tmp_path / "tiers.yaml"
    bad.write_text(base.read_text().replace("min_days: 30", "min_dayz: 30"))
    with pytest.raises(ConfigError, match="min_dayz"):
        load_yaml(bad, TierRules)


def test_score_features_adds_the_band_columns_for_an_orders_only_log() -> None:
    day = AS_OF // DAY
    users = [1, 1, 1, 2, 3]
    days_ago = [3, 20, 40, 100, 200]
    ts = [(day - d) * DAY + 4 * 3_600_000 for d in days_ago]
    events = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "ts": pa.array(ts).cast(TS),
            "event_type": pa.array(["order"] * len(users)),
            "amount_cny": pa.array([50.0, 60.0, 70.0, 500.0, 20.0]),
        }
    )
    config = RecomputeConfig.load()
    feats = compute_features(events, None, AS_OF, config.features)
    scored = score_features(feats, rfm_partials(feats, config.tiers.measures), None, AS_OF, config)
    rows = {r["user_id"]: r for r in scored.to_pylist()}
    assert rows[1]["recency_band"] == "within_30d" and rows[1]["frequency_band"] == "monthly"
    assert rows[2]["recency_band"] == "lapsed_90d" and rows[2]["frequency_band"] == "rarer"
    assert rows[3]["recency_band"] == "lapsed_180d"
    # only users 1 and 2 spent in 90 days: 2 is the top buyer
    assert rows[2]["spend_level"] == "low"  # no spend in the monetary window
    assert rows[1]["spend_level"] in ("high", "mid")
    assert rows[1]["age_band"] is None and rows[1]["region"] is None  # no user attributes


def test_explanation_shows_the_band_and_its_thresholds() -> None:
    rules = load_tier_rules()
    record = {
        "tier": "ordinary",
        "rfm_score": 0.3,
        "recency_days": 45,
        "frequency_90d": 2,
        "monetary_90d": 80.0,
        "rfm_m": 0.4,
        "recency_band": "lapsed_30d",
        "frequency_band": "monthly",
        "spend_level": "low",
    }
    why = {b.band: b for b in explain(record, rules).bands}
    assert why["recency_band"].condition == "30 < recency_days <= 90"
    assert why["recency_band"].inputs == {"recency_days": 45}
    assert why["frequency_band"].inputs == {"frequency_90d": 2}
    assert why["spend_level"].label == "low"
    assert why["spend_level"].thresholds == band_conditions(rules.rfm_bands)["spend_level"]
    # thresholds follow the rules of the record's version
    changed = rules.model_copy(
        update={"rfm_bands": RfmBands.model_validate({"recency_days": {"within_30d": 14}})}
    )
    shown = {b.band: b for b in explain(record, changed).bands}["recency_band"]
    assert shown.thresholds["within_30d"] == "recency_days <= 14"
    # a version published before the bands: labels are null, thresholds still listed
    old = explain({"tier": "ordinary", "rfm_score": 0.3}, rules).bands
    assert [b.label for b in old] == [None, None, None] and old[0].thresholds


def test_spend_levels_keep_their_meaning_on_a_sparse_log() -> None:
    """CDNOW (82 % without an order in 90 days): rfm_m puts every buyer above 0.8, the spend
    level still splits buyers 20 / 40 / 40 and leaves the lapsed users low."""
    lifetimes = pytest.importorskip("lifetimes")
    raw = np.loadtxt(Path(lifetimes.__file__).parent / "datasets" / "CDNOW_master.txt", skiprows=1)
    ymd = raw[:, 1].astype(np.int64)
    day = np.array(
        [(dt.date(d // 10_000, d // 100 % 100, d % 100) - dt.date(1970, 1, 1)).days for d in ymd]
    )
    events = pa.table(
        {
            "user_id": raw[:, 0].astype(np.int64),
            "ts": pa.array(day * DAY + 4 * 3_600_000).cast(TS),
            "event_type": pa.array(["order"] * len(raw)),
            "amount_cny": raw[:, 3],
        }
    )
    as_of = int(dt.datetime(1997, 10, 1, tzinfo=LOCAL).timestamp() * 1000)
    config = RecomputeConfig.load()
    feats = compute_features(events, None, as_of, config.features)
    scored = score_features(feats, rfm_partials(feats, config.tiers.measures), None, as_of, config)
    spend = scored.column("monetary_90d").to_numpy(zero_copy_only=False)
    level = np.asarray(scored.column("spend_level").to_pylist())
    buyers = spend > 0
    assert buyers.mean() < 0.2
    assert scored.column("rfm_m").to_numpy()[buyers].min() > 0.8
    shares = [float(np.mean(level[buyers] == x)) for x in SPEND_LEVELS]
    assert shares == pytest.approx([0.2, 0.4, 0.4], abs=0.03)
    assert set(level[~buyers]) == {"low"}
    bands = scored.column("recency_band").to_pylist()
    assert set(bands) <= set(RECENCY_BANDS) and "no_order" not in bands
