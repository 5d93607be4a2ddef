"""Orders-only logs for the model-quality tests: CDNOW (real) and a BG/NBD-simulated log.

CDNOW (1997-01..1998-06) ships with ``lifetimes``. ``strata import`` rejects times before 2000
(a ``--min-time`` flag is on its way), so the dates are shifted by +28 years (1997 -> 2025: the
same weekdays and leap years) and imported through the ordinary importer. Each row becomes an
order at local noon of its day (the file has dates only). Switch ``SHIFT_YEARS`` to 0 once the
importer takes ``--min-time``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import SecretStr

from jobs import ingest as ingest_job
from strata.ingest import ColumnMapping
from strata.settings import Settings
from strata.synth.bgnbd import simulate_bgnbd
from tests.conftest import TEST_KEY

SHIFT_YEARS = 28
LOCAL = dt.timezone(dt.timedelta(hours=8))


def cdnow_path() -> Path:
    """The full CDNOW master file inside the installed lifetimes package."""
    import lifetimes

    return Path(lifetimes.__file__).parent / "datasets" / "CDNOW_master.txt"


def cdnow_raw() -> pa.Table:
    """CDNOW as it is: ``customer_id`` (int), ``date`` (date32), ``amount`` (float64)."""
    text = cdnow_path().read_text().split("\n", 1)[1]  # drop the header line
    values = np.array(text.split()).reshape(-1, 4)
    days = np.array(
        [np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}") for d in values[:, 1]], dtype="datetime64[D]"
    )
    return pa.table(
        {
            "customer_id": pa.array(values[:, 0].astype(np.int64)),
            "date": pa.array(days),
            "amount": pa.array(values[:, 3].astype(np.float64)),
        }
    )


def shifted_ms(days: np.ndarray, years: int = SHIFT_YEARS) -> np.ndarray:
    """Epoch ms of local noon of each date, ``years`` later (same month and day)."""
    d = days.astype("datetime64[D]")
    y = d.astype("datetime64[Y]").astype(int) + 1970 + years
    md = d - d.astype("datetime64[Y]")
    shifted = (np.array([f"{v:04d}" for v in y], dtype="datetime64[Y]")).astype(
        "datetime64[D]"
    ) + md
    utc_noon = shifted.astype("datetime64[ms]").astype(np.int64) + 12 * 3_600_000
    return utc_noon - 8 * 3_600_000  # local noon (UTC+8)


def shifted_as_of(date: str, years: int = SHIFT_YEARS) -> dt.datetime:
    """A CDNOW-era local midnight, shifted like the data."""
    d = dt.date.fromisoformat(date)
    return dt.datetime(d.year + years, d.month, d.day, tzinfo=LOCAL)


def import_orders(
    table: pa.Table, root: Path, now_ms: int, n_buckets: int = 8, fmt: str = "parquet"
) -> Settings:
    """Import an orders table (``customer``, ``ts`` epoch ms, ``amount``) into a new warehouse
    with the ordinary importer."""
    root.mkdir(parents=True, exist_ok=True)
    source = root / f"orders.{fmt}"
    if fmt == "csv":
        pacsv.write_csv(table, source)
    else:
        pq.write_table(table, source)
    settings = Settings(
        data=str(root / "data"), pseudonym_key=SecretStr(TEST_KEY), n_buckets=n_buckets
    )
    mapping = ColumnMapping(
        user_col="customer", time_col="ts", amount_col="amount", time_format="epoch_ms"
    )
    result = ingest_job.run(settings, [str(source)], mapping, now_ms=now_ms, show_progress=False)
    assert result.rejected == 0, result.rejects_by_reason
    return settings


def cdnow_orders() -> pa.Table:
    """CDNOW as an import source: ``customer`` (string), ``ts`` (shifted epoch ms), ``amount``."""
    raw = cdnow_raw()
    days = raw.column("date").to_numpy().astype("datetime64[D]")
    return pa.table(
        {
            "customer": pa.array([f"{c:05d}" for c in raw.column("customer_id").to_pylist()]),
            "ts": pa.array(shifted_ms(days), type=pa.int64()),
            "amount": raw.column("amount"),
        }
    )


def simulated_orders(n_customers: int, seed: int, days: int = 546) -> pa.Table:
    """A BG/NBD log shaped like CDNOW (CDNOW's BG/NBD parameters, 12-week acquisition),
    starting 2025-01-01 local time."""
    return simulate_bgnbd(
        n_customers, days, seed, start=dt.datetime(2025, 1, 1, tzinfo=LOCAL), acquisition_days=84
    )
