"""Operating reports for the dashboard (scope ``reports:read``): the real-time rules'
statistics and every configured experiment's analysis from the warehouse.

``GET /v1/reports/rules`` is the JSON of ``strata rules stats --json`` (and of ``GET
/v1/rules``); ``GET /v1/reports/experiments`` holds, per experiment of configs/experiments.yaml,
the JSON of ``strata report experiment NAME --json`` plus ``exposed`` (users) and
``warnings`` (guardrails, arms no longer defined), computed by the same
:func:`strata.io.experiment_reader.warehouse_report`), or ``{"error": "..."}`` when the
warehouse holds too little of it. Analyses are cached until the warehouse manifest changes
(a sink commit, an import) and recomputed in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from api.deps import ReportsReader, State
from api.routers.actions import rules_response
from api.routers.segments import AUTH_RESPONSES, json_response
from strata.experiments.config import ExperimentsConfig
from strata.io.experiment_reader import warehouse_report
from strata.io.warehouse import Warehouse, WarehouseError

router = APIRouter(prefix="/v1/reports", tags=["reports"])


@dataclass
class _ExperimentCache:
    key: str | None = None
    doc: dict[str, Any] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_CACHES: dict[str, _ExperimentCache] = {}


def _manifest_key(data: str) -> str | None:
    """A digest of the warehouse manifest (None when there is no warehouse)."""
    wh = Warehouse(data)
    if not wh.exists():
        return None
    return hashlib.sha256(orjson.dumps(wh.manifest, option=orjson.OPT_SORT_KEYS)).hexdigest()


def experiments_document(data: str, config: ExperimentsConfig, until_ms: int) -> dict[str, Any]:
    """``{"experiments": {name: analysis JSON | {"error": message}}}`` for every experiment."""
    out: dict[str, Any] = {}
    for exp in config.experiments:
        try:
            report = warehouse_report(data, exp, until_ms=until_ms)
        except WarehouseError as exc:
            out[exp.name] = {"error": str(exc)}
            continue
        doc = report.analysis.to_json()
        doc["exposed"] = report.exposed
        doc["warnings"] = list(report.analysis.warnings)
        out[exp.name] = doc
    return {"experiments": out}


@router.get(
    "/rules",
    responses=AUTH_RESPONSES,
    summary="Trigger rules: fired, suppressed by reason, converted, revenue, coupon cost",
)
async def rules_report(state: State, _key: ReportsReader) -> Response:
    return await rules_response(state)


@router.get(
    "/experiments",
    responses=AUTH_RESPONSES,
    summary="Every configured experiment's analysis (arms, effects with CIs, SRM) from the "
    "warehouse",
)
async def experiments_report(state: State, _key: ReportsReader) -> Response:
    data = state.settings.data
    cache = _CACHES.setdefault(data, _ExperimentCache())
    async with cache.lock:
        key = await asyncio.to_thread(_manifest_key, data)
        if key is None:
            return json_response({"experiments": {}})
        if key != cache.key:
            until_ms = time.time_ns() // 1_000_000
            cache.doc = await asyncio.to_thread(
                experiments_document, data, state.experiments, until_ms
            )
            cache.key = key
        return json_response(cache.doc)
