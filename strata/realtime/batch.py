"""One round of a partition, as pure steps between the Redis reads and the atomic commit.

The stream worker (``actors/stream_worker.py``) reads entries and due timers, then::

    work = processor.start(entries, timers, now_ms)        # decode, dead letters
    ... load work.user_ids' states and segments from Redis ...
    candidates = processor.evaluate(work, states, segments)  # the rule engine, in order
    ... reserve the candidates' daily budgets (one Lua call) ...
    batch = processor.finish(work, reservations)           # undo refused ones, assemble
    ... add live overlays for work.ordered, commit batch + XACK in one MULTI/EXEC ...

Entry order within a partition is preserved per user (one user's events are in one
partition, processed in stream order). An entry that raises in the engine fails the whole
round (nothing is committed); the worker then goes through the pending entries one at a time,
so a poison entry is isolated, retried until ``max_deliveries`` and then dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from strata.realtime.model import (
    Conversion,
    Firing,
    Outcome,
    Segment,
    Suppression,
    Timer,
    UserState,
)
from strata.realtime.wire import decode_event

__all__ = ["BatchProcessor", "EffectBatch", "Entry", "Reservation", "RoundWork"]


@dataclass(frozen=True)
class Entry:
    """One stream entry: its id, the raw wire value, and how often it was delivered."""

    id: bytes
    raw: bytes | None
    deliveries: int = 1


@dataclass(frozen=True)
class Reservation:
    """The budget check of one firing: ``ok`` (issue it), ``budget`` (over the daily
    budget: suppress) or ``duplicate`` (decided before: drop silently)."""

    firing: Firing
    status: str


@dataclass
class EffectBatch:
    """Everything one round of a partition caused, committed atomically with the XACKs."""

    states: dict[int, bytes] = field(default_factory=dict)
    firings: list[Firing] = field(default_factory=list)
    suppressions: list[Suppression] = field(default_factory=list)
    conversions: list[Conversion] = field(default_factory=list)
    timers_add: list[Timer] = field(default_factory=list)
    timers_done: list[bytes] = field(default_factory=list)
    overlays: dict[int, bytes] = field(default_factory=dict)
    overlay_order_ms: dict[int, int] = field(default_factory=dict)
    dead: list[tuple[bytes, bytes | None, str]] = field(default_factory=list)
    ack: list[bytes] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (
            self.states
            or self.firings
            or self.suppressions
            or self.conversions
            or self.timers_add
            or self.timers_done
            or self.overlays
            or self.dead
            or self.ack
        )


class Engine(Protocol):
    """What the processor needs of :class:`strata.realtime.engine.TriggerEngine`."""

    def on_event(
        self, state: UserState, event: dict[str, Any], segment: Segment | None, now_ms: int
    ) -> Outcome: ...

    def on_timer(
        self, state: UserState, timer: Timer, segment: Segment | None, now_ms: int
    ) -> Outcome: ...

    def undo(self, state: UserState, firing: Firing) -> None: ...


@dataclass
class RoundWork:
    """A round in progress: decoded events, timers and what they need loaded."""

    now_ms: int
    events: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    timers: list[tuple[bytes, Timer]] = field(default_factory=list)
    batch: EffectBatch = field(default_factory=EffectBatch)
    states: dict[int, UserState] = field(default_factory=dict)
    outcome: Outcome = field(default_factory=Outcome)
    #: users who ordered in this round (their live tier needs refreshing), last order ms
    ordered: dict[int, int] = field(default_factory=dict)
    events_in: int = 0

    @property
    def user_ids(self) -> list[int]:
        """Users whose state and segment the round needs, in first-seen order."""
        seen: dict[int, None] = {}
        for _, ev in self.events:
            seen[ev["user_id"]] = None
        for _, t in self.timers:
            seen[t.user_id] = None
        return list(seen)


class BatchProcessor:
    """Pure steps of one round (see the module docstring).

    Args:
        engine: the rule engine.
        max_deliveries: an entry delivered this many times without being acknowledged is
            dead-lettered instead of processed again (a poison entry).
    """

    def __init__(self, engine: Engine, max_deliveries: int) -> None:
        self.engine = engine
        self.max_deliveries = max_deliveries

    def start(self, entries: Sequence[Entry], timers: Sequence[bytes], now_ms: int) -> RoundWork:
        """Decode entries (undecodable or over-delivered ones become dead letters, acked)."""
        work = RoundWork(now_ms)
        for entry in entries:
            work.events_in += 1
            if entry.raw is None:
                # trimmed away while pending: nothing left to process or sink
                work.batch.ack.append(entry.id)
                continue
            if entry.deliveries > self.max_deliveries:
                work.batch.dead.append(
                    (entry.id, entry.raw, f"delivered {entry.deliveries} times, never processed")
                )
                work.batch.ack.append(entry.id)
                continue
            try:
                event = decode_event(entry.raw)
            except ValueError as exc:
                work.batch.dead.append((entry.id, entry.raw, f"undecodable: {exc}"))
                work.batch.ack.append(entry.id)
                continue
            work.events.append((entry.id, event))
        for member in timers:
            try:
                work.timers.append((member, Timer.from_member(member)))
            except (ValueError, KeyError, TypeError) as exc:
                work.batch.dead.append((b"timer", member, f"bad timer: {exc}"))
                work.batch.timers_done.append(member)
        return work

    def evaluate(
        self,
        work: RoundWork,
        states: Mapping[int, bytes | None],
        segments: Mapping[int, Segment | None],
    ) -> list[Firing]:
        """Run the engine over every event (stream order) and due timer; returns the
        firings whose budget must be reserved. Engine errors propagate (the caller retries
        the entries one by one)."""
        for user, raw in states.items():
            work.states[user] = UserState.from_bytes(raw, user)
        engine = self.engine
        now = work.now_ms
        out = work.outcome
        for entry_id, event in work.events:
            user = event["user_id"]
            state = work.states.setdefault(user, UserState(user))
            result = engine.on_event(state, event, segments.get(user), now)
            out.extend(result)
            if result.ordered and state.last_order_ms is not None:
                work.ordered[user] = state.last_order_ms
            work.batch.ack.append(entry_id)
        for member, timer in work.timers:
            state = work.states.setdefault(timer.user_id, UserState(timer.user_id))
            out.extend(engine.on_timer(state, timer, segments.get(timer.user_id), now))
            work.batch.timers_done.append(member)
        return list(out.firings)

    def screen(
        self, work: RoundWork, decide: Callable[[Firing], tuple[Firing | None, str | None]]
    ) -> list[Firing]:
        """Pass every firing through ``decide`` (the playbook: strategy holdouts, experiment
        arms): a None firing is suppressed with the reason given (its traces undone), another
        firing replaces it (e.g. an arm's coupon value). Returns the firings left."""
        kept: list[Firing] = []
        for firing in work.outcome.firings:
            new, reason = decide(firing)
            if new is None:
                self.engine.undo(work.states[firing.user_id], firing)
                work.batch.suppressions.append(
                    Suppression(
                        firing.rule, firing.user_id, firing.key, firing.tier, reason or "holdout"
                    )
                )
                continue
            kept.append(new)
        work.outcome.firings = kept
        return list(kept)

    def finish(self, work: RoundWork, reservations: Sequence[Reservation]) -> EffectBatch:
        """Drop firings decided before, turn refused budgets into suppressions (undoing their
        traces in the state), and assemble the batch."""
        batch = work.batch
        out = work.outcome
        refused = {id(r.firing): r.status for r in reservations if r.status != "ok"}
        for firing in out.firings:
            status = refused.get(id(firing))
            if status is None:
                batch.firings.append(firing)
                continue
            self.engine.undo(work.states[firing.user_id], firing)
            if status != "duplicate":
                batch.suppressions.append(
                    Suppression(firing.rule, firing.user_id, firing.key, firing.tier, status)
                )
        batch.suppressions.extend(out.suppressions)
        batch.conversions.extend(out.conversions)
        batch.timers_add.extend(out.timers)
        for user, state in work.states.items():
            batch.states[user] = state.to_bytes()
        return batch
