"""configs/stream.yaml: how live events are collected, partitioned and processed."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from strata.config import StrictModel, config_path, load_yaml

__all__ = ["StreamConfig", "load_stream_config"]


class StreamConfig(StrictModel):
    """Settings of the event streams, the rule workers and the warehouse sink.

    Attributes:
        partitions: stream partitions (users hash into them like warehouse buckets); fixed in
            Redis by the first writer, since changing it would split a user's events.
        max_events_per_call: most events one ``POST /v1/events`` may carry.
        max_backlog: entries waiting in one partition (not yet processed and sunk) above which
            ``POST /v1/events`` answers 503 with Retry-After instead of appending.
        dedupe_ttl_s: how long an event id is remembered (a repost within it appends nothing).
        batch_size: entries one worker reads per XREADGROUP.
        block_ms: how long an idle worker blocks on XREADGROUP.
        lease_ms: partition lease; a dead worker's partitions move after it expires.
        max_deliveries: a poison entry (failing this many times) goes to the dead-letter stream.
        max_event_age_s: events older than this (event time vs wall clock) are sunk but fire
            nothing: replaying an old log must not send coupons.
        state_ttl_days: live per-user state expires after this long without events.
        action_log_len: actions kept per user for ``GET /v1/users/{id}/actions``.
        idem_ttl_days: how long an action key's decision is remembered.
        live_ttl_days: how long a live segment overlay is kept without a newer recompute.
        sink_interval_s: the sink commits to the warehouse at least this often.
        sink_max_rows: ... or when this many rows are buffered.
        outbox_keep: the sink trims each outbox (``{ns}:rt:{pP}:outbox``) only below the
            actions it has committed to the warehouse, and always keeps at least this many of
            its newest entries for the delivery systems that read it.
        timer_batch: timers taken from a partition's due-queue per round.
    """

    partitions: int = Field(default=8, ge=1, le=1024)
    max_events_per_call: int = Field(default=1000, ge=1, le=10_000)
    max_backlog: int = Field(default=200_000, ge=100)
    dedupe_ttl_s: int = Field(default=2 * 86_400, ge=60)
    batch_size: int = Field(default=500, ge=1, le=10_000)
    block_ms: int = Field(default=200, ge=1, le=10_000)
    lease_ms: int = Field(default=5_000, ge=500)
    max_deliveries: int = Field(default=3, ge=1)
    max_event_age_s: int = Field(default=86_400, ge=60)
    state_ttl_days: int = Field(default=35, ge=1)
    action_log_len: int = Field(default=200, ge=1)
    idem_ttl_days: int = Field(default=30, ge=1)
    live_ttl_days: int = Field(default=7, ge=1)
    sink_interval_s: float = Field(default=5.0, gt=0)
    sink_max_rows: int = Field(default=200_000, ge=1)
    outbox_keep: int = Field(default=1_000_000, ge=0)
    timer_batch: int = Field(default=500, ge=1)


def load_stream_config(config_dir: str | Path | None = None) -> StreamConfig:
    """configs/stream.yaml, validated (:class:`strata.config.ConfigError` names file and key)."""
    return load_yaml(config_path("stream", config_dir), StreamConfig)
