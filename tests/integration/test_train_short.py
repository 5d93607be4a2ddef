"""`strata train` on a young log (45 days: one of train.yaml's four cutoffs fits), and a failure
inside xgboost-ray that must not leave its actors holding the CPUs of the shared Ray."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr

from actors import xgb_distributed
from jobs import generate
from jobs import train as train_job
from jobs.recompute import RecomputeJob
from strata.config import CONFIG_DIR
from strata.io.models import ModelRegistry
from strata.settings import Settings
from strata.timeutil import parse_as_of, to_epoch_ms
from strata.training import MIN_HISTORY_DAYS, cutoff_iso, cutoffs_for, load_train_config
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

END = dt.date(2026, 10, 1)
AS_OF = parse_as_of("2026-10-01")


@pytest.fixture(scope="module")
def young(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> Settings:
    """400 users x 45 days, seed 1: BG/NBD's fit degenerates (a, b ~ 1e-20) on it, which made
    ``bgnbd_expected`` inf for customers with one repeat purchase day before the fix."""
    root = str(tmp_path_factory.mktemp("young") / "data")
    settings = Settings(data=root, pseudonym_key=SecretStr(TEST_KEY), n_buckets=4)
    generate.run(settings, users=400, days=45, seed=1, end=END, show_progress=False)
    return settings


@pytest.fixture(scope="module")
def quick_configs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shipped configs with fewer boosting rounds (the method is the same)."""
    configs = tmp_path_factory.mktemp("configs") / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    text = (configs / "train.yaml").read_text()
    text = text.replace("num_boost_round: 400", "num_boost_round: 40")
    text = text.replace("early_stopping_rounds: 30", "early_stopping_rounds: 5")
    (configs / "train.yaml").write_text(text)
    return str(configs)


def test_a_young_log_trains_on_the_cutoffs_that_fit_and_says_so(
    young: Settings, quick_configs: str
) -> None:
    result = train_job.run(young, AS_OF, actors=2, config_dir=quick_configs, show_progress=False)
    meta = ModelRegistry(young.data).meta(result.version)
    configured = cutoffs_for(to_epoch_ms(AS_OF), load_train_config(quick_configs))
    # 45 days: only the newest cutoff (15 days after the first event) has 14 days before it
    assert meta["cutoffs_ms"] == configured[:1]
    history = meta["history"]
    assert history["cutoffs_dropped"] == [cutoff_iso(c) for c in configured[1:]]
    assert 44 < history["days"] <= 45 and history["min_days_before_cutoff"] == MIN_HISTORY_DAYS
    assert history["days_for_all_cutoffs"] == 30 + 3 * 30 + MIN_HISTORY_DAYS
    assert any(n.startswith("short history: trained on 1 of the 4 cutoffs") for n in result.notes)
    # the BG/NBD features reached the models (finite where defined, never inf)
    assert "bgnbd_expected" in meta["features"]
    assert meta["models"]["churn"]["rounds"] >= 1


def _inf_shards(tmp: Path) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    files: dict[str, list[str]] = {"train": [], "validation": []}
    for split, paths in files.items():
        for i in range(2):
            x = rng.normal(size=200).astype(np.float32)
            x[3] = np.inf
            y = (rng.random(200) < 0.5).astype(np.int8)
            path = tmp / f"{split}-{i}.parquet"
            pq.write_table(pa.table({"x": x, "label": y}), path)
            paths.append(str(path))
    return files["train"], files["validation"]


def _cpus_free(ray: Any, want: float, within_s: float) -> float:
    deadline = time.monotonic() + within_s
    free = 0.0
    while time.monotonic() < deadline:
        free = float(ray.available_resources().get("CPU", 0.0))
        if free >= want:
            break
        time.sleep(0.5)
    return free


def test_a_failed_distributed_fit_frees_its_cpus_and_the_next_job_runs(
    young: Settings, ray_local: Any, tmp_path: Path
) -> None:
    ray = ray_local
    total = float(ray.cluster_resources()["CPU"])
    train, valid = _inf_shards(tmp_path)
    with pytest.raises(Exception, match=r"(?i)inf|actor died"):  # xgboost refuses inf input
        xgb_distributed.train_distributed(
            train, valid, ["x"], "label", "binary:logistic", {"max_depth": 2}, num_actors=2,
            num_boost_round=5, early_stopping_rounds=0,
        )  # fmt: skip
    # xgboost-ray alone leaves both actors and its placement group alive here (CPU 0 of 2)
    assert _cpus_free(ray, total, within_s=30) == total
    from ray.util import placement_group_table

    assert not [g for g in placement_group_table().values() if g["state"] != "REMOVED"]

    # a recompute in the same Ray completes (it hung on the leaked CPUs before)
    done: dict[str, Any] = {}

    def recompute() -> None:
        done["result"] = RecomputeJob(young, AS_OF, actors=2, publish=False).run()

    worker = threading.Thread(target=recompute, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "recompute still waiting after 120 s"
    assert done["result"].version


def test_history_too_short_for_any_cutoff_exits_2_before_any_work(young: Settings) -> None:
    from typer.testing import CliRunner

    from jobs import cli

    before = ModelRegistry(young.data).versions()
    # as of 2026-09-15 the 45-day log has 30 days: the newest cutoff needs 30 + 14
    args = ["train", "--data", young.data, "--as-of", "2026-09-15", "--actors", "2"]
    out = CliRunner().invoke(cli.app, args)
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert "history too short" in text and "horizon_days (30)" in text and "44 days" in text
    assert "Traceback" not in out.output
    assert ModelRegistry(young.data).versions() == before  # no failed version, no scratch
