"""Prometheus metrics of one API process (one registry per app, so apps never share)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

__all__ = ["PROMETHEUS_CONTENT_TYPE", "ApiMetrics"]

# the *_created series double the exposition for no use here
disable_created_metrics()

# lookups take ~0.3-3 ms; the tail up to the 500 ms budget matters for Redis trouble
_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


class ApiMetrics:
    """Request counts, latency histograms, Redis errors, snapshot version, breaker state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "strata_api_requests", "HTTP requests answered.", ["method", "route", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "strata_api_request_seconds", "Time to answer, by route.", ["route"],
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.redis_errors = Counter(
            "strata_api_redis_errors", "Failed Redis calls, by kind.", ["kind"], registry=r
        )
        self.breaker_rejections = Counter(
            "strata_api_breaker_rejections",
            "Requests answered 503 at once because the Redis circuit breaker was open.",
            registry=r,
        )
        self.breaker_open = Gauge(
            "strata_api_breaker_open", "1 while the Redis circuit breaker is open.", registry=r
        )
        self.lookup_users = Counter(
            "strata_api_lookup_users", "Users looked up, by result.", ["result"], registry=r
        )
        self.snapshot = Gauge(
            "strata_api_snapshot_version_info",
            "1 for the snapshot version the last lookup was answered from.",
            ["version"],
            registry=r,
        )
        self.tier_users = Gauge(
            "strata_tier_users", "Users per tier in the current snapshot.", ["tier"], registry=r
        )
        self.tier_empty = Gauge(
            "strata_tier_empty",
            "1 when the score band holds under tiers.yaml min_band_share of the current "
            "snapshot's scored users (the recompute warned about it), else 0.",
            ["tier"],
            registry=r,
        )
        self.exposures = Counter(
            "strata_api_exposures",
            "Experiment exposures the strategies lookup logged, by result (first, repeat, "
            "error: the write failed and the lookup answered anyway).",
            ["result"],
            registry=r,
        )
        self._version: str | None = None
        self.tiers_version: str | None = None

    def saw_version(self, version: str) -> None:
        """Record the version an answer came from (one labelled series at a time)."""
        if version != self._version:
            if self._version is not None:
                self.snapshot.remove(self._version)
            self.snapshot.labels(version).set(1)
            self._version = version

    def saw_tiers(self, version: str, users: dict[str, int], empty: dict[str, bool]) -> None:
        """Set the tier gauges from a snapshot's tier counts and empty bands."""
        self.tier_users.clear()
        self.tier_empty.clear()
        for tier, n in users.items():
            self.tier_users.labels(tier).set(n)
        for tier, is_empty in empty.items():
            self.tier_empty.labels(tier).set(1 if is_empty else 0)
        self.tiers_version = version

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
