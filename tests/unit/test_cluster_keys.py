"""The online store's Redis Cluster key names and the tagged read's call plan (pure)."""

from __future__ import annotations

import fnmatch

import numpy as np
import pytest

from strata.ids import bucket_of
from strata.io.redis_client import slot_of
from strata.io.segment_store import (
    TAGGED,
    ReadMeta,
    SegmentStoreError,
    merge_tagged_replies,
    tagged_read_calls,
)
from strata.online.keys import KeyLayout
from tests.support import FULL


def test_cluster_names_share_the_tags_that_must_change_together() -> None:
    plain, tagged = KeyLayout("strata"), KeyLayout("strata:staging", cluster=True)
    assert (plain.pointer, plain.meta("v1")) == ("strata:current", "strata:v:v1:meta")
    control = [tagged.pointer, tagged.versions, tagged.history, tagged.seq, tagged.meta("v1")]
    assert tagged.pointer == "{strata:staging}:current"
    assert len({slot_of(k) for k in control}) == 1
    meta = tagged.meta("20260601T0200Z")
    assert fnmatch.fnmatchcase(meta, tagged.meta_pattern)
    assert tagged.version_of_meta(meta) == "20260601T0200Z"
    assert plain.version_of_meta(plain.meta("v.2")) == "v.2"
    # a bucket's index and group strings: one slot, under the version's prefixes
    index, chunk = tagged.tagged_index("v1", 37, 16), tagged.tagged_chunk("v1", 37, 2, 16)
    assert index == "strata:staging:v:v1:i:{v1.5}.37"
    assert chunk == "strata:staging:v:v1:g:{v1.5}.37.2"
    assert slot_of(index) == slot_of(chunk) == slot_of(tagged.tagged_index("v1", 5, 16))
    assert len({slot_of(tagged.tagged_index("v1", b, 16)) for b in range(16)}) == 16
    with pytest.raises(ValueError):
        tagged.tagged_index("v1", 3, 0)


def test_tagged_read_calls_group_by_tag_and_merge_back_in_batch_order() -> None:
    meta = ReadMeta(n_groups=32, layout=FULL, storage=TAGGED, chunk_users=100, slot_groups=8)
    ids = np.random.default_rng(0).choice(2**40, size=200, replace=False).astype(np.int64)
    calls = tagged_read_calls(ids, "v1", meta, KeyLayout("strata", cluster=True))
    tags = bucket_of(ids, 32) % 8
    assert sorted(int(tags[c.positions[0]]) for c in calls) == sorted(set(tags.tolist()))
    for call in calls:
        assert len(set(tags[call.positions].tolist())) == 1
        assert list(call.positions) == sorted(call.positions)  # batch order within a group
        assert slot_of(call.key) == slot_of(call.args[0] + "0")
        assert len(call.args[3]) == 8 * len(call.positions)
    # every even position found, each record = its position's byte, from per-call replies
    size = FULL.size
    replies = []
    for call in calls:
        hits = [int(p) for p in call.positions if p % 2 == 0]
        mask = "".join("1" if p % 2 == 0 else "0" for p in call.positions).encode()
        replies.append([mask, b"".join(bytes([p % 251]) * size for p in hits), b"0"])
    found, records, torn = merge_tagged_replies(replies, calls, len(ids), meta)
    assert not torn and found.tolist() == [i % 2 == 0 for i in range(200)]
    assert records == b"".join(bytes([i % 251]) * size for i in range(0, 200, 2))
    replies[0][2] = b"1"
    assert merge_tagged_replies(replies, calls, len(ids), meta)[2] is True
    replies[0][1] = replies[0][1][:-1]
    with pytest.raises(SegmentStoreError, match="another layout"):
        merge_tagged_replies(replies, calls, len(ids), meta)
