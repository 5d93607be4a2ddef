"""Erasing a user (scope ``admin``): ``DELETE /v1/users/{id}`` removes the user from Redis
(every segment version and the real-time keys) and tombstones the pseudonym, through the same
:func:`strata.io.erasure.erase_users` as `strata erase`.

Idempotent: an id strata holds nothing about (or one already erased) is tombstoned anyway and
answers 204 as well, so a retry after a timeout is safe and the answer does not reveal whether
strata knew the user. From the answer on, segment, explain, history, strategies and actions
answer 404 for the user.
"""

from __future__ import annotations

import os
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Response
from starlette.concurrency import run_in_threadpool

from api.deps import State, require
from api.models import ErrorPublic
from api.routers.segments import UserIdPath
from strata.ids import pseudonymise
from strata.io.erasure import DumpNotSavedError, ErasureError, ErasureReport, erase_users
from strata.io.paths import is_remote, local_path
from strata.io.redis_server import EmbeddedRedis
from strata.io.warehouse import Warehouse, WarehouseError
from strata.serving.apikeys import KeyRecord, Scope
from strata.settings import Settings

router = APIRouter(prefix="/v1", tags=["privacy"])

Admin = Annotated[KeyRecord, Depends(require(Scope.ADMIN))]


def _embedded(settings: Settings) -> bool:
    """True when the API's Redis is the data root's embedded server (its dump is ours to save;
    an external server's persistence is its operator's)."""
    if is_remote(settings.data):
        return False
    return EmbeddedRedis.running_in(os.path.join(local_path(settings.data), "redis")) == (
        settings.redis_url
    )


def _erase(settings: Settings, key: bytes, uid: int, by: str) -> ErasureReport:
    wh = Warehouse(settings.data)
    return erase_users(
        settings.data,
        settings.redis_url,
        settings.redis_namespace,
        np.array([uid], dtype=np.int64),
        key=key,
        n_buckets=wh.n_buckets,
        by=by,
        save=_embedded(settings),
    )


@router.delete(
    "/users/{user_id}",
    status_code=204,
    response_class=Response,
    responses={
        401: {"model": ErrorPublic, "description": "No API key, or an unknown/revoked one."},
        403: {"model": ErrorPublic, "description": "The key lacks the scope admin."},
        503: {
            "model": ErrorPublic,
            "description": "Redis failed or no warehouse: nothing recorded, retry.",
        },
    },
    summary="Erase the user from everything strata holds (idempotent; 204 also when unknown)",
)
async def erase_user(user_id: UserIdPath, state: State, key: Admin) -> Response:
    uid = pseudonymise(user_id, state.pseudonym_key)
    try:
        await run_in_threadpool(_erase, state.settings, state.pseudonym_key, uid, key.name)
    except DumpNotSavedError as exc:  # the erasure is recorded; the dump on disk is stale
        raise HTTPException(
            503, "erased, but the Redis dataset was not saved to disk: retry", {"Retry-After": "1"}
        ) from exc
    except WarehouseError as exc:  # raised before anything is erased
        raise HTTPException(503, f"cannot record the erasure: {exc}") from exc
    except ErasureError as exc:
        raise HTTPException(
            503,
            "Redis failed during the erasure; nothing was recorded, retry",
            headers={"Retry-After": "1"},
        ) from exc
    return Response(status_code=204)
