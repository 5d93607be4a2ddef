"""A corrupt Parquet part, a truncated model file and an unreadable config: each command that
reads one fails before any write (warehouse manifest, snapshots, Redis pointer unchanged),
exit 2, with one message naming the file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from typer.testing import CliRunner

from jobs._errors import USER_ERROR_EXIT
from jobs.cli import app
from strata.config import CONFIG_DIR
from strata.io.models import MODEL_NAMES, ModelRegistry
from strata.io.segment_store import SegmentStore
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import Warehouse
from tests.faults.conftest import AS_OF, tree_digest

pytestmark = pytest.mark.integration


def _state(data: Path, redis_url: str | None) -> dict[str, Any]:
    """Everything a failed command must leave as it was."""
    state: dict[str, Any] = {
        "manifest": Path(Warehouse(str(data)).manifest_path).read_bytes(),
        "snapshots": tree_digest(data / "snapshots"),
        "versions": SnapshotStore(str(data)).versions(),
        "models": tree_digest(data / "models"),
    }
    if redis_url is not None:
        store = SegmentStore(redis_url, namespace="strata")
        try:
            state["current"], state["redis_versions"] = store.current(), store.versions()
        finally:
            store.close()
    return state


def _fails_naming(args: list[str], named: Path) -> str:
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    out = result.output
    assert result.exit_code == USER_ERROR_EXIT, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out[-3000:]
    assert str(named) in errors[0], errors[0]
    assert "Traceback" not in out
    return errors[0]


@pytest.fixture
def data(small_warehouse: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(small_warehouse, target)
    return target


@pytest.fixture
def published(data: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``data`` with one recompute published to the test Redis (the version to keep)."""
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    result = CliRunner().invoke(
        app, ["recompute", "--data", str(data), "--as-of", "2026-09-20", "--actors", "2"]
    )
    assert result.exit_code == 0, result.output[-3000:]
    return data


def test_corrupt_parquet_part_fails_before_any_write(published: Path, redis_url: str) -> None:
    wh = Warehouse(str(published))
    bad = Path(wh.bucket_files("events", wh.buckets()[0])[0])
    size = bad.stat().st_size
    bad.write_bytes(b"PAR1" + os.urandom(size - 8) + b"PAR1")  # garbage between valid magics
    before = _state(published, redis_url)
    _fails_naming(["recompute", "--data", str(published), "--as-of", AS_OF, "--actors", "2"], bad)
    assert _state(published, redis_url) == before
    _fails_naming(["train", "--data", str(published), "--as-of", AS_OF, "--actors", "2"], bad)
    assert _state(published, redis_url) == before


def _fake_good_model(data: Path) -> Path:
    """A registered good model version (tiny boosters) whose files check out."""
    rng = np.random.default_rng(0)
    dtrain = xgb.DMatrix(rng.random((20, 2)), label=rng.integers(0, 2, 20))
    boosters = {n: xgb.train({"nthread": 1}, dtrain, num_boost_round=2) for n in MODEL_NAMES}
    version = "20261001T000000Z-test"
    folder = ModelRegistry(str(data)).save(version, boosters, {"features": ["a", "b"]})
    return Path(folder)


def test_truncated_model_file_fails_before_any_write(published: Path, redis_url: str) -> None:
    folder = _fake_good_model(published)
    model = folder / f"{MODEL_NAMES[0]}.ubj"
    raw = model.read_bytes()
    model.write_bytes(raw[: len(raw) // 2])
    before = _state(published, redis_url)
    _fails_naming(["recompute", "--data", str(published), "--as-of", AS_OF, "--actors", "2"], model)
    assert _state(published, redis_url) == before


def _configs(tmp_path: Path) -> Path:
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    return configs


@pytest.mark.parametrize(
    ("command", "file"), [(["recompute", "--no-publish"], "tiers.yaml"), (["train"], "train.yaml")]
)
def test_config_with_syntax_error_fails_before_any_write(
    data: Path, tmp_path: Path, command: list[str], file: str
) -> None:
    configs = _configs(tmp_path)
    bad = configs / file
    bad.write_text(bad.read_text() + "\n  : [unclosed\n")
    before = _state(data, None)
    args = ["--data", str(data), "--as-of", AS_OF, "--config-dir", str(configs)]
    _fails_naming([*command, *args], bad)
    assert _state(data, None) == before


@pytest.mark.parametrize("how", ["mode000", "directory"])
def test_unreadable_config_fails_before_any_write(data: Path, tmp_path: Path, how: str) -> None:
    configs = _configs(tmp_path)
    bad = configs / "tiers.yaml"
    if how == "mode000":
        if os.geteuid() == 0:
            pytest.skip("root reads a mode 000 file; the 'directory' case covers unreadable")
        bad.chmod(0)
    else:
        bad.unlink()
        bad.mkdir()
    before = _state(data, None)
    args = ["--data", str(data), "--as-of", AS_OF, "--config-dir", str(configs)]
    _fails_naming(["recompute", "--no-publish", *args], bad)
    assert _state(data, None) == before
