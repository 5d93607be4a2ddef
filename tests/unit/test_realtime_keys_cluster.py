"""The real-time key layout on a Redis Cluster: what one round, one append or one exposure
changes shares one hash slot; the merged readers' arithmetic."""

from __future__ import annotations

import pytest

from strata.io.redis_client import slot_of
from strata.realtime.keys import RealtimeKeys, split_tag
from strata.realtime.stats import merge_stat_hashes, rule_stats
from strata.realtime.wire import partition_of

KEYS = RealtimeKeys("ns", 8)


@pytest.mark.parametrize("user", [0, 7, 12345, 2**62 + 11])
def test_a_users_keys_share_the_slot_of_their_partition(user: int) -> None:
    p = partition_of(user, 8)
    assert KEYS.partition_of(user) == p
    round_keys = [
        KEYS.stream(p), KEYS.lease(p), KEYS.due(p), KEYS.live_users(p), KEYS.stats(p),
        KEYS.outbox(p), KEYS.dead(p), KEYS.exposures(p), KEYS.seen("e1", p),
        KEYS.state(user), KEYS.live(user), KEYS.tags(user), KEYS.actions(user),
        KEYS.idem(f"rule:{user}:i", user), KEYS.exposed("exp", user),
        KEYS.exposed_count("exp", p),
    ]  # fmt: skip
    assert {slot_of(k) for k in round_keys} == {slot_of(KEYS.stream(p))}
    assert all(k.startswith(f"ns:rt:{{p{p}}}:") for k in round_keys)


def test_reservations_share_their_budgets_slot_and_global_keys_stand_alone() -> None:
    budget = KEYS.budget("cart_abandoned", "2026-12-01")
    assert budget == "ns:rt:budget:{cart_abandoned:2026-12-01}"
    marker = KEYS.reserve("cart_abandoned:7:i", "cart_abandoned", "2026-12-01")
    assert slot_of(marker) == slot_of(budget)
    assert slot_of(KEYS.budget("cart_abandoned", "2026-12-02")) != slot_of(budget)
    assert KEYS.layout == "ns:rt:layout" and KEYS.rules == "ns:rt:rules"
    # eight partitions spread over several slots (the test cluster puts them on 3 masters)
    assert len({slot_of(KEYS.stream(p)) for p in range(8)}) == 8


def test_per_user_keys_need_the_partition_count() -> None:
    bare = RealtimeKeys("ns")
    assert bare.stream(3) == "ns:rt:{p3}:events"  # partition keys do not
    with pytest.raises(ValueError, match="partition count"):
        bare.state(7)
    assert bare.with_partitions(8).state(7) == KEYS.state(7)
    with pytest.raises(ValueError):
        RealtimeKeys("ns", 0)


def test_split_tag() -> None:
    assert split_tag("{p3}:u:7") == (3, "u:7")
    assert split_tag("{p12}:events") == (12, "events")
    assert split_tag("layout") == (None, "layout")
    assert split_tag("budget:{r:2026-01-01}") == (None, "budget:{r:2026-01-01}")
    assert split_tag("u:7") == (None, "u:7")  # the names before the tags


def test_partition_stats_merge_like_one_hash() -> None:
    parts = [
        {b"r|potential|fired": b"4", b"r|potential|revenue_cny": b"30.1"},
        {b"r|potential|fired": b"1", b"r|potential|revenue_cny": b"0.2"},
        {"r|high_value|fired": "2", "r|potential|coupon_cost_cny": "5"},
        {},
    ]
    merged = merge_stat_hashes(parts)
    assert merged[b"r|potential|fired"] == b"5" and merged[b"r|high_value|fired"] == b"2"
    assert abs(float(merged[b"r|potential|revenue_cny"]) - 30.3) < 1e-9
    one = {b"r|potential|fired": b"5", b"r|high_value|fired": b"2",
           b"r|potential|revenue_cny": b"30.3", b"r|potential|coupon_cost_cny": b"5"}  # fmt: skip
    assert rule_stats(None, merged) == rule_stats(None, one)
    assert merge_stat_hashes([]) == {}
