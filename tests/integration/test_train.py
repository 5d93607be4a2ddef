"""`strata train` end to end on local Ray (2 CPUs): examples, xgboost-ray, registry, baselines."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import typer
from pydantic import SecretStr
from typer.testing import CliRunner

from actors.example_shard import bucket_examples
from jobs import generate
from jobs import ingest as ingest_job
from jobs import train as train_job
from strata.config import CONFIG_DIR, ConfigError
from strata.features import (
    DICTIONARY_COLUMNS,
    FEATURE_EVENT_COLUMNS,
    FEATURE_USER_COLUMNS,
    compute_features,
    load_feature_config,
)
from strata.ingest import ColumnMapping
from strata.io.models import MODEL_NAMES, ModelRegistry
from strata.io.warehouse import Warehouse
from strata.schema import CATEGORIES
from strata.settings import Settings
from strata.timeutil import parse_as_of
from strata.training import (
    IMPORTANCE_TOP,
    PARITY_MAX_AUC_GAP,
    SPLITS,
    cutoffs_for,
    load_train_config,
)
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.integration

END = dt.date(2026, 10, 1)
AS_OF = parse_as_of("2026-10-01")
HORIZON = 30


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, ray_local: Any) -> Settings:
    """A small generated warehouse: 3000 users x 120 days, 16 buckets."""
    root = str(tmp_path_factory.mktemp("train") / "data")
    settings = Settings(data=root, pseudonym_key=SecretStr(TEST_KEY), n_buckets=16)
    generate.run(settings, users=3000, days=120, seed=11, end=END, show_progress=False)
    return settings


@pytest.fixture(scope="module")
def trained(generated: Settings) -> train_job.TrainResult:
    return train_job.run(generated, AS_OF, HORIZON, actors=2, show_progress=False)


def test_registry_holds_a_good_version_with_three_models_and_metrics(
    generated: Settings, trained: train_job.TrainResult
) -> None:
    registry = ModelRegistry(generated.data)
    assert trained.status == "good", trained.problems
    assert registry.latest_good() == trained.version
    meta = registry.meta(trained.version)
    assert set(meta["files"]) == set(MODEL_NAMES)
    for name in MODEL_NAMES:
        assert (Path(trained.path) / f"{name}.ubj").is_file()
        assert meta["models"][name]["rounds"] >= 1
        assert meta["models"][name]["num_actors"] == 2
    assert meta["horizon_days"] == HORIZON and meta["as_of"] == AS_OF.isoformat()
    # 120 days of history: the oldest cutoff (on the first event) has none before it
    configured = cutoffs_for(int(AS_OF.timestamp() * 1000), load_train_config(), HORIZON)
    assert meta["cutoffs_ms"] == configured[:3]
    assert len(meta["history"]["cutoffs_dropped"]) == 1
    assert meta["features"] == trained.features and meta["dropped_features"] == []
    assert meta["data"]["sha256"] and meta["data"]["examples_sha256"]
    assert all(meta["data"]["examples"][s] > 0 for s in SPLITS)
    for name in ("churn", "repurchase"):
        assert {"auc", "pr_auc", "log_loss", "calibration"} <= set(meta["metrics"][name])
        assert {"single_node", "recency_rule", "bgnbd"} <= set(meta["baselines"][name])
    assert {"mae", "rmse", "r2"} <= set(meta["metrics"]["spend"])
    assert set(meta["winner"]) == set(MODEL_NAMES)
    assert 0 < len(meta["importance_gain"]["churn"]) <= IMPORTANCE_TOP
    # scratch shards are gone after a good run
    assert not Path(registry.work_dir(trained.version)).exists()


def test_churn_model_has_signal_and_matches_single_node(trained: train_job.TrainResult) -> None:
    churn = trained.metrics["churn"]
    auc = churn["distributed"]["auc"]
    assert auc > 0.6
    # on generated data (behaviour, coupons, categories) the model beats both baselines
    assert auc > churn["recency_rule"]["auc"], churn["recency_rule"]["auc"]
    assert auc > churn["bgnbd"]["auc"], churn["bgnbd"]["auc"]
    assert trained.champions["churn"]["method"] == "model"
    # 0.005 is the production check (recorded); this small sample gets a looser bound
    for name in ("churn", "repurchase"):
        parity = trained.parity[name]
        assert parity["auc_gap"] < 0.01
        assert parity["max_auc_gap"] == PARITY_MAX_AUC_GAP
        assert parity["ok"] == (parity["auc_gap"] <= 0.005)
    assert trained.metrics["spend"]["distributed"]["r2"] > 0


def test_loaded_models_score_a_recompute_features_table(
    generated: Settings, trained: train_job.TrainResult
) -> None:
    """The recompute's path: features of one bucket as of now -> the three predictions."""
    warehouse = Warehouse(generated.data)
    bucket = warehouse.buckets()[0]
    events = warehouse.read_bucket(
        "events", bucket, list(FEATURE_EVENT_COLUMNS), read_dictionary=list(DICTIONARY_COLUMNS)
    )
    users = warehouse.read_bucket("users", bucket, list(FEATURE_USER_COLUMNS))
    feats = compute_features(events, users, int(AS_OF.timestamp() * 1000), load_feature_config())
    loaded = ModelRegistry(generated.data).load(nthread=1)
    out = loaded.predict(feats)
    for column in ("churn_p", "repurchase_p"):
        assert out[column].shape == (feats.num_rows,)
        assert ((out[column] >= 0) & (out[column] <= 1)).all()
    assert (out["predicted_spend"] >= 0).all()
    # users who ordered in the last week churn less than users silent for 60+ days
    recency = feats.column("recency_days").to_numpy(zero_copy_only=False).astype(float)
    recent, silent = recency <= 7, recency >= 60
    assert out["churn_p"][recent].mean() < out["churn_p"][silent].mean()


