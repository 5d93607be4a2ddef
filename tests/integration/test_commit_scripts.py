"""A round's commit writes states, overlays and firings as one script each inside its MULTI, on
a real standalone Redis and a real 3-master cluster: every value, order, trim and expiry is
what the commands queued one by one wrote (decisions, action logs newest first and trimmed,
outbox entries in order, tags and their expiry, statistics)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from strata.io.realtime_store import LeaseLost, RealtimeStore, action_records, outbox_records
from strata.realtime.batch import EffectBatch
from strata.realtime.keys import OUTBOX_FIELD, WORKER_GROUP
from strata.realtime.model import ActionSpec, Firing, action_key
from strata.realtime.stream_config import load_stream_config
from strata.timeutil import DAY_MS

pytestmark = pytest.mark.integration

P = 3
CONFIG = load_stream_config().model_copy(update={"action_log_len": 3})


@pytest.fixture(params=["standalone", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[RealtimeStore]:
    url = request.getfixturevalue(
        "redis_url" if request.param == "standalone" else "redis_cluster_url"
    )
    s = RealtimeStore(url, "strata", CONFIG, partitions=8)
    yield s
    s.close()


def _users(store: RealtimeStore, n: int) -> list[int]:
    return [u for u in range(1, 10_000) if store.keys.partition_of(u) == P][:n]


def _firing(rule: str, user: int, actions: list[str], tag: tuple[str, int] | None = None) -> Firing:
    return Firing(
        rule=rule, user_id=user, instance="i", key=action_key(rule, user, "i"), tier="regular",
        issued_ms=1_764_547_200_000, day="2026-12-01",
        actions=[ActionSpec(a, {"n": i}) for i, a in enumerate(actions)],
        trigger={"event_id": f"e.{rule}"}, tag=tag,
    )  # fmt: skip


def _near(ttl_s: int, expected_s: int) -> bool:
    return expected_s - 5 <= ttl_s <= expected_s


def test_a_commit_writes_what_the_commands_one_by_one_wrote(store: RealtimeStore) -> None:
    client, keys = store.redis, store.keys
    u1, u2 = _users(store, 2)
    client.set(keys.lease(P), "tok")
    client.lpush(keys.actions(u1), b"old-2", b"old-1")
    now_ms = time.time_ns() // 1_000_000
    until = now_ms + 3_600_000
    f1 = _firing("cart_abandoned", u1, ["coupon", "push"], tag=("cart_abandoner", until))
    f2 = _firing("negative_review", u1, ["service_task"])
    f3 = _firing("visit_streak_3d", u2, [])  # no actions: a decision only
    batch = EffectBatch(
        states={u1: b'{"s": 1}', u2: b'{"s": 2}'}, firings=[f1, f2, f3], overlays={u1: b"{}"}
    )
    store.commit(P, WORKER_GROUP, "tok", batch)

    day_s = 86_400
    assert client.get(keys.state(u1)) == b'{"s": 1}' and client.get(keys.state(u2)) == b'{"s": 2}'
    assert _near(client.ttl(keys.state(u2)), CONFIG.state_ttl_days * day_s)
    assert client.get(keys.live(u1)) == b"{}" and client.get(keys.live(u2)) is None
    assert _near(client.ttl(keys.live(u1)), CONFIG.live_ttl_days * day_s)
    idem_s = CONFIG.idem_ttl_days * day_s
    for f in (f1, f2, f3):
        assert client.get(keys.idem(f.key, f.user_id)) == b"issued"
        assert _near(client.ttl(keys.idem(f.key, f.user_id)), idem_s)
    # newest first: f2's record, then f1's two (LPUSHed in order), trimmed to 3
    r1, r2 = action_records(f1)
    (r3,) = action_records(f2)
    assert client.lrange(keys.actions(u1), 0, -1) == [r3, r2, r1]
    assert _near(client.ttl(keys.actions(u1)), max(idem_s, 90 * day_s))
    assert not client.exists(keys.actions(u2))
    outbox = [fields[OUTBOX_FIELD] for _, fields in client.xrange(keys.outbox(P))]
    assert outbox == [*outbox_records(f1), *outbox_records(f2)]
    assert client.hgetall(keys.tags(u1)) == {b"cart_abandoner": str(until).encode()}
    left_ms = until + DAY_MS - time.time_ns() // 1_000_000
    assert left_ms - 5_000 <= client.pttl(keys.tags(u1)) <= left_ms
    assert not client.exists(keys.tags(u2))
    stats = client.hgetall(keys.stats(P))
    assert stats[b"cart_abandoned|regular|fired"] == b"1"
    assert stats[b"visit_streak_3d|regular|fired"] == b"1"


def test_a_commit_without_the_lease_writes_nothing(store: RealtimeStore) -> None:
    client, keys = store.redis, store.keys
    (u1,) = _users(store, 1)
    client.set(keys.lease(P), "other")
    batch = EffectBatch(states={u1: b"{}"}, firings=[_firing("negative_review", u1, ["coupon"])])
    with pytest.raises(LeaseLost):
        store.commit(P, WORKER_GROUP, "tok", batch)
    assert not client.exists(keys.state(u1), keys.outbox(P), keys.actions(u1))
