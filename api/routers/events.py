"""Live events in: ``POST /v1/events`` validates a batch and appends it to the partition
streams in one atomic call, or refuses it whole."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from api.deps import EventsWriter, State, appender_of
from api.models import ErrorPublic, EventErrorsPublic, EventIn, EventsAcceptedPublic
from strata.realtime.events import validate_events

router = APIRouter(prefix="/v1", tags=["events"])

EVENTS_PATH = "/v1/events"
#: seconds a refused (backlogged) caller should wait before posting again
BACKLOG_RETRY_AFTER_S = 1

_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["events"],
    "additionalProperties": False,
    "properties": {
        "events": {
            "type": "array",
            "minItems": 1,
            "items": EventIn.model_json_schema(),
            "description": "At most `max_events_per_call` (configs/stream.yaml, 1,000) events; "
            "more: 413.",
        }
    },
}

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}


def _refused(detail: str, errors: list[dict[str, Any]]) -> Response:
    return Response(
        orjson.dumps({"detail": detail, "errors": errors}),
        status_code=422,
        media_type="application/json",
    )


@router.post(
    "/events",
    status_code=202,
    response_model=EventsAcceptedPublic,
    responses={
        400: {"model": ErrorPublic, "description": "The body is not JSON."},
        401: {"model": ErrorPublic, "description": "No API key, or an unknown/revoked one."},
        403: {"model": ErrorPublic, "description": "The key lacks the scope events:write."},
        413: {"model": ErrorPublic, "description": "Too many events, or body too large."},
        422: {
            "model": EventErrorsPublic,
            "description": "Some event is invalid (every problem listed); nothing appended.",
        },
        503: {
            "model": ErrorPublic,
            "description": "The streams are too far behind (backpressure) or Redis is down; "
            "nothing appended: retry after the given seconds.",
            "headers": _RETRY_AFTER,
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _BODY_SCHEMA}},
        }
    },
    summary="Post live behaviour events (a batch is accepted or refused whole)",
)
async def post_events(request: Request, state: State, _key: EventsWriter) -> Response:
    # the body is parsed with orjson and validated as plain dicts: a model per event would
    # cost more than everything else the endpoint does (strata.realtime.events)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        return _refused('the body must be a JSON object {"events": [...]}', [])
    extra = sorted(str(k) for k in body if k != "events")
    if extra:
        return _refused(f"unknown body keys {extra}; the body is {{'events': [...]}}", [])
    events = body["events"]
    limit = state.stream.max_events_per_call
    if len(events) > limit:
        raise HTTPException(413, f"at most {limit} events per call, got {len(events)}")
    if not events:
        return _refused("events is empty", [])
    now_ms = time.time_ns() // 1_000_000
    batch = validate_events(events, key=state.pseudonym_key, now_ms=now_ms)
    if batch.errors:
        bad = len({e.index for e in batch.errors})
        return _refused(
            f"{bad} of {len(events)} events are invalid; none was accepted",
            [e.as_dict() for e in batch.errors],
        )
    appender = appender_of(state)
    result = await state.redis(lambda: appender.append(batch.events))
    if result.refused:
        raise HTTPException(
            503,
            f"stream partition {result.partition} is behind ({result.backlog} entries waiting, "
            f"over max_backlog {state.stream.max_backlog}); nothing was accepted, retry later",
            headers={"Retry-After": str(BACKLOG_RETRY_AFTER_S)},
        )
    return Response(
        orjson.dumps({"accepted": result.accepted, "duplicates": result.duplicates}),
        status_code=202,
        media_type="application/json",
    )
