"""One round of a partition without Redis: decode, dead letters, the engine in stream order,
budget refusals undone, duplicates dropped (strata.realtime.batch with the real engine)."""

from __future__ import annotations

import orjson
import pytest

from strata.config import load_calendar
from strata.realtime.batch import BatchProcessor, Entry, Reservation
from strata.realtime.engine import TriggerEngine
from strata.realtime.model import Segment, Timer, UserState
from strata.realtime.triggers import load_triggers
from strata.realtime.wire import encode_event
from strata.timeutil import DAY_MS

NOW = 1_764_547_200_000 + 10 * 3_600_000
MIN = 60_000
SEG = Segment(tier="potential", lifecycle_stage="growing", top_category="fruit")


def processor(max_deliveries: int = 3) -> BatchProcessor:
    engine = TriggerEngine(load_triggers(), load_calendar(), max_event_age_ms=DAY_MS)
    return BatchProcessor(engine, max_deliveries)


def entry(i: int, event: dict[str, object], deliveries: int = 1) -> Entry:
    return Entry(f"{i}-0".encode(), encode_event(event), deliveries)


def review(user: int, rating: int, eid: str) -> dict[str, object]:
    return {"event_id": eid, "user_id": user, "event_type": "review", "rating": rating, "ts": NOW}


def test_a_round_fires_in_stream_order_and_acks_every_entry() -> None:
    p = processor()
    entries = [entry(1, review(7, 1, "a")), entry(2, review(8, 5, "b"))]
    work = p.start(entries, [], NOW)
    assert work.user_ids == [7, 8]
    candidates = p.evaluate(work, {7: None, 8: None}, {7: SEG, 8: None})
    assert [f.rule for f in candidates] == ["negative_review"]
    batch = p.finish(work, [Reservation(f, "ok") for f in candidates])
    assert batch.ack == [b"1-0", b"2-0"]
    assert [f.key for f in batch.firings] == ["negative_review:7:a"]
    assert {a.action for a in batch.firings[0].actions} == {"service_task", "coupon"}
    assert set(batch.states) == {7, 8}
    assert UserState.from_bytes(batch.states[7], 7).neg_reviews == [NOW]


def test_refused_budgets_become_suppressions_and_duplicates_vanish() -> None:
    p = processor()
    work = p.start([entry(1, review(7, 1, "a")), entry(2, review(9, 2, "c"))], [], NOW)
    candidates = p.evaluate(work, {7: None, 9: None}, {})
    assert len(candidates) == 2
    batch = p.finish(
        work, [Reservation(candidates[0], "budget"), Reservation(candidates[1], "duplicate")]
    )
    assert batch.firings == []
    assert [(s.rule, s.reason) for s in batch.suppressions] == [("negative_review", "budget")]
    # the refused firing left no trace: the next negative review is not in cooldown
    state = UserState.from_bytes(batch.states[7], 7)
    again = p.start([entry(3, review(7, 1, "d"))], [], NOW + MIN)
    assert [f.rule for f in p.evaluate(again, {7: state.to_bytes()}, {})] == ["negative_review"]


def test_undecodable_and_over_delivered_entries_are_dead_letters_and_acked() -> None:
    p = processor(max_deliveries=3)
    good = entry(1, review(7, 1, "a"))
    bad = Entry(b"2-0", b"{not json")
    tired = entry(3, review(8, 1, "b"), deliveries=4)
    trimmed = Entry(b"4-0", None)
    work = p.start([good, bad, tired, trimmed], [b"not a timer"], NOW)
    assert [e for e, _ in work.events] == [b"1-0"]
    reasons = [reason for _, _, reason in work.batch.dead]
    assert reasons[0].startswith("undecodable") and "delivered 4 times" in reasons[1]
    assert reasons[2].startswith("bad timer")
    assert set(work.batch.ack) == {b"2-0", b"3-0", b"4-0"}
    assert work.batch.timers_done == [b"not a timer"]


def test_an_engine_error_propagates_so_the_round_commits_nothing() -> None:
    p = processor()
    poison = {"event_id": "x", "user_id": 7, "event_type": "order", "order_id": "o",
              "amount_cny": "lots", "ts": NOW}  # fmt: skip
    work = p.start([entry(1, poison)], [], NOW)
    with pytest.raises(ValueError):
        p.evaluate(work, {7: None}, {})


def test_cart_timer_round_trip_fires_the_coupon_on_the_event_category() -> None:
    p = processor()
    cart = {"event_id": "c", "user_id": 7, "event_type": "add_to_cart", "category": "fruit",
            "ts": NOW - 31 * MIN}  # fmt: skip
    work = p.start([entry(1, cart)], [], NOW)
    p.evaluate(work, {7: None}, {7: SEG})
    batch = p.finish(work, [])
    (timer,) = batch.timers_add
    assert timer.due_ms == NOW - MIN and timer.rule == "cart_abandoned"
    # the due timer, in the next round, against the committed state
    work2 = p.start([], [timer.member()], NOW)
    fired = p.evaluate(work2, {7: batch.states[7]}, {7: SEG})
    assert [f.rule for f in fired] == ["cart_abandoned"]
    coupon = next(a for a in fired[0].actions if a.action == "coupon")
    assert coupon.params["category"] == "fruit"
    done = p.finish(work2, [Reservation(fired[0], "ok")])
    assert done.timers_done == [timer.member()]
    assert Timer.from_member(timer.member()) == timer
    assert orjson.loads(timer.member())["rule"] == "cart_abandoned"
