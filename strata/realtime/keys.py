"""The Redis key layout of the real-time loop, as pure functions of a namespace.

Like :mod:`strata.online.keys` for the snapshot: every writer (API, stream workers, sink,
campaigns) and reader builds key names here, so all agree. ``ns`` is the namespace and
``{p3}`` is a literal Redis Cluster hash tag (partition 3)::

    {ns}:rt:layout                       hash    partitions (fixed once the first event is written)
    {ns}:rt:{pP}:events                  stream  events of partition P (field ``e``: wire JSON)
    {ns}:rt:{pP}:seen:{event_id}         string  dedupe marker of an event appended to P (TTL)
    {ns}:rt:{pP}:dead                    stream  dead letters of P: entry id, reason, payload
    {ns}:rt:{pP}:outbox                  stream  actions issued to users of P (field ``a``)
    {ns}:rt:{pP}:lease                   string  token of the worker owning P (PX TTL)
    {ns}:rt:{pP}:due                     zset    timers of P, score = due epoch ms
    {ns}:rt:{pP}:livers                  zset    users of P with a live overlay, score = order ms
    {ns}:rt:{pP}:stats                   hash    "{rule}|{tier}|{metric}" -> P's count or CNY
    {ns}:rt:{pP}:exposures               stream  first exposures of users of P (field ``x``)
    {ns}:rt:{pP}:u:{user}                string  live per-user state (engine JSON, TTL)
    {ns}:rt:{pP}:idem:{key}              string  decision taken for an action key of a user of P
    {ns}:rt:{pP}:actions:{user}          list    the user's actions, newest first (JSON)
    {ns}:rt:{pP}:tags:{user}             hash    dynamic tag -> expiry epoch ms
    {ns}:rt:{pP}:live:{user}             string  live segment overlay (JSON, TTL)
    {ns}:rt:{pP}:exposed:{exp}:{user}    string  the arm a user was first exposed to (SET NX)
    {ns}:rt:{pP}:exposed_count:{exp}     hash    arm -> users of P exposed (readers sum over P)
    {ns}:rt:budget:{rule:day}            hash    count / cents issued by a rule on a local day
    {ns}:rt:reserve:{rule:day}:{key}     string  budget reservation of an action key (TTL)
    {ns}:rt:rules                        string  the active rules as JSON [{"name", "kind"}, ...]
    {ns}:rt:sink                         hash    stream -> last entry id committed to the warehouse
    {ns}:rt:workers                      hash    partition -> JSON heartbeat of its worker

A user's keys live under their partition's tag (the partition is
:func:`strata.realtime.wire.partition_of` of the user among the stored ``layout`` count, the
event log's partition function), so they share one hash slot with the partition's stream,
lease, timers, stats, outbox and dead letters. That is what makes a worker's round atomic on
a Redis Cluster too: one MULTI/EXEC under WATCH on the lease touches only one slot. What
Redis Cluster allows in one transaction or script (one slot) decides the rest:

- atomic per partition: a round's commit (states, overlays, tags, action logs, idem, timers,
  stats, outbox, dead letters, XACK), an append's dedupe markers with their XADD, a first
  exposure's marker, count and stream entry;
- atomic per budget (rule and day): a reservation checks and takes the budget and records
  its marker in one script on the budget's slot; it runs before the commit and is
  idempotent by action key, so a replayed round counts nothing twice;
- global and on their own slots, never changed together with anything else: the layout,
  the rules, the sink cursors and the workers' heartbeats.

Statistics, outboxes, exposure counts and dead letters are per partition; their readers merge
the partitions (:func:`strata.realtime.stats.merge_stats` and friends). The same layout serves a
standalone Redis. Key names are built by string concatenation from ids that cannot contain
``:`` where it matters (user ids are integers; rule names are ``[a-z0-9_]``; event ids are
checked).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

from strata.online.keys import check_namespace
from strata.realtime.wire import partition_of

__all__ = [
    "ENTRY_FIELD",
    "EXPOSURE_FIELD",
    "OUTBOX_FIELD",
    "SINK_GROUP",
    "WORKER_GROUP",
    "RealtimeKeys",
    "split_tag",
]

#: consumer group of the rule workers on every partition stream
WORKER_GROUP = "workers"
#: consumer group of the warehouse sink
SINK_GROUP = "sink"
#: the one field of a stream entry: the event's wire JSON
ENTRY_FIELD = b"e"
#: the one field of an outbox entry: the action's JSON
OUTBOX_FIELD = b"a"
#: the one field of an exposure entry: the exposure's JSON
EXPOSURE_FIELD = b"x"

_TAG = re.compile(r"\{p(\d+)\}:")


@lru_cache(maxsize=65_536)
def _partition(user_id: int, partitions: int) -> int:
    # one hash per user and not per key name: a worker's round builds several names per user
    return partition_of(user_id, partitions)


def split_tag(rest: str) -> tuple[int | None, str]:
    """``(partition, name)`` of a real-time key without its ``{ns}:rt:`` prefix:
    ``"{p3}:u:7"`` -> ``(3, "u:7")``; a key without a partition tag -> ``(None, rest)``."""
    m = _TAG.match(rest)
    if m is None:
        return None, rest
    return int(m.group(1)), rest[m.end() :]


@dataclass(frozen=True)
class RealtimeKeys:
    """Every real-time key name of one namespace (validated on construction).

    Args:
        namespace: the key namespace (``Settings.redis_namespace``).
        partitions: the stored stream partition count; needed only by the per-user keys
            (which live under their partition's hash tag), see :meth:`with_partitions`.
    """

    namespace: str = "strata"
    partitions: int | None = None

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        if self.partitions is not None and self.partitions < 1:
            raise ValueError(f"partitions must be positive, not {self.partitions}")

    def with_partitions(self, partitions: int) -> RealtimeKeys:
        """The same namespace's keys for ``partitions`` stream partitions."""
        return replace(self, partitions=int(partitions))

    @property
    def prefix(self) -> str:
        return f"{self.namespace}:rt:"

    def part(self, partition: int) -> str:
        """The prefix of every key of ``partition`` (``{ns}:rt:{pP}:``, one hash slot)."""
        return f"{self.prefix}{{p{int(partition)}}}:"

    def partition_of(self, user_id: int) -> int:
        """The partition of a user (its keys share that partition's hash slot)."""
        if self.partitions is None:
            raise ValueError("RealtimeKeys needs the partition count for per-user keys")
        return _partition(int(user_id), self.partitions)

    def user_part(self, user_id: int) -> str:
        return self.part(self.partition_of(user_id))

    @property
    def layout(self) -> str:
        return self.prefix + "layout"

    def stream(self, partition: int) -> str:
        return self.part(partition) + "events"

    def seen(self, event_id: str, partition: int) -> str:
        return f"{self.part(partition)}seen:{event_id}"

    def dead(self, partition: int) -> str:
        return self.part(partition) + "dead"

    def outbox(self, partition: int) -> str:
        return self.part(partition) + "outbox"

    def exposures(self, partition: int) -> str:
        return self.part(partition) + "exposures"

    def lease(self, partition: int) -> str:
        return self.part(partition) + "lease"

    def due(self, partition: int) -> str:
        return self.part(partition) + "due"

    def live_users(self, partition: int) -> str:
        return self.part(partition) + "livers"

    def stats(self, partition: int) -> str:
        return self.part(partition) + "stats"

    def state(self, user_id: int) -> str:
        return f"{self.user_part(user_id)}u:{user_id}"

    def idem(self, key: str, user_id: int) -> str:
        return f"{self.user_part(user_id)}idem:{key}"

    def budget(self, rule: str, day: str) -> str:
        return f"{self.prefix}budget:{{{rule}:{day}}}"

    def reserve(self, key: str, rule: str, day: str) -> str:
        """The reservation marker of an action key, under its budget's hash tag."""
        return f"{self.prefix}reserve:{{{rule}:{day}}}:{key}"

    def actions(self, user_id: int) -> str:
        return f"{self.user_part(user_id)}actions:{user_id}"

    def tags(self, user_id: int) -> str:
        return f"{self.user_part(user_id)}tags:{user_id}"

    def live(self, user_id: int) -> str:
        return f"{self.user_part(user_id)}live:{user_id}"

    def exposed(self, experiment: str, user_id: int) -> str:
        return f"{self.user_part(user_id)}exposed:{experiment}:{user_id}"

    def exposed_count(self, experiment: str, partition: int) -> str:
        return f"{self.part(partition)}exposed_count:{experiment}"

    @property
    def rules(self) -> str:
        return self.prefix + "rules"

    @property
    def sink(self) -> str:
        return self.prefix + "sink"

    @property
    def workers(self) -> str:
        return self.prefix + "workers"

    def legacy_streams(self, partitions: int) -> list[str]:
        """The streams of the layout before the partition tags (``{ns}:rt:events:{p}``, the
        global outbox and exposures), which nothing reads any more: drain them before an
        upgrade (docs/realtime.md, "Redis Cluster")."""
        streams = [f"{self.prefix}events:{p}" for p in range(partitions)]
        return [*streams, self.prefix + "outbox", self.prefix + "exposures"]
