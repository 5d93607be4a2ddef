"""Tier definitions and member counts of the current snapshot."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from api.deps import SegmentsReader, State, reader_of
from api.models import TierPublic, TiersPublic
from api.routers.segments import AUTH_RESPONSES
from strata.tiering.explain import rules_from_meta, tier_definitions

router = APIRouter(prefix="/v1", tags=["tiers"])


@router.get(
    "/tiers",
    response_model=TiersPublic,
    responses=AUTH_RESPONSES,
    summary="Tier definitions (the snapshot's own rules) and member counts",
)
async def list_tiers(state: State, _key: SegmentsReader) -> TiersPublic:
    reader = reader_of(state)
    version = await state.redis(reader.current)
    if version is None:
        raise HTTPException(503, "no segment snapshot is published yet", {"Retry-After": "60"})
    info = await state.redis(lambda: reader.info(version))
    if info is None:
        raise HTTPException(503, f"snapshot {version} has no meta", {"Retry-After": "1"})
    rules = rules_from_meta(info.meta) or state.fallback_rules
    counts = info.meta.get("tiers") or {}
    return TiersPublic(
        version=version,
        as_of=info.as_of,
        users=info.n_users,
        tiers=[
            TierPublic(**t.model_dump(), members=counts.get(t.tier) if counts else None)
            for t in tier_definitions(rules)
        ],
        lifecycle_stages=info.meta.get("lifecycle_stages") or {},
        model_version=info.meta.get("model_version"),
    )
