"""The Redis key layout of the real-time loop, as pure functions of a namespace.

Like :mod:`strata.online.keys` for the snapshot: every writer (API, stream workers, sink,
campaigns) and reader builds key names here, so all agree. ``ns`` is the namespace::

    {ns}:rt:layout                 hash    partitions (fixed once the first event is written)
    {ns}:rt:events:{p}             stream  events of partition p (field ``e``: wire JSON)
    {ns}:rt:seen:{event_id}        string  dedupe marker of an appended event (TTL)
    {ns}:rt:dead                   stream  dead letters: entry id, partition, reason, payload
    {ns}:rt:outbox                 stream  issued actions for delivery systems (field ``a``)
    {ns}:rt:lease:{p}              string  token of the worker owning partition p (PX TTL)
    {ns}:rt:due:{p}                zset    timers of partition p, score = due epoch ms
    {ns}:rt:u:{user}               string  live per-user state (engine JSON, TTL)
    {ns}:rt:idem:{key}             string  decision taken for an action key (TTL)
    {ns}:rt:reserve:{key}          string  budget reservation of an action key (TTL)
    {ns}:rt:budget:{rule}:{day}    hash    count / cents issued by a rule on a local day
    {ns}:rt:actions:{user}         list    the user's actions, newest first (JSON)
    {ns}:rt:tags:{user}            hash    dynamic tag -> expiry epoch ms
    {ns}:rt:live:{user}            string  live segment overlay (JSON, TTL)
    {ns}:rt:livers:{p}             zset    users of p with a live overlay, score = last order ms
    {ns}:rt:stats                  hash    "{rule}|{tier}|{metric}" -> count or CNY
    {ns}:rt:rules                  string  the active rules as JSON [{"name", "kind"}, ...]
    {ns}:rt:sink                   hash    partition (and outbox, exposures) -> last stream id
                                           committed to the warehouse
    {ns}:rt:workers                hash    partition -> JSON heartbeat of its worker
    {ns}:rt:exposures              stream  first exposures to experiment arms (field ``x``)
    {ns}:rt:exposed:{exp}:{user}   string  the arm a user was first exposed to (SET NX)
    {ns}:rt:exposed_count:{exp}    hash    arm -> users exposed

Key names are built by string concatenation from ids that cannot contain ``:`` where it
matters (user ids are integers; rule names are ``[a-z0-9_]``; event ids are checked).
"""

from __future__ import annotations

from dataclasses import dataclass

from strata.online.keys import check_namespace

__all__ = [
    "ENTRY_FIELD",
    "EXPOSURE_FIELD",
    "OUTBOX_FIELD",
    "SINK_GROUP",
    "WORKER_GROUP",
    "RealtimeKeys",
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


@dataclass(frozen=True)
class RealtimeKeys:
    """Every real-time key name of one namespace (validated on construction)."""

    namespace: str = "strata"

    def __post_init__(self) -> None:
        check_namespace(self.namespace)

    @property
    def prefix(self) -> str:
        return f"{self.namespace}:rt:"

    @property
    def layout(self) -> str:
        return self.prefix + "layout"

    def stream(self, partition: int) -> str:
        return f"{self.prefix}events:{partition}"

    @property
    def seen_prefix(self) -> str:
        return self.prefix + "seen:"

    def seen(self, event_id: str) -> str:
        return self.seen_prefix + event_id

    @property
    def dead(self) -> str:
        return self.prefix + "dead"

    @property
    def outbox(self) -> str:
        return self.prefix + "outbox"

    def lease(self, partition: int) -> str:
        return f"{self.prefix}lease:{partition}"

    def due(self, partition: int) -> str:
        return f"{self.prefix}due:{partition}"

    def state(self, user_id: int) -> str:
        return f"{self.prefix}u:{user_id}"

    def idem(self, key: str) -> str:
        return f"{self.prefix}idem:{key}"

    def reserve(self, key: str) -> str:
        return f"{self.prefix}reserve:{key}"

    def budget(self, rule: str, day: str) -> str:
        return f"{self.prefix}budget:{rule}:{day}"

    def actions(self, user_id: int) -> str:
        return f"{self.prefix}actions:{user_id}"

    def tags(self, user_id: int) -> str:
        return f"{self.prefix}tags:{user_id}"

    def live(self, user_id: int) -> str:
        return f"{self.prefix}live:{user_id}"

    def live_users(self, partition: int) -> str:
        return f"{self.prefix}livers:{partition}"

    @property
    def stats(self) -> str:
        return self.prefix + "stats"

    @property
    def rules(self) -> str:
        return self.prefix + "rules"

    @property
    def sink(self) -> str:
        return self.prefix + "sink"

    @property
    def workers(self) -> str:
        return self.prefix + "workers"

    @property
    def exposures(self) -> str:
        return self.prefix + "exposures"

    def exposed(self, experiment: str, user_id: int) -> str:
        return f"{self.prefix}exposed:{experiment}:{user_id}"

    def exposed_count(self, experiment: str) -> str:
        return f"{self.prefix}exposed_count:{experiment}"
