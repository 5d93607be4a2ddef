"""Privacy: the audit id of an erased user and the retention policy (pure).

- :mod:`strata.privacy.audit`: the second keyed hash that is the only identifier strata keeps
  of an erased user (never the raw id nor the pseudonym);
- :mod:`strata.privacy.retention`: ``configs/retention.yaml`` (how long events and snapshots
  are kept) and the pure decisions compaction takes from it.

The storage side (the tombstone file, dropping erased rows) is :mod:`strata.io.tombstones`.
"""

from strata.privacy.audit import AUDIT_CONTEXT, audit_id, audit_key
from strata.privacy.retention import (
    RetentionConfig,
    event_cutoff_ms,
    load_retention_config,
    snapshots_to_delete,
)

__all__ = [
    "AUDIT_CONTEXT",
    "RetentionConfig",
    "audit_id",
    "audit_key",
    "event_cutoff_ms",
    "load_retention_config",
    "snapshots_to_delete",
]
