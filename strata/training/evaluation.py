"""The train job's evaluation and ``meta.json`` blocks, given the examples and predictions.

Pure (numpy, pyarrow, pydantic): the models are trained elsewhere (:mod:`actors.xgb_distributed`)
and enter here as prediction arrays, or as a ``fit_predict`` callable for the time holdout.

* :class:`Split`: one split's rows with their feature matrix, labels and margin columns;
  :func:`margin_column`: the base-margin column of a model (BG/NBD boosting on or off).
* :func:`evaluate_test`: every method (models, recency rule, BG/NBD) on the test split, and the
  newest cutoff alone; :func:`time_holdout_check`: the classifiers on a cutoff held out by time.
* :func:`conclude`: parity, winners, champions and notes (:class:`Outcome`);
  :func:`start_meta`, :func:`bgnbd_block`, :func:`models_block` and :func:`final_meta`: the
  ``meta.json`` blocks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from strata.training.baselines import (
    bgnbd_meta,
    bgnbd_predictions_by_cutoff,
    params_by_cutoff,
    recency_rule,
)
from strata.training.bgnbd import BgnbdParams
from strata.training.examples import (
    KEY_COLUMNS,
    cutoff_iso,
    data_hash,
    feature_matrix,
    holdout_by_time,
)
from strata.training.metrics import (
    best_method,
    choose_champion,
    evaluate,
    fill_missing_scores,
    parity,
    without_calibration,
)
from strata.training.params import TrainConfig, xgb_params
from strata.training.targets import LABEL_COLUMNS, MARGIN_COLUMNS, TARGETS

__all__ = [
    "FitPredict",
    "Outcome",
    "Split",
    "bgnbd_block",
    "conclude",
    "evaluate_test",
    "examples_digest",
    "final_meta",
    "margin_column",
    "models_block",
    "start_meta",
    "time_holdout_check",
]


def _f32(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=np.float32)


@dataclass(frozen=True)
class Split:
    """One split's example rows and their float32 feature matrix (NaN = missing)."""

    table: pa.Table
    X: np.ndarray

    @classmethod
    def of(cls, table: pa.Table, features: Sequence[str]) -> Split:
        """The rows with the feature matrix of ``features`` (model order)."""
        return cls(table, feature_matrix(table, features))

    def label(self, column: str) -> np.ndarray:
        """A label column as float32."""
        return _f32(self.table, column)

    def margin(self, column: str | None) -> np.ndarray | None:
        """A base-margin column as float32 (None: no base margin)."""
        return None if column is None else _f32(self.table, column)


#: Trains model ``name`` on (train, validation) and returns its predictions on the third split.
FitPredict = Callable[[str, Split, Split, Split], np.ndarray]


def margin_column(meta: Mapping[str, Any], name: str) -> str | None:
    """The base-margin column of model ``name`` (None: not boosted from BG/NBD)."""
    return MARGIN_COLUMNS[name] if meta.get("bgnbd", {}).get("boost_from") else None


def _digest(model: BaseModel) -> str:
    return hashlib.sha256(model.model_dump_json().encode()).hexdigest()


