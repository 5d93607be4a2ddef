"""The synthetic users: their raw platform ids and how they group into warehouse buckets."""

from __future__ import annotations

import itertools

import numpy as np

from strata.ids import bucket_of, pseudonymise_many

#: Synthetic raw platform ids are ``str(FIRST_RAW_ID + i)``.
FIRST_RAW_ID = 10_000_001

#: Users pseudonymised at a time by :func:`users_by_bucket` (bounds its Python objects).
_CHUNK_USERS = 500_000


def raw_user_ids(n_users: int) -> np.ndarray:
    """The synthetic raw platform ids ``str(10_000_001 + i)`` of ``n_users`` users."""
    width = len(str(FIRST_RAW_ID + max(n_users, 1) - 1))
    return np.arange(FIRST_RAW_ID, FIRST_RAW_ID + n_users, dtype=np.int64).astype(f"U{width}")


def users_by_bucket(
    n_users: int, key: bytes, n_buckets: int
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The synthetic users, grouped by bucket: ``(bucket, user_ids, raw_ids)``, ascending.

    ``raw_ids`` are the integers ``FIRST_RAW_ID + i`` (their text is the raw platform id,
    :func:`raw_user_ids`): 8 bytes a user instead of a fixed-width string, and the ids are
    pseudonymised a chunk at a time, so the driver holds ~24 bytes per user, not the
    hundreds a Python string and int per user would take at 10M users.
    """
    ids = np.empty(n_users, dtype=np.int64)
    for lo in range(0, n_users, _CHUNK_USERS):
        hi = min(n_users, lo + _CHUNK_USERS)
        text = np.arange(FIRST_RAW_ID + lo, FIRST_RAW_ID + hi, dtype=np.int64).astype(str)
        ids[lo:hi] = pseudonymise_many(text.tolist(), key)
    buckets = bucket_of(ids, n_buckets)
    order = np.argsort(buckets, kind="stable")
    ids, sorted_buckets = ids[order], buckets[order]
    raw = order.astype(np.int64) + FIRST_RAW_ID
    del order, buckets
    cuts = np.r_[0, np.flatnonzero(np.diff(sorted_buckets)) + 1, n_users].tolist()
    # slices (views) of the sorted arrays: no second copy of every user
    return [
        (int(sorted_buckets[lo]), ids[lo:hi], raw[lo:hi])
        for lo, hi in itertools.pairwise(cuts)
        if hi > lo
    ]
