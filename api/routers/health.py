"""Liveness, readiness (checks Redis and that a snapshot is published) and metrics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from api.deps import State, reader_of
from api.metrics import PROMETHEUS_CONTENT_TYPE
from api.models import ErrorPublic, HealthPublic
from strata.serving.breaker import BreakerState
from strata.tiering.explain import rules_from_meta
from strata.tiering.tiers import empty_bands

router = APIRouter(tags=["health"])
#: GET /metrics; the app factory adds the ``metrics:read`` key dependency when
#: ``metrics_require_key`` (the default)
metrics_router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic, summary="Liveness: the process answers")
async def healthz(state: State) -> HealthPublic:
    return HealthPublic(status="ok", redis="not_checked", breaker=state.breaker.state.value)


@router.get(
    "/healthz/ready",
    response_model=HealthPublic,
    responses={503: {"model": HealthPublic, "description": "Redis down or nothing published."}},
    summary="Readiness: Redis answers and a snapshot is published",
)
async def ready(state: State) -> Response:
    reader = reader_of(state)
    try:
        version = await state.redis(reader.current)
    except HTTPException as exc:
        body = HealthPublic(status="unavailable", redis="down", breaker=state.breaker.state.value)
        return JSONResponse(body.model_dump(), status_code=503, headers=exc.headers)
    body = HealthPublic(
        status="ok" if version else "unavailable",
        redis="ok",
        version=version,
        breaker=state.breaker.state.value,
    )
    return JSONResponse(body.model_dump(), status_code=200 if version else 503)


@metrics_router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {PROMETHEUS_CONTENT_TYPE: {}}, "description": "Prometheus text."},
        401: {"model": ErrorPublic},
        403: {"model": ErrorPublic},
    },
    summary="Prometheus metrics of this process (one Serve replica)",
)
async def metrics(state: State) -> Response:
    await _refresh_tier_gauges(state)
    return Response(state.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)


async def _refresh_tier_gauges(state: State) -> None:
    """Tier gauges of the current snapshot, from its meta (read again when the version
    changes). Without Redis the last values stay: /metrics answers regardless. While the
    circuit breaker is not closed a scrape does not call Redis at all, so monitoring neither
    probes the breaker nor counts as a refused request."""
    if state.breaker.state is not BreakerState.CLOSED:
        return
    try:
        reader = reader_of(state)
        version = await state.redis(reader.current)
        if version is None or version == state.metrics.tiers_version:
            return
        info = await state.redis(lambda: reader.info(version))
    except HTTPException:
        return
    if info is None:
        return
    try:
        rules = rules_from_meta(info.meta) or state.fallback_rules
    except ValidationError:
        rules = state.fallback_rules
    tiers = {str(k): int(v) for k, v in (info.meta.get("tiers") or {}).items()}
    # snapshots published before band counts were recorded: judge by the tier counts
    bands = info.meta.get("band_counts") or tiers
    empty = empty_bands(bands, info.n_users or sum(bands.values()), rules)
    state.metrics.saw_tiers(version, tiers, empty)
