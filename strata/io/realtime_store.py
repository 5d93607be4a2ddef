"""Redis side of the stream workers: partition leases, consumer-group reads, live state, budget
reservations, the due-queue, and one atomic commit of everything a batch caused.

Exactly-once effects rest on three facts:

1. A partition has one owner at a time: a lease (``SET NX PX``) with a random token. The owner
   renews it every round; a worker that dies loses it after ``lease_ms`` and the next owner
   XAUTOCLAIMs the dead consumer's pending entries.
2. Everything a batch of entries caused — states, actions, outbox entries, statistics, timers,
   tags, live overlays, dead letters — and the XACK of those entries go to Redis in one
   MULTI/EXEC, guarded by WATCH on the lease: either all of it is applied or none (a worker
   killed before EXEC leaves its entries pending, to be processed again from the old state);
   an owner that lost its lease cannot commit.
3. Each action key's decision is recorded (``idem``) and budget reservations are idempotent
   by key, so a replay never issues a second action or counts a budget twice.

On a Redis Cluster the same holds because every key of one partition's commit, and every key
of its users, carries the partition's hash tag (one slot: WATCH and MULTI/EXEC are allowed);
a budget is reserved by one script on its own slot before the commit (the decisions, in the
partition's slot, are read first; a standalone server takes the decisions and every budget of
a round in one script). Key layout: :class:`strata.realtime.keys.RealtimeKeys`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
import redis

from strata.io.redis_client import (
    SyncClient,
    consumer_client,
    is_cluster,
    mget_many,
    xreadgroup_many,
)
from strata.realtime.batch import EffectBatch, Entry, Reservation
from strata.realtime.keys import ENTRY_FIELD, OUTBOX_FIELD, RealtimeKeys
from strata.realtime.model import Firing
from strata.realtime.stats import merge_stat_hashes
from strata.realtime.stream_config import StreamConfig
from strata.timeutil import DAY_MS, local_iso

__all__ = ["LeaseLost", "PartitionReader", "RealtimeStore", "action_records", "outbox_records"]

log = logging.getLogger("strata.stream")

_DEAD_MAXLEN = 100_000

# KEYS: the budget hashes (ARGV[2] of them: a rule's day each), then per firing its
# reservation marker and, when ARGV[3] is 1, its decision key (``idem``). ARGV: reserve TTL s,
# number of budgets, whether decision keys follow, then per firing 4 values: its budget's
# index among the budgets (1-based), cost in cents, count budget (-1: none), cents budget
# (-1: none). Returns one code per firing: 1 reserved (or reserved before), 0 over budget,
# 2 decided before (only with decision keys).
# A standalone server gets a round's firings in one call (every budget, marker and decision);
# a cluster runs a script on one slot only, so there it is one call per budget (its markers
# share the budget's hash tag) without decision keys, which are read before.
_RESERVE_LUA = """
local ttl = tonumber(ARGV[1])
local n_budgets = tonumber(ARGV[2])
local stride = 1 + tonumber(ARGV[3])
local out = {}
local n = (#KEYS - n_budgets) / stride
for j = 0, n - 1 do
  local marker = KEYS[n_budgets + stride * j + 1]
  local a = 4 + 4 * j
  local b = KEYS[tonumber(ARGV[a])]
  local cents = tonumber(ARGV[a + 1])
  local max_n, max_c = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if stride == 2 and redis.call('EXISTS', KEYS[n_budgets + stride * j + 2]) == 1 then
    out[#out + 1] = 2
  elseif redis.call('EXISTS', marker) == 1 then
    out[#out + 1] = 1
  else
    local n_issued = tonumber(redis.call('HGET', b, 'count') or '0')
    local c = tonumber(redis.call('HGET', b, 'cents') or '0')
    if (max_n >= 0 and n_issued + 1 > max_n) or (max_c >= 0 and c + cents > max_c) then
      out[#out + 1] = 0
    else
      redis.call('HINCRBY', b, 'count', 1)
      redis.call('HINCRBY', b, 'cents', cents)
      redis.call('EXPIRE', b, 3 * 86400)
      redis.call('SET', marker, '1', 'EX', ttl)
      out[#out + 1] = 1
    end
  end
end
return out
"""
_RESERVE_STATUS = {1: "ok", 0: "budget", 2: "duplicate"}

# KEYS: strings to write. ARGV[1]: TTL s, then one value per key. SET ... EX for each (a
# commit's states or overlays: one command in the MULTI instead of one per user; sent as
# EVAL, not EVALSHA, so a script cache emptied by a Redis restart cannot fail it in EXEC).
_SET_EX_LUA = """
local ttl = ARGV[1]
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl)
end
return #KEYS
"""

# KEYS[1]: the partition's outbox, then per firing 3 keys: its decision (``idem``), the user's
# action log and the user's tags. ARGV: idem TTL s, action log length, log TTL s, the outbox
# field, then per firing: n (its actions), n log records, n outbox records, its tag ('' for
# none), the tag's expiry ms and the tags hash's PEXPIREAT ms. For each firing, what one SET,
# LPUSH, LTRIM, EXPIRE, n XADDs, HSET and PEXPIREAT did when they were queued one by one: a
# commit's firings are one command in the MULTI (EVAL, like _SET_EX_LUA).
_FIRINGS_LUA = """
local idem_ttl, log_len, log_ttl, field = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local a = 5
for j = 0, (#KEYS - 1) / 3 - 1 do
  local log_key, tags_key = KEYS[3 + 3 * j], KEYS[4 + 3 * j]
  redis.call('SET', KEYS[2 + 3 * j], 'issued', 'EX', idem_ttl)
  local n = tonumber(ARGV[a])
  a = a + 1
  if n > 0 then
    for i = a, a + n - 1 do
      redis.call('LPUSH', log_key, ARGV[i])
    end
    redis.call('LTRIM', log_key, 0, log_len - 1)
    redis.call('EXPIRE', log_key, log_ttl)
    -- no MAXLEN: the warehouse sink trims the outbox once it has committed the entries
    for i = a + n, a + 2 * n - 1 do
      redis.call('XADD', KEYS[1], '*', field, ARGV[i])
    end
    a = a + 2 * n
  end
  if ARGV[a] ~= '' then
    redis.call('HSET', tags_key, ARGV[a], ARGV[a + 1])
    redis.call('PEXPIREAT', tags_key, ARGV[a + 2])
  end
  a = a + 3
end
return #KEYS
"""


class LeaseLost(RuntimeError):
    """Another worker owns the partition now: this one must not commit."""


def action_records(firing: Firing) -> list[bytes]:
    """The per-user log entries of one firing, one per action: ``{"rule", "action", "params",
    "key", "issued_at", "trigger"}`` (the shape ``GET /v1/users/{id}/actions`` answers)."""
    return [orjson.dumps(rec) for rec in _action_dicts(firing)]


def outbox_records(firing: Firing) -> list[bytes]:
    """The outbox payloads of one firing, one per action: a log entry
    (:func:`action_records`) plus ``user_id`` (pseudonymised) and ``issued_ms`` (epoch ms;
    ``issued_at`` has whole seconds), for delivery systems and the warehouse's ``actions``."""
    extra = {"user_id": firing.user_id, "issued_ms": firing.issued_ms}
    return [orjson.dumps(rec | extra) for rec in _action_dicts(firing)]


def _action_dicts(firing: Firing) -> list[dict[str, Any]]:
    issued_at = local_iso(firing.issued_ms)
    return [
        {
            "rule": firing.rule,
            "action": spec.action,
            "params": spec.params,
            "key": firing.key,
            "issued_at": issued_at,
            "trigger": firing.trigger,
        }
        for spec in firing.actions
    ]


class RealtimeStore:
    """The live-state store of one namespace (thread-safe like redis-py's pool).

    Args:
        client: a client of either mode (``decode_responses=False``) or a ``redis://`` URL
            (a standalone server or any node of a cluster, see
            :func:`strata.io.redis_client.consumer_client`).
        namespace: key prefix (Settings.redis_namespace).
        config: stream settings (TTLs, lengths, lease).
        partitions: the stream partition count (default: the one stored in the layout key,
            else ``config.partitions``); per-user keys live under their partition's tag.
    """

    def __init__(
        self,
        client: SyncClient | str,
        namespace: str,
        config: StreamConfig,
        partitions: int | None = None,
    ) -> None:
        if isinstance(client, str):
            client = consumer_client(client, socket_timeout=10, socket_connect_timeout=5)
        self.redis = client
        keys = RealtimeKeys(namespace)
        if partitions is None:
            stored = client.hget(keys.layout, "partitions")
            partitions = int(stored) if stored is not None else config.partitions
        self.keys = keys.with_partitions(partitions)
        self.partitions = partitions
        self.config = config
        self._reserve = client.register_script(_RESERVE_LUA)

    # ------------------------------------------------------------------ reads
    def load_states_and_overlays(
        self, user_ids: Sequence[int]
    ) -> tuple[list[bytes | None], list[bytes | None]]:
        """Live state and live segment overlay of each user (None where none), in order,
        in one round trip: one MGET on a standalone server, one MGET per hash slot on a
        cluster (a round's users are all of one partition, so that is one MGET too)."""
        if not user_ids:
            return [], []
        keys = self.keys
        names = [keys.state(u) for u in user_ids] + [keys.live(u) for u in user_ids]
        values = mget_many(self.redis, names)
        n = len(user_ids)
        return values[:n], values[n:]

    def due_timers(
        self, partitions: Sequence[int], now_ms: int, limit: int
    ) -> dict[int, list[bytes]]:
        """Members of each partition's due-queue whose time has come (oldest first), in one
        round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.zrangebyscore(self.keys.due(p), "-inf", now_ms, 0, limit)
            replies = pipe.execute()
        return {p: list(r) for p, r in zip(partitions, replies, strict=True) if r}

    def live_users_since(self, partition: int, since_ms: int) -> list[int]:
        """Users of the partition with a live order at or after ``since_ms``."""
        users: Any = self.redis.zrangebyscore(self.keys.live_users(partition), since_ms, "+inf")
        return [int(u) for u in users]

    def reserve(self, firings: Sequence[Firing]) -> list[Reservation]:
        """Check and take each firing's daily budget, atomically across workers.

        A firing decided before (its action key is recorded) is ``duplicate``; one reserved
        before (a replay after a crash) is ``ok`` without counting twice.

        A standalone server answers the whole round in one script call: the decisions, the
        budgets of every rule and day and the reservation markers. A cluster runs a script on
        one slot only, so there it takes two round trips: the decisions (``idem``, in the
        users' partitions, which only this partition's lease holder writes; one MGET per
        slot) first, then one script per budget (rule and day: it checks and takes the budget
        and records the markers under the budget's hash tag), all of them pipelined. A
        script the server does not know (its cache emptied by a restart) is loaded and only
        the calls it refused are sent again."""
        if not firings:
            return []
        if is_cluster(self.redis):
            return self._reserve_per_slot(firings)
        budgets: dict[tuple[str, str], int] = {}
        script_keys: list[str] = []
        args: list[Any] = []
        for f in firings:
            index = budgets.setdefault((f.rule, f.day), len(budgets) + 1)
            script_keys += [
                self.keys.reserve(f.key, f.rule, f.day),
                self.keys.idem(f.key, f.user_id),
            ]
            args += [index, *_budget_args(f)]
        budget_keys = [self.keys.budget(rule, day) for rule, day in budgets]
        ttl = self.config.idem_ttl_days * 86_400
        codes = self._reserve(keys=budget_keys + script_keys, args=[ttl, len(budgets), 1, *args])
        return [
            Reservation(f, _RESERVE_STATUS[int(c)]) for f, c in zip(firings, codes, strict=True)
        ]

    def _reserve_per_slot(self, firings: Sequence[Firing]) -> list[Reservation]:
        keys = self.keys
        decided = mget_many(self.redis, [keys.idem(f.key, f.user_id) for f in firings])
        status = ["" if d is None else "duplicate" for d in decided]
        groups: dict[tuple[str, str], list[int]] = {}
        for i, f in enumerate(firings):
            if not status[i]:
                groups.setdefault((f.rule, f.day), []).append(i)
        ttl = self.config.idem_ttl_days * 86_400
        calls: list[tuple[list[int], list[Any], list[Any]]] = []
        for (rule, day), members in groups.items():
            script_keys: list[Any] = [keys.budget(rule, day)]
            args: list[Any] = [ttl, 1, 0]
            for i in members:
                script_keys.append(keys.reserve(firings[i].key, rule, day))
                args += [1, *_budget_args(firings[i])]
            calls.append((members, script_keys, args))
        with self.redis.pipeline(transaction=False) as pipe:
            for _, script_keys, args in calls:
                # execute_command: a cluster pipeline refuses its evalsha()
                pipe.execute_command(
                    "EVALSHA", self._reserve.sha, len(script_keys), *script_keys, *args
                )
            results = pipe.execute(raise_on_error=False)
        for (members, script_keys, args), codes in zip(calls, results, strict=True):
            if isinstance(codes, redis.exceptions.NoScriptError):
                # the Script object loads the script on the budget's node and calls again
                codes = self._reserve(keys=script_keys, args=args)
            elif isinstance(codes, Exception):
                raise codes
            for i, code in zip(members, codes, strict=True):
                status[i] = _RESERVE_STATUS[int(code)]
        return [Reservation(f, s) for f, s in zip(firings, status, strict=True)]

    # ------------------------------------------------------------------ commit
    def commit(self, partition: int, group: str, token: str, batch: EffectBatch) -> None:
        """Apply ``batch`` and XACK its entries in one MULTI/EXEC, if ``token`` still holds
        the partition's lease.

        Raises:
            LeaseLost: the lease is gone or held by another worker (nothing was applied).
        """
        if batch.is_empty():
            return
        keys = self.keys
        cfg = self.config
        lease = keys.lease(partition)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(lease)
                holder = pipe.get(lease)
                if holder is None or _text(holder) != token:
                    raise LeaseLost(f"partition {partition}: lease lost")
                pipe.multi()
                _set_ex(pipe, keys.state, batch.states, cfg.state_ttl_days * 86_400)
                self._queue_firings(pipe, partition, batch.firings)
                stats: dict[str, float] = {}
                for s in batch.suppressions:
                    _add(stats, f"{s.rule}|{s.tier}|suppressed.{s.reason}", 1)
                for c in batch.conversions:
                    _add(stats, f"{c.rule}|{c.tier}|converted", 1)
                    _add(stats, f"{c.rule}|{c.tier}|revenue_cny", c.revenue_cny)
                    _add(stats, f"{c.rule}|{c.tier}|coupon_cost_cny", c.coupon_cost_cny)
                for f in batch.firings:
                    _add(stats, f"{f.rule}|{f.tier}|fired", 1)
                stats_key = keys.stats(partition)
                for name, value in stats.items():
                    if isinstance(value, int):
                        pipe.hincrby(stats_key, name, value)
                    else:
                        pipe.hincrbyfloat(stats_key, name, round(value, 2))
                due = keys.due(partition)
                if batch.timers_add:
                    pipe.zadd(due, {t.member(): t.due_ms for t in batch.timers_add})
                if batch.timers_done:
                    pipe.zrem(due, *batch.timers_done)
                live_ttl = cfg.live_ttl_days * 86_400
                _set_ex(pipe, keys.live, batch.overlays, live_ttl)
                if batch.overlay_order_ms:
                    pipe.zadd(
                        keys.live_users(partition),
                        {str(u): ms for u, ms in batch.overlay_order_ms.items()},
                    )
                    # the index lives no longer than the overlays it points to (live_ttl_days)
                    newest_ms = max(batch.overlay_order_ms.values())
                    stale = f"({newest_ms - live_ttl * 1000}"
                    pipe.zremrangebyscore(keys.live_users(partition), "-inf", stale)
                for entry_id, raw, reason in batch.dead:
                    pipe.xadd(
                        keys.dead(partition),
                        {
                            b"id": entry_id,
                            b"partition": str(partition),
                            b"group": group,
                            b"reason": reason[:500],
                            b"payload": (raw or b"")[:4096],
                        },
                        maxlen=_DEAD_MAXLEN,
                        approximate=True,
                    )
                if batch.ack:
                    pipe.xack(keys.stream(partition), group, *batch.ack)
                pipe.execute()
            except redis.WatchError as exc:
                raise LeaseLost(f"partition {partition}: lease changed during commit") from exc

    def _queue_firings(self, pipe: Any, partition: int, firings: Iterable[Firing]) -> None:
        """Queue every firing's decision, action log entries, outbox entries and tag as one
        EVAL of :data:`_FIRINGS_LUA` (all under the partition's hash tag)."""
        keys = self.keys
        cfg = self.config
        idem_ttl = cfg.idem_ttl_days * 86_400
        log_ttl = max(idem_ttl, 90 * 86_400)
        script_keys: list[str] = [keys.outbox(partition)]
        args: list[Any] = [idem_ttl, cfg.action_log_len, log_ttl, OUTBOX_FIELD]
        for f in firings:
            script_keys += [
                keys.idem(f.key, f.user_id),
                keys.actions(f.user_id),
                keys.tags(f.user_id),
            ]
            records = action_records(f)
            args.append(len(records))
            args += records
            args += outbox_records(f) if records else []
            if f.tag is None:
                args += ["", 0, 0]
            else:
                tag, expiry_ms = f.tag
                args += [tag, expiry_ms, expiry_ms + DAY_MS]
        if len(script_keys) > 1:
            pipe.execute_command("EVAL", _FIRINGS_LUA, len(script_keys), *script_keys, *args)

    # ------------------------------------------------------------------ rules, heartbeat
    def publish_rules(self, rules: list[dict[str, Any]]) -> None:
        """The active rule list for ``GET /v1/rules`` (``{ns}:rt:rules``)."""
        self.redis.set(self.keys.rules, orjson.dumps(rules))

    def read_rule_stats(self) -> tuple[bytes | None, dict[bytes, bytes]]:
        """The raw active-rule list and the statistics hashes of every partition, merged
        (see :mod:`strata.realtime.stats`)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.rules)
            for p in range(self.partitions):
                pipe.hgetall(self.keys.stats(p))
            rules, *parts = pipe.execute()
        return rules, merge_stat_hashes(parts)

    def heartbeat(self, partition: int, info: Mapping[str, Any]) -> None:
        self.redis.hset(self.keys.workers, str(partition), orjson.dumps(dict(info)))

    def close(self) -> None:
        self.redis.close()


class PartitionReader:
    """One worker's hold on one partition: lease, consumer group, reads.

    Args:
        store: the live-state store.
        partition: partition number.
        group: consumer group (``WORKER_GROUP``).
        consumer: this worker's consumer name (stable across its restarts).
    """

    def __init__(self, store: RealtimeStore, partition: int, group: str, consumer: str) -> None:
        self.store = store
        self.redis = store.redis
        self.partition = partition
        self.group = group
        self.consumer = consumer
        self.stream = store.keys.stream(partition)
        self.lease_key = store.keys.lease(partition)
        self.token = f"{consumer}:{uuid.uuid4().hex[:12]}"
        self.owned = False
        #: read this consumer's pending entries (after a start, a claim or a failed round)
        self.recovering = True
        #: entries per pending read while recovering (1 after a failed round: isolates a
        #: poison entry without re-delivering the good ones around it)
        self.batch_limit: int | None = None
        #: entries of a round that Redis failed (not the entries): given back by the next
        #: read as they are, without a redelivery that would count against them
        self.held: list[Entry] | None = None
        self._renewed_at = 0.0

    def ensure_group(self) -> None:
        """Create the consumer group (from the stream's start) if it does not exist."""
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def acquire(self) -> bool:
        """Take or renew the lease. On a new acquisition, claim every pending entry of other
        consumers (a dead worker's) and start by reading pending entries."""
        ms = self.store.config.lease_ms
        now = time.monotonic()
        if self.owned and (now - self._renewed_at) * 1000 < ms / 3:
            return True  # renewed recently; a commit still checks the token itself
        if self.owned:
            # renew only while it is still ours (compare-and-set via a tiny transaction)
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.lease_key)
                    if pipe.get(self.lease_key) == self.token.encode():
                        pipe.multi()
                        pipe.pexpire(self.lease_key, ms)
                        pipe.execute()
                        self._renewed_at = now
                        return True
                except redis.WatchError:
                    pass
            self.owned = False
            log.warning("partition %d: lease lost", self.partition)
        if not self.redis.set(self.lease_key, self.token, nx=True, px=ms):
            return False
        self.owned = True
        self._renewed_at = now
        self.held = None  # the pending entries are read again, from the claim on
        self.ensure_group()
        claimed = self.claim_orphans()
        if claimed:
            log.info("partition %d: claimed %d pending entries", self.partition, claimed)
        self.recovering = True
        return True

    def release(self) -> None:
        """Give the lease up (only if it is still ours)."""
        if not self.owned:
            return
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.lease_key)
                if pipe.get(self.lease_key) == self.token.encode():
                    pipe.multi()
                    pipe.delete(self.lease_key)
                    pipe.execute()
            except redis.WatchError:
                pass
        self.owned = False

    def claim_orphans(self) -> int:
        """XAUTOCLAIM every pending entry of other consumers to this one (the lease makes
        this worker the only owner, so no idle time is needed)."""
        total = 0
        start = "0-0"
        while True:
            # not justid: redis-py then drops the cursor from the reply
            reply: Any = self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=0,
                start_id=start,
                count=1000,
            )
            start_raw, ids = reply[0], reply[1]
            total += len(ids)
            start = start_raw.decode() if isinstance(start_raw, bytes) else str(start_raw)
            if start == "0-0":
                return total

    def read(self, count: int, block_ms: int) -> list[Entry]:
        """The next entries of this partition alone (see :func:`read_new`)."""
        return read_new(self.redis, [self], count, block_ms).get(self.partition, [])

    def _pending(self, count: int) -> list[Entry]:
        reply = self.redis.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
        got = _entries(reply)
        if not got:
            return []
        info = self.redis.xpending_range(
            self.stream,
            self.group,
            min=got[0][0],
            max=got[-1][0],
            count=len(got),
            consumername=self.consumer,
        )
        delivered = {d["message_id"]: int(d["times_delivered"]) for d in info}
        return [
            # an entry trimmed away while pending comes back without fields
            Entry(i, f.get(ENTRY_FIELD) if f else None, delivered.get(i, 1))
            for i, f in got
        ]


def read_new(
    client: SyncClient, readers: list[PartitionReader], count: int, block_ms: int
) -> dict[int, list[Entry]]:
    """The next entries of several partitions of one consumer: held ones (a round Redis
    failed), pending ones of recovering partitions (with delivery counts, ``batch_limit`` at a
    time), and new ones of the others in one XREADGROUP (per stream on a cluster; blocking up
    to ``block_ms`` only when nothing is pending)."""
    out: dict[int, list[Entry]] = {}
    fresh: list[PartitionReader] = []
    for r in readers:
        if r.held is not None:
            out[r.partition], r.held = r.held, None
            continue
        if r.recovering:
            entries = r._pending(r.batch_limit or count)
            if entries:
                out[r.partition] = entries
                continue
            r.recovering = False
            r.batch_limit = None
        fresh.append(r)
    if not fresh:
        return out
    first = fresh[0]
    by_stream = {r.stream.encode(): r for r in fresh}
    reply = xreadgroup_many(
        client,
        first.group,
        first.consumer,
        {r.stream: ">" for r in fresh},
        count=count,
        block_ms=None if out else block_ms,
    )
    for name, items in reply:
        reader = by_stream.get(name if isinstance(name, bytes) else str(name).encode())
        if reader is not None and items:
            out[reader.partition] = [Entry(i, f.get(ENTRY_FIELD) if f else None) for i, f in items]
    return out


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        items = next(iter(reply.values()))
        items = items[0] if items and isinstance(items[0], list) else items
    else:
        items = reply[0][1]
    return [(i, f) for i, f in items]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _budget_args(firing: Firing) -> list[int]:
    """A firing's cost in cents and its rule's daily budgets (-1: none), as the reserve
    script takes them."""
    return [
        round(firing.cost_cny * 100),
        -1 if firing.budget_count is None else firing.budget_count,
        -1 if firing.budget_cny is None else round(firing.budget_cny * 100),
    ]


def _set_ex(pipe: Any, key_of: Any, blobs: Mapping[int, bytes], ttl_s: int) -> None:
    """Queue ``SET key_of(user) blob EX ttl_s`` for every user as one EVAL (all the keys of
    one commit share the partition's slot)."""
    if not blobs:
        return
    names = [key_of(u) for u in blobs]
    # execute_command: a cluster pipeline refuses its eval()
    pipe.execute_command("EVAL", _SET_EX_LUA, len(names), *names, ttl_s, *blobs.values())


def _add(stats: dict[str, float], name: str, value: float) -> None:
    stats[name] = stats.get(name, 0) + value
