"""The recompute scores users with the trained models inside the feature actors."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from jobs import generate
from jobs import train as train_job
from jobs.recompute import RecomputeError, RecomputeJob
from strata.config import CONFIG_DIR
from strata.io.models import ModelRegistry
from strata.io.segment_store import SegmentStore
from strata.io.snapshots import SnapshotStore
from strata.settings import Settings
from strata.timeutil import parse_as_of
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

END = dt.date(2026, 10, 1)
AS_OF = parse_as_of("2026-10-01")


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> str:
    root = str(tmp_path_factory.mktemp("predict") / "data")
    settings = Settings(data=root, pseudonym_key=SecretStr(TEST_KEY), n_buckets=8)
    generate.run(settings, users=2000, days=120, seed=5, end=END, show_progress=False)
    train_job.run(settings, AS_OF, 30, actors=2, show_progress=False)
    return root


def _copy(root: str, tmp_path: Path) -> Settings:
    target = tmp_path / "data"
    shutil.copytree(root, target)
    return Settings(data=str(target), pseudonym_key=SecretStr(TEST_KEY))


def _configs(tmp_path: Path, file: str, old: str, new: str) -> str:
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    text = (configs / file).read_text()
    assert old in text
    (configs / file).write_text(text.replace(old, new, 1))
    return str(configs)


def test_predictions_in_snapshot_redis_and_churn_warning(
    trained_root: str, tmp_path: Path, redis_url: str
) -> None:
    settings = _copy(trained_root, tmp_path).model_copy(update={"redis_url": redis_url})
    version = ModelRegistry(settings.data).latest_good()
    assert version is not None
    result = RecomputeJob(settings, AS_OF, actors=2).run()
    snaps = SnapshotStore(settings.data)
    manifest = snaps.manifest(result.version)
    assert manifest["predictions"]["model_version"] == version
    assert manifest["predictions"]["status"] == "used"
    champions = ModelRegistry(str(settings.data)).meta(version)["champion"]
    assert manifest["predictions"]["sources"] == {
        "churn_p": champions["churn"]["method"],
        "repurchase_p": champions["repurchase"]["method"],
        "predicted_spend": champions["spend"]["method"],
    }
    table = snaps.read(result.version)
    for name in ("churn_p", "repurchase_p", "predicted_spend"):
        values = table.column(name).to_numpy()
        assert table.column(name).null_count == 0 and np.all(values >= 0)
    assert np.all(table.column("churn_p").to_numpy() <= 1)
    rules = table.column("tier_rule").to_pylist()
    why = table.column("tier_explanation").to_pylist()
    churn = [w for r, w in zip(rules, why, strict=True) if r == "churn_warning"]
    assert churn and all(w.startswith("churn_p ") for w in churn)
    store = SegmentStore(redis_url, namespace="strata")
    got = store.get(int(table.column("user_id")[0].as_py()))
    info = store.info(result.version)
    store.close()
    assert info is not None and info.meta["model_version"] == version
    assert got is not None
    # the online record holds probabilities in steps of 1/200
    assert got[1]["churn_p"] == pytest.approx(table.column("churn_p")[0].as_py(), abs=0.0025)
    assert got[1]["predicted_spend"] == round(table.column("predicted_spend")[0].as_py())


def test_corrupt_model_fails_before_work_or_is_skipped_when_configured(
    trained_root: str, tmp_path: Path
) -> None:
    settings = _copy(trained_root, tmp_path)
    registry = ModelRegistry(settings.data)
    version = registry.latest_good()
    assert version is not None
    model_file = Path(registry.path(version)) / "churn.ubj"
    model_file.write_bytes(b"not a model")
    with pytest.raises(RecomputeError, match=r"churn\.ubj"):
        RecomputeJob(settings, AS_OF, actors=2, publish=False).run()
    assert SnapshotStore(settings.data).versions() == []
    configs = _configs(
        tmp_path, "recompute.yaml", "\non_model_error: fail", "\non_model_error: continue"
    )
    result = RecomputeJob(settings, AS_OF, actors=2, publish=False, config_dir=configs).run()
    manifest = SnapshotStore(settings.data).manifest(result.version)
    assert manifest["predictions"]["model_version"] is None
    assert "not used" in manifest["predictions"]["status"]
    table = SnapshotStore(settings.data).read(result.version, ["churn_p"])
    assert table.column("churn_p").null_count == table.num_rows


def test_required_predictions_without_a_model_fail_clearly(tmp_path: Path) -> None:
    configs = _configs(tmp_path, "recompute.yaml", "\npredictions: auto", "\npredictions: required")
    settings = Settings(data=str(tmp_path / "empty"), pseudonym_key=SecretStr(TEST_KEY))
    job = RecomputeJob(settings, AS_OF, config_dir=configs)
    with pytest.raises(RecomputeError, match="strata train"):
        job._resolve_model()