def start_meta(
    as_of_iso: str,
    as_of_ms: int,
    horizon: int,
    cfg: TrainConfig,
    cutoffs: list[int],
    manifest: Mapping[str, Any],
    n_buckets: int,
    feature_config: BaseModel,
    history: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's ``meta.json`` before any work: as-of, cutoffs, data and config digests, and
    ``history`` (the cutoff plan's :meth:`~strata.training.history.CutoffPlan.meta`) if given.

    ``data.sha256`` digests the warehouse's committed content (files, rows, bucket count).
    """
    payload = {"n_buckets": manifest["n_buckets"], "tables": manifest["tables"]}
    meta: dict[str, Any] = {
        "as_of": as_of_iso,
        "as_of_ms": as_of_ms,
        "horizon_days": horizon,
        "repurchase_days": cfg.repurchase_days,
        "cutoffs_ms": cutoffs,
        "cutoffs": [cutoff_iso(c) for c in cutoffs],
        "data": {
            "sha256": hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest(),
            "warehouse_updated_at": manifest.get("updated_at"),
            "buckets": n_buckets,
        },
        "config": {
            "train": cfg.model_dump(mode="json"),
            "train_sha256": _digest(cfg),
            "features_sha256": _digest(feature_config),
        },
    }
    if history is not None:
        meta["history"] = dict(history)
    return meta


def bgnbd_block(
    params: dict[int, BgnbdParams | None],
    cutoffs_ms: list[int],
    boost_from_bgnbd: bool,
    notes: list[str],
) -> tuple[dict[str, Any], list[str]]:
    """``meta.json``'s ``bgnbd`` block (:func:`bgnbd_meta`) with ``boost_from``, and the notes.

    Boosting needs the newest cutoff's fit (the one scoring uses); rows of an older cutoff
    without a fit (too few customers then) start from margin 0. Wanted but impossible: a note.
    """
    block = bgnbd_meta(params, cutoffs_ms)
    boost = boost_from_bgnbd and params.get(cutoffs_ms[0]) is not None
    notes = list(notes)
    if boost_from_bgnbd and not boost:
        notes.append("models not boosted from BG/NBD: the newest cutoff has no fit")
    block["boost_from"] = boost
    return block, notes


def examples_digest(tables: Sequence[pa.Table]) -> str:
    """:func:`data_hash` of the examples' keys and labels over all splits (in order)."""
    return data_hash(pa.concat_tables([t.select([*KEY_COLUMNS, *LABEL_COLUMNS]) for t in tables]))


def evaluate_test(
    test: pa.Table,
    model_predictions: Mapping[str, Mapping[str, np.ndarray]],
    meta: Mapping[str, Any],
    horizon: int,
    repurchase_days: int,
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, dict[str, Any]]], list[str]]:
    """Test metrics of every method per target, beside the models' predictions.

    The baselines: the recency rule, and BG/NBD fitted on the train users' history at each test
    row's cutoff (the same fit whose outputs are model features; a cutoff without a fit has
    none). Non-finite predictions make the metrics raise.

    Returns:
        metrics per target and method; the same on the newest cutoff's rows alone (without
        calibration; empty with one cutoff, comparable to ``cutoffs: 1``); notes.
    """
    rule = recency_rule(test, horizon, repurchase_days)
    notes: list[str] = []
    params = params_by_cutoff(meta)
    bgnbd: dict[str, np.ndarray] = {}
    if any(p is not None for p in params.values()):
        bgnbd = bgnbd_predictions_by_cutoff(test, params, horizon, repurchase_days)
    else:
        notes.append("BG/NBD baseline skipped: no cutoff could be fitted")
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    newest: dict[str, dict[str, dict[str, Any]]] = {}
    cutoff_ms = np.asarray(test.column("cutoff_ms").to_numpy(zero_copy_only=False))
    at_newest = cutoff_ms == meta["cutoffs_ms"][0]
    for name, target in TARGETS.items():
        y = _f32(test, target.label)
        preds = dict(model_predictions[name])
        if name in rule:
            preds["recency_rule"] = rule[name]
        if name in bgnbd:
            preds["bgnbd"] = fill_missing_scores(bgnbd[name])
        metrics[name] = evaluate(target, y, preds)
        if len(meta["cutoffs_ms"]) > 1:
            newest[name] = without_calibration(
                evaluate(target, y[at_newest], {m: p[at_newest] for m, p in preds.items()})
            )
    return metrics, newest, notes


