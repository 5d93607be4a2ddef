"""The retention policy (``configs/retention.yaml``) and the pure decisions taken from it.

Compaction applies it: events older than ``events_days`` before the newest event in the
warehouse are dropped (the warehouse's own clock, not the wall clock: a live warehouse's
newest event is minutes old, and an imported history from 1997 is not wiped by its first
compaction), and snapshots beyond the newest ``snapshots_keep`` are deleted. Compaction does
not know Redis, so it cannot tell which snapshot is published: it always keeps at least the
newest one, and ``strata rollback`` can only go back to a retained snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from strata.config import StrictModel, config_path, load_yaml
from strata.timeutil import DAY_MS


class RetentionConfig(StrictModel):
    """How long strata keeps data (the defaults equal the shipped ``configs/retention.yaml``).

    Attributes:
        events_days: events older than this many days before the newest event are dropped at
            compaction; ``None`` keeps them all. (Actions and exposures are kept: an
            experiment's analysis needs each user's first exposure; erasure removes them
            per user.)
        snapshots_keep: the newest this many snapshots are kept at compaction, older ones are
            deleted (at least one is always kept); ``None`` keeps them all.
    """

    events_days: int | None = Field(default=400, ge=1)
    snapshots_keep: int | None = Field(default=12, ge=1)


def load_retention_config(config_dir: str | Path | None = None) -> RetentionConfig:
    """configs/retention.yaml, validated (:class:`strata.config.ConfigError` names file and key)."""
    return load_yaml(config_path("retention", config_dir), RetentionConfig)


def event_cutoff_ms(config: RetentionConfig, newest_ms: int | None) -> int | None:
    """Events before this instant (epoch ms) are past retention; None: keep all.

    Args:
        config: the retention policy.
        newest_ms: time of the newest event in the warehouse (None: no events).
    """
    if config.events_days is None or newest_ms is None:
        return None
    return newest_ms - config.events_days * DAY_MS


def snapshots_to_delete(config: RetentionConfig, versions: Sequence[str]) -> list[str]:
    """The versions (given oldest first) beyond the newest ``snapshots_keep``; never the newest."""
    if config.snapshots_keep is None:
        return []
    keep = max(1, config.snapshots_keep)
    return list(versions[:-keep]) if len(versions) > keep else []
