"""Model registry: save/load round trip, latest good version, corrupt files, feature mismatch.

No Ray: tiny boosters trained with plain xgboost on features computed from a hand-made bucket.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb

from strata.features import FEATURES_SCHEMA, FeatureConfig, compute_features
from strata.io.models import MODEL_NAMES, ModelError, ModelRegistry, new_version
from strata.schema import TIMESTAMP
from strata.timeutil import DAY_MS
from strata.training import feature_matrix, model_features

AS_OF = 1_790_000_000_000


@pytest.fixture(scope="module")
def features() -> pa.Table:
    """compute_features of 300 users with 1-8 orders each over 120 days."""
    rng = np.random.default_rng(3)
    users = np.arange(1, 301, dtype=np.int64)
    per_user = rng.integers(1, 9, len(users))
    uid = np.repeat(users, per_user)
    ts = AS_OF - rng.integers(1, 120 * DAY_MS, len(uid))
    order = np.lexsort((ts, uid))
    n = len(uid)
    events = pa.table(
        {
            "user_id": pa.array(uid[order]),
            "ts": pa.array(ts[order], pa.int64()).cast(TIMESTAMP),
            "event_type": pa.array(["order"] * n),
            "order_id": pa.array([f"o{i}" for i in range(n)]),
            "amount_cny": pa.array(np.round(rng.gamma(2.0, 40.0, n), 2)),
        }
    )
    return compute_features(events, None, AS_OF, FeatureConfig())


@pytest.fixture(scope="module")
def trained(features: pa.Table) -> tuple[dict[str, xgb.Booster], list[str]]:
    """Three tiny boosters over the non-null model features (labels are random)."""
    mf = model_features(features)
    names = [c for c in mf.column_names[1:] if mf.column(c).null_count < mf.num_rows]
    X = feature_matrix(mf, names)
    rng = np.random.default_rng(5)
    y_bin = (rng.random(len(X)) < 0.4).astype(np.float32)
    # spend with negative values: a squared-error model may predict below 0 (clipped on load)
    y_spend = (X[:, names.index("recency_days")] * -3.0 + rng.normal(0, 5, len(X))).astype(
        np.float32
    )
    boosters = {}
    for name, y, objective in (
        ("churn", y_bin, "binary:logistic"),
        ("repurchase", 1 - y_bin, "binary:logistic"),
        ("spend", y_spend, "reg:squarederror"),
    ):
        d = xgb.DMatrix(X, label=y, feature_names=names)
        boosters[name] = xgb.train({"objective": objective, "max_depth": 3, "seed": 0}, d, 8)
    return boosters, names


def _meta(names: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "features": names,
        "feature_types": dict.fromkeys(names, "float32"),
        "horizon_days": 30,
        "metrics": {"churn": {"auc": 0.7}},
        **extra,
    }


def test_save_load_roundtrip_and_predict(
    tmp_path: Path, features: pa.Table, trained: tuple[dict[str, xgb.Booster], list[str]]
) -> None:
    boosters, names = trained
    registry = ModelRegistry(str(tmp_path))
    version = new_version()
    path = registry.save(version, boosters, _meta(names))
    for name in MODEL_NAMES:
        assert (Path(path) / f"{name}.ubj").is_file()
    meta = json.loads((Path(path) / "meta.json").read_text())
    assert meta["status"] == "good" and meta["version"] == version and meta["created_at"]
    assert set(meta["files"]) == set(MODEL_NAMES)
    assert registry.versions() == [version] and registry.latest_good() == version

    loaded = registry.load()
    assert loaded.version == version and loaded.features == names
    out = loaded.predict(features)
    assert set(out) == {"churn_p", "repurchase_p", "predicted_spend"}
    X = feature_matrix(model_features(features), names)
    for name, column in (("churn", "churn_p"), ("repurchase", "repurchase_p")):
        assert out[column].shape == (features.num_rows,)
        np.testing.assert_allclose(out[column], boosters[name].inplace_predict(X), rtol=1e-6)
        assert ((out[column] >= 0) & (out[column] <= 1)).all()
    raw_spend = boosters["spend"].inplace_predict(X)
    assert (raw_spend < 0).any()  # the fixture really exercises the clip
    np.testing.assert_allclose(out["predicted_spend"], np.clip(raw_spend, 0, None), rtol=1e-6)

    # picklable (a Ray actor may receive it), same predictions after the trip
    again = pickle.loads(pickle.dumps(loaded)).predict(features)
    for column, values in out.items():
        np.testing.assert_array_equal(again[column], values)
    # column order of the input does not matter, an empty table gives empty arrays
    shuffled = features.select(list(reversed(features.column_names)))
    np.testing.assert_array_equal(loaded.predict(shuffled)["churn_p"], out["churn_p"])
    assert loaded.predict(features.slice(0, 0))["churn_p"].shape == (0,)


def test_latest_good_skips_failed_and_incomplete_versions(
    tmp_path: Path, trained: tuple[dict[str, xgb.Booster], list[str]]
) -> None:
    boosters, names = trained
    registry = ModelRegistry(str(tmp_path))
    assert registry.versions() == [] and registry.latest_good() is None
    registry.save("v001", boosters, _meta(names))
    registry.save("v002", boosters, _meta(names))
    registry.save("v003", boosters, _meta(names, status="failed"))
    registry.save("v004", {}, {"status": "failed", "problems": ["examples: boom"]})
    registry.save("v005", boosters, _meta(names))
    (Path(registry.path("v005")) / "spend.ubj").unlink()  # incomplete: a model file is gone
    # a save that died before its meta.json: not a version at all
    half = Path(registry.path("v006"))
    half.mkdir(parents=True)
    (half / "churn.ubj").write_bytes(bytes(boosters["churn"].save_raw("ubj")))
    Path(registry.work_dir("v007"), "train").mkdir(parents=True)  # scratch, never listed

    assert registry.versions() == ["v001", "v002", "v003", "v004", "v005"]
    assert registry.latest_good() == "v002"
    assert registry.load().version == "v002"
    with pytest.raises(ModelError, match=r"v003.*failed"):
        registry.load("v003")
    with pytest.raises(ModelError, match="already exists"):
        registry.save("v002", boosters, _meta(names))
    with pytest.raises(ModelError, match="lacks"):
        registry.save("v008", {"churn": boosters["churn"]}, _meta(names))
    with pytest.raises(ModelError, match="status"):
        registry.save("v009", boosters, _meta(names, status="meh"))


def test_missing_or_corrupt_files_raise_model_error_naming_them(
    tmp_path: Path, trained: tuple[dict[str, xgb.Booster], list[str]]
) -> None:
    boosters, names = trained
    registry = ModelRegistry(str(tmp_path))
    with pytest.raises(ModelError, match="no good model version"):
        registry.load()
    for version in ("v1", "v2", "v3", "v4"):
        registry.save(version, boosters, _meta(names))

    (Path(registry.path("v1")) / "repurchase.ubj").unlink()
    with pytest.raises(ModelError, match=r"v1: model file .*repurchase\.ubj is missing"):
        registry.load("v1")

    churn = Path(registry.path("v2")) / "churn.ubj"
    raw = bytearray(churn.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte: the checksum catches it
    churn.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match=r"v2: model file .*churn\.ubj is corrupt"):
        registry.load("v2")

    # garbage that also matches the recorded checksum: xgboost itself refuses it
    spend = Path(registry.path("v3")) / "spend.ubj"
    spend.write_bytes(b"not a model")
    meta_path = Path(registry.path("v3")) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["files"]["spend"].pop("sha256")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"v3: model file .*spend\.ubj is corrupt"):
        registry.load("v3")

    (Path(registry.path("v4")) / "meta.json").write_text("{ truncated")
    with pytest.raises(ModelError, match=r"v4: .*meta\.json is corrupt"):
        registry.load("v4")
    assert registry.latest_good() is None  # every version is broken now


def test_missing_feature_column_raises_model_error_naming_it(
    tmp_path: Path, features: pa.Table, trained: tuple[dict[str, xgb.Booster], list[str]]
) -> None:
    boosters, names = trained
    registry = ModelRegistry(str(tmp_path))
    registry.save("v1", boosters, _meta(names))
    loaded = registry.load("v1")
    loaded.check_features(FEATURES_SCHEMA.names)  # the recompute's columns fit

    with pytest.raises(ModelError, match="recency_days"):
        loaded.predict(features.drop_columns(["recency_days"]))
    with pytest.raises(ModelError, match="recency_days"):
        loaded.check_features([c for c in FEATURES_SCHEMA.names if c != "recency_days"])

    # a model trained on a feature the scoring transform no longer produces
    registry.save("v2", boosters, _meta([*names[:-1], "feature_from_the_future"]))
    with pytest.raises(ModelError, match="feature_from_the_future"):
        registry.load("v2").predict(features)


def test_champions_publish_baseline_scores(
    tmp_path: Path, features: pa.Table, trained: tuple[dict[str, xgb.Booster], list[str]]
) -> None:
    """A version whose churn champion is BG/NBD and spend champion the recency rule scores
    those targets with the baselines; repurchase still comes from its booster."""
    from strata.training import BgnbdParams, p_no_purchase, recency_rule

    boosters, names = trained
    params = BgnbdParams(r=0.24, alpha=4.4, a=0.79, b=2.4)
    champion = {
        "churn": {"method": "bgnbd"},
        "repurchase": {"method": "model"},
        "spend": {"method": "recency_rule"},
    }
    meta = _meta(
        names,
        repurchase_days=7,
        champion=champion,
        bgnbd={"scoring_params": params.model_dump()},
    )
    registry = ModelRegistry(str(tmp_path))
    version = new_version()
    registry.save(version, boosters, meta)
    loaded = registry.load(version)
    assert loaded.champions == {"churn": "bgnbd", "repurchase": "model", "spend": "recency_rule"}
    out = loaded.predict(features)
    x, tx, t = (features.column(c).to_numpy(zero_copy_only=False).astype(float)
                for c in ("btyd_frequency", "btyd_recency", "btyd_t"))  # fmt: skip
    np.testing.assert_allclose(out["churn_p"], p_no_purchase(params, 30, x, tx, t), rtol=1e-6)
    np.testing.assert_allclose(
        out["predicted_spend"], recency_rule(features, 30, 7)["spend"], rtol=1e-6
    )
    X = feature_matrix(model_features(features), names)
    np.testing.assert_allclose(out["repurchase_p"], boosters["repurchase"].inplace_predict(X))

    # a BG/NBD champion without stored parameters cannot score: refused before any work
    broken = new_version()
    registry.save(broken, boosters, _meta(names, champion=champion))
    with pytest.raises(ModelError, match="no BG/NBD scoring parameters"):
        registry.load(broken).check_features(FEATURES_SCHEMA.names)
