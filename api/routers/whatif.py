"""What-if over the latest snapshot on disk: tiers under changed tier settings, and the
settings the dashboard's sliders adjust (scope ``reports:read``).

The snapshot's inputs (:func:`strata.io.whatif_inputs.load_whatif_inputs`) are loaded once per
version and kept; a newer snapshot on disk replaces them (checked at most every
:data:`CHECK_S` seconds). Simulations run in the thread pool (numpy, vectorised), never on the
event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from api.deps import ApiState, ReportsReader, State
from api.models import (
    ErrorPublic,
    WhatIfKeysPublic,
    WhatIfPublic,
    WhatIfRefusedPublic,
    WhatIfRequest,
)
from strata.io.snapshots import SnapshotStore
from strata.io.warehouse import WarehouseError
from strata.io.whatif_inputs import latest_snapshot, load_whatif_inputs
from strata.reports.whatif import WhatIfError, WhatIfInputs, adjustable_keys, simulate

router = APIRouter(prefix="/v1", tags=["what-if"])

#: how often the latest snapshot on disk is looked up again
CHECK_S = 2.0

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "No API key, or an unknown/revoked one."},
    403: {"model": ErrorPublic, "description": "The key lacks the scope reports:read."},
    503: {"model": ErrorPublic, "description": "No snapshot on disk yet (run strata recompute)."},
}


class InputsCache:
    """The latest snapshot's what-if inputs of one app, loaded once per version."""

    def __init__(self) -> None:
        self.inputs: WhatIfInputs | None = None
        self._latest: str | None = None
        self._checked = 0.0
        self._lock = asyncio.Lock()

    async def get(self, state: ApiState) -> WhatIfInputs:
        """The inputs of the latest complete snapshot under the API's data root.

        Raises:
            HTTPException: 503 when there is no snapshot or it cannot be read.
        """
        data = state.settings.data
        try:
            now = time.monotonic()
            if self._latest is None or now - self._checked >= CHECK_S:
                self._latest = await run_in_threadpool(latest_snapshot, SnapshotStore(data))
                self._checked = now
            latest = self._latest
            if latest is None:
                raise WarehouseError("no snapshot on disk yet: run strata recompute")
            if self.inputs is None or self.inputs.version != latest:
                async with self._lock:
                    if self.inputs is None or self.inputs.version != latest:
                        self.inputs = await run_in_threadpool(
                            load_whatif_inputs,
                            data,
                            latest,
                            rules=state.fallback_rules,
                            strategies=state.strategies,
                            key=state.pseudonym_key,
                        )
        except (WarehouseError, OSError) as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "60"}) from None
        return self.inputs


def inputs_cache(request: Request) -> InputsCache:
    """The app's cache (created on first use)."""
    cache = getattr(request.app.state, "whatif_inputs", None)
    if cache is None:
        cache = InputsCache()
        request.app.state.whatif_inputs = cache
    return cache


Cache = Annotated[InputsCache, Depends(inputs_cache)]


@router.post(
    "/whatif",
    response_model=WhatIfPublic,
    responses={
        422: {"model": WhatIfRefusedPublic, "description": "A refused key or value (named)."},
        **_RESPONSES,
    },
    summary="Tier sizes, moves and strategy cost under changed tier settings",
)
async def whatif(body: WhatIfRequest, state: State, cache: Cache, _key: ReportsReader) -> Any:
    inputs = await cache.get(state)
    try:
        result = await run_in_threadpool(simulate, inputs, body.set)
    except WhatIfError as exc:
        raise HTTPException(422, str(exc)) from None
    return result.model_dump(mode="json")


@router.get(
    "/whatif/keys",
    response_model=WhatIfKeysPublic,
    responses=_RESPONSES,
    summary="The tier settings a what-if adjusts, with current value and slider bounds",
)
async def whatif_keys(state: State, cache: Cache, _key: ReportsReader) -> Any:
    inputs = await cache.get(state)
    keys = adjustable_keys(inputs.rules, with_predictions=inputs.churn_p is not None)
    return {"keys": [k.model_dump() for k in keys], "version": inputs.version}
