"""What applies to one user now and why: strategies of their tier, stage and dynamic tags, and
the running experiments that target them, with their arm.

The segment is read like GET /v1/users/{id}/segment (snapshot record with the live overlay
merged in, unexpired dynamic tags), so the answer agrees with the live tier. Serving an
experiment arm logs the user's first exposure (``source: "serve"``) through
:class:`strata.io.exposure_log.AsyncExposureLog`, and answers the arm of that first exposure
(sticky across weight edits); a failure of that write is logged and counted
(``strata_api_exposures{result="error"}``) and never fails the lookup.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from fastapi import APIRouter
from fastapi.responses import Response

from api.deps import ApiState, SegmentsReader, State
from api.models import UserStrategiesPublic
from api.routers.segments import _NOT_FOUND, AUTH_RESPONSES, UserIdPath, json_response, lookup_live
from strata.io.exposure_log import Exposure
from strata.io.segment_reader import READ_ERRORS
from strata.strategies.resolve import (
    ExperimentMatch,
    rearm,
    resolve_experiments,
    resolve_strategies,
)
from strata.timeutil import LOCAL_TZ

log = logging.getLogger("strata.api")

router = APIRouter(prefix="/v1", tags=["strategies"])


def local_today(now_ms: int) -> dt.date:
    """The local (UTC+8) date of an epoch-ms instant."""
    return dt.datetime.fromtimestamp(now_ms / 1000, tz=LOCAL_TZ).date()


async def _log_exposures(
    state: ApiState, uid: int, matches: list[ExperimentMatch], now_ms: int
) -> list[ExperimentMatch]:
    """Log first exposures and return the matches with each user's sticky arm (the arm of
    their first exposure). Errors are counted and logged, never raised: the hashed arms stand.
    """
    if not matches or state.exposures is None:
        return matches
    batch = [Exposure(m.experiment, m.arm, uid, now_ms, "serve") for m in matches]
    try:
        async with asyncio.timeout(state.budget_s):
            logged = await state.exposures.log(batch)
    except READ_ERRORS as exc:
        state.metrics.exposures.labels("error").inc(len(batch))
        log.warning("exposure log failed (%s): the lookup answers anyway", type(exc).__name__)
        return matches
    n_first = sum(x.first for x in logged)
    state.metrics.exposures.labels("first").inc(n_first)
    state.metrics.exposures.labels("repeat").inc(len(logged) - n_first)
    return [rearm(m, state.experiments, x.arm) for m, x in zip(matches, logged, strict=True)]


@router.get(
    "/users/{user_id}/strategies",
    response_model=UserStrategiesPublic,
    responses={**_NOT_FOUND, **AUTH_RESPONSES},
    summary="The strategies and experiment arms that apply to a user now, and why",
)
async def get_strategies(user_id: UserIdPath, state: State, _key: SegmentsReader) -> Response:
    found = await lookup_live(state, user_id)
    uid, version, merged, now_ms = found.uid, found.version, found.record, found.now_ms
    strategies = resolve_strategies(merged, found.tags, uid, state.strategies)
    experiments = resolve_experiments(merged, uid, state.experiments, local_today(now_ms))
    experiments = await _log_exposures(state, uid, experiments, now_ms)
    return json_response(
        {
            "user_id": user_id,
            "version": version,
            "tier": merged["tier"],
            "lifecycle_stage": merged.get("lifecycle_stage"),
            "dynamic_tags": found.tags,
            "source": found.source,
            "strategies": [
                {
                    "name": m.strategy.name,
                    "description": m.strategy.description,
                    "applies": m.applies,
                    "reason": m.reason,
                    "eligible": m.eligible,
                    "holdout": m.holdout,
                    "why_not": m.why_not,
                    "channel": m.strategy.channel,
                    "cost_per_action_cny": m.strategy.cost_per_action_cny,
                    "trigger_rules": list(m.strategy.trigger_rules),
                    "actions": [
                        {"kind": a.kind, "params": dict(a.params)} for a in m.strategy.actions
                    ],
                }
                for m in strategies
            ],
            "experiments": [
                {
                    "experiment": m.experiment,
                    "arm": m.arm,
                    "reason": m.reason,
                    "strategies": m.strategies,
                    "overrides": m.overrides,
                }
                for m in experiments
            ],
        }
    )