def test_strata_models_lists_the_version(
    generated: Settings, trained: train_job.TrainResult
) -> None:
    app = typer.Typer()
    app.command()(train_job.models)
    result = CliRunner().invoke(app, ["--data", generated.data], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert trained.version in result.output
    assert "good (latest)" in result.output


def test_examples_are_deterministic_per_bucket(generated: Settings, tmp_path: Path) -> None:
    """The same bucket written twice (e.g. a retried task) gives byte-identical shards."""
    cfg = load_train_config()
    fc = load_feature_config()
    cutoffs = cutoffs_for(int(AS_OF.timestamp() * 1000), cfg, HORIZON)
    bucket = Warehouse(generated.data).buckets()[3]
    digests = []
    for run in ("a", "b"):
        out = bucket_examples(
            generated.data, str(tmp_path / run), bucket, cutoffs, HORIZON * 86_400_000, fc, cfg
        )
        assert sum(out["rows"].values()) > 0
        digests.append(
            {
                split: hashlib.sha256(Path(path).read_bytes()).hexdigest()
                for split, path in out["files"].items()
            }
        )
        assert all(Path(p).name == f"part-{bucket:05d}.parquet" for p in out["files"].values())
    assert digests[0] == digests[1]


def test_imported_orders_only_data_trains_without_coupon_and_category_features(
    generated: Settings, tmp_path: Path
) -> None:
    """An import with only user, time and amount: coupon/category features are dropped."""
    table = Warehouse(generated.data).read_table(
        "events", ["user_id", "ts", "event_type", "amount_cny"]
    )
    table = table.filter(pc.equal(table.column("event_type"), "order"))
    source = tmp_path / "orders.parquet"
    pq.write_table(
        pa.table(
            {
                "member": pc.cast(table.column("user_id"), pa.string()),
                "paid_at": pc.cast(table.column("ts"), pa.int64()),  # epoch ms
                "total": table.column("amount_cny"),
            }
        ),
        source,
    )
    settings = Settings(
        data=str(tmp_path / "imported"), pseudonym_key=SecretStr(TEST_KEY), n_buckets=16
    )
    mapping = ColumnMapping(
        user_col="member", time_col="paid_at", amount_col="total", time_format="epoch_ms"
    )
    ingest_job.run(
        settings,
        [str(source)],
        mapping,
        now_ms=int(AS_OF.timestamp() * 1000),
        show_progress=False,
    )
    result = train_job.run(settings, AS_OF, HORIZON, actors=2, show_progress=False)
    assert result.status == "good", result.problems
    dropped = set(result.dropped_features)
    expected = {"coupon_order_share", "coupon_only_share", *(f"share_{c}" for c in CATEGORIES)}
    assert expected <= dropped
    assert not dropped & set(result.features)
    assert {"recency_days", "frequency_90d", "monetary_90d"} <= set(result.features)
    meta = ModelRegistry(settings.data).meta(result.version)
    assert meta["dropped_features"] == result.dropped_features
    assert result.metrics["churn"]["distributed"]["auc"] > 0.6


def test_invalid_train_config_fails_before_any_work(generated: Settings, tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    text = (configs / "train.yaml").read_text().replace("max_depth: 4", "max_detph: 4")
    (configs / "train.yaml").write_text(text)
    before = ModelRegistry(generated.data).versions()
    with pytest.raises(ConfigError, match="max_detph"):
        train_job.run(generated, AS_OF, HORIZON, actors=2, config_dir=str(configs))
    assert ModelRegistry(generated.data).versions() == before


def test_a_crash_records_a_failed_version_and_keeps_the_scratch_shards(
    generated: Settings, trained: train_job.TrainResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    import actors.xgb_distributed as xgb_distributed

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tracker went away")

    monkeypatch.setattr(xgb_distributed, "train_distributed", boom)
    registry = ModelRegistry(generated.data)
    with pytest.raises(train_job.TrainError, match="distributed training: tracker went away"):
        train_job.run(generated, AS_OF, HORIZON, actors=2, show_progress=False)
    failed = registry.versions()[-1]
    meta = registry.meta(failed)
    assert meta["status"] == "failed" and "tracker went away" in meta["problems"][0]
    assert meta["files"] == {}
    assert registry.latest_good() == trained.version  # the good one stays the one served
    assert list(Path(registry.work_dir(failed), "train").glob("part-*.parquet"))
    registry.delete_work(failed)
