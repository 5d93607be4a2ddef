"""`strata import` of a real classic log: CDNOW (1997-1998, whitespace-separated, no quoting).

The full CDNOW master file ships inside the ``lifetimes`` package; it is imported from there,
unchanged, through the real CLI with a mapping file, together with a small file in the same
format whose bad rows are planted. Every CDNOW row must be accepted (decades-old history is
history), and exactly the planted rows rejected, each with its reason.
"""

from __future__ import annotations

import importlib.util
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jobs import cli
from strata.ids import pseudonymise
from strata.io.keys import load_pseudonym_key
from strata.io.warehouse import Warehouse
from strata.settings import Settings

pytestmark = pytest.mark.integration

CDNOW_ROWS = 69_659
CDNOW_CUSTOMERS = 23_570

MAPPING = """\
user_col: customer_id
time_col: date
time_format: "%Y%m%d"
amount_col: dollar_value
delimiter: whitespace
"""

#: planted file: data-row number -> (line, reason); None = a good row
PLANTED: dict[int, tuple[str, str | None]] = {
    1: (" 90001 19970315  2   20.00", None),
    2: (" 90002 00010101  1   10.00", "timestamp before min time"),  # year 0001
    # epoch zero as a date: its local midnight (UTC+8) is before the epoch itself
    3: (" 90003 19700101  1   10.00", "timestamp before min time"),
    4: (" 90004 19970301  1   -5.00", "negative amount"),
    5: (" 90005 19970301  1     n/a", "non-numeric amount"),
    # a blank user id cannot be written in a whitespace-separated line: the line is short
    6: ("       19970301  1   10.00", "malformed row (expected 4 fields, got 3)"),
    7: (" 90007 20990101  1   10.00", "timestamp at or after max time"),  # the future
    8: (" 90008 19971332  1   10.00", "unparsable timestamp"),
    9: (" 90009 19980630  1    0.00", None),
}


def _cdnow() -> Path:
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the lifetimes package (which ships CDNOW) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "CDNOW_master.txt"
    assert path.is_file(), path
    return path


def test_cdnow_imports_with_exactly_the_planted_rows_rejected(
    settings: Settings, tmp_path: Path
) -> None:
    cdnow = _cdnow()
    lines = cdnow.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    assert len(rows) == CDNOW_ROWS
    planted = tmp_path / "planted.txt"
    planted.write_text("\r\n".join([header, *(line for line, _ in PLANTED.values())]) + "\r\n")
    mapping = tmp_path / "cdnow.yaml"
    mapping.write_text(MAPPING)

    args = ["import", str(cdnow), str(planted), "--data", settings.data, "--mapping", str(mapping)]
    out = CliRunner().invoke(cli.app, args)
    assert out.exit_code == 0, out.output
    assert "warning" not in out.output

    wh = Warehouse(settings.data)
    (commit,) = [w for w in wh.manifest["writes"] if w["source"] == "import"]
    n_bad = sum(1 for _, reason in PLANTED.values() if reason is not None)
    assert commit["accepted"] + commit["rejected"] == CDNOW_ROWS + len(PLANTED)
    assert commit["rejected"] == n_bad
    rejects = pq.read_table(commit["rejects_path"])
    got = {
        (Path(f).name, r): why
        for f, r, why in zip(
            rejects.column("source_file").to_pylist(),
            rejects.column("row_number").to_pylist(),
            rejects.column("reason").to_pylist(),
            strict=True,
        )
    }
    assert got == {("planted.txt", r): why for r, (_, why) in PLANTED.items() if why is not None}

    events = wh.read_table("events")
    assert events.num_rows == CDNOW_ROWS + len(PLANTED) - n_bad
    key = load_pseudonym_key(settings)
    cdnow_ids = {pseudonymise(line.split()[0], key) for line in rows}
    assert len(cdnow_ids) == CDNOW_CUSTOMERS
    assert set(events.column("user_id").to_pylist()) == cdnow_ids | {
        pseudonymise("90001", key),
        pseudonymise("90009", key),
    }
    # amounts and days survive exactly: the file's own sums, computed independently
    spend = sum(Decimal(line.split()[3]) for line in rows) + Decimal("20.00")
    assert round(pc.sum(events.column("amount_cny")).as_py(), 2) == float(spend)
    local_days = pc.strftime(events.column("ts"), format="%Y%m%d", locale="C")
    # ts is UTC; a local (UTC+8) midnight is 16:00 the day before in UTC
    assert pc.min(local_days).as_py() == "19961231" and pc.max(local_days).as_py() == "19980629"
    assert pc.min(events.column("ts")).as_py().isoformat() == "1996-12-31T16:00:00+00:00"


def test_cdnow_recompute_as_of_a_local_midnight_prints_the_last_event_included(
    settings: Settings, tmp_path: Path, ray_local: Any
) -> None:
    mapping = tmp_path / "cdnow.yaml"
    mapping.write_text(MAPPING)
    data = ["--data", settings.data]
    out = CliRunner().invoke(cli.app, ["import", str(_cdnow()), *data, "--mapping", str(mapping)])
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(
        cli.app, ["recompute", *data, "--as-of", "1997-10-01", "--no-publish", "--actors", "2"]
    )
    assert out.exit_code == 0, out.output
    # everything before local midnight of 1 October: the last CDNOW day included is 30 Sept
    rows = _cdnow().read_text().splitlines()[1:]
    before = [line for line in rows if line.split()[1] < "19971001"]
    assert max(line.split()[1] for line in before) == "19970930"
    assert "1997-09-30T00:00:00+08:00" in out.output
    row = next(line for line in out.output.splitlines() if "last event included" in line)
    assert "1997-09-30T00:00:00+08:00" in row
    users = {line.split()[0] for line in before}
    assert f"{len(users):,}" in out.output  # every customer seen before as-of is a user
