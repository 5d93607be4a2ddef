"""Segment record codec, group mapping and the store's key builders (no Redis)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from strata.ids import bucket_of
from strata.io.segment_store import SegmentStore
from strata.online.codec import (
    FieldKind,
    FieldSpec,
    RecordLayout,
    decode,
    decode_many,
    encode,
    expected_max_group_size,
    group_of,
    n_groups_for,
    packed_buckets_for,
    packed_chunk_users,
    snapshot_layout,
    user_field,
    user_fields,
)

LAYOUT = snapshot_layout(predictions=True)


def _rows() -> dict[str, list[object]]:
    return {
        "user_id": [1, 2, 3],
        "tier": ["high_value", None, "churn_warning"],
        "lifecycle_stage": ["new", "churned", None],
        "top_category": ["fruit", None, "daily_goods"],
        "price_sensitivity": ["unknown", "coupon_sensitive", None],
        "active_slot": [None, "night", "morning"],
        "channel": ["ads", "offline_referral", None],
        "rfm_r": [0.5, 1.0, None],
        "rfm_f": [0.0, 0.25, 0.735],
        "rfm_m": [1.0, 0.005, None],
        "rfm_score": [0.125, None, 1.0],
        "recency_days": [3, None, 185],
        "frequency_90d": [0, 5, 17],
        "monetary_90d": [123.0, None, 10000.0],
        "tier_rule": ["score_band", "hysteresis_hold", "churn_warning"],
        "recency_band": ["within_30d", "no_order", "lapsed_180d"],
        "frequency_band": ["weekly", None, "rarer"],
        "spend_level": ["high", "low", None],
        "active_daytype": ["weekend", None, "weekday"],
        "age_band": ["25-34", None, "unknown"],
        "gender": ["female", "unknown", None],
        "region": ["east", "other", None],
        "device": [None, "mini_program", "other"],
        "ltv_cny": [1500.0, 0.0, None],
        "arpu_30d_cny": [None, 12.0, 400.0],
        "discount_sensitivity": [0.25, None, 1.0],
        "churn_p": [0.12, 0.995, None],
        "repurchase_p": [None, 0.5, 0.0],
        "predicted_spend": [2.0, None, 0.0],
    }


#: the layout published before the tag groups (21 bytes): versions written with it still
#: decode with the layout stored with them
LEGACY_LAYOUT_JSON = (
    '{"format":1,"fields":['
    '{"name":"tier","kind":"enum","labels":["high_value","potential","ordinary",'
    '"churn_warning"],"decimals":null},'
    '{"name":"lifecycle_stage","kind":"enum","labels":["new","growing","mature","declining",'
    '"churned"],"decimals":null},'
    '{"name":"top_category","kind":"enum","labels":["vegetables","fruit","meat_poultry",'
    '"seafood","dairy_eggs","grain_oil","snacks_drinks","daily_goods"],"decimals":null},'
    '{"name":"price_sensitivity","kind":"enum","labels":["coupon_sensitive",'
    '"quality_sensitive","price_insensitive","unknown"],"decimals":null},'
    '{"name":"active_slot","kind":"enum","labels":["morning","noon","afternoon","evening",'
    '"night"],"decimals":null},'
    '{"name":"channel","kind":"enum","labels":["organic","ads","social_share",'
    '"offline_referral"],"decimals":null},'
    '{"name":"rfm_r","kind":"unit8","labels":[],"decimals":null},'
    '{"name":"rfm_f","kind":"unit8","labels":[],"decimals":null},'
    '{"name":"rfm_m","kind":"unit8","labels":[],"decimals":null},'
    '{"name":"rfm_score","kind":"unit8","labels":[],"decimals":null},'
    '{"name":"recency_days","kind":"uint16","labels":[],"decimals":null},'
    '{"name":"frequency_90d","kind":"uint16","labels":[],"decimals":null},'
    '{"name":"monetary_90d","kind":"cny","labels":[],"decimals":null},'
    '{"name":"tier_rule","kind":"enum","labels":["score_band","hysteresis_hold",'
    '"churn_warning"],"decimals":null},'
    '{"name":"churn_p","kind":"unit","labels":[],"decimals":null},'
    '{"name":"repurchase_p","kind":"unit","labels":[],"decimals":null},'
    '{"name":"predicted_spend","kind":"cny","labels":[],"decimals":null}]}'
)


#: bytes of the served record with predictions: in the packed store bench/redis_memory.py
#: measures 1 byte of Redis memory per record byte on top of the 8-byte id and <1 byte of
#: per-key overhead (budget 32 per user)
MAX_RECORD_BYTES = 23


def test_snapshot_layout_sizes() -> None:
    assert LAYOUT.size <= MAX_RECORD_BYTES
    assert LAYOUT.size == 23
    assert snapshot_layout().size == 19
    assert LAYOUT.dtype.itemsize == 23
    # the recompute's layout derives rfm_score from the ranks: one byte less
    assert snapshot_layout(predictions=True, rfm_weights=(0.4, 0.3, 0.3)).size == 22
    # fifteen enums (43 bits) share the first 6 bytes
    bits = [f.bits for f in LAYOUT.fields if f.kind is FieldKind.ENUM]
    assert bits == [3, 3, 4, 3, 3, 3, 2, 3, 3, 2, 2, 3, 2, 4, 3]
    assert LAYOUT.field("tier_rule").labels == ("score_band", "hysteresis_hold", "churn_warning")


def test_the_four_tag_groups_are_in_the_record() -> None:
    names = set(LAYOUT.names)
    basic = {"age_band", "gender", "region", "device"}
    behaviour = {"rfm_r", "rfm_f", "rfm_m", "rfm_score", "recency_band", "frequency_band"}
    behaviour |= {"spend_level", "top_category", "price_sensitivity", "active_slot"}
    behaviour |= {"active_daytype", "channel"}
    value = {"ltv_cny", "arpu_30d_cny", "discount_sensitivity"}
    predictive = {"churn_p", "repurchase_p", "predicted_spend"}
    assert basic | behaviour | value | predictive <= names
    assert not predictive & set(snapshot_layout().names)


def test_values_outside_fixed_labels_encode_as_other() -> None:
    cols = {
        "region": ["east", "overseas", None, "Shanghai"],
        "device": ["ios", "harmony_os", None, "web"],
        "age_band": ["18-24", "60-69", None, "unknown"],
        "gender": ["male", "nonbinary", None, "female"],
        "channel": ["ads", "wechat_ads", None, "organic"],
    }
    got = decode_many(encode(cols, LAYOUT, allow_missing=True), LAYOUT)
    assert [r["region"] for r in got] == ["east", "other", None, "other"]
    assert [r["device"] for r in got] == ["ios", "other", None, "web"]
    assert [r["age_band"] for r in got] == ["18-24", "unknown", None, "unknown"]
    assert [r["gender"] for r in got] == ["male", "unknown", None, "female"]
    assert [r["channel"] for r in got] == ["ads", "other", None, "organic"]
    # the generator's regions are all labels of their own
    assert LAYOUT.field("region").labels[:-1] == (
        "north", "northeast", "east", "central", "south", "southwest", "northwest",
    )  # fmt: skip
    with pytest.raises(ValidationError, match="other"):
        FieldSpec(name="a", kind=FieldKind.ENUM, labels=("x", "y"), other="z")


def test_legacy_layout_still_decodes() -> None:
    legacy = RecordLayout.from_json(LEGACY_LAYOUT_JSON)
    assert legacy.size == 21
    rows = {
        "tier": ["potential"],
        "monetary_90d": [123.45],
        "churn_p": [0.1234],
        "predicted_spend": [99.99],
    }
    got = decode_many(encode(rows, legacy, allow_missing=True), legacy)[0]
    assert got["tier"] == "potential" and got["monetary_90d"] == 123.45
    assert got["churn_p"] == 0.1234 and got["predicted_spend"] == 99.99
    assert "region" not in got


def test_roundtrip_with_nulls() -> None:
    rows = _rows()
    encoded = encode(pa.table(rows), LAYOUT)
    assert encoded.dtype == LAYOUT.dtype and len(encoded) == 3
    expected = [{k: rows[k][i] for k in LAYOUT.names} for i in range(3)]
    assert decode_many(encoded, LAYOUT) == expected
    for i in range(3):
        assert decode(encoded[i].tobytes(), LAYOUT) == expected[i]
        assert list(decode(encoded[i].tobytes(), LAYOUT)) == list(LAYOUT.names)


def test_all_null_record_and_missing_columns() -> None:
    only_tier = {"tier": pa.array([None, "potential"], pa.string())}
    with pytest.raises(ValueError, match="lifecycle_stage"):
        encode(only_tier, LAYOUT)
    encoded = encode(only_tier, LAYOUT, allow_missing=True)
    first, second = decode_many(encoded, LAYOUT)
    assert all(v is None for v in first.values())
    assert second["tier"] == "potential"
    assert all(v is None for k, v in second.items() if k != "tier")


def test_inputs_table_mapping_numpy_dictionary_chunked_give_same_bytes() -> None:
    rows = _rows()
    reference = encode(pa.table(rows), LAYOUT).tobytes()
    as_numpy = {
        k: np.array([np.nan if x is None else x for x in v], dtype=np.float64)
        if not any(isinstance(x, str) for x in v)
        else v
        for k, v in rows.items()
    }
    assert encode(as_numpy, LAYOUT).tobytes() == reference
    dict_cols = {
        k: pa.array(v).dictionary_encode() if any(isinstance(x, str) for x in v) else pa.array(v)
        for k, v in rows.items()
    }
    assert encode(dict_cols, LAYOUT).tobytes() == reference
    arrays = {k: pa.array(v) for k, v in rows.items()}
    chunked = {k: pa.chunked_array([a.slice(0, 1), a.slice(1)]) for k, a in arrays.items()}
    assert encode(chunked, LAYOUT).tobytes() == reference


def test_clipping_and_rounding() -> None:
    layout = RecordLayout(
        fields=(
            FieldSpec(name="p", kind=FieldKind.UNIT),
            FieldSpec(name="q", kind=FieldKind.UNIT8),
            FieldSpec(name="c8", kind=FieldKind.UINT8),
            FieldSpec(name="c16", kind=FieldKind.UINT16),
            FieldSpec(name="c32", kind=FieldKind.UINT32),
            FieldSpec(name="cny", kind=FieldKind.FLOAT32, decimals=2),
            FieldSpec(name="raw", kind=FieldKind.FLOAT32),
            FieldSpec(name="fen", kind=FieldKind.CNY),
            FieldSpec(name="yuan", kind=FieldKind.CNY16),
        )
    )
    cols = {
        "p": [-0.5, 1.7, 0.33334, math.inf],
        "q": [-1.0, 2.0, 0.333, 0.5],
        "c8": [-3, 300, 254, 2.6],
        "c16": [-1, 70_000, 65_535, 7],
        "c32": [-1, 2**40, 12, math.inf],
        "cny": [19.99, 1e6 + 0.25, -5.5, 0.0],
        "raw": [0.1, 1.0, 2.5, -0.0],
        "fen": [12345.67, 1e9, -5.5, 0.015],
        "yuan": [12345.67, 1e9, -5.5, 0.5],
    }
    got = decode_many(encode(cols, layout), layout)
    assert [r["p"] for r in got] == [0.0, 1.0, 0.3333, 1.0]
    assert [r["q"] for r in got] == [0.0, 1.0, 0.335, 0.5]
    assert [r["c8"] for r in got] == [0, 254, 254, 3]  # 255 is null, so counts stop at 254
    assert [r["c16"] for r in got] == [0, 65_534, 65_534, 7]
    assert [r["c32"] for r in got] == [0, 2**32 - 2, 12, 2**32 - 2]
    assert [r["cny"] for r in got] == [19.99, 1_000_000.25, -5.5, 0.0]
    assert got[0]["raw"] == pytest.approx(0.1, rel=1e-7) and got[2]["raw"] == 2.5
    # exact cents, clipped to what 3 bytes hold; refunds (negative) clip to 0
    assert [r["fen"] for r in got] == [12345.67, 167_772.14, 0.0, 0.02]
    # whole CNY in 2 bytes, clipped at 65,534 (65,535 is null); round half to even
    assert [r["yuan"] for r in got] == [12346.0, 65_534.0, 0.0, 0.0]


def test_unknown_enum_label_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"unknown labels \['platinum'\]"):
        encode({"tier": ["potential", "platinum"]}, LAYOUT, allow_missing=True)
    with pytest.raises(ValueError, match="must hold strings"):
        encode({"tier": [1, 2]}, LAYOUT, allow_missing=True)


def test_length_mismatch_and_wrong_record_size() -> None:
    with pytest.raises(ValueError, match="rows"):
        encode({"tier": ["potential"], "rfm_r": [0.1, 0.2]}, LAYOUT, allow_missing=True)
    with pytest.raises(ValueError, match="bytes"):
        decode(b"\x00" * 20, LAYOUT)
    with pytest.raises(ValueError, match="bytes"):
        decode_many([b"\x00" * 24, b"\x00" * 25], LAYOUT)
    assert decode_many([], LAYOUT) == []


def test_layout_json_roundtrip_and_extend() -> None:
    text = LAYOUT.to_json()
    back = RecordLayout.from_json(text)
    assert back == LAYOUT and back.size == LAYOUT.size and back.dtype == LAYOUT.dtype
    encoded = encode(pa.table(_rows()), LAYOUT)
    assert decode_many(encoded, back) == decode_many(encoded, LAYOUT)
    base = snapshot_layout()
    extended = base.extend(
        FieldSpec(name="churn_p", kind=FieldKind.UNIT8),
        FieldSpec(name="repurchase_p", kind=FieldKind.UNIT8),
        FieldSpec(name="predicted_spend", kind=FieldKind.CNY16),
    )
    assert extended == LAYOUT
    assert base.names == LAYOUT.names[: len(base.names)]


def test_layout_validation() -> None:
    with pytest.raises(ValidationError, match="duplicate"):
        RecordLayout(
            fields=(
                FieldSpec(name="a", kind=FieldKind.UINT8),
                FieldSpec(name="a", kind=FieldKind.UINT8),
            )
        )
    with pytest.raises(ValidationError, match="needs labels"):
        FieldSpec(name="a", kind=FieldKind.ENUM)
    with pytest.raises(ValidationError, match="only for enum"):
        FieldSpec(name="a", kind=FieldKind.UINT8, labels=("x",))
    with pytest.raises(ValidationError, match="unique"):
        FieldSpec(name="a", kind=FieldKind.ENUM, labels=("x", "x"))
    with pytest.raises(ValidationError, match="decimals"):
        FieldSpec(name="a", kind=FieldKind.UNIT, decimals=2)
    with pytest.raises(ValidationError):
        FieldSpec(name="Bad Name", kind=FieldKind.UINT8)
    with pytest.raises(ValidationError, match="bits"):
        RecordLayout(
            fields=tuple(
                FieldSpec(
                    name=f"e{i}", kind=FieldKind.ENUM, labels=tuple(f"l{j}" for j in range(200))
                )
                for i in range(9)
            )
        )
    with pytest.raises(ValidationError):
        RecordLayout.from_json('{"format": 2, "fields": [{"name": "a", "kind": "uint8"}]}')
    with pytest.raises(ValidationError):
        RecordLayout.from_json('{"fields": [{"name": "a", "kind": "uint8", "extra": 1}]}')


def test_enum_bit_widths_and_null_code() -> None:
    one = FieldSpec(name="a", kind=FieldKind.ENUM, labels=("x",))
    three = FieldSpec(name="b", kind=FieldKind.ENUM, labels=("x", "y", "z"))
    eight = FieldSpec(name="c", kind=FieldKind.ENUM, labels=tuple("abcdefgh"))
    assert (one.bits, three.bits, eight.bits) == (1, 2, 4)
    layout = RecordLayout(fields=(one, three, eight))
    assert layout.size == 1
    encoded = encode({"a": [None, "x"], "b": ["z", None], "c": ["h", None]}, layout)
    # a: 1 bit (null = 1), b: 2 bits (z = 2), c: 4 bits (h = 7)
    assert encoded.tobytes() == bytes([1 | 2 << 1 | 7 << 3, 0 | 3 << 1 | 15 << 3])
    assert decode_many(encoded, layout) == [
        {"a": None, "b": "z", "c": "h"},
        {"a": "x", "b": None, "c": None},
    ]


def test_encode_is_vectorised_enough() -> None:
    n = 200_000
    rng = np.random.default_rng(1)
    cols = {
        f.name: pa.array(rng.choice(list(f.labels), n)) if f.labels else rng.random(n)
        for f in LAYOUT.fields
    }
    encoded = encode(cols, LAYOUT)
    assert len(encoded) == n
    sample = decode(encoded[12345].tobytes(), LAYOUT)
    assert sample["tier"] == cols["tier"][12345].as_py()
    assert sample["churn_p"] == pytest.approx(cols["churn_p"][12345], abs=0.0025)  # 1/200 steps
    assert sample["rfm_score"] == pytest.approx(cols["rfm_score"][12345], abs=2.5e-3)


# ------------------------------------------------------------------------------------- groups


def test_group_of_is_stable_and_scalar_matches_vector() -> None:
    ids = np.array([0, 1, 42, 2**62, 2**63 - 1, 123456789012345], dtype=np.int64)
    # pinned: changing the mix would strand every published version's readers
    assert group_of(ids, 16384).tolist() == [0, 2860, 6604, 2464, 11754, 9473]
    assert [group_of(int(i), 16384) for i in ids] == group_of(ids, 16384).tolist()
    assert isinstance(group_of(42, 100), int)
    assert group_of(42, 1) == 0
    with pytest.raises(ValueError):
        group_of(-1, 8)
    with pytest.raises(ValueError):
        group_of(ids, 0)


def test_groups_are_balanced_and_independent_of_buckets() -> None:
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 2**63 - 1, 400_000, dtype=np.int64)
    n_groups = 4096
    counts = np.bincount(group_of(ids, n_groups), minlength=n_groups)
    assert counts.max() <= expected_max_group_size(len(ids), n_groups)
    assert counts.min() > 0
    # a warehouse bucket (one writer's users) spreads evenly over all groups
    in_bucket = ids[bucket_of(ids, 64) == 5]
    per_group = np.bincount(group_of(in_bucket, 64), minlength=64)
    expected = len(in_bucket) / 64
    chi2 = float(((per_group - expected) ** 2 / expected).sum())
    assert chi2 < 120  # 63 degrees of freedom: p < 1e-5 above ~120
    # sequential ids (a test generator's) are balanced too
    seq = np.bincount(group_of(np.arange(100_000), 1024), minlength=1024)
    assert seq.max() <= expected_max_group_size(100_000, 1024)


def test_n_groups_for() -> None:
    assert n_groups_for(1_000_000) == 16384
    assert n_groups_for(0) == 1 and n_groups_for(50) == 1
    for n in (1, 99, 1000, 20_000, 819_200, 3_000_000):
        g = n_groups_for(n)
        assert g & (g - 1) == 0
        assert n / g <= 100
        assert expected_max_group_size(n, g) <= 128
    # a mean of 100 would overflow 128-entry listpacks somewhere: it doubles instead
    assert n_groups_for(819_200) == 16384
    assert n_groups_for(819_200, max_entries=512) == 8192


def test_expected_max_group_size_bounds_simulation() -> None:
    rng = np.random.default_rng(3)
    for n, g in ((60_000, 1024), (1_000_000, 16384)):
        ids = rng.integers(0, 2**63 - 1, n, dtype=np.int64)
        observed = int(np.bincount(group_of(ids, g)).max())
        bound = expected_max_group_size(n, g)
        assert observed <= bound <= observed * 1.5


def test_user_fields() -> None:
    assert user_field(1) == b"\x00" * 7 + b"\x01"
    assert user_field(2**63 - 1) == b"\x7f" + b"\xff" * 7
    blob = user_fields(np.array([1, 258], dtype=np.int64))
    assert blob == user_field(1) + user_field(258)


# -------------------------------------------------------------------------------- key builders


def test_key_builders_need_no_server() -> None:
    store = SegmentStore("redis://127.0.0.1:1/0", namespace="strata")  # never connects
    assert store.pointer_key() == "strata:current"
    assert store.versions_key() == "strata:versions"
    assert store.history_key() == "strata:history"
    assert store.meta_key("20260601T0200Z") == "strata:v:20260601T0200Z:meta"
    assert store.group_key("20260601T0200Z", 17) == "strata:v:20260601T0200Z:g:17"
    assert store.version_prefix("v1") == "strata:v:v1:"
    staging = SegmentStore("redis://127.0.0.1:1/0", namespace="strata:staging")
    assert staging.group_key("v1", 0) == "strata:staging:v:v1:g:0"
    for bad in ("", "a:b", "a*", "v 1", "-v", "x" * 65):
        with pytest.raises(ValueError, match="version"):
            store.meta_key(bad)
    with pytest.raises(ValueError):
        store.group_key("v1", -1)
    with pytest.raises(ValueError, match="namespace"):
        SegmentStore("redis://127.0.0.1:1/0", namespace="a*b")


def test_days8_is_exact_below_200_days_then_15_day_steps() -> None:
    layout = RecordLayout(fields=(FieldSpec(name="d", kind=FieldKind.DAYS8),))
    assert layout.size == 1
    days = [0, 30, 90, 180, 199, 199.4, 200, 214, 215, 400, 1010, 5000, None, float("nan")]
    got = [r["d"] for r in decode_many(encode({"d": days}, layout), layout)]
    assert got == [0, 30, 90, 180, 199, 199, 200, 200, 215, 395, 1010, 1010, None, None]
    assert [decode(x.tobytes(), layout)["d"] for x in encode({"d": days}, layout)] == got
    # rounded down: a user past a threshold (e.g. 200 days) never decodes below it
    assert all(g is None or g <= round(d) for g, d in zip(got, days[:12], strict=False))


def _weighted_layout() -> RecordLayout:
    return snapshot_layout(predictions=True, rfm_weights=(0.4, 0.3, 0.3))


def test_weighted_rfm_score_is_derived_from_the_stored_ranks() -> None:
    layout = _weighted_layout()
    spec = layout.field("rfm_score")
    assert spec.kind is FieldKind.WEIGHTED and spec.inputs == ("rfm_r", "rfm_f", "rfm_m")
    rows = _rows()
    r, f, m = rows["rfm_r"], rows["rfm_f"], rows["rfm_m"]
    rows["rfm_score"] = [
        None if None in (a, b, c) else 0.4 * a + 0.3 * b + 0.3 * c  # type: ignore[operator]
        for a, b, c in zip(r, f, m, strict=True)
    ]
    encoded = encode(pa.table(rows), layout)
    got = decode_many(encoded, layout)
    # 0.4*0.5 + 0.3*0 + 0.3*1; 0.4*1 + 0.3*0.25 + 0.3*0.005; rfm_r null
    assert [g["rfm_score"] for g in got] == [0.5, 0.4765, None]
    assert [decode(x.tobytes(), layout) for x in encoded] == got
    assert list(got[0]) == list(layout.names)
    # an exact-to-6-decimals snapshot score is accepted (the snapshot rounds each column)
    rows["rfm_score"] = [0.500001, 0.4765, None]
    encode(pa.table(rows), layout)
    # a score that is not the weighted ranks cannot be derived: refuse rather than lose it
    rows["rfm_score"] = [0.9, 0.4765, None]
    with pytest.raises(ValueError, match=r"rfm_score.*0.4\*rfm_r"):
        encode(pa.table(rows), layout)
    rows["rfm_score"] = [0.5, 0.4765, 0.3]  # a score where an input is null
    with pytest.raises(ValueError, match="rfm_score"):
        encode(pa.table(rows), layout)
    assert RecordLayout.from_json(layout.to_json()) == layout


def test_weighted_field_validation() -> None:
    with pytest.raises(ValidationError, match="one weight per input"):
        FieldSpec(name="s", kind=FieldKind.WEIGHTED, inputs=("a",))
    with pytest.raises(ValidationError, match="only for weighted"):
        FieldSpec(name="s", kind=FieldKind.UINT8, inputs=("a",), weights=(1.0,))
    with pytest.raises(ValidationError, match="not stored numeric"):
        RecordLayout(
            fields=(
                FieldSpec(name="a", kind=FieldKind.ENUM, labels=("x",)),
                FieldSpec(name="s", kind=FieldKind.WEIGHTED, inputs=("a",), weights=(1.0,)),
            )
        )


def test_model_copy_compiles_its_own_plan() -> None:
    assert LAYOUT.size == 23  # compiles and caches the original's plan
    copy = LAYOUT.model_copy(update={"fields": LAYOUT.fields[:1]})
    assert copy.size == 1 and copy.dtype != LAYOUT.dtype
    assert decode_many(encode({"tier": ["potential"]}, copy), copy) == [{"tier": "potential"}]
    assert LAYOUT.model_copy().size == 23


def test_packed_group_sizes() -> None:
    # 272 entries of 30 bytes + the string header fill an 8 KiB allocation exactly
    assert packed_chunk_users(22) == 272 and 272 * 30 + 6 <= 8192 < 273 * 30 + 6
    assert packed_chunk_users(23, 4096) == poor_fit(23, 4096)
    with pytest.raises(ValueError):
        packed_chunk_users(22, 16)
    assert packed_buckets_for(1_000_000, 256) == 256
    assert packed_buckets_for(100, 1) == 1
    # 100M users on 256 warehouse buckets: store buckets split them (whole multiples)
    many = packed_buckets_for(100_000_000, 256, 272)
    assert many % 256 == 0 and 100_000_000 / many <= 272 * 32
    # a store bucket lies in exactly one warehouse bucket (each shard writes whole buckets)
    ids = np.random.default_rng(0).integers(0, 2**63 - 1, 10_000)
    assert np.array_equal(bucket_of(ids, many) % 256, bucket_of(ids, 256))


def poor_fit(record_size: int, chunk_bytes: int) -> int:
    return (chunk_bytes - 6) // (8 + record_size)
