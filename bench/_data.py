"""The benchmarks' shared data root: one default, generated when missing.

Every benchmark that reads a warehouse defaults to :data:`DEFAULT_DATA` (1M users x 90 days,
seed 1, ending 2026-11-01) and generates it there when the folder holds no events, so
`python bench/<name>.py` with no arguments works on a fresh machine and later runs reuse the
data. Generation runs `strata generate` in a child process, so the benchmark process itself
has not started Ray when it times a baseline.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = os.environ.get("STRATA_BENCH_DATA", "/tmp/strata-bench")
DEFAULT_USERS = 1_000_000
DEFAULT_DAYS = 90
DEFAULT_END = "2026-11-01"
DEFAULT_SEED = 1
BENCH_KEY = "strata-bench-pseudonym-key-000000"


def orders_only_root(data: str) -> str:
    """The orders-only twin of a data root (``<data>-orders``)."""
    return data.rstrip("/") + "-orders"


def has_events(data: str) -> bool:
    """Whether ``data`` holds a warehouse with at least one committed event row."""
    sys.path.insert(0, str(ROOT))
    from strata.io.warehouse import Warehouse

    wh = Warehouse(data)
    return bool(wh.exists() and wh.summary()["events"]["rows"] > 0)


def ensure_generated(
    data: str,
    users: int = DEFAULT_USERS,
    days: int = DEFAULT_DAYS,
    end: str = DEFAULT_END,
    seed: int = DEFAULT_SEED,
    orders_only: bool = False,
) -> bool:
    """Generate the data root with `strata generate` (a child process) unless it has events.

    Returns:
        True when it generated the data now.
    """
    os.environ.setdefault("STRATA_PSEUDONYM_KEY", BENCH_KEY)
    if has_events(data):
        return False
    cmd = [
        sys.executable, "-m", "jobs.generate", "--data", data, "--users", str(users),
        "--days", str(days), "--seed", str(seed), "--end", end, "--overwrite",
    ]  # fmt: skip
    if orders_only:
        cmd.append("--orders-only")
    print(f"generating {users:,} users x {days} days into {data}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=os.environ.copy())
    return True


def as_of_date(end: str) -> dt.date:
    """The default as-of of a generated root: its end day (exclusive local midnight)."""
    return dt.date.fromisoformat(end)
