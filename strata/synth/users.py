"""The synthetic users: their raw platform ids and how they group into warehouse buckets."""

from __future__ import annotations

import numpy as np

from strata.ids import bucket_of, pseudonymise_many

#: Synthetic raw platform ids are ``str(FIRST_RAW_ID + i)``.
FIRST_RAW_ID = 10_000_001


def raw_user_ids(n_users: int) -> np.ndarray:
    """The synthetic raw platform ids ``str(10_000_001 + i)`` of ``n_users`` users."""
    width = len(str(FIRST_RAW_ID + max(n_users, 1) - 1))
    return np.arange(FIRST_RAW_ID, FIRST_RAW_ID + n_users, dtype=np.int64).astype(f"U{width}")


def users_by_bucket(
    n_users: int, key: bytes, n_buckets: int
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The synthetic users, grouped by bucket: ``(bucket, user_ids, raw_ids)``, ascending."""
    raw = raw_user_ids(n_users)
    ids = pseudonymise_many(raw.tolist(), key)
    buckets = bucket_of(ids, n_buckets)
    order = np.argsort(buckets, kind="stable")
    cuts = np.flatnonzero(np.diff(buckets[order])) + 1
    groups = []
    for idx in np.split(order, cuts):
        if len(idx):
            groups.append((int(buckets[idx[0]]), ids[idx], raw[idx]))
    return groups
