"""The circuit breaker's state machine and the API config's validation (pure)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from strata.config import ConfigError
from strata.serving.breaker import BreakerState, CircuitBreaker
from strata.serving.config import RAW_ID_PATTERN, ApiConfig, load_api_config


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, reset_after_s=2.0, clock=clock)
    b.failure()
    b.failure()
    b.success()  # a success resets the count
    b.failure()
    b.failure()
    assert b.allow() and b.state is BreakerState.CLOSED
    b.failure()
    assert b.state is BreakerState.OPEN and not b.allow()
    assert b.retry_after_s() == 2
    clock.now += 1.2
    assert not b.allow() and b.retry_after_s() == 1
    clock.now += 1.0
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()  # the probe
    assert not b.allow()  # only one probe at a time
    b.failure()  # the probe failed: open again for a full period
    assert b.state is BreakerState.OPEN and b.times_opened == 2
    clock.now += 2.0
    assert b.allow()
    b.success()
    assert b.state is BreakerState.CLOSED and b.allow() and b.allow()


def test_lost_probe_is_replaced() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 1.0, probe_timeout_s=3.0, clock=clock)
    b.failure()
    clock.now += 1.0
    assert b.allow()
    clock.now += 1.0
    assert not b.allow()
    clock.now += 2.5  # the probe's caller never reported back
    assert b.allow()


def test_breaker_arguments() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0)


def test_raw_ids() -> None:
    def valid_raw_id(raw_id: str) -> bool:  # the API's rule (path parameters, batch items)
        return re.match(RAW_ID_PATTERN, raw_id) is not None

    assert valid_raw_id("10000001") and valid_raw_id("u_A-9")
    for bad in ["", "a b", "x" * 65, "é", "1;DROP", "../etc"]:
        assert not valid_raw_id(bad), bad


def test_api_config_defaults_and_errors(tmp_path: Path) -> None:
    cfg = load_api_config()  # the repository's configs/api.yaml
    assert cfg.max_batch == 1000 and cfg.redis.timeout_ms <= 250
    assert load_api_config(tmp_path) == ApiConfig()  # no api.yaml: defaults
    (tmp_path / "api.yaml").write_text("max_batch: 1000\nredis:\n  timeout: 5\n")
    with pytest.raises(ConfigError, match="timeout"):
        load_api_config(tmp_path)
    (tmp_path / "api.yaml").write_text("max_batch: 5000\nmax_body_bytes: 2048\n")
    with pytest.raises(ConfigError, match="cannot hold a batch"):
        load_api_config(tmp_path)
