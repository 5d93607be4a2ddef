"""Import of bring-your-own logs: mapping, validation, reject reasons, time formats, privacy."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

import jobs.ingest as ingest_job
from jobs import cli
from strata.config import ConfigError
from strata.ids import pseudonymise
from strata.ingest import (
    MAX_FUTURE_MS,
    ColumnMapping,
    MappingError,
    PseudonymCache,
    check_columns,
    is_pii_column,
    load_mapping,
    parse_batch,
    parse_time_ms,
    reject_warnings,
    rejects_schema,
)
from strata.io import import_files
from strata.io.import_files import InputError
from strata.io.warehouse import Warehouse
from strata.schema import EVENTS_SCHEMA
from strata.settings import Settings

KEY = b"unit-test-key-0123456789"
runner = CliRunner()
#: 2024-06-01T00:00:00Z: the import time of these tests.
NOW_MS = 1_717_200_000_000
UTC8 = dt.timezone(dt.timedelta(hours=8))


def _ms(y: int, mo: int, d: int, h: int = 0, mi: int = 0, tz: dt.tzinfo = UTC8) -> int:
    return int(dt.datetime(y, mo, d, h, mi, tzinfo=tz).timestamp() * 1000)


def _mapping(**kw: Any) -> ColumnMapping:
    base: dict[str, Any] = {"user_col": "uid", "time_col": "ts", "amount_col": "amt"}
    return ColumnMapping(**(base | kw))


def _parse(columns: dict[str, list[Any]], mapping: ColumnMapping | None = None, **kw: Any):
    return parse_batch(pa.table(columns), mapping or _mapping(**kw), KEY, "in.csv", 1, NOW_MS)


def _reasons(rejects: pa.Table) -> dict[int, str]:
    return dict(
        zip(
            rejects.column("row_number").to_pylist(),
            rejects.column("reason").to_pylist(),
            strict=True,
        )
    )


# ---------------------------------------------------------------------------- reasons
def test_each_reject_reason_and_counts_add_up() -> None:
    rows = [
        # uid, ts, amt, event, category -> expected reason (None = accepted)
        ("u1", "2024-05-01 10:00:00", "12.50", "order", "fruit", None),
        ("  ", "2024-05-01 10:00:00", "1", "order", "", "missing user id"),
        ("u3", "yesterday", "1", "order", "", "unparsable timestamp"),
        ("u4", "0001-01-01", "1", "order", "", "timestamp before min time"),
        ("u5", "2024-06-05", "1", "order", "", "timestamp at or after max time"),
        ("u6", "2024-05-01", "1", "teleport", "", "unknown event type 'teleport'"),
        ("u7", "2024-05-01", "1", "", "", "missing event type"),
        ("u8", "2024-05-01", "12,5", "order", "", "non-numeric amount"),
        ("u9", "2024-05-01", "NaN", "order", "", "non-numeric amount"),
        ("u10", "2024-05-01", "inf", "order", "", "non-numeric amount"),
        ("u11", "2024-05-01", "1e999", "order", "", "non-numeric amount"),
        ("u12", "2024-05-01", "-3", "order", "", "negative amount"),
        ("u13", "2024-05-01", "", "order", "", "missing amount"),
        ("u14", "2024-05-01", "", "item_view", "", None),
        ("u15", "2024-05-01", "5", "order", "toys", "unknown category 'toys'"),
        ("u16", "2024-05-01", "5", "order", "", None),
    ]
    cols = ["uid", "ts", "amt", "ev", "cat"]
    table = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    accepted, rejects = _parse(table, event_type_col="ev", category_col="cat")
    assert accepted.num_rows + rejects.num_rows == len(rows)
    assert accepted.schema.equals(EVENTS_SCHEMA)
    assert rejects.schema.equals(rejects_schema(_mapping(event_type_col="ev", category_col="cat")))
    expected = {i + 1: r[5] for i, r in enumerate(rows) if r[5] is not None}
    assert _reasons(rejects) == expected
    assert set(rejects.column("source_file").to_pylist()) == {"in.csv"}
    # rejects keep the mapped columns as text, as they were
    by_row = {r["row_number"]: r for r in rejects.to_pylist()}
    assert by_row[8]["amt"] == "12,5"
    assert by_row[3]["ts"] == "yesterday"


def test_first_reason_in_the_documented_order_wins() -> None:
    table = {
        "uid": ["", "u2", "u3", "u4", "u5"],
        "ts": ["bad", "bad", "1969-01-01", "2024-05-01", "2024-05-01"],
        "amt": ["x", "-1", "x", "x", "-1"],
        "ev": ["bogus", "bogus", "bogus", "bogus", "order"],
        "cat": ["toys", "toys", "toys", "toys", "toys"],
    }
    _, rejects = _parse(table, event_type_col="ev", category_col="cat")
    assert _reasons(rejects) == {
        1: "missing user id",
        2: "unparsable timestamp",
        3: "timestamp before min time",
        4: "unknown event type 'bogus'",
        5: "negative amount",
    }


def test_without_event_type_column_every_row_is_an_order() -> None:
    accepted, rejects = _parse(
        {"uid": ["a", "b"], "ts": ["2024-05-01", "2024-05-02"], "amt": ["3", ""]}
    )
    assert accepted.column("event_type").to_pylist() == ["order"]
    assert _reasons(rejects) == {2: "missing amount"}


def test_amount_is_optional_on_non_order_events_but_checked_when_present() -> None:
    accepted, rejects = _parse(
        {
            "uid": ["a", "b", "c"],
            "ts": ["2024-05-01"] * 3,
            "amt": ["", "abc", "4.5"],
            "ev": ["view", "cart", "cart"],
        },
        event_type_col="ev",
    )
    assert accepted.column("amount_cny").to_pylist() == [None, 4.5]
    assert _reasons(rejects) == {2: "non-numeric amount"}


def test_empty_batch() -> None:
    accepted, rejects = _parse({"uid": [], "ts": [], "amt": []})
    assert accepted.num_rows == 0 and rejects.num_rows == 0


# ---------------------------------------------------------------------------- time
def test_time_formats() -> None:
    s = pa.array
    # ISO: naive is local (UTC+8); Z and offsets honoured; fractions; basic format (fallback)
    iso = parse_time_ms(
        s(
            [
                "2024-05-01",
                "2024-05-01 10:00:00",
                "2024-05-01T10:00:00Z",
                "2024-05-01T10:00:00+08:00",
                "2024-05-01T10:00:00+0530",
                "2024-05-01T10:00:00.123",
                "20240501T100000",
                "2024-05-01T10:00:00.123456789",
            ]
        ),
        "iso",
    ).to_pylist()
    assert iso == [
        _ms(2024, 5, 1),
        _ms(2024, 5, 1, 10),
        _ms(2024, 5, 1, 10, tz=dt.UTC),
        _ms(2024, 5, 1, 10),
        _ms(2024, 5, 1, 10, tz=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        _ms(2024, 5, 1, 10) + 123,
        _ms(2024, 5, 1, 10),
        _ms(2024, 5, 1, 10) + 123,
    ]
    assert parse_time_ms(s(["20240501", "20241301", "20240230", ""]), "%Y%m%d").to_pylist() == [
        _ms(2024, 5, 1),
        None,
        None,  # Arrow alone would roll 30 February over to 1 March
        None,
    ]
    zoned = parse_time_ms(s(["2024-05-01 10:00:00 +0000"]), "%Y-%m-%d %H:%M:%S %z")
    assert zoned.to_pylist() == [_ms(2024, 5, 1, 10, tz=dt.UTC)]
    # mixed shapes: the fast cast fails, the vectorised parser takes the extended ones
    mixed = ["2024-05-01T10:00:00,5Z", "2024-05-01 10:00", "2024-05-01T10:00:00-01:00", "bad"]
    assert parse_time_ms(s(mixed), "iso").to_pylist() == [
        _ms(2024, 5, 1, 10, tz=dt.UTC) + 500,
        _ms(2024, 5, 1, 10),
        _ms(2024, 5, 1, 11, tz=dt.UTC),
        None,
    ]
    assert parse_time_ms(s(["2024/05/01 10:30"]), "%Y/%m/%d %H:%M").to_pylist() == [
        _ms(2024, 5, 1, 10, 30)
    ]
    epoch = 1_714_557_600  # 2024-05-01T10:00:00Z
    assert parse_time_ms(s([str(epoch), " 1714557600.5 ", "x"]), "epoch").to_pylist() == [
        epoch * 1000,
        epoch * 1000 + 500,
        None,
    ]
    assert parse_time_ms(s([epoch * 1000]), "epoch_ms").to_pylist() == [epoch * 1000]
    assert parse_time_ms(s([epoch]), "epoch").to_pylist() == [epoch * 1000]


def test_iso_fallback_parses_exactly_the_values_arrow_cannot() -> None:
    rng = np.random.default_rng(1)
    good = [
        f"2024-05-{d:02d} {h:02d}:00:00"
        for d, h in zip(rng.integers(1, 29, 500), rng.integers(0, 24, 500), strict=True)
    ]
    values = list(good)
    odd = {
        37: ("2024-02-30", None),
        200: ("20240501T100000", _ms(2024, 5, 1, 10)),
        201: ("garbage", None),
        450: ("2024-05-01T25:00:00", None),
        499: ("9999-12-31", _ms(9999, 12, 31)),
    }
    for i, (v, _) in odd.items():
        values[i] = v
    got = parse_time_ms(pa.array(values), "iso").to_pylist()
    for i, v in enumerate(values):
        if i in odd:
            assert got[i] == odd[i][1], v
        else:
            want = dt.datetime.fromisoformat(v).replace(tzinfo=UTC8)
            assert got[i] == int(want.timestamp() * 1000)


def test_timestamp_range_bounds() -> None:
    table = {
        "uid": ["a", "b", "c", "d"],
        "ts": [
            "1970-01-01T00:00:00.001Z",  # the default lower bound is inclusive
            "1970-01-01T08:00:00",  # epoch zero in local time: garbage
            str((NOW_MS + MAX_FUTURE_MS) // 1000 - 1),
            str((NOW_MS + MAX_FUTURE_MS) // 1000),  # the upper bound is exclusive
        ],
        "amt": ["1"] * 4,
    }
    m = _mapping()
    t = pa.table(table)
    iso, rejects = parse_batch(t.slice(0, 2), m, KEY, "f", 1, NOW_MS)
    assert iso.num_rows == 1
    assert _reasons(rejects) == {2: "timestamp before min time"}
    _, rejects = parse_batch(t.slice(2), _mapping(time_format="epoch"), KEY, "f", 3, NOW_MS)
    assert _reasons(rejects) == {4: "timestamp at or after max time"}


def test_old_history_imports_and_garbage_times_do_not() -> None:
    ts = ["19970101", "19850615", "19700101", "00010101", "19700102", "20991231"]
    table = {"uid": [f"u{i}" for i in range(len(ts))], "ts": ts, "amt": ["1"] * len(ts)}
    accepted, rejects = _parse(table, time_format="%Y%m%d")
    assert accepted.num_rows == 3  # 1997, 1985 and 2 January 1970 are history
    assert _reasons(rejects) == {
        3: "timestamp before min time",  # 19700101 is local midnight: before the epoch
        4: "timestamp before min time",
        6: "timestamp at or after max time",
    }


def test_time_range_keys_in_the_mapping_file_and_flags_over_them(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("user_col: u\ntime_col: t\namount_col: a\nmin_time: '1990-01-01'\n")
    assert load_mapping(f).time_range_ms(NOW_MS) == (_ms(1990, 1, 1), NOW_MS + MAX_FUTURE_MS)
    both = load_mapping(f, min_time="1991-01-01", max_time="1992-01-01")
    assert both.time_range_ms(NOW_MS) == (_ms(1991, 1, 1), _ms(1992, 1, 1))


def test_explicit_time_range_from_flags_or_mapping() -> None:
    ts = ["1996-12-31", "1997-01-01", "1998-07-01"]
    table = {"uid": ["a", "b", "c"], "ts": ts, "amt": ["1"] * 3}
    m = _mapping(min_time="1997-01-01", max_time="1998-07-01T00:00:00+08:00")
    assert m.time_range_ms(NOW_MS) == (_ms(1997, 1, 1), _ms(1998, 7, 1))
    _, rejects = _parse(table, mapping=m)
    late = "timestamp at or after max time"
    assert _reasons(rejects) == {1: "timestamp before min time", 3: late}
    with pytest.raises(ValidationError, match="not an ISO date"):
        _mapping(min_time="last year")
    with pytest.raises(ValidationError, match="not before max_time"):
        _mapping(min_time="1998-01-01", max_time="1998-01-01")


# ---------------------------------------------------------------------------- labels
def test_event_type_and_category_aliases() -> None:
    labels = ["Purchase", "BUY", "pay", "View", "pv", "cart", "Add to cart", "fav", "下单", "ORDER"]
    want = [
        "order",
        "order",
        "order",
        "item_view",
        "item_view",
        "add_to_cart",
        "add_to_cart",
        "favourite",
        "order",
        "order",
    ]
    cats = [
        "Fruit",
        "Meat & Poultry",
        "veg",
        "蔬菜",
        "fish",
        "dairy",
        "",
        "snacks and drinks",
        "grain-oil",
        "DAILY GOODS",
    ]
    want_cats = [
        "fruit",
        "meat_poultry",
        "vegetables",
        "vegetables",
        "seafood",
        "dairy_eggs",
        None,
        "snacks_drinks",
        "grain_oil",
        "daily_goods",
    ]
    n = len(labels)
    accepted, rejects = _parse(
        {
            "uid": list("abcdefghij"),
            "ts": ["2024-05-01"] * n,
            "amt": ["1"] * n,
            "ev": labels,
            "c": cats,
        },
        event_type_col="ev",
        category_col="c",
    )
    assert rejects.num_rows == 0
    assert accepted.column("event_type").to_pylist() == want
    assert accepted.column("category").to_pylist() == want_cats
    # orders carry categories=[category]; other events and blank categories do not
    expected_lists = [
        [c] if e == "order" and c is not None else None
        for e, c in zip(want, want_cats, strict=True)
    ]
    assert accepted.column("categories").to_pylist() == expected_lists


def test_mapping_adds_labels() -> None:
    m = _mapping(
        event_type_col="ev",
        category_col="c",
        event_type_values={"Checkout Success": "order"},
        category_values={"fresh produce": "vegetables"},
    )
    accepted, rejects = _parse(
        {
            "uid": ["a"],
            "ts": ["2024-05-01"],
            "amt": ["1"],
            "ev": ["checkout-success"],
            "c": ["Fresh Produce"],
        },
        m,
    )
    assert rejects.num_rows == 0
    assert accepted.column("event_type").to_pylist() == ["order"]
    assert accepted.column("category").to_pylist() == ["vegetables"]
    with pytest.raises(ValidationError, match="unknown event type 'teleport'"):
        _mapping(event_type_values={"beam": "teleport"})


def test_order_and_coupon_ids_kept_as_text() -> None:
    accepted, _ = _parse(
        {
            "uid": ["a", "b"],
            "ts": ["2024-05-01"] * 2,
            "amt": ["1", "2"],
            "o": [" 000123 ", ""],
            "cp": ["C9", " "],
        },
        order_col="o",
        coupon_col="cp",
    )
    assert accepted.column("order_id").to_pylist() == ["000123", None]
    assert accepted.column("coupon_id").to_pylist() == ["C9", None]


# ---------------------------------------------------------------------------- identity
def test_pseudonymised_ids_and_no_raw_id_in_outputs() -> None:
    raw = ["RAW-alice-77", " RAW-bob-88 ", "RAW-carol-99", "RAW-alice-77"]
    accepted, rejects = _parse(
        {
            "uid": raw,
            "ts": ["2024-05-01", "bad", "2024-05-01", "2024-05-02"],
            "amt": ["1", "1", "-1", "2"],
        }
    )
    assert accepted.column("user_id").to_pylist() == [pseudonymise("RAW-alice-77", KEY)] * 2
    assert rejects.column("user_id").to_pylist() == [
        str(pseudonymise("RAW-bob-88", KEY)),
        str(pseudonymise("RAW-carol-99", KEY)),
    ]
    for table in (accepted, rejects):
        for col in table.columns:
            for v in col.to_pylist():
                assert "RAW-" not in str(v)


def test_pseudonym_cache_matches_plain_hashing() -> None:
    cache = PseudonymCache(KEY, max_ids=5)
    for batch in (["a", "b", "c"], ["c", "d", "a", "e", "f", "g"], ["g", "a", "z"]):
        got = cache.pseudonymise(pa.array(batch)).to_pylist()
        assert got == [pseudonymise(x, KEY) for x in batch]


def test_typed_parquet_columns() -> None:
    naive = pa.array([dt.datetime(2024, 5, 1, 10)] * 3, pa.timestamp("us"))
    table = pa.table(
        {
            "uid": pa.array([1001, 1002, None], pa.int64()),
            "ts": naive,
            "amt": pa.array([1.5, float("nan"), 2.0]),
            "c": pa.array(["fruit", "fruit", "fruit"]).dictionary_encode(),
        }
    )
    accepted, rejects = parse_batch(table, _mapping(category_col="c"), KEY, "f.parquet", 1, NOW_MS)
    assert accepted.column("user_id").to_pylist() == [pseudonymise("1001", KEY)]
    assert accepted.column("ts").cast(pa.int64()).to_pylist() == [_ms(2024, 5, 1, 10)]
    assert _reasons(rejects) == {2: "non-numeric amount", 3: "missing user id"}
    aware = pa.table(
        {
            "uid": ["a"],
            "ts": pa.array([dt.datetime(2024, 5, 1, 10)], pa.timestamp("ms", tz="UTC")),
            "amt": [1],
        }
    )
    accepted, _ = parse_batch(aware, _mapping(), KEY, "f", 1, NOW_MS)
    assert accepted.column("ts").cast(pa.int64()).to_pylist() == [_ms(2024, 5, 1, 10, tz=dt.UTC)]


# ---------------------------------------------------------------------------- mapping
def test_mapping_checks_columns_and_names_the_file() -> None:
    m = _mapping(category_col="cat")
    with pytest.raises(MappingError) as err:
        check_columns(m, ["uid", "ts", "amount", "cat"], "logs/jan.csv")
    msg = str(err.value)
    assert "'amt'" in msg and "logs/jan.csv" in msg and "'amount'" in msg
    check_columns(m, ["uid", "ts", "amt", "cat", "other"], "ok.csv")
    schema = pa.schema([("uid", pa.string()), ("ts", pa.int64()), ("amt", pa.float64())])
    with pytest.raises(MappingError, match="numeric"):
        check_columns(_mapping(), schema, "f.parquet")
    check_columns(_mapping(time_format="epoch"), schema, "f.parquet")


@pytest.mark.parametrize(
    "column", ["phone", "Name", "address", "customer_phone", "Email", "Receiver Name", "id_card"]
)
def test_pii_columns_cannot_be_mapped(column: str) -> None:
    with pytest.raises(ConfigError, match="personal-data"):
        load_mapping(None, user_col=column, time_col="ts", amount_col="amt")
    with pytest.raises(ValidationError, match="personal-data"):
        _mapping(coupon_col=column)


def test_ordinary_columns_are_not_mistaken_for_personal_data() -> None:
    for column in ("category_name", "product_name", "member_id", "coupon_code", "store"):
        assert not is_pii_column(column)


def test_mapping_rejects_duplicates_and_bad_formats() -> None:
    with pytest.raises(ValidationError, match="mapped twice"):
        _mapping(order_col="uid")
    with pytest.raises(ValidationError, match="unknown time format"):
        _mapping(time_format="yyyymmdd")
    assert _mapping(time_format="EPOCH").time_format == "epoch"
    assert _mapping(delimiter="\\t").delimiter == "\t"


def test_yaml_mapping_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("user_col: uid\ntime_col: ts\namount_column: amt\n")
    with pytest.raises(ConfigError) as err:
        load_mapping(path, amount_col="amt")
    assert str(path) in str(err.value) and "amount_column" in str(err.value)
    assert "amount_col" in str(err.value)  # the allowed keys are listed


def test_yaml_mapping_with_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("user_col: uid\ntime_col: ts\ntime_format: '%Y%m%d'\norder_col: o\n")
    with pytest.raises(ConfigError, match="amount_col"):
        load_mapping(path)
    m = load_mapping(path, amount_col="amt", time_format="epoch", order_col=None)
    assert (m.user_col, m.amount_col, m.time_format, m.order_col) == ("uid", "amt", "epoch", "o")
    example = Path(__file__).resolve().parents[2] / "configs" / "import_mapping.example.yaml"
    assert load_mapping(example).user_col == "member_id"


# ---------------------------------------------------------------------------- files
def _settings(tmp_path: Path) -> Settings:
    return Settings(data=str(tmp_path / "data"), pseudonym_key=SecretStr(KEY.decode()), n_buckets=4)


def _run(tmp_path: Path, files: list[Path], mapping: ColumnMapping) -> ingest_job.ImportResult:
    return ingest_job.run(
        _settings(tmp_path), [str(f) for f in files], mapping, now_ms=NOW_MS, show_progress=False
    )


CSV = (
    "uid,ts,amt,ev,phone\n"
    "u1,2024-05-01 10:00:00,10,order,13800000000\n"
    "u2,2024-05-01 11:00:00,,view,13800000001\n"
    ",2024-05-01 11:00:00,1,order,13800000002\n"
    "u4,2024-05-01 11:00:00,1\n"
    "u5,2024-05-01 12:00:00,-1,order,13800000003\n"
)


def test_csv_file_import_counts_and_rejects(tmp_path: Path) -> None:
    f = tmp_path / "events.csv"
    f.write_text(CSV)
    result = _run(tmp_path, [f], _mapping(event_type_col="ev"))
    assert (result.input_rows, result.accepted, result.rejected) == (5, 2, 3)
    assert result.rejects_by_reason == {
        "missing user id": 1,
        "malformed row (expected 5 fields, got 3)": 1,
        "negative amount": 1,
    }
    assert result.files[0].pii_columns_dropped == ["phone"]
    assert result.rejects_path is not None
    rejects = pq.read_table(result.rejects_path)
    assert "phone" not in rejects.column_names
    assert sorted(_reasons(rejects)) == [3, 4, 5]
    for col in rejects.columns:
        assert not any("1380000" in str(v) for v in col.to_pylist())


def test_csv_row_numbers_across_blocks_and_malformed_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(import_files, "CSV_BLOCK_BYTES", 256)
    lines = ["uid,ts,amt"]
    bad_rows = {7, 8, 40, 41, 42, 99, 150}
    for i in range(1, 201):
        if i in bad_rows:
            lines.append(f"u{i},2024-05-01" if i != 99 else "")
        elif i % 13 == 0:
            lines.append(f"u{i},2024-05-01,-{i}")  # negative amount: row number checkable
        else:
            lines.append(f"u{i},2024-05-01,{i}")
    f = tmp_path / "many.csv"
    f.write_text("\n".join(lines) + "\n")
    result = _run(tmp_path, [f], _mapping())
    assert result.input_rows == 200
    assert result.accepted + result.rejected == 200
    rejects = pq.read_table(result.rejects_path)
    reasons = _reasons(rejects)
    assert {r for r, why in reasons.items() if why.startswith("malformed")} == bad_rows - {99}
    assert reasons[99] == "missing user id"  # an empty line is a row of empty fields
    negative = {i for i in range(1, 201) if i % 13 == 0 and i not in bad_rows}
    assert {r for r, why in reasons.items() if why == "negative amount"} == negative


def test_parquet_tsv_and_gzip_inputs(tmp_path: Path) -> None:
    table = pa.table(
        {
            "uid": ["a", "b", "c"],
            "ts": pa.array([1_714_557_600, 1_714_557_601, 0], pa.int64()),  # 0: epoch zero
            "amt": pa.array([1.0, 2.0, 3.0]),
        }
    )
    pq.write_table(table, tmp_path / "e.parquet")
    pacsv.write_csv(
        table, tmp_path / "e.tsv", pacsv.WriteOptions(delimiter="\t", quoting_style="none")
    )
    with gzip.open(tmp_path / "e.csv.gz", "wb") as gz:
        pacsv.write_csv(table, gz)
    files = [tmp_path / "e.parquet", tmp_path / "e.tsv", tmp_path / "e.csv.gz"]
    result = _run(tmp_path, files, _mapping(time_format="epoch"))
    assert [(f.accepted, f.rejected) for f in result.files] == [(2, 1)] * 3
    assert result.rejects_by_reason == {"timestamp before min time": 3}


def test_missing_column_fails_before_anything_is_written(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("uid,ts,amt\nu1,2024-05-01,1\n")
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"uid": ["u"], "time": ["2024-05-01"], "amt": [1.0]}), bad)
    with pytest.raises(MappingError) as err:
        _run(tmp_path, [good, bad], _mapping())
    assert "'ts'" in str(err.value) and str(bad) in str(err.value)
    assert not (tmp_path / "data").exists()


def test_unknown_file_type_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "e.json").write_text("{}")
    with pytest.raises(InputError, match="unknown file type"):
        _run(tmp_path, [tmp_path / "e.json"], _mapping())
    with pytest.raises(InputError, match="no such file"):
        _run(tmp_path, [tmp_path / "nope.csv"], _mapping())


# ---------------------------------------------------------------------------- whitespace
def test_whitespace_separated_file_with_padding_tabs_crlf_and_bad_lines(tmp_path: Path) -> None:
    f = tmp_path / "log.txt"
    f.write_bytes(
        b" uid  ts\tqty   amt\r\n"
        b" 00001 19970101  1   11.77\r\n"
        b"00002\t19970112 5 77.00   \r\n"
        b"\r\n"  # blank line: a row of empty fields
        b" 00004 19970102 2\r\n"  # a field short
        b" 00005 19970103 1 -3.00 extra\r\n"  # a field too many
        b" 00006 19970104 1 -3.00\r\n"
    )
    m = _mapping(delimiter="whitespace", time_format="%Y%m%d")
    result = _run(tmp_path, [f], m)
    assert (result.input_rows, result.accepted, result.rejected) == (6, 2, 4)
    reasons = _reasons(pq.read_table(result.rejects_path))
    assert reasons == {
        3: "missing user id",
        4: "malformed row (expected 4 fields, got 3)",
        5: "malformed row (expected 4 fields, got 5)",
        6: "negative amount",
    }
    wh = Warehouse(_settings(tmp_path).data)
    events = pa.concat_tables(wh.read_bucket("events", b) for b in wh.buckets("events"))
    assert sorted(events.column("amount_cny").to_pylist()) == [11.77, 77.0]
    assert sorted(events.column("user_id").to_pylist()) == sorted(
        pseudonymise(u, KEY) for u in ("00001", "00002")
    )


def test_whitespace_delimiter_spellings() -> None:
    assert _mapping(delimiter="ws").delimiter == "whitespace"
    assert _mapping(delimiter="Whitespace").delimiter == "whitespace"
    with pytest.raises(ValidationError, match="whitespace"):
        _mapping(delimiter="::")


# ---------------------------------------------------------------------------- loud rejects
def _write_old_log(path: Path, n: int, bad_amounts: int = 0) -> Path:
    lines = ["uid,ts,amt"]
    for i in range(n):
        amount = "oops" if i < bad_amounts else f"{i}.5"
        lines.append(f"u{i},1995-03-{1 + i % 28:02d},{amount}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reject_warnings_name_reason_sample_and_flag() -> None:
    m = _mapping(min_time="2000-01-01")
    fatal = reject_warnings(
        "a.csv", 4, 0, {"timestamp before min time": 4}, {"timestamp before min time": ["1995"]},
        m, NOW_MS,
    )  # fmt: skip
    assert fatal == [
        "a.csv: nothing accepted: 4 of 4 rows 'timestamp before min time' (e.g. '1995'); "
        "to change it: --min-time (mapping key min_time; now 2000-01-01T00:00:00+08:00)"
    ]
    most = reject_warnings("a.csv", 10, 4, {"non-numeric amount": 6}, {}, m, NOW_MS)
    assert len(most) == 1 and "more than half" in most[0] and "--amount-col" in most[0]
    assert reject_warnings("a.csv", 10, 5, {"non-numeric amount": 5}, {}, m, NOW_MS) == []


def test_cli_import_that_accepts_nothing_fails_loudly(tmp_path: Path) -> None:
    f = _write_old_log(tmp_path / "old.csv", 12)
    data = tmp_path / "data"
    args = ["import", str(f), "--data", str(data), "--user-col", "uid", "--time-col", "ts"]
    result = runner.invoke(cli.app, [*args, "--amount-col", "amt", "--min-time", "2000-01-01"])
    assert result.exit_code == ingest_job.NOTHING_ACCEPTED_EXIT != 0, result.output
    out = " ".join(result.output.split())
    assert "nothing accepted: 12 of 12 rows 'timestamp before min time'" in out
    assert "'1995-03-01'" in out  # a sample of the offending values
    assert "--min-time" in out and "min_time" in out  # what changes it
    assert "import accepted no rows" in out
    rejects = list((data / "rejects").glob("*.parquet"))
    assert len(rejects) == 1 and pq.read_table(rejects[0]).num_rows == 12
    # the default range takes the same file
    again = runner.invoke(cli.app, [*args, "--amount-col", "amt"])
    assert again.exit_code == 0, again.output
    assert "warning" not in again.output


def test_cli_import_warns_when_one_reason_rejects_most_of_a_file(tmp_path: Path) -> None:
    f = _write_old_log(tmp_path / "amounts.csv", 10, bad_amounts=6)
    args = ["import", str(f), "--data", str(tmp_path / "data"), "--user-col", "uid"]
    result = runner.invoke(cli.app, [*args, "--time-col", "ts", "--amount-col", "amt"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "warning:" in out
    assert "more than half of the rows rejected: 6 of 10 rows 'non-numeric amount'" in out
    assert "(e.g. 'oops')" in out and "--amount-col" in out
