"""The one time module (local days, as-of) and the one rule for remote data roots."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from strata.io.paths import bucket_dir_name, bucket_part_file, is_remote, local_path
from strata.timeutil import (
    DAY_MS,
    LOCAL_TZ,
    local_day,
    local_iso,
    local_midnight_ms,
    parse_as_of,
    to_epoch_ms,
)


def test_as_of_date_is_the_exclusive_local_midnight() -> None:
    as_of = parse_as_of("1997-10-01")
    assert as_of == dt.datetime(1997, 10, 1, tzinfo=LOCAL_TZ)
    ms = to_epoch_ms(as_of)
    assert ms == local_midnight_ms(dt.date(1997, 10, 1))
    assert local_iso(ms - 1) == "1997-09-30T23:59:59+08:00"  # the last included instant
    assert local_day(ms) - local_day(ms - 1) == 1


def test_as_of_keeps_explicit_zones_and_reads_naive_as_local() -> None:
    assert parse_as_of("2026-10-01T00:00:00+00:00") == dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    assert parse_as_of("2026-10-01T08:00") == dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="'yesterday' is not an ISO date"):
        parse_as_of("yesterday")


def test_epoch_ms_is_exact_and_local_day_vectorises() -> None:
    assert to_epoch_ms(dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) == 0
    assert to_epoch_ms(dt.datetime(2026, 1, 1, 0, 0, 0, 999_999, tzinfo=dt.UTC)) % 1000 == 999
    days = local_day(np.array([0, 16 * 3_600_000 - 1, 16 * 3_600_000], dtype=np.int64))
    assert days.tolist() == [0, 0, 1]  # 16:00 UTC is local midnight
    assert local_midnight_ms(dt.date(1970, 1, 2)) == DAY_MS - 8 * 3_600_000


@pytest.mark.parametrize(
    ("uri", "remote"),
    [("s3://bucket/strata", True), ("gs://b/x", True), ("file:///tmp/x", False),
     ("./data", False), ("/abs/data", False), ("FILE:///tmp/x", False)],
)  # fmt: skip
def test_one_rule_for_remote_roots(uri: str, remote: bool) -> None:
    assert is_remote(uri) is remote


def test_local_path_strips_file_scheme_and_refuses_remote() -> None:
    assert local_path("file:///tmp/strata") == "/tmp/strata"
    assert local_path("/tmp/a/../b") == "/tmp/b"
    with pytest.raises(ValueError, match="remote"):
        local_path("s3://bucket/x")


def test_one_naming_of_per_bucket_files() -> None:
    assert bucket_dir_name(7, 256) == "bucket=007"
    assert bucket_dir_name(7, 4096) == "bucket=0007"  # as wide as the largest bucket
    assert bucket_part_file("/w/train/", 7) == "/w/train/part-00007.parquet"