def time_holdout_check(
    train: pa.Table,
    valid: pa.Table,
    test: pa.Table,
    features: Sequence[str],
    cfg: TrainConfig,
    horizon: int,
    params: dict[int, BgnbdParams | None],
    fit_predict: FitPredict,
) -> dict[str, dict[str, Any]]:
    """The classifiers checked on a cutoff held out by time as well as by user.

    A single-node model (``fit_predict``, same parameters) trained only on the cutoffs whose
    label windows end by the newest cutoff (no label it sees lies in the newest window), scored
    on the test users at the newest cutoff against the recency rule and BG/NBD there. Empty
    when no older cutoff qualifies (e.g. ``cutoffs: 1``).

    Returns:
        per classifier: ``cutoff``, ``train_cutoffs``, ``rows`` and ``metrics`` per method.
    """
    rows = holdout_by_time(train, valid, test, list(params), horizon)
    if rows is None:
        return {}
    newest, older, tr, va, te = rows
    s_tr, s_va, s_te = (Split.of(t, features) for t in (tr, va, te))
    rule = recency_rule(te, horizon, cfg.repurchase_days)
    bg = bgnbd_predictions_by_cutoff(te, params, horizon, cfg.repurchase_days)
    out: dict[str, dict[str, Any]] = {}
    for name, target in TARGETS.items():
        if target.kind != "classification":
            continue
        preds = {"distributed": fit_predict(name, s_tr, s_va, s_te), "recency_rule": rule[name]}
        if np.isfinite(bg[name]).any():
            preds["bgnbd"] = fill_missing_scores(bg[name])
        metrics = evaluate(target, s_te.label(target.label), preds)
        out[name] = {
            "cutoff": cutoff_iso(newest),
            "train_cutoffs": [cutoff_iso(c) for c in older],
            "rows": {"train": tr.num_rows, "validation": va.num_rows, "test": te.num_rows},
            "metrics": without_calibration(metrics),
        }
    return out


@dataclass
class Outcome:
    """What the evaluation decided: checks, winners, champions and the run's notes."""

    parity: dict[str, dict[str, Any]]
    problems: list[str]
    winners: dict[str, str]
    champions: dict[str, dict[str, Any]]
    notes: list[str]


def conclude(
    metrics: Mapping[str, dict[str, dict[str, Any]]],
    holdout: Mapping[str, Mapping[str, Any]],
    time_holdout: bool,
    notes: list[str],
) -> Outcome:
    """Parity (problems make the version ``failed``), the winner and champion per target.

    ``notes`` (the run's so far) gain one on a missing time holdout (``time_holdout`` on but
    no older cutoff qualified) and one per target whose published scores come from a baseline.
    """
    checks, problems = parity(metrics)
    winners = {name: best_method(t, metrics[name]) for name, t in TARGETS.items()}
    notes = list(notes)
    if time_holdout and not holdout:
        notes.append(
            "no time holdout check: no older cutoff's label window ends by the newest cutoff "
            "(it needs cutoffs x cutoff_step_days > horizon)"
        )
    champions = {
        name: choose_champion(
            metrics[name], t.kind == "classification", holdout.get(name, {}).get("metrics")
        )
        for name, t in TARGETS.items()
    }
    for name, c in champions.items():
        if c["method"] != "model":
            notes.append(f"{name}: published scores come from {c['method']}: {c['reason']}")
    return Outcome(checks, problems, winners, champions, notes)


def models_block(
    cfg: TrainConfig,
    features: list[str],
    infos: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """``meta.json``'s ``models``: file, label, objective, parameters and training info."""
    return {
        name: {
            "file": f"{name}.ubj",
            "label": t.label,
            "objective": t.objective,
            "params": xgb_params(cfg, t, features),
            "base_margin": "bgnbd" if margin_column(meta, name) else None,
            **dict(infos[name]),
        }
        for name, t in TARGETS.items()
    }


def final_meta(
    outcome: Outcome,
    models: dict[str, dict[str, Any]],
    single_infos: dict[str, dict[str, Any]],
    metrics: Mapping[str, Mapping[str, dict[str, Any]]],
    holdout: dict[str, dict[str, Any]],
    newest: dict[str, dict[str, dict[str, Any]]],
    ranked: Mapping[str, list[tuple[str, float]]],
    timings: dict[str, float],
) -> dict[str, Any]:
    """The blocks ``meta.json`` gains after the evaluation (status, metrics, checks, ...)."""
    return {
        "status": "failed" if outcome.problems else "good",
        "problems": outcome.problems,
        "notes": outcome.notes,
        "models": models,
        "single_node": single_infos,
        "metrics": {name: m["distributed"] for name, m in metrics.items()},
        "baselines": {
            name: {k: v for k, v in m.items() if k != "distributed"} for name, m in metrics.items()
        },
        "winner": outcome.winners,
        "champion": outcome.champions,
        "checks": {"parity": outcome.parity, "time_holdout": holdout, "newest_cutoff": newest},
        "importance_gain": {k: [[f, g] for f, g in v] for k, v in ranked.items()},
        "timings": timings,
    }
