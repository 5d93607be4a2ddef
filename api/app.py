"""The app factory: ``create_app(settings)`` builds the FastAPI app that answers segment
lookups from the Redis snapshot. The Ray Serve deployment (api/deployment.py) wraps it; plain
uvicorn runs it too (``uvicorn --factory api.app:create_app``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI

from api.deps import ApiState, require
from api.metrics import ApiMetrics
from api.middleware import RequestMiddleware
from api.offline_docs import install_offline_docs
from api.routers import (
    actions,
    dashboard,
    events,
    experiments,
    health,
    history,
    reports,
    segments,
    strategies,
    tiers,
    users,
    whatif,
)
from strata.config import config_path
from strata.experiments.config import ExperimentsConfig, load_experiments
from strata.io.event_log import AsyncEventAppender
from strata.io.exposure_log import AsyncExposureLog
from strata.io.keyfile import load_keyring
from strata.io.keys import load_pseudonym_key
from strata.io.realtime_reader import AsyncRealtimeReader
from strata.io.segment_reader import AsyncSegmentReader
from strata.realtime.stream_config import StreamConfig, load_stream_config
from strata.serving.apikeys import Scope
from strata.serving.breaker import CircuitBreaker
from strata.serving.config import ApiConfig, load_api_config
from strata.settings import Settings
from strata.strategies.config import StrategiesConfig, load_strategies
from strata.tiering.tiers import load_tier_rules

log = logging.getLogger("strata.api")

API_VERSION = "1.0.0"


class ApiSetupError(RuntimeError):
    """The API cannot start: missing Redis URL, key, or a bad config."""


def load_playbook(
    config_dir: str | Path | None = None,
) -> tuple[StrategiesConfig, ExperimentsConfig]:
    """strategies.yaml and experiments.yaml of ``config_dir`` (none when a file is absent), so
    ``strata serve`` can refuse a bad one before Ray starts.

    Raises:
        ConfigError: a file is invalid (names the file and key).
    """
    strategy_config = (
        load_strategies(config_dir)
        if config_path("strategies", config_dir).exists()
        else StrategiesConfig()
    )
    experiment_config = (
        load_experiments(config_dir)
        if config_path("experiments", config_dir).exists()
        else ExperimentsConfig()
    )
    return strategy_config, experiment_config


def create_app(
    settings: Settings | None = None,
    *,
    config: ApiConfig | None = None,
    config_dir: str | Path | None = None,
    stream: StreamConfig | None = None,
    demo: bool = False,
) -> FastAPI:
    """Build the API.

    Args:
        settings: runtime settings (default: from ``STRATA_*`` env). ``redis_url`` must be set
            (``strata serve`` sets it to the embedded server when none is configured).
        config: API limits (default: configs/api.yaml).
        config_dir: folder of YAML configs (api.yaml, stream.yaml, strategies.yaml,
            experiments.yaml, and tiers.yaml for snapshots published without their tier
            rules). Without strategies.yaml / experiments.yaml there are none.
        stream: live-event settings (default: stream.yaml of ``config_dir``, defaults when
            the folder has none).
        demo: accept the fixed demo key (``strata demo`` only; never in production).

    Raises:
        ApiSetupError: no Redis URL, no pseudonymisation key, or no API key at all.
    """
    settings = settings or Settings()
    config = config or load_api_config(config_dir)
    if stream is None:
        has_file = config_path("stream", config_dir).exists()
        stream = load_stream_config(config_dir) if has_file else StreamConfig.model_validate({})
    if not settings.redis_url:
        raise ApiSetupError("no Redis to serve from: set STRATA_REDIS_URL")
    try:
        # never create a key here: a fresh key would pseudonymise every id differently
        key = load_pseudonym_key(settings, create=False)
    except ValueError as exc:
        raise ApiSetupError(f"cannot pseudonymise user ids: {exc}") from exc
    keyring = load_keyring(settings, demo=demo)
    if not len(keyring):
        raise ApiSetupError(
            "no API keys: create one with `strata keys create --data DIR --scope segments:read` "
            "or set STRATA_API_KEYS (hashes only)"
        )
    strategy_config, experiment_config = load_playbook(config_dir)
    redis_cfg = config.redis
    state = ApiState(
        settings=settings,
        config=config,
        pseudonym_key=key,
        metrics=ApiMetrics(),
        breaker=CircuitBreaker(redis_cfg.breaker_failures, redis_cfg.breaker_reset_s),
        fallback_rules=load_tier_rules(config_dir),
        stream=stream,
        demo=demo,
        strategies=strategy_config,
        experiments=experiment_config,
    )
    redis_url = settings.redis_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.reader = AsyncSegmentReader(
            redis_url,
            settings.redis_namespace,
            timeout_s=redis_cfg.timeout_ms / 1000,
            connect_timeout_s=redis_cfg.connect_timeout_ms / 1000,
            max_connections=redis_cfg.max_connections,
            max_batch=config.max_batch,
            mode=settings.redis_mode,
        )
        timeouts = (redis_cfg.timeout_ms / 1000, redis_cfg.connect_timeout_ms / 1000)
        state.live = AsyncRealtimeReader(
            redis_url,
            settings.redis_namespace,
            timeout_s=timeouts[0],
            connect_timeout_s=timeouts[1],
            max_connections=redis_cfg.max_connections,
        )
        state.appender = AsyncEventAppender(
            redis_url,
            settings.redis_namespace,
            stream,
            timeout_s=timeouts[0],
            connect_timeout_s=timeouts[1],
            max_connections=redis_cfg.max_connections,
        )
        state.exposures = AsyncExposureLog(
            redis_url,
            settings.redis_namespace,
            timeout_s=timeouts[0],
            connect_timeout_s=timeouts[1],
            max_connections=redis_cfg.max_connections,
        )
        try:
            yield
        finally:
            await state.reader.aclose()
            await state.live.aclose()
            await state.appender.aclose()
            await state.exposures.aclose()
            state.reader = state.live = state.appender = state.exposures = None

    app = FastAPI(
        title="strata segments API",
        version=API_VERSION,
        summary="Online user segments (tier, lifecycle stage, tags, scores) from Redis, live "
        "events in, the actions and rule statistics of the real-time loop, and the "
        "strategies and experiment arms that apply to a user.",
        lifespan=lifespan,
        docs_url=None,  # offline /docs and /redoc: install_offline_docs below
        redoc_url=None,
        telemetry=None
        if config.opentelemetry
        else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.strata = state
    app.include_router(segments.router)
    app.include_router(tiers.router)
    app.include_router(events.router)
    app.include_router(actions.router)
    app.include_router(strategies.router)
    app.include_router(experiments.router)
    app.include_router(reports.router)
    app.include_router(health.router)
    app.include_router(whatif.router)
    app.include_router(history.router)
    app.include_router(dashboard.router)
    app.include_router(users.router)
    install_offline_docs(app)
    metrics_auth = [Depends(require(Scope.METRICS_READ))] if config.metrics_require_key else []
    app.include_router(health.metrics_router, dependencies=metrics_auth)
    app.add_middleware(
        RequestMiddleware,
        metrics=state.metrics,
        max_body_bytes=config.max_body_bytes,
        path_limits={events.EVENTS_PATH: config.max_event_body_bytes},
    )
    return app
