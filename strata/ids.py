"""User identity: keyed pseudonymisation and stable bucketing.

Raw platform user ids never enter the warehouse. At every boundary (import, generator, API)
they become ``user_id = first 63 bits of HMAC-SHA256(key, raw_id)`` as a non-negative int64.
The key lives outside the data (settings / key file). 63 bits keep ids in a signed 64-bit
column that every engine (Arrow, Parquet, DuckDB, pandas) handles natively; the chance of any
collision among n users is about n^2 / 2^64 (3e-8 at 1M users, 3e-4 at 100M).

Key chains (rotation): the key may be a *chain* of links, one per line of its text (oldest
first). The first link pseudonymises the raw id as above; every further link re-keys the
previous pseudonym: ``id_k = first 63 bits of HMAC-SHA256(link_k, id_{k-1} as 8 big-endian
bytes)``. ``strata rotate-key`` appends a link and rewrites every stored id with it
(:func:`rekey_ids`), so a raw id arriving later at any boundary still maps to the stored id.
A one-link key behaves exactly as before chains existed.

Buckets: ``bucket_of(user_id, B)``. Because the pseudonym is already a uniform keyed hash,
the bucket is a pure function of it, identical on every run, process and machine.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MASK_63 = (1 << 63) - 1
#: separates the links of a key chain in the key's text (key file line, environment value)
LINK_SEPARATOR = b"\n"
MIN_LINK_BYTES = 16
#: Golden-ratio multiplier: spreads the pseudonym's bits before the modulo, so that buckets
#: stay balanced even for B that share factors with structure in the ids.
_MIX = np.uint64(0x9E3779B97F4A7C15)


def key_links(key: bytes) -> list[bytes]:
    """The links of a pseudonymisation key, oldest first (one for an unrotated key).

    Links are the non-empty lines of the key, each stripped of surrounding whitespace.

    Raises:
        ValueError: no link, or a link shorter than 16 bytes.
    """
    links = [line.strip() for line in key.split(LINK_SEPARATOR)]
    links = [link for link in links if link]
    if not links or any(len(link) < MIN_LINK_BYTES for link in links):
        raise ValueError("pseudonymisation key must be at least 16 bytes (every link of a chain)")
    return links


def chain_key(links: Sequence[bytes]) -> bytes:
    """The key text of a chain of links (the inverse of :func:`key_links`)."""
    for link in links:
        if LINK_SEPARATOR in link or len(link.strip()) < MIN_LINK_BYTES:
            raise ValueError("every key link must be one line of at least 16 bytes")
    return LINK_SEPARATOR.join(link.strip() for link in links)


@functools.lru_cache(maxsize=8)
def _bases(key: bytes) -> tuple[hmac.HMAC, tuple[hmac.HMAC, ...]]:
    """HMAC states of a key's links (parsed once per key: the API hashes one id a call)."""
    first, *rest = key_links(key)
    return (
        hmac.new(first, digestmod=hashlib.sha256),
        tuple(hmac.new(link, digestmod=hashlib.sha256) for link in rest),
    )


def _rekey_one(user_id: int, base: hmac.HMAC) -> int:
    h = base.copy()
    h.update(int(user_id).to_bytes(8, "big", signed=True))
    return int.from_bytes(h.digest()[:8], "big") & _MASK_63


def rekey_ids(user_ids: np.ndarray, link: bytes) -> np.ndarray:
    """Apply one more chain link to pseudonyms: ``HMAC(link, id as 8 big-endian bytes)``.

    Args:
        user_ids: int64 pseudonyms (any shape).
        link: the new link (one line, at least 16 bytes).

    Returns:
        int64 array of the re-keyed ids, same shape; each distinct id is hashed once.
    """
    (link,) = key_links(link)
    return _rekey_array(user_ids, hmac.new(link, digestmod=hashlib.sha256))


def _rekey_array(user_ids: np.ndarray, base: hmac.HMAC) -> np.ndarray:
    ids = np.asarray(user_ids, dtype=np.int64)
    if ids.size == 0:
        return ids.copy()
    uniq, inverse = np.unique(ids, return_inverse=True)
    out = np.fromiter((_rekey_one(int(u), base) for u in uniq), dtype=np.int64, count=uniq.size)
    return np.asarray(out[inverse].reshape(ids.shape), dtype=np.int64)


def pseudonymise(raw_id: str, key: bytes) -> int:
    """Return the pseudonymous user id of one raw platform id.

    Args:
        raw_id: the platform's user id, as text (surrounding whitespace is ignored).
        key: the secret pseudonymisation key (at least 16 bytes), or a chain of links.
    """
    first, rest = _bases(key)
    h = first.copy()
    h.update(raw_id.strip().encode("utf-8"))
    user_id = int.from_bytes(h.digest()[:8], "big") & _MASK_63
    for link in rest:
        user_id = _rekey_one(user_id, link)
    return user_id


def pseudonymise_many(raw_ids: Sequence[str] | Iterable[str], key: bytes) -> np.ndarray:
    """Vector form of :func:`pseudonymise`: an int64 array, one id per input (the whole
    chain applied when ``key`` has several links)."""
    base, rest = _bases(key)
    out = []
    for raw in raw_ids:
        h = base.copy()
        h.update(raw.strip().encode("utf-8"))
        out.append(int.from_bytes(h.digest()[:8], "big") & _MASK_63)
    ids = np.asarray(out, dtype=np.int64)
    for link in rest:
        ids = _rekey_array(ids, link)
    return ids


def pseudonymise_array(raw_ids: pa.Array | pa.ChunkedArray, key: bytes) -> pa.Array:
    """Pseudonymise an Arrow string column, hashing each distinct raw id once."""
    encoded = pc.dictionary_encode(raw_ids)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    uniques = pseudonymise_many(encoded.dictionary.to_pylist(), key)
    return pa.array(uniques).take(encoded.indices)


def bucket_of(user_id: int | np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket (0..n_buckets-1) of pseudonymous user ids; stable everywhere.

    Args:
        user_id: one id or an int64 array of ids.
        n_buckets: number of warehouse buckets (B).

    Returns:
        int32 array (0-d for a scalar input) of bucket numbers.
    """
    if n_buckets <= 0:
        raise ValueError("n_buckets must be positive")
    ids = np.asarray(user_id, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = ids * _MIX
    return ((mixed >> np.uint64(32)) % np.uint64(n_buckets)).astype(np.int32)


def assign(
    buckets: Sequence[int], n_workers: int, weights: Sequence[int] | None = None
) -> list[list[int]]:
    """Assign buckets to workers, balancing total weight (e.g. rows) greedily.

    Deterministic: the heaviest bucket goes first to the least-loaded worker, ties broken by
    bucket number and worker index. Without weights every bucket weighs 1 (round robin).

    Returns:
        ``n_workers`` lists of bucket numbers, each sorted.
    """
    if n_workers <= 0:
        raise ValueError("n_workers must be positive")
    w = list(weights) if weights is not None else [1] * len(buckets)
    if len(w) != len(buckets):
        raise ValueError("weights must have one entry per bucket")
    order = sorted(range(len(buckets)), key=lambda i: (-w[i], buckets[i]))
    loads = [0] * n_workers
    out: list[list[int]] = [[] for _ in range(n_workers)]
    for i in order:
        k = min(range(n_workers), key=lambda j: (loads[j], j))
        out[k].append(buckets[i])
        loads[k] += w[i]
    return [sorted(b) for b in out]
