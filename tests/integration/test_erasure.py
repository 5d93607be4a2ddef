"""Erasure end to end: the segment store's erase (both storage formats, every version), the
real-time keys, and the zero-traces test over every Redis key and value and every Parquet file
after `DELETE /v1/users/{id}`, `strata erase`, `strata compact` and the next recompute."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis

from strata.ids import bucket_of
from strata.io.segment_store import IncompleteVersionError, SegmentStore
from strata.online.codec import decode_many, encode, n_groups_for
from tests.support import FULL, segment_columns

pytestmark = pytest.mark.integration


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(2**40, size=n, replace=False).astype(np.int64)


@pytest.fixture
def store(redis_url: str) -> Iterator[SegmentStore]:
    with SegmentStore(redis_url) as s:
        yield s


def _write(store: SegmentStore, version: str, ids: np.ndarray, n_groups: int, **kw: object) -> None:
    store.begin_version(version, FULL, n_groups, **kw)  # type: ignore[arg-type]
    store.write_users(version, ids, encode(segment_columns(ids, 1), FULL))


def test_erase_rewrites_packed_groups_and_hash_versions(store: SegmentStore) -> None:
    ids = _ids(2000)
    records = decode_many(encode(segment_columns(ids, 1), FULL), FULL)
    expected = dict(zip(ids.tolist(), records, strict=True))
    # two buckets of ~1000 users: several full groups each, so erasing from the first group
    # shifts every later entry of the bucket
    _write(store, "old", ids, n_groups_for(len(ids)), storage="hash")
    store.publish("old", expected_users=len(ids))
    _write(store, "new", ids, 2)
    store.publish("new", expected_users=len(ids))
    _write(store, "wip", ids, 2, expected_users=len(ids))
    info = store.info("new")
    assert info is not None and info.chunk_users < 900
    order = np.lexsort((ids, bucket_of(ids, 2)))
    in_bucket0 = ids[order][: int((bucket_of(ids, 2) == 0).sum())]
    gone = np.array([in_bucket0[0], in_bucket0[info.chunk_users + 5], ids[order][-1]])

    assert store.erase(gone) == 9  # 3 users x 3 versions
    assert store.erase(gone) == 0  # idempotent
    rest = ids[~np.isin(ids, gone)]
    for version in ("new", "old"):
        if version == "old":
            store.rollback("old")
        for start in range(0, len(rest), 1000):
            got_version, records = store.get_many(rest[start : start + 1000])
            assert got_version == version
            assert records == [expected[int(u)] for u in rest[start : start + 1000]]
        assert store.get_many(gone)[1] == [None, None, None]
        got = store.info(version)
        assert got is not None and got.n_users == len(rest) and got.users_written == len(rest)
    new = store.info("new")
    assert new is not None and store._verify_packed("new", new) == len(rest)  # publish's checks
    # the version being written: its count is lowered, so the publish with the job's own
    # (now stale) count fails instead of serving the erased users
    with pytest.raises(IncompleteVersionError):
        store.publish("wip", expected_users=len(ids))
    assert store.publish("wip").n_users == len(rest)  # the lowered expected_users

    # a bucket erased to nothing loses its index and groups; the other bucket still answers
    store.rollback("new")
    emptied = ids[bucket_of(ids, 2) == 1]
    assert store.erase(emptied) == 3 * (len(emptied) - 1)
    client = redis.Redis(connection_pool=store._redis.connection_pool)
    assert not list(client.scan_iter(match="strata:v:new:[gi]:1*"))
    survivors = rest[bucket_of(rest, 2) == 0]
    assert store.get_many(survivors[:500])[1] == [expected[int(u)] for u in survivors[:500]]
    assert store.get_many(emptied[:5])[1] == [None] * 5
