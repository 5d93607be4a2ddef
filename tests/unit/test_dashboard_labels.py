"""Chinese and English labels of the dashboard (strata/reports/labels.py)."""

from __future__ import annotations

import pytest

from strata.reports.labels import _LABELS, label, labels, pick_lang
from strata.tiering.lifecycle import STAGES
from strata.tiering.tiers import load_tier_rules


@pytest.mark.parametrize(
    ("query", "header", "want"),
    [
        ("zh", "en-US", "zh"),
        ("en", "zh-CN", "en"),
        (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        (None, "en-GB,en;q=0.9,zh-CN;q=0.8", "en"),
        (None, "fr-FR,zh-TW;q=0.5,en;q=0.4", "zh"),
        (None, "zh;q=0, en;q=0.1", "en"),
        (None, "de", "en"),
        (None, None, "en"),
        ("xx", "zh", "zh"),  # an unknown ?lang= falls back to the header
        (None, "zh;q=abc, en", "en"),
    ],
)
def test_pick_lang(query: str | None, header: str | None, want: str) -> None:
    assert pick_lang(query, header) == want


def test_every_shipped_tier_and_stage_has_both_labels() -> None:
    rules = load_tier_rules()
    assert rules.churn_warning is not None
    tiers = [b.name for b in rules.bands] + [rules.churn_warning.name]
    for kind, names in (("tier", tiers), ("stage", list(STAGES))):
        for name in names:
            en, zh = label(kind, name, "en"), label(kind, name, "zh")
            assert en != name, (kind, name)
            assert zh != en and any("\u4e00" <= ch <= "\u9fff" for ch in zh), (kind, name, zh)


def test_the_contract_bands_have_labels() -> None:
    for band in ("within_30d", "lapsed_30d", "lapsed_90d", "lapsed_180d", "no_order", "weekly",
                 "monthly", "quarterly", "rarer", "high", "mid", "low"):  # fmt: skip
        assert label("band", band, "zh") != band
    for group in ("recency_band", "frequency_band", "spend_level"):
        assert label("band_group", group, "en") != group


def test_unknown_names_show_as_themselves_and_both_languages_are_complete() -> None:
    assert label("tier", "vip_plus", "zh") == "vip_plus"
    assert label("nope", "x", "en") == "x"
    en, zh = labels("en"), labels("zh")
    assert en.keys() == zh.keys() == _LABELS.keys()
    for kind in en:
        assert en[kind].keys() == zh[kind].keys()
        assert all(v.strip() for v in [*en[kind].values(), *zh[kind].values()])
