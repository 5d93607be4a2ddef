"""Schemas and configuration loading."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from strata.config import CalendarConfig, ConfigError, load_calendar, load_yaml
from strata.schema import CATEGORIES, EVENT_TYPES, EVENTS_SCHEMA, USERS_SCHEMA, conform


def test_event_types_and_categories_cover_the_design() -> None:
    for name in (
        "item_view",
        "category_view",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "favourite",
        "order",
        "coupon_claim",
        "coupon_use",
        "share",
        "review",
        "service_contact",
        "community_post",
        "app_visit",
    ):
        assert name in EVENT_TYPES
    assert len(CATEGORIES) == 8
    assert "user_id" in USERS_SCHEMA.names and "channel" in USERS_SCHEMA.names


def test_conform_fills_nullable_and_refuses_unknown() -> None:
    t = pa.table(
        {
            "user_id": [1],
            "ts": pa.array([0], pa.timestamp("ms", tz="UTC")),
            "event_type": ["order"],
            "amount_cny": [1.5],
        }
    )
    out = conform(t, EVENTS_SCHEMA)
    assert out.schema.equals(EVENTS_SCHEMA)
    assert out.column("rating").null_count == 1
    with pytest.raises(ValueError, match="phone"):
        conform(t.append_column("phone", pa.array(["138"])), EVENTS_SCHEMA)
    with pytest.raises(ValueError, match="user_id"):
        conform(t.drop_columns(["user_id"]), EVENTS_SCHEMA)


def test_calendar_loads_and_peaks() -> None:
    cal = load_calendar()
    mult = cal.day_multipliers(dt.date(2026, 11, 9), 3)  # Mon 9 .. Wed 11 Nov: double 11
    assert mult[0] > cal.weekday_multipliers[0]  # two days before
    assert mult[2] == pytest.approx(cal.weekday_multipliers[2] * 1.8)


def test_config_error_names_file_key_and_allowed(tmp_path: Path) -> None:
    bad = tmp_path / "calendar.yaml"
    bad.write_text("weekday_multiplier: [1, 1, 1, 1, 1, 1, 1]\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(bad, CalendarConfig)
    msg = str(err.value)
    assert str(bad) in msg and "weekday_multiplier" in msg and "weekday_multipliers" in msg
    bad.write_text("festivals: [{name: x, dates: [2026-01-01], multiplier: 1.2, typo: 1}]\n")
    with pytest.raises(ConfigError, match=r"festivals\.0\.typo.*allowed keys: dates, days_before"):
        load_yaml(bad, CalendarConfig)
    bad.write_text("weekday_multipliers: [1, 1]\n")
    with pytest.raises(ConfigError, match="7 positive"):
        load_yaml(bad, CalendarConfig)
    bad.write_text("festivals: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad, CalendarConfig)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml", CalendarConfig)
