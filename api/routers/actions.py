"""What the real-time loop did: a user's actions, and per-rule statistics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from api.deps import ApiState, SegmentsReader, State, live_of
from api.models import ActionsPublic, RulesPublic
from api.routers.segments import AUTH_RESPONSES, UserIdPath, json_response
from strata.ids import pseudonymise
from strata.realtime.stats import rule_stats

router = APIRouter(prefix="/v1", tags=["actions"])


@router.get(
    "/users/{user_id}/actions",
    response_model=ActionsPublic,
    responses=AUTH_RESPONSES,
    summary="Actions the trigger rules issued to one user, newest first",
)
async def get_actions(
    user_id: UserIdPath,
    request: Request,
    state: State,
    _key: SegmentsReader,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most actions returned.")] = 50,
) -> Response:
    unknown = sorted(set(request.query_params) - {"limit"})
    if unknown:  # a typo (?limt=5) must not silently answer with the default
        raise RequestValidationError(
            [
                {"loc": ("query", name[:40]), "msg": "unknown query parameter", "type": "extra"}
                for name in unknown[:5]
            ]
        )
    live = live_of(state)
    uid = pseudonymise(user_id, state.pseudonym_key)
    actions = await state.redis(lambda: live.actions(uid, limit))
    return json_response({"user_id": user_id, "actions": actions})


@router.get(
    "/rules",
    response_model=RulesPublic,
    responses=AUTH_RESPONSES,
    summary="Trigger rules with fired, suppressed, converted, revenue and coupon cost",
)
async def list_rules(state: State, _key: SegmentsReader) -> Response:
    return await rules_response(state)


async def rules_response(state: ApiState) -> Response:
    """The rule statistics document (``GET /v1/rules`` and ``GET /v1/reports/rules``)."""
    live = live_of(state)
    rules, stats = await state.redis(live.rules_and_stats)
    return json_response(rule_stats(rules, stats))
