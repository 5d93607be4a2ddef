"""Configuration of the online API (configs/api.yaml) and its input rules, pure."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from strata.config import StrictModel, config_path, load_yaml

#: What a platform user id may look like on the API: 1-64 letters, digits, ``_`` or ``-``.
#: Anything else is answered 422 before it is hashed or looked up.
RAW_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class RedisLimits(StrictModel):
    """How long the API waits for Redis and when it stops trying."""

    timeout_ms: int = Field(default=150, ge=1, le=5000)
    connect_timeout_ms: int = Field(default=150, ge=1, le=5000)
    max_connections: int = Field(default=64, ge=1, le=10_000)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_reset_s: float = Field(default=2.0, gt=0, le=300)


class DashboardConfig(StrictModel):
    """The browser dashboard (GET /dashboard)."""

    #: counts under this many users are shown as "<k" (and figures derived from them)
    min_cell_users: int = Field(default=10, ge=1, le=1000)
    #: how long the dashboard login cookie lives
    session_hours: int = Field(default=12, ge=1, le=24 * 30)


class ApiConfig(StrictModel):
    """configs/api.yaml."""

    max_batch: int = Field(default=1000, ge=1, le=10_000)
    max_body_bytes: int = Field(default=131_072, ge=1024)
    #: body cap of POST /v1/events (a full batch of 1,000 events is ~150-300 kB)
    max_event_body_bytes: int = Field(default=1_048_576, ge=1024)
    redis: RedisLimits = Field(default_factory=RedisLimits)
    #: whether GET /metrics needs a key of scope ``metrics:read`` (or ``admin``): a Prometheus
    #: scraper sends one (``authorization.credentials_file``). Off, anyone who reaches the API
    #: port reads the request counts, latencies and tier sizes
    metrics_require_key: bool = True
    #: FastAPI's native OpenTelemetry (traces, metrics, logs to the process's global OTel
    #: providers, when one is configured). Off, FastAPI skips even the per-request check for
    #: a provider (2-5% of a lookup's CPU)
    opentelemetry: bool = False
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)

    @model_validator(mode="after")
    def _body_fits_batch(self) -> ApiConfig:
        # a full batch of the longest ids must fit in the body cap
        need = 32 + self.max_batch * (64 + 4)
        if self.max_body_bytes < need:
            raise ValueError(
                f"max_body_bytes {self.max_body_bytes} cannot hold a batch of {self.max_batch} "
                f"ids (needs at least {need})"
            )
        return self


def load_api_config(config_dir: str | Path | None = None) -> ApiConfig:
    """Load configs/api.yaml (defaults when the folder has no api.yaml)."""
    path = config_path("api", config_dir)
    if not path.exists():
        return ApiConfig()
    return load_yaml(path, ApiConfig)
