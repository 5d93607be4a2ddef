"""Dependencies: the app's state, API-key authentication, guarded Redis calls."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.metrics import ApiMetrics
from strata.experiments.config import ExperimentsConfig
from strata.io.event_log import AsyncEventAppender
from strata.io.exposure_log import AsyncExposureLog
from strata.io.keyfile import load_keyring
from strata.io.realtime_reader import AsyncRealtimeReader
from strata.io.segment_reader import READ_ERRORS, SegmentReader
from strata.realtime.stream_config import StreamConfig
from strata.serving.apikeys import KeyRecord, KeyRing, Scope
from strata.serving.breaker import BreakerState, CircuitBreaker
from strata.serving.config import ApiConfig
from strata.settings import Settings
from strata.strategies.config import StrategiesConfig
from strata.tiering.tiers import TierRules

log = logging.getLogger("strata.api")
T = TypeVar("T")

#: a whole Redis-backed answer, retries included, must finish inside this (then 503)
_BUDGET_MARGIN_S = 0.1
_KEYRING_CHECK_S = 1.0


@dataclass
class ApiState:
    """Everything the routers share, built once per app (per Serve replica)."""

    settings: Settings
    config: ApiConfig
    pseudonym_key: bytes
    metrics: ApiMetrics
    breaker: CircuitBreaker
    fallback_rules: TierRules
    stream: StreamConfig = field(default_factory=lambda: StreamConfig.model_validate({}))
    demo: bool = False
    strategies: StrategiesConfig = field(default_factory=StrategiesConfig)
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)
    reader: SegmentReader | None = None
    live: AsyncRealtimeReader | None = None
    appender: AsyncEventAppender | None = None
    exposures: AsyncExposureLog | None = None
    _keyring: KeyRing = field(default_factory=KeyRing)
    _keys_mtime: float | None = None
    _keys_checked: float = 0.0

    @property
    def budget_s(self) -> float:
        """Deadline of one Redis-backed answer: the socket timeout plus a margin."""
        return self.config.redis.timeout_ms / 1000 * 2 + _BUDGET_MARGIN_S

    def keyring(self) -> KeyRing:
        """The API keys, re-read when the key file changes (revocations apply within ~1 s)."""
        now = time.monotonic()
        if now - self._keys_checked >= _KEYRING_CHECK_S or not self._keys_checked:
            self._keys_checked = now
            path = self.settings.keys_path()
            try:
                mtime = os.stat(path).st_mtime if path is not None else None
            except FileNotFoundError:
                mtime = None
            if mtime != self._keys_mtime or not len(self._keyring):
                self._keyring = load_keyring(self.settings, demo=self.demo)
                self._keys_mtime = mtime
        return self._keyring

    async def redis(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis-backed call under the deadline and the circuit breaker.

        Raises:
            HTTPException: 503 with ``Retry-After`` when the breaker is open, or the call
                fails or runs out of time.
        """
        breaker = self.breaker
        if not breaker.allow():
            self.metrics.breaker_rejections.inc()
            raise _unavailable("Redis is unavailable (circuit open)", breaker.retry_after_s())
        try:
            async with asyncio.timeout(self.budget_s):
                result = await call()
        except READ_ERRORS as exc:
            breaker.failure()
            kind = type(exc).__name__
            self.metrics.redis_errors.labels(kind).inc()
            self.metrics.breaker_open.set(1 if breaker.state is not BreakerState.CLOSED else 0)
            log.warning("redis call failed: %s", kind)
            raise _unavailable(f"Redis did not answer ({kind})", breaker.retry_after_s()) from None
        breaker.success()
        self.metrics.breaker_open.set(0)
        return result


def _unavailable(detail: str, retry_after_s: int) -> HTTPException:
    return HTTPException(503, detail, headers={"Retry-After": str(retry_after_s)})


async def get_state(request: Request) -> ApiState:
    # async on purpose: FastAPI runs a sync dependency in a worker thread (one thread hop per
    # request); on a Serve replica that cost ~40% of the throughput (docs/serving.md)
    state: ApiState = request.app.state.strata
    return state


State = Annotated[ApiState, Depends(get_state)]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `strata keys create`, as `Authorization: Bearer <key>`.",
)


def require(scope: Scope) -> Callable[..., Awaitable[KeyRecord]]:
    """A dependency that admits keys holding ``scope`` (401 without a valid key, 403 without
    the scope)."""

    async def check(
        state: State,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> KeyRecord:
        if credentials is None:
            raise HTTPException(
                401,
                "missing API key: send `Authorization: Bearer <key>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        record = state.keyring().authenticate(credentials.credentials)
        if record is None:
            raise HTTPException(
                401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"}
            )
        if not record.allows(scope):
            raise HTTPException(403, f"key {record.name!r} lacks scope {scope.value!r}")
        return record

    return check


SegmentsReader = Annotated[KeyRecord, Depends(require(Scope.SEGMENTS_READ))]
EventsWriter = Annotated[KeyRecord, Depends(require(Scope.EVENTS_WRITE))]
ReportsReader = Annotated[KeyRecord, Depends(require(Scope.REPORTS_READ))]


def reader_of(state: ApiState) -> SegmentReader:
    """The state's Redis reader (created at startup)."""
    if state.reader is None:
        raise _unavailable("the API is starting", 1)
    return state.reader


def live_of(state: ApiState) -> AsyncRealtimeReader:
    """The state's reader of live state (created at startup)."""
    if state.live is None:
        raise _unavailable("the API is starting", 1)
    return state.live


def appender_of(state: ApiState) -> AsyncEventAppender:
    """The state's event appender (created at startup)."""
    if state.appender is None:
        raise _unavailable("the API is starting", 1)
    return state.appender


def exposures_of(state: ApiState) -> AsyncExposureLog:
    """The state's exposure log (created at startup)."""
    if state.exposures is None:
        raise _unavailable("the API is starting", 1)
    return state.exposures
