"""Fault tests: the shared Ray/Redis fixtures of tests/conftest.py, one small warehouse."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from jobs import generate
from strata.settings import Settings
from tests.conftest import TEST_KEY

#: The generated warehouse's last day and the as-of the tests recompute at.
END = dt.date(2026, 10, 1)
AS_OF = "2026-10-01"


@pytest.fixture(scope="session")
def small_warehouse(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> Path:
    """One small generated data root (400 users, 60 days), copied by tests that change it."""
    root = tmp_path_factory.mktemp("faults") / "data"
    settings = Settings(data=str(root), pseudonym_key=SecretStr(TEST_KEY), n_buckets=8)
    generate.run(settings, users=400, days=60, seed=11, end=END)
    return root


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (hidden ones too), by relative path."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
