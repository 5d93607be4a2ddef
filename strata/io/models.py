"""Versioned model registry: ``<data root>/models/<version>/`` on any pyarrow filesystem.

A version holds one XGBoost model per target in xgboost's UBJSON format (``churn.ubj``,
``repurchase.ubj``, ``spend.ubj``) and ``meta.json``: the feature list and types, objective and
parameters per model, the data hash, cutoffs, horizon, test metrics, baselines, the winner per
target, the champion per target (``model`` or the baseline that publishes instead), the BG/NBD
parameters scoring uses, status (``good`` / ``failed``) and the size and SHA-256 of every model
file. The meta
file is written last, atomically (:func:`strata.io.warehouse.commit_file`): it is the commit
marker, so a folder without one is an incomplete save and is never listed.
``models/_work/<version>/`` is scratch space of the training job (training example shards),
never a version.

Scoring (:meth:`LoadedModels.predict`) runs the same feature transform as training
(:func:`strata.training.model_features`) and refuses a features table that lacks a model
feature rather than guessing its values. Imports xgboost, never ray.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import xgboost as xgb

from strata.features import FEATURES_SCHEMA
from strata.io.warehouse import commit_file, resolve
from strata.training.targets import MODEL_NAMES, PREDICTION_COLUMNS

__all__ = [
    "META",
    "MODEL_NAMES",
    "PREDICTION_COLUMNS",
    "STATUSES",
    "WORK_DIR",
    "LoadedModels",
    "ModelError",
    "ModelRegistry",
    "new_version",
]

META = "meta.json"
WORK_DIR = "_work"
STATUSES: tuple[str, ...] = ("good", "failed")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelError(RuntimeError):
    """A model version is missing, incomplete, corrupt, or does not fit the input."""


def new_version(now: dt.datetime | None = None) -> str:
    """A fresh version name; names sort by creation time (``vYYYYmmddTHHMMSSffffffZ``)."""
    return (now or dt.datetime.now(dt.UTC)).strftime("v%Y%m%dT%H%M%S%fZ")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _model_file(name: str) -> str:
    return f"{name}.ubj"


@dataclass
class LoadedModels:
    """The three boosters of one version, ready to score features tables.

    Picklable (boosters pickle as their raw model), but cheap enough to rebuild in each Ray
    actor with ``ModelRegistry(data_root).load()``.

    Attributes:
        version: the model version.
        meta: its ``meta.json``.
        boosters: one booster per name in :data:`MODEL_NAMES`.
        nthread: threads per prediction call (1 inside actors: one CPU each).
    """

    version: str
    meta: dict[str, Any]
    boosters: dict[str, xgb.Booster] = field(repr=False)
    nthread: int = 1

    @property
    def features(self) -> list[str]:
        """Model features, in the column order the boosters expect."""
        return list(self.meta["features"])

    def check_features(self, columns: Sequence[str]) -> None:
        """Check, without data, that tables with these columns can be scored.

        Args:
            columns: column names of the features tables that will be passed to
                :meth:`predict` (e.g. ``strata.features.FEATURES_SCHEMA.names``).

        Raises:
            ModelError: a model feature cannot be derived from ``columns`` (names them).
        """
        known = set(FEATURES_SCHEMA.names)
        fields = [
            FEATURES_SCHEMA.field(c) if c in known else pa.field(c, pa.float64()) for c in columns
        ]
        self._model_table(pa.schema(fields).empty_table())
        _ = self.champions  # a champion that cannot score fails here, before any work

    def _model_table(self, features: pa.Table) -> pa.Table:
        from strata.training import model_features

        try:
            table = model_features(features)
        except (KeyError, ValueError) as exc:
            raise ModelError(
                f"model version {self.version}: cannot derive the model features ({exc}); "
                "feature mismatch: retrain or recompute the features"
            ) from exc
        missing = [name for name in self.features if name not in table.column_names]
        if missing:
            raise ModelError(
                f"model version {self.version}: the features table lacks model feature "
                f"column(s) {missing} (feature mismatch; retrain or recompute the features)"
            )
        return table

    def predict(self, features: pa.Table) -> dict[str, np.ndarray]:
        """Score a features table (one row per user, as the recompute computes it).

        Args:
            features: per-user features (``strata.features.compute_features`` output).

        Each target comes from its champion (:attr:`champions`): the booster (started from
        BG/NBD's margin when it was trained so), BG/NBD with the stored parameters, or the
        recency rule.

        Returns:
            ``churn_p`` and ``repurchase_p`` (probabilities) and ``predicted_spend`` (CNY in
            the horizon, never negative): float32 arrays aligned with the input rows.

        Raises:
            ModelError: the table lacks a feature the models were trained on (names it).
        """
        from strata.training import (
            BGNBD_FEATURES,
            add_bgnbd_features,
            bgnbd_margins,
            bgnbd_predictions,
            feature_matrix,
            recency_rule,
        )

        table = self._model_table(features)
        params = self.bgnbd_params
        horizon = int(self.meta.get("horizon_days", 30))
        repurchase = int(self.meta.get("repurchase_days", 7))
        if any(f in BGNBD_FEATURES for f in self.features):
            filled = add_bgnbd_features(features, params, horizon)
            for name in BGNBD_FEATURES:
                table = table.set_column(
                    table.schema.get_field_index(name), name, filled.column(name)
                )
        X = feature_matrix(table, self.features)
        margins = bgnbd_margins(features, params, horizon, repurchase)
        rule = recency_rule(features, horizon, repurchase)
        champions = self.champions
        out: dict[str, np.ndarray] = {}
        for name, column in PREDICTION_COLUMNS.items():
            if X.shape[0] == 0:
                out[column] = np.zeros(0, dtype=np.float32)
                continue
            method = champions[name]
            if method == "model":
                boosted = self.meta.get("models", {}).get(name, {}).get("base_margin") == "bgnbd"
                margin = margins[name].astype(np.float32) if boosted else None
                p = self.boosters[name].inplace_predict(X, base_margin=margin)
            elif method == "bgnbd":
                # users without a BTYD summary (no order) fall back on the recency rule
                p = bgnbd_predictions(features, params, horizon, repurchase)[name]
                p = np.where(np.isfinite(p), p, rule[name])
            else:
                p = rule[name]
            out[column] = np.asarray(p, dtype=np.float32)
        out["predicted_spend"] = np.clip(out["predicted_spend"], 0.0, None)
        return out

    @property
    def champions(self) -> dict[str, str]:
        """Which method publishes each target: ``model``, ``bgnbd`` or ``recency_rule``
        (meta.json ``champion``; a version without that block publishes its models)."""
        block = self.meta.get("champion", {})
        out: dict[str, str] = {}
        for name in MODEL_NAMES:
            method = str(block.get(name, {}).get("method", "model"))
            if method == "bgnbd" and self.bgnbd_params is None:
                raise ModelError(
                    f"model version {self.version}: champion of {name} is bgnbd but meta.json "
                    "holds no BG/NBD scoring parameters"
                )
            if method not in ("model", "bgnbd", "recency_rule"):
                raise ModelError(
                    f"model version {self.version}: unknown champion {method!r} for {name}"
                )
            out[name] = method
        return out

    @property
    def bgnbd_params(self) -> Any:
        """The BG/NBD parameters scoring uses (``bgnbd.scoring_params``: the fit on the train
        users at the newest training cutoff), or None."""
        from strata.training import BgnbdParams

        raw = self.meta.get("bgnbd", {}).get("scoring_params")
        return None if raw is None else BgnbdParams.model_validate(raw)


class ModelRegistry:
    """Reader and writer of the model versions under one data root.

    Args:
        data_root: local path or pyarrow filesystem URI of the data root.
    """

    def __init__(self, data_root: str) -> None:
        self.data_root = data_root
        self.fs, root = resolve(data_root)
        self.root = posixpath.join(root, "models")

    # ------------------------------------------------------------------ paths
    def path(self, version: str) -> str:
        """Folder of one version."""
        return posixpath.join(self.root, version)

    def work_dir(self, version: str) -> str:
        """Scratch folder of the training run that produces ``version``."""
        return posixpath.join(self.root, WORK_DIR, version)

    def delete_work(self, version: str) -> None:
        """Remove the scratch folder of ``version`` (nothing if there is none)."""
        path = self.work_dir(version)
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
        parent = posixpath.join(self.root, WORK_DIR)
        if self.fs.get_file_info(parent).type == pafs.FileType.Directory and not (
            self.fs.get_file_info(pafs.FileSelector(parent))
        ):
            self.fs.delete_dir(parent)

    # ------------------------------------------------------------------ writing
    def save(self, version: str, boosters: dict[str, xgb.Booster], meta: dict[str, Any]) -> str:
        """Write the models of ``version`` and then, last, its ``meta.json``.

        Args:
            version: version name (see :func:`new_version`).
            boosters: models by name; a ``good`` version needs all of :data:`MODEL_NAMES`
                (a ``failed`` one may have any, or none).
            meta: metadata; ``status`` defaults to ``good``, ``created_at`` to now. The
                registry adds ``version`` and ``files`` (name, bytes, SHA-256 per model).

        Returns:
            The version's folder.

        Raises:
            ModelError: bad version name or status, a good version without all models or
                without a feature list, or a version that already exists.
        """
        if not _VERSION_RE.match(version) or version == WORK_DIR:
            raise ModelError(f"invalid model version name {version!r}")
        status = meta.get("status", "good")
        if status not in STATUSES:
            raise ModelError(f"model version {version}: status {status!r} not in {STATUSES}")
        if status == "good":
            lacking = [n for n in MODEL_NAMES if n not in boosters]
            if lacking:
                raise ModelError(f"model version {version}: a good version lacks {lacking}")
            if not meta.get("features"):
                raise ModelError(f"model version {version}: meta has no feature list")
        folder = self.path(version)
        if self.fs.get_file_info(posixpath.join(folder, META)).type != pafs.FileType.NotFound:
            raise ModelError(f"model version {version} already exists at {folder}")
        self.fs.create_dir(folder, recursive=True)
        files: dict[str, dict[str, Any]] = {}
        for name in sorted(boosters):
            raw = bytes(boosters[name].save_raw("ubj"))
            file = _model_file(name)
            with self.fs.open_output_stream(posixpath.join(folder, file)) as f:
                f.write(raw)
            files[name] = {
                "file": file,
                "bytes": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
        full = {
            **meta,
            "version": version,
            "status": status,
            "created_at": meta.get("created_at") or dt.datetime.now(dt.UTC).isoformat(),
            "files": files,
        }
        data = json.dumps(full, indent=1, sort_keys=True, default=_json_default).encode("utf-8")
        commit_file(self.fs, posixpath.join(folder, META), data)  # the commit
        return folder

    def save_failed(
        self, version: str, meta: dict[str, Any], problem: str, timings: dict[str, float]
    ) -> None:
        """Record a crashed run as a ``failed`` version without models (for `strata models`),
        replacing whatever the run had written under ``version``."""
        self.delete(version)
        self.save(
            version, {}, {**meta, "status": "failed", "problems": [problem], "timings": timings}
        )

    def delete(self, version: str) -> None:
        """Remove a version folder (used to discard a half-written save)."""
        path = self.path(version)
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)

    # ------------------------------------------------------------------ reading
    def versions(self) -> list[str]:
        """Committed versions (those with ``meta.json``), oldest first."""
        if self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            return []
        out = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.root)):
            name = posixpath.basename(info.path)
            if info.type != pafs.FileType.Directory or name.startswith(("_", ".")):
                continue
            marker = self.fs.get_file_info(posixpath.join(info.path, META))
            if marker.type == pafs.FileType.File:
                out.append(name)
        return sorted(out)

    def meta(self, version: str) -> dict[str, Any]:
        """The ``meta.json`` of one version.

        Raises:
            ModelError: it is missing or not valid JSON (names the version and file).
        """
        path = posixpath.join(self.path(version), META)
        try:
            with self.fs.open_input_stream(path) as f:
                raw = f.read()
        except FileNotFoundError as exc:
            raise ModelError(f"model version {version}: {path} is missing") from exc
        try:
            meta = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"model version {version}: {path} is corrupt ({exc})") from exc
        if not isinstance(meta, dict):
            raise ModelError(f"model version {version}: {path} is not a JSON object")
        return meta

    def _complete(self, version: str, meta: dict[str, Any]) -> bool:
        """Every model file is there with the size and SHA-256 that meta.json records."""
        files = meta.get("files") or {}
        for name in MODEL_NAMES:
            entry = files.get(name)
            if not entry:
                return False
            path = posixpath.join(self.path(version), entry["file"])
            info = self.fs.get_file_info(path)
            if info.type != pafs.FileType.File or info.size != entry.get("bytes"):
                return False
            digest = entry.get("sha256")
            if digest is not None:
                with self.fs.open_input_stream(path) as f:
                    if hashlib.sha256(f.read()).hexdigest() != digest:
                        return False
        return True

    def latest_good(self) -> str | None:
        """The newest version with status ``good`` whose model files are all present and intact
        (sizes and checksums as recorded; a few MB read per version tried)."""
        for version in reversed(self.versions()):
            try:
                meta = self.meta(version)
            except ModelError:
                continue
            if meta.get("status") == "good" and self._complete(version, meta):
                return version
        return None

    def load(self, version: str | None = None, nthread: int = 1) -> LoadedModels:
        """Load the boosters of ``version`` (default: :meth:`latest_good`).

        Every file is checked against the size and SHA-256 recorded in ``meta.json``.

        Args:
            version: version to load; None loads the newest good one.
            nthread: prediction threads per call (keep 1 inside Ray actors).

        Raises:
            ModelError: no good version exists, or a file is missing or corrupt (the message
                names the version and the file), or the version is marked failed.
        """
        if version is None:
            version = self.latest_good()
            if version is None:
                raise ModelError(f"no good model version under {self.root}; run `strata train`")
        meta = self.meta(version)
        if meta.get("status") != "good":
            raise ModelError(
                f"model version {version} has status {meta.get('status')!r}, not 'good'"
            )
        files = meta.get("files") or {}
        boosters: dict[str, xgb.Booster] = {}
        for name in MODEL_NAMES:
            entry = files.get(name) or {"file": _model_file(name)}
            path = posixpath.join(self.path(version), entry["file"])
            try:
                with self.fs.open_input_stream(path) as f:
                    raw = f.read()
            except FileNotFoundError as exc:
                raise ModelError(f"model version {version}: model file {path} is missing") from exc
            digest = entry.get("sha256")
            if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
                raise ModelError(
                    f"model version {version}: model file {path} is corrupt "
                    f"(SHA-256 differs from meta.json)"
                )
            booster = xgb.Booster()
            try:
                booster.load_model(bytearray(raw))
            except xgb.core.XGBoostError as exc:
                raise ModelError(
                    f"model version {version}: model file {path} is corrupt ({exc})"
                ) from exc
            booster.set_param({"nthread": nthread})
            boosters[name] = booster
        return LoadedModels(version=version, meta=meta, boosters=boosters, nthread=nthread)

    # ------------------------------------------------------------------ scoring policy
    def status(self, version: str) -> str | None:
        """The status ``meta.json`` records for ``version`` (None when it is unreadable)."""
        try:
            status = self.meta(version).get("status")
        except ModelError:
            return None
        return str(status) if status is not None else None

    def choose_for_scoring(
        self,
        predictions: str,
        on_model_error: str,
        feature_columns: Sequence[str],
    ) -> ModelChoice:
        """Which version a recompute scores users with (``configs/recompute.yaml``).

        The newest version *marked* good is chosen: a damaged one fails loudly (or, with
        ``on_model_error: continue``, is skipped with a warning) rather than quietly giving way
        to an older model.

        Args:
            predictions: ``off`` (never), ``auto`` (when a good model exists), ``required``.
            on_model_error: ``fail`` or ``continue`` when the chosen model cannot be used.
            feature_columns: the feature columns the recompute computes.

        Raises:
            ModelError: predictions are required and there is no good model, or the model is
                corrupt / does not fit the features and ``on_model_error`` is ``fail``.
        """
        if predictions == "off":
            return ModelChoice(None, "off (configs/recompute.yaml)")
        version = next((v for v in reversed(self.versions()) if self.status(v) == "good"), None)
        if version is None:
            if predictions == "required":
                raise ModelError(
                    f"predictions are required but {self.root} holds no good model; "
                    "run `strata train` first"
                )
            return ModelChoice(None, "no trained model yet")
        try:
            self.load(version).check_features(feature_columns)
        except ModelError as exc:
            if on_model_error == "fail":
                raise ModelError(f"cannot score with model {version}: {exc}") from exc
            return ModelChoice(
                None, f"model {version} not used: {exc}", f"continuing without predictions: {exc}"
            )
        return ModelChoice(version, "used")

    def prediction_sources(self, version: str | None) -> dict[str, str] | None:
        """Per prediction column, what publishes it (``model``, ``bgnbd``, ``recency_rule``)."""
        if version is None:
            return None
        block = self.meta(version).get("champion") or {}
        return {
            col: str(block.get(name, {}).get("method", "model"))
            for name, col in PREDICTION_COLUMNS.items()
        }


@dataclass(frozen=True)
class ModelChoice:
    """The model a recompute scores with: ``version`` (None: no predictions), the note for
    the snapshot manifest, and a warning to show when a model was skipped."""

    version: str | None
    note: str
    warning: str | None = None
