"""Experiment definitions (configs/experiments.yaml), their status by today's local date and
the users exposed per arm so far (``{ns}:rt:exposed_count:{experiment}``)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SegmentsReader, State, exposures_of
from api.models import (
    ArmDefinitionPublic,
    ExperimentPublic,
    ExperimentsPublic,
    GuardrailPublic,
)
from api.routers.segments import AUTH_RESPONSES, _now_ms
from api.routers.strategies import local_today
from strata.experiments.assignment import HOLDOUT

router = APIRouter(prefix="/v1", tags=["experiments"])


@router.get(
    "/experiments",
    response_model=ExperimentsPublic,
    responses=AUTH_RESPONSES,
    summary="Experiment definitions, status and exposed users per arm",
)
async def list_experiments(state: State, _key: SegmentsReader) -> ExperimentsPublic:
    experiments = state.experiments.experiments
    log = exposures_of(state)
    names = [e.name for e in experiments]
    counts = await state.redis(lambda: log.counts_many(names))
    today = local_today(_now_ms())
    out = []
    for e in experiments:
        exposed = counts.get(e.name, {})
        out.append(
            ExperimentPublic(
                name=e.name,
                description=e.description,
                status=e.status(today),
                target={"tiers": list(e.target.tiers), "stages": list(e.target.stages)},
                arms=[
                    ArmDefinitionPublic(
                        name=a.name,
                        weight=a.weight,
                        strategies=list(a.strategies),
                        overrides=dict(a.overrides),
                        exposed=exposed.get(a.name, 0),
                    )
                    for a in e.arms
                ],
                control=e.control,
                holdout=e.holdout,
                holdout_exposed=exposed.get(HOLDOUT, 0),
                start=e.start.isoformat(),
                end=e.end.isoformat(),
                primary_metric=e.primary_metric,
                secondary_metrics=list(e.secondary_metrics),
                guardrails=[
                    GuardrailPublic(metric=g.metric, max=g.max, min=g.min) for g in e.guardrails
                ],
            )
        )
    return ExperimentsPublic(experiments=out)
