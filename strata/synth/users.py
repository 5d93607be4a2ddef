"""The synthetic users: their raw platform ids and how they group into warehouse buckets.

``strata generate`` derives them in two stages so that no process holds every user: the raw
ids are cut into ranges (:func:`id_ranges`), each range is pseudonymised and sorted by bucket
on its own (:func:`range_by_bucket`), and each bucket gathers its rows from every range at the
offsets :func:`bucket_offsets` computes from the ranges' per-bucket counts. Ranges in order,
each sorted stably, give every bucket its users in raw-id order: exactly the groups of
:func:`users_by_bucket`, which sorts all users at once.
"""

from __future__ import annotations

import itertools

import numpy as np

from strata.ids import bucket_of, pseudonymise_many

#: Synthetic raw platform ids are ``str(FIRST_RAW_ID + i)``.
FIRST_RAW_ID = 10_000_001

#: Users pseudonymised at a time by :func:`range_by_bucket` (bounds its Python objects).
_CHUNK_USERS = 500_000

#: Raw ids per first-stage range of ``strata generate`` (one scratch file each, 16 MB).
RANGE_USERS = 1_000_000


def raw_user_ids(n_users: int) -> np.ndarray:
    """The synthetic raw platform ids ``str(10_000_001 + i)`` of ``n_users`` users."""
    width = len(str(FIRST_RAW_ID + max(n_users, 1) - 1))
    return np.arange(FIRST_RAW_ID, FIRST_RAW_ID + n_users, dtype=np.int64).astype(f"U{width}")


def id_ranges(n_users: int, range_users: int = RANGE_USERS) -> list[tuple[int, int]]:
    """The user indices ``[lo, hi)`` of each first-stage range, ascending, covering
    ``0..n_users`` in ranges of ``range_users`` (the last one shorter)."""
    if range_users < 1:
        raise ValueError(f"range_users must be at least 1, not {range_users}")
    return [(lo, min(n_users, lo + range_users)) for lo in range(0, n_users, range_users)]


def range_by_bucket(
    lo: int, hi: int, key: bytes, n_buckets: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users ``lo..hi-1`` pseudonymised and sorted by bucket (stable: raw-id order inside a
    bucket).

    Returns:
        ``(user_ids, raw_ids, counts)``: the int64 pseudonyms and the int64 raw ids
        ``FIRST_RAW_ID + i`` (their text is the raw platform id, :func:`raw_user_ids`) in that
        order, and the int32 number of users of each of the ``n_buckets`` buckets.
    """
    n = hi - lo
    ids = np.empty(n, dtype=np.int64)
    for a in range(lo, hi, _CHUNK_USERS):
        b = min(hi, a + _CHUNK_USERS)
        text = np.arange(FIRST_RAW_ID + a, FIRST_RAW_ID + b, dtype=np.int64).astype(str)
        ids[a - lo : b - lo] = pseudonymise_many(text.tolist(), key)
    buckets = bucket_of(ids, n_buckets)
    order = np.argsort(buckets, kind="stable")
    counts = np.bincount(buckets, minlength=n_buckets).astype(np.int32)
    return ids[order], order.astype(np.int64) + (FIRST_RAW_ID + lo), counts


def bucket_offsets(counts: np.ndarray) -> np.ndarray:
    """First row of each bucket in each range's bucket-sorted rows.

    Args:
        counts: ``(ranges, buckets)`` users per range and bucket (:func:`range_by_bucket`).

    Returns:
        int64 array of the same shape: bucket ``b`` of range ``r`` is rows
        ``offsets[r, b] .. offsets[r, b] + counts[r, b]`` of that range.
    """
    counts = np.asarray(counts, dtype=np.int64)
    return np.cumsum(counts, axis=1) - counts


def users_by_bucket(
    n_users: int, key: bytes, n_buckets: int
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The synthetic users, grouped by bucket: ``(bucket, user_ids, raw_ids)``, ascending.

    All users at once in this process (~16 bytes a user held): for single-process callers
    (``bench/generate.py``'s baseline, tests); ``strata generate`` gathers the same groups
    from per-range scratch files instead.
    """
    ids, raw, counts = range_by_bucket(0, n_users, key, n_buckets)
    cuts = np.r_[0, np.cumsum(counts)].tolist()
    # slices (views) of the sorted arrays: no second copy of every user
    return [
        (b, ids[lo:hi], raw[lo:hi])
        for b, (lo, hi) in enumerate(itertools.pairwise(cuts))
        if hi > lo
    ]
