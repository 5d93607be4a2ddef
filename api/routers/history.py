"""A user's tier history: tier, stage, score and rule in each retained snapshot on disk, and the
live change since the newest one, newest first (scope ``segments:read``).

Snapshots are read from the API's data root, only the user's bucket file of each with a row
filter (:class:`strata.io.history.UserHistoryReader`); the live overlay comes from Redis, as the
segment lookup reads it, and counts only when it is based on the newest snapshot. When Redis is
unavailable the snapshots still answer (``live_available`` false).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from api.deps import SegmentsReader, State, live_of
from api.models import ErrorPublic, HistoryPublic
from api.routers.segments import UserIdPath
from strata.ids import pseudonymise
from strata.io.history import SnapshotRow, UserHistoryReader
from strata.realtime.live_view import parse_overlay
from strata.reports.history import history_entries

router = APIRouter(prefix="/v1", tags=["segments"])


def history_reader(request: Request) -> UserHistoryReader:
    """The app's reader of the data root's snapshots (created on first use)."""
    reader = getattr(request.app.state, "history_reader", None)
    if reader is None:
        state = request.app.state.strata
        reader = UserHistoryReader(state.settings.data, state.pseudonym_key)
        request.app.state.history_reader = reader
    return reader


Reader = Annotated[UserHistoryReader, Depends(history_reader)]


def _read(reader: UserHistoryReader, uid: int) -> tuple[int, list[SnapshotRow]]:
    if reader.erased(uid):  # tombstoned: no history, not even a live overlay a worker rewrote
        raise HTTPException(404, "no retained snapshot has this user")
    return len(reader.snapshots()), reader.rows(uid)


@router.get(
    "/users/{user_id}/history",
    response_model=HistoryPublic,
    responses={
        404: {"model": ErrorPublic, "description": "No snapshot (nor live overlay) has the user."},
        401: {"model": ErrorPublic, "description": "No API key, or an unknown/revoked one."},
        403: {"model": ErrorPublic, "description": "The key lacks the scope segments:read."},
    },
    summary="The user's tier, stage, score and rule in each retained snapshot, newest first",
)
async def history(user_id: UserIdPath, state: State, reader: Reader, _key: SegmentsReader) -> Any:
    uid = pseudonymise(user_id, state.pseudonym_key)
    retained, rows = await run_in_threadpool(_read, reader, uid)
    newest = reader.newest()
    live: dict[str, Any] | None = None
    live_available = True
    if newest is not None:
        try:
            client = live_of(state)
            states = await state.redis(lambda: client.live_many([uid]))
        except HTTPException as exc:
            if exc.status_code != 503:
                raise
            live_available = False
        else:
            overlay = parse_overlay(states[0].overlay)
            if overlay is not None and overlay.get("version") == newest.version:
                live = overlay
    if not rows and live is None:
        raise HTTPException(404, "no retained snapshot has this user")
    entries = history_entries([(r.snapshot.version, r.snapshot.as_of, r.row) for r in rows], live)
    return {
        "user_id": user_id,
        "snapshots": retained,
        "live_available": live_available,
        "entries": entries,
    }
