"""The online segment store: versioned, compactly encoded user records in Redis.

Key layout (:class:`strata.online.keys.KeyLayout`, shared with the async reader; ``ns`` is the
namespace, ``strata`` by default; a version id has no ``:``)::

    {ns}:current                  string  the published version readers use (the pointer)
    {ns}:versions                 zset    published, retained versions, scored by publish order
    {ns}:history                  list    pointer flips, newest first (JSON; last 200 kept)
    {ns}:seq                      string  publish counter (the zset's scores)
    {ns}:v:{version}:meta         hash    layout (JSON), record_size, storage, n_groups,
                                          chunk_users, as_of, created_at, status,
                                          users_written, n_users, meta...

A ``packed`` version (``storage: packed``; the default) splits its users into ``n_groups``
BUCKETS (``strata.ids.bucket_of(id, n_groups)``: the warehouse's buckets, or a multiple of
them, so each recompute shard writes whole buckets) and stores each bucket as::

    {ns}:v:{version}:g:{bucket}.{k}   string  group k: entries sorted by user id, each the id
                                              (8 bytes, big-endian) + the record, fixed width
    {ns}:v:{version}:i:{bucket}       string  the bucket's user count (4 bytes), the first id
                                              of each group, the bucket's last id (8 each)

Every group holds ``chunk_users`` entries (its last one fewer): as many as fill an 8 KiB
allocation (272 for the 22-byte record with predictions), an exact jemalloc size class, so the
per-user cost is the 8-byte id + the record + ~0.5 byte of key overhead. At 1M users
(bench/redis_memory.py, embedded Redis 6.2, libc malloc) that is 30.5 bytes per user for the
22-byte record against 36.0 for the same record in the hash layout, and 30.6 estimated under
jemalloc (Redis 7: the group strings' and indexes' size classes; a full group string fills its
8 KiB class, only each bucket's last, partial one rounds up). A read finds the group by the
index (one small GET per bucket and script call) and the entry by interpolation search
(pseudonymous ids are uniform) over a GETRANGE window of the group, falling back to bisection,
so skewed ids stay exact and O(log n).

A ``hash`` version (``storage`` absent or ``hash``: the layout before issue 14, still read so
that retained versions survive an upgrade and can be rolled back to until they age out)::

    {ns}:v:{version}:g:{group}    hash    field = user id (8 bytes, big-endian),
                                          value = the record (``layout.size`` bytes)

with users spread over ``n_groups`` small hashes (``group_of``) kept in the compact listpack
encoding (~13.8 bytes of fixed cost per user: field key, entry headers, hash).

Lifecycle of a version: :meth:`SegmentStore.begin_version` (status ``writing``, invisible to
readers) → :meth:`~SegmentStore.write_users` from any number of processes in parallel (packed:
each bucket by one call) → :meth:`~SegmentStore.publish` (verifies the user count and the
groups: packed, every group string is read back and checked; hash, the compact encoding;
status ``ready``, then one Lua script flips ``{ns}:current`` and records the flip) → older
versions beyond ``keep`` are deleted. :meth:`~SegmentStore.rollback` flips back to a retained
version; :meth:`~SegmentStore.discard` drops a version that failed.

Readers (:meth:`~SegmentStore.get`, :meth:`~SegmentStore.get_many`) run one Lua script per
request that reads the pointer and then the records of *that* version, so an answer never mixes
two versions, in one round trip. The client computes bucket (group) numbers with the meta of
the version it last saw; the script returns the version it actually read and the client retries
when the pointer has moved to a version it does not know yet.

That read script computes key names from the pointer, so it needs one server (standalone,
replicated or Sentinel). Writing a packed version needs Redis 6.2+ (SET ... GET).

On a Redis Cluster (``STRATA_REDIS_MODE=cluster``, the URL naming any node; the client from
:mod:`strata.io.redis_client`) a script or MULTI may only touch one slot, so the store uses
hash-tagged names (:class:`strata.online.keys.KeyLayout` with ``cluster=True``) and the
``tagged`` storage format:

* The control keys and every version's meta share the tag ``{ns}``: the flip (pointer, the
  target's meta, versions, history, seq) is still ONE Lua script, so publish and rollback
  stay atomic, and so does marking a version for deletion. Their names change only on a
  cluster: a standalone deployment keeps ``ns:current`` and the rest where its retained
  versions already are (no migration, no fallback read of an old pointer), and a cluster
  never held the untagged names (the single-script read could not run there).
* A tagged version is the packed layout with each bucket's index and group strings under the
  tag of its tag group (bucket ``b`` in group ``b % slot_groups``, at most 64 by default):
  the writer sends them through the cluster pipeline (each node its own), publish verifies
  them as for packed, and erasure rewrites each touched bucket in one MULTI on the node of its
  slot (the meta's counts, in the control slot, are lowered right after, not in that MULTI).
* A read takes two steps: GET the pointer, then one script call per tag group the batch
  touches, every call naming that version, pipelined (one round trip per node). A version's
  keys stay until retention deletes it, and a version is marked ``deleting`` before its keys
  go, so the whole batch comes from one version even if the pointer flips in between; when a
  call finds an index or group string missing and the version is no longer ``published``, the
  read starts again from the pointer.

``packed`` and ``hash`` versions (single server only) keep their names and single-script
reads; a single server may also hold ``tagged`` versions (``storage="tagged"``; read in two
steps), and the meta's ``storage`` says which format each version has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

import numpy as np
import redis

from strata.ids import bucket_of
from strata.io.redis_client import SyncClient, is_cluster, sync_client
from strata.online.codec import (
    RecordLayout,
    decode,
    decode_many,
    expected_max_group_size,
    group_of,
    n_groups_for,
    packed_buckets_for,
    packed_chunk_users,
    user_fields,
)
from strata.online.keys import KeyLayout, check_namespace

__all__ = [
    "CompactLimits",
    "IncompleteVersionError",
    "LooseEncodingError",
    "PackingError",
    "SegmentStore",
    "SegmentStoreError",
    "VersionInfo",
    "VersionStateError",
]

log = logging.getLogger(__name__)

WRITING = "writing"
READY = "ready"
PUBLISHED = "published"
DELETING = "deleting"
Storage = Literal["packed", "hash", "tagged"]
PACKED: Storage = "packed"
HASH: Storage = "hash"
#: the packed format with hash-tagged keys (see strata.online.keys): the one a cluster needs
TAGGED: Storage = "tagged"
_PACKED_KINDS = (PACKED, TAGGED)

_COMPACT_ENCODINGS = frozenset({b"listpack", b"ziplist"})
_FIELD_BYTES = 8
_HISTORY_LEN = 200
_READ_ATTEMPTS = 3
_META_CACHE = 16
_VERIFY_BATCH = 2048
_UNLINK_BATCH = 1000
_SEND_BYTES = 4 << 20
#: a packed index: the bucket's user count (uint32, big-endian), the first id of each group,
#: the bucket's last id (8 bytes each)
_INDEX_HEAD = 4
_INDEX_TAIL = 8
_MIX = 0x9E3779B97F4A7C15  # strata.ids.bucket_of's multiplier (scalar fast path)
_MASK_64 = (1 << 64) - 1

# The packed lookup both read scripts share: finds each id of `ids` (8 bytes each, big-endian)
# in its bucket (`buckets`, space-separated) via the bucket index `ipre .. b` and the group
# strings `gpre .. b .. '.' .. c`; sets `found`, `records`, and `torn` when an index or group
# string the ids need is missing (a bucket with no users, or a version being deleted).
_PACKED_LOOKUP_LUA = """
  local unpack = struct.unpack
  local floor = math.floor
  local find = string.find
  local two32 = 4294967296
  local indexes = {}
  -- -1: (hi, lo) is below entry p of s, 1: above, 0: equal
  local function cmp(s, p, hi, lo)
    local a, z = unpack('>I4I4', s, p)
    if a == hi and z == lo then return 0, a * two32 + z end
    if a > hi or (a == hi and z > lo) then return -1, a * two32 + z end
    return 1, a * two32 + z
  end
  for b in string.gmatch(buckets, '%d+') do
    local hi, lo = unpack('>I4I4', ids, i * 8 + 1)
    local t = hi * two32 + lo
    i = i + 1
    local rec = nil
    local idx = indexes[b]
    if idx == nil then
      idx = redis.call('GET', ipre .. b)
      indexes[b] = idx
    end
    local c = -1
    local nc = 0
    local xf, xu = 0, 0
    if idx then
      -- the group: the last whose first id <= the id (interpolated, then stepped exactly)
      nc = (#idx - 12) / 8
      local r0, x0 = cmp(idx, 5, hi, lo)
      local rl, xlast = cmp(idx, 5 + nc * 8, hi, lo)
      if r0 >= 0 and rl <= 0 then
        c = 0
        if xlast > x0 then c = floor((t - x0) / (xlast - x0) * nc) end
        if c > nc - 1 then c = nc - 1 end
        local r
        r, xf = cmp(idx, 5 + c * 8, hi, lo)
        while r < 0 do
          c = c - 1
          r, xf = cmp(idx, 5 + c * 8, hi, lo)
        end
        r, xu = cmp(idx, 13 + c * 8, hi, lo)
        while c < nc - 1 and r >= 0 do
          c = c + 1
          xf = xu
          r, xu = cmp(idx, 13 + c * 8, hi, lo)
        end
      end
    end
    if not idx then torn = true end
    if c >= 0 then
      local key = gpre .. b .. '.' .. c
      local n = k
      if c == nc - 1 then n = unpack('>I4', idx, 1) - k * (nc - 1) end
      -- read a window around the interpolated position and look for the id's 8 bytes at an
      -- entry boundary; when the id lies beyond the window, narrow the range to that side
      -- and interpolate again (the 4th try reads the whole range)
      local target = string.sub(ids, i * 8 - 7, i * 8)
      local l, h = 0, n - 1
      for try = 1, 4 do
        local p = l
        if xu > xf then p = l + floor((t - xf) / (xu - xf) * (h - l + 1) + 0.5) end
        local s0 = math.max(l, math.min(h, p - window))
        local s1 = math.min(h, math.max(l, p + window))
        if try == 4 then s0, s1 = l, h end
        local s = redis.call('GETRANGE', key, s0 * w, (s1 + 1) * w - 1)
        local m = floor(#s / w)
        if m ~= s1 - s0 + 1 then
          torn = true
          break
        end
        local at = 1
        local pos = nil
        while true do
          local f = find(s, target, at, true)
          if not f then break end
          if (f - 1) % w == 0 then
            pos = (f - 1) / w
            break
          end
          at = f + 1
        end
        if pos then
          rec = string.sub(s, pos * w + 9, pos * w + w)
          break
        end
        local r0, x0 = cmp(s, 1, hi, lo)
        if r0 < 0 then
          if s0 == l then break end
          h, xu = s0 - 1, x0
        else
          local r1, x1 = cmp(s, (m - 1) * w + 1, hi, lo)
          if r1 < 0 or s1 == h then break end
          l, xf = s1 + 1, x1
        end
      end
    end
    if rec then
      records[#records + 1] = rec
      found[i] = '1'
    else
      found[i] = '0'
    end
  end
"""

# KEYS: pointer. ARGV: assumed version, "{ns}:v:", the users' buckets (packed) or groups
# (hash) space-separated, the users' 8-byte ids back to back, the assumed version's storage
# ("p" packed, "h" hash), its entry width (packed: 8 + record size), its users per group.
# Returns {} when nothing is published, {version} when the pointer is not the assumed version
# (nothing read), else {version, found mask ('1'/'0' per user), the found records back to
# back}: three bulk strings, cheap to send and parse.
#
# Packed: the bucket's index (user count, first id of each group, last id; read once per
# bucket and call) gives the group by binary search; in the group string the entry is found
# by interpolation search (pseudonymous ids are uniform, so 1-2 probes), falling back to
# bisection after 3 probes so that skewed ids stay O(log n). Ids compare exactly as two
# big-endian uint32 (doubles only steer the interpolation; string '<' would use the server's
# collation).
READ_LUA = (
    """
local v = redis.call('GET', KEYS[1])
if not v then return {} end
if v ~= ARGV[1] then return {v} end
local ids = ARGV[4]
local found = {}
local records = {}
local i = 0
if ARGV[5] == 'p' then
  local w = tonumber(ARGV[6])
  local k = tonumber(ARGV[7])
  local window = tonumber(ARGV[8])
  local gpre = ARGV[2] .. v .. ':g:'
  local ipre = ARGV[2] .. v .. ':i:'
  local buckets = ARGV[3]
  local torn = false
"""
    + _PACKED_LOOKUP_LUA
    + """
else
  local prefix = ARGV[2] .. v .. ':g:'
  for g in string.gmatch(ARGV[3], '%d+') do
    local rec = redis.call('HGET', prefix .. g, string.sub(ids, i * 8 + 1, i * 8 + 8))
    i = i + 1
    if rec then
      records[#records + 1] = rec
      found[i] = '1'
    else
      found[i] = '0'
    end
  end
end
return {v, table.concat(found), table.concat(records)}
"""
)

# KEYS: any key of one tag group of a tagged version (it only routes the call to the node
# holding the group's slot; the keys read share its hash tag, hence its slot). ARGV: the
# group's index prefix, its group-string prefix, the users' buckets (space-separated), the
# users' 8-byte ids back to back, the entry width (8 + record size), users per group, the
# search window. Returns {found mask ('1'/'0' per user), the found records back to back,
# '1' if an index or group string was missing else '0'}. The caller read the pointer first
# and names the version in the prefixes: one version per batch, however many calls.
TAGGED_READ_LUA = (
    """
local ids = ARGV[4]
local found = {}
local records = {}
local i = 0
local w = tonumber(ARGV[5])
local k = tonumber(ARGV[6])
local window = tonumber(ARGV[7])
local ipre = ARGV[1]
local gpre = ARGV[2]
local buckets = ARGV[3]
local torn = false
"""
    + _PACKED_LOOKUP_LUA
    + """
return {table.concat(found), table.concat(records), torn and '1' or '0'}
"""
)

# KEYS: pointer, meta of the target, versions zset, history list, seq.
# ARGV: version, required status, now (ISO), action, history length.
# Returns {1, previous version or ''} or {0, actual status or ''}.
_FLIP_LUA = """
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= ARGV[2] then return {0, status or ''} end
local prev = redis.call('GET', KEYS[1]) or ''
redis.call('SET', KEYS[1], ARGV[1])
if status ~= 'published' then
  redis.call('HSET', KEYS[2], 'status', 'published', 'published_at', ARGV[3])
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), ARGV[1])
end
redis.call('LPUSH', KEYS[4], cjson.encode({action = ARGV[4], version = ARGV[1],
  previous = prev, at = ARGV[3]}))
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
return {1, prev}
"""

# KEYS: pointer, meta, versions zset. ARGV: version.
# Marks a version as being deleted unless it is current (1 = marked, 0 = it is current).
_MARK_DELETING_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'status', 'deleting') end
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""


# KEYS: meta of a hash version, then the group of each user. ARGV: each user's 8-byte field.
# HDELs the users and lowers the meta's counts by the fields removed (one atomic call).
_ERASE_HASH_LUA = """
local n = 0
for i = 2, #KEYS do n = n + redis.call('HDEL', KEYS[i], ARGV[i - 1]) end
if n > 0 then
  redis.call('HINCRBY', KEYS[1], 'users_written', -n)
  if redis.call('HEXISTS', KEYS[1], 'n_users') == 1 then
    redis.call('HINCRBY', KEYS[1], 'n_users', -n)
  end
  local st = redis.call('HGET', KEYS[1], 'status')
  local expected = redis.call('HEXISTS', KEYS[1], 'expected_users') == 1
  if (st == 'writing' or st == 'ready') and expected then
    redis.call('HINCRBY', KEYS[1], 'expected_users', -n)
  end
end
return n
"""


class SegmentStoreError(RuntimeError):
    """Base class of the segment store's errors."""


class VersionStateError(SegmentStoreError):
    """A version does not exist or is not in the state the operation needs."""


class IncompleteVersionError(SegmentStoreError):
    """``publish`` found fewer (or more) users than expected; nothing was flipped."""


class LooseEncodingError(SegmentStoreError):
    """Groups would not (or did not) stay in Redis's compact hash encoding."""


class PackingError(SegmentStoreError):
    """A packed version's group strings are inconsistent (``publish`` verification)."""


@dataclass(frozen=True)
class CompactLimits:
    """The server's limits for the compact (listpack/ziplist) encoding of a hash.

    Attributes:
        max_entries: ``hash-max-listpack-entries`` (``hash-max-ziplist-entries`` before 7.0).
        max_value_bytes: ``hash-max-listpack-value``: longest field or value kept compact.
        source: ``"config"`` when read with CONFIG GET, ``"default"`` when CONFIG is not
            allowed (managed Redis) and Redis 7's defaults are assumed.
    """

    max_entries: int
    max_value_bytes: int
    source: Literal["config", "default"]


@dataclass(frozen=True)
class VersionInfo:
    """What the store knows about one version (from its meta hash)."""

    version: str
    status: str
    layout: RecordLayout
    n_groups: int
    created_at: str
    as_of: str | None = None
    published_at: str | None = None
    users_written: int = 0
    n_users: int | None = None
    expected_users: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    storage: str = HASH
    chunk_users: int = 0
    slot_groups: int = 0


@dataclass(frozen=True)
class ReadMeta:
    """What a reader needs to know of a version: its group (hash) or bucket (packed) count,
    record layout, storage format and (tagged) tag groups."""

    n_groups: int
    layout: RecordLayout
    storage: str = HASH
    chunk_users: int = 0
    slot_groups: int = 0

    @classmethod
    def of(cls, info: VersionInfo) -> ReadMeta:
        """The read facts of a version's info."""
        return cls(info.n_groups, info.layout, info.storage, info.chunk_users, info.slot_groups)


class SegmentStore:
    """Versioned user segments in Redis: key layout, encoding, atomic publish, reads.

    Safe to share between threads (redis-py's pool is); each writer process makes its own.

    Args:
        client: a ``redis.Redis`` or ``RedisCluster`` (must not decode responses) or a
            ``redis://`` URL (a cluster when ``mode``, else ``STRATA_REDIS_MODE``, says so;
            see :mod:`strata.io.redis_client`).
        namespace: prefix of every key, e.g. ``strata`` or ``strata:staging``.
        socket_timeout_s: socket timeout of a client created from a URL.
        connect_timeout_s: connect timeout of a client created from a URL.
        write_chunk_users: users framed at a time by ``write_users`` (bounds the writer's
            extra memory to ~130 bytes per user of a chunk; chunks hold whole groups).
        max_batch: most users one ``get_many`` may read (one Lua script blocks Redis briefly).
        on_loose_encoding: ``"raise"`` or ``"warn"`` when groups would not stay compact
            (hash versions).
        chunk_bytes: allocation size of a packed group string (users per group =
            ``(chunk_bytes - 6) // (8 + record size)``; a power of two fits jemalloc exactly).
        mode: ``standalone`` or ``cluster`` for a client built from a URL (default
            ``STRATA_REDIS_MODE``).
        slot_groups: most tag groups (hash slots) a tagged version's buckets are spread over:
            more spreads a version more evenly over many masters, fewer means fewer script
            calls per batch read (one per tag group a batch touches).
    """

    def __init__(
        self,
        client: SyncClient | str,
        namespace: str = "strata",
        *,
        socket_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        write_chunk_users: int = 250_000,
        max_batch: int = 1000,
        on_loose_encoding: Literal["raise", "warn"] = "raise",
        chunk_bytes: int = 8192,
        mode: str | None = None,
        slot_groups: int = 64,
    ) -> None:
        check_namespace(namespace)
        if slot_groups <= 0:
            raise ValueError("slot_groups must be positive")
        self._redis: SyncClient
        if isinstance(client, str):
            self._redis = sync_client(
                client,
                mode=mode,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                decode_responses=False,
            )
            self._owns_client = True
        else:
            if client.get_encoder().decode_responses:
                raise ValueError("SegmentStore needs a client with decode_responses=False")
            self._redis = client
            self._owns_client = False
        #: whether the client is a Redis Cluster client (tagged keys, per-slot calls)
        self.cluster = is_cluster(self._redis)
        self.keys = KeyLayout(namespace, cluster=self.cluster)
        self.slot_groups = slot_groups
        self.namespace = namespace
        self.write_chunk_users = write_chunk_users
        self.max_batch = max_batch
        self.on_loose_encoding = on_loose_encoding
        self.chunk_bytes = chunk_bytes
        self._read_script = self._redis.register_script(READ_LUA)
        self._flip_script = self._redis.register_script(_FLIP_LUA)
        self._mark_deleting_script = self._redis.register_script(_MARK_DELETING_LUA)
        self._erase_hash_script = self._redis.register_script(_ERASE_HASH_LUA)
        self._tagged_sha = _sha1(TAGGED_READ_LUA)
        self._lock = threading.Lock()
        self._read_meta_cache: dict[str, ReadMeta] = {}
        self._assumed_version = ""
        self._limits: CompactLimits | None = None

    # ------------------------------------------------------------------ key builders (pure)

    def pointer_key(self) -> str:
        """Key of the current-version pointer."""
        return self.keys.pointer

    def versions_key(self) -> str:
        """Key of the sorted set of published, retained versions."""
        return self.keys.versions

    def history_key(self) -> str:
        """Key of the list of pointer flips (newest first)."""
        return self.keys.history

    def seq_key(self) -> str:
        """Key of the publish counter."""
        return self.keys.seq

    def version_prefix(self, version: str) -> str:
        """Prefix of every key of ``version``."""
        return self.keys.version_prefix(version)

    def meta_key(self, version: str) -> str:
        """Key of the meta hash of ``version``."""
        return self.keys.meta(version)

    def group_key(self, version: str, group: int) -> str:
        """Key of group ``group`` of ``version``."""
        return self.keys.group(version, group)

    # ---------------------------------------------------------------------------- lifecycle

    def compact_limits(self) -> CompactLimits:
        """The server's compact-hash limits (CONFIG GET, cached; defaults if not allowed)."""
        if self._limits is None:
            try:
                raw = self._redis.config_get("hash-max-*")
            except redis.exceptions.ResponseError as exc:
                log.info("CONFIG GET not allowed (%s): assuming Redis 7 defaults", exc)
                self._limits = CompactLimits(128, 64, "default")
            else:
                conf = {_text(k): int(_text(v)) for k, v in raw.items()}
                self._limits = CompactLimits(
                    max_entries=conf.get(
                        "hash-max-listpack-entries", conf.get("hash-max-ziplist-entries", 128)
                    ),
                    max_value_bytes=conf.get(
                        "hash-max-listpack-value", conf.get("hash-max-ziplist-value", 64)
                    ),
                    source="config",
                )
        return self._limits

    def plan_n_groups(
        self,
        n_users: int,
        per_group: int = 100,
        *,
        n_buckets: int | None = None,
        layout: RecordLayout | None = None,
        storage: Storage = PACKED,
    ) -> int:
        """The ``n_groups`` argument of :meth:`begin_version` for ``n_users``.

        Packed: the number of buckets, ``n_buckets`` (the warehouse's: a writer that writes
        one warehouse bucket per :meth:`write_users` call writes whole store buckets) times
        the power of two that keeps a bucket's index small. Hash: groups that stay compact on
        this server (``per_group`` users each on average).
        """
        if storage == HASH:
            return n_groups_for(n_users, per_group, self.compact_limits().max_entries)
        size = layout.size if layout is not None else 24
        return packed_buckets_for(
            n_users, n_buckets or 1, packed_chunk_users(size, self.chunk_bytes)
        )

    def begin_version(
        self,
        version: str,
        layout: RecordLayout,
        n_groups: int,
        meta: Mapping[str, Any] | None = None,
        *,
        as_of: datetime | str | None = None,
        expected_users: int | None = None,
        storage: Storage | None = None,
    ) -> VersionInfo:
        """Create ``version`` (status ``writing``; readers do not see it).

        Args:
            version: a new version id (letters, digits, ``._-``; e.g. ``20250601T0200Z``).
            layout: the record layout every writer encodes with.
            n_groups: packed: number of buckets (``strata.ids.bucket_of``); every bucket must
                be written by ONE :meth:`write_users` call (a later call for the same bucket
                replaces it). Hash: number of hash groups. See :meth:`plan_n_groups`.
            meta: extra JSON-serialisable facts to keep with the version (job id, config hash).
            as_of: the as-of time of the snapshot (default: ``meta["as_of"]`` if present).
            expected_users: users the version will hold; enables the compact-encoding check
                now (hash), and is the default expectation of :meth:`publish`.
            storage: ``packed`` (group strings; the default on a single server), ``tagged``
                (the same with hash-tagged keys; the default, and the only choice, on a
                Redis Cluster) or ``hash`` (the layout before issue 14, kept to test
                upgrades).

        Raises:
            VersionStateError: the version already exists.
            LooseEncodingError: records or groups would be too large for the compact encoding
                (with ``on_loose_encoding="raise"``).
        """
        if n_groups <= 0:
            raise ValueError("n_groups must be positive")
        if storage is None:
            storage = TAGGED if self.cluster else PACKED
        if storage not in (PACKED, HASH, TAGGED):
            raise ValueError(f"storage must be {PACKED!r}, {TAGGED!r} or {HASH!r}, got {storage!r}")
        if self.cluster and storage != TAGGED:
            raise ValueError(
                f"storage {storage!r} cannot be read on a Redis Cluster (its keys are not "
                f"hash-tagged): use {TAGGED!r}"
            )
        if storage == HASH:
            self._check_compact_plan(layout, n_groups, expected_users)
        key = self.meta_key(version)
        if not self._redis.hsetnx(key, "status", WRITING):
            raise VersionStateError(f"version {version!r} already exists; discard it first")
        fields: dict[Any, Any] = {
            "layout": layout.to_json(),
            "record_size": layout.size,
            "n_groups": n_groups,
            "created_at": _now(),
            "users_written": 0,
            "meta": json.dumps(dict(meta or {}), sort_keys=True, default=str),
            "storage": storage,
        }
        if storage in _PACKED_KINDS:
            fields["chunk_users"] = packed_chunk_users(layout.size, self.chunk_bytes)
        if storage == TAGGED:
            fields["slot_groups"] = min(n_groups, self.slot_groups)
        if as_of is None and meta is not None:
            as_of = meta.get("as_of")
        if as_of is not None:
            fields["as_of"] = as_of.isoformat() if isinstance(as_of, datetime) else str(as_of)
        if expected_users is not None:
            fields["expected_users"] = expected_users
        self._redis.hset(key, mapping=fields)
        info = self.info(version)
        assert info is not None
        return info

    def write_users(self, version: str, user_ids: np.ndarray, encoded: np.ndarray) -> int:
        """Write records of ``version`` (status ``writing``); safe from many processes at once.

        Packed versions: users are sorted by (bucket, id); each bucket's entries are cut into
        group strings of ``chunk_users`` and SET whole, then the bucket's index (user count,
        first id of each group) with SET ... GET, so a rewritten bucket is counted once. A
        call REPLACES the buckets it touches: pass all users of a bucket in one call (the
        recompute's shards write one warehouse bucket per call); publish's count check catches
        a bucket split over two calls. Retrying a call rewrites identical bytes.

        Hash versions: users are sorted by group and sent as one HSET per group, framed in
        bulk with numpy and pipelined; writing a user twice overwrites it.

        Both: framed ``write_chunk_users`` users at a time (whole buckets / groups).

        Args:
            version: a version begun with :meth:`begin_version`.
            user_ids: int64 ids, one per record.
            encoded: the records from :func:`strata.online.codec.encode` with the version's
                layout (or any 1-D array of ``layout.size``-byte items).

        Returns:
            Users newly added to the version by this call.

        Raises:
            VersionStateError: the version does not exist or is no longer being written.
            ValueError: shapes or record size do not match the version, or (packed) an id
                appears twice.
        """
        status, n_groups_raw, layout_json, storage, chunk_raw, tags_raw = self._redis.hmget(
            self.meta_key(version),
            ["status", "n_groups", "layout", "storage", "chunk_users", "slot_groups"],
        )
        if status is None or layout_json is None:
            raise VersionStateError(f"version {version!r} does not exist")
        if status != WRITING.encode():
            raise VersionStateError(f"version {version!r} is {_text(status)}, not {WRITING}")
        n_groups = int(_text(n_groups_raw))
        layout = RecordLayout.from_json(layout_json)
        size = layout.size
        ids = np.asarray(user_ids, dtype=np.int64)
        records = np.ascontiguousarray(encoded)
        if ids.ndim != 1 or records.ndim != 1 or len(ids) != len(records):
            raise ValueError("user_ids and encoded must be 1-D and of the same length")
        if records.dtype.itemsize != size:
            raise ValueError(
                f"records are {records.dtype.itemsize} bytes; version {version!r} needs {size}"
            )
        if records.dtype.names is not None and records.dtype != layout.dtype:
            raise ValueError(f"records were encoded with another layout than {version!r}'s")
        rec_bytes = records.view(np.uint8).reshape(len(records), size)
        if storage in (PACKED.encode(), TAGGED.encode()):
            slot_groups = int(_text(tags_raw)) if tags_raw is not None else 0
            return self._write_packed(
                version, n_groups, int(_text(chunk_raw)), ids, rec_bytes, slot_groups
            )
        # sort once by group, then cut into chunks of whole groups: each group gets one HSET
        # per call however the chunks fall, and only one chunk is framed at a time
        groups = group_of(ids, n_groups)
        order = np.argsort(groups, kind="stable")
        groups = groups[order]
        added = 0
        start = 0
        while start < len(ids):
            stop = min(start + self.write_chunk_users, len(ids))
            if stop < len(ids):  # extend to the end of the group that straddles the cut
                stop = int(np.searchsorted(groups, groups[stop - 1], side="right"))
            rows = order[start:stop]
            chunk_added = self._write_chunk(version, groups[start:stop], ids[rows], rec_bytes[rows])
            self._redis.hincrby(self.meta_key(version), "users_written", chunk_added)
            added += chunk_added
            start = stop
        return added

    def publish(
        self, version: str, keep: int = 3, expected_users: int | None = None
    ) -> VersionInfo:
        """Verify ``version``, make it current with one atomic flip, then apply retention.

        Verification counts the users actually stored. Packed: it reads every bucket's index
        and group strings back and checks that each group has the index's share of whole
        entries, that ids are sorted, unique and in their bucket, and that each group starts
        with the id its index names. Hash: HLEN over every group, and every group must have
        kept the compact encoding. The flip (one Lua script) sets the pointer,
        marks the version published, adds it to the versions index and records the flip in
        the history. Then published versions older than the last ``keep`` are deleted; the
        new current and the one it replaced are never deleted.

        Args:
            version: a version whose writers have all finished.
            keep: published versions to retain (at least 1; the previous one is kept anyway).
            expected_users: users the version must hold (default: the ``expected_users`` given
                to :meth:`begin_version`, if any).

        Returns:
            The published version's info.

        Raises:
            IncompleteVersionError: the count differs from ``expected_users``, or is zero.
            VersionStateError: the version is missing, already published or being deleted.
            LooseEncodingError: over 1% of the groups are not compact (hash; with
                ``on_loose_encoding="raise"``; fewer only log a warning).
            PackingError: a packed group string is inconsistent (see above).
        """
        if keep < 1:
            raise ValueError("keep must be at least 1")
        info = self._require(version)
        if info.status not in (WRITING, READY):
            hint = " (use rollback to make it current again)" if info.status == PUBLISHED else ""
            raise VersionStateError(f"version {version!r} is {info.status}{hint}")
        if info.storage in _PACKED_KINDS:
            n_users, loose = self._verify_packed(version, info), 0
        else:
            n_users, loose = self._verify_groups(version, info.n_groups)
        expected = expected_users if expected_users is not None else info.expected_users
        if n_users == 0 or (expected is not None and n_users != expected):
            raise IncompleteVersionError(
                f"version {version!r} holds {n_users} users, expected "
                f"{expected if expected is not None else 'at least one'}; current unchanged"
            )
        if loose:
            message = (
                f"version {version!r}: {loose} of {info.n_groups} groups are not in the "
                "compact encoding (raise hash-max-listpack-entries/-value or use more groups)"
            )
            # a stray oversized group costs little; a misconfigured server costs 5x memory
            if loose * 100 > info.n_groups:
                self._loose(message)
            else:
                log.warning(message)
        self._redis.hset(self.meta_key(version), mapping={"status": READY, "n_users": n_users})
        previous = self._flip(version, READY, "publish")
        self._apply_retention(keep, protect={version, previous})
        published = self.info(version)
        assert published is not None
        return published

    def rollback(self, to: str | None = None) -> str:
        """Make a retained, previously published version current again.

        Args:
            to: the version to return to; default the one published before the current one.

        Returns:
            The version that is now current.

        Raises:
            VersionStateError: nothing is published, there is no older retained version, or
                ``to`` is not a retained published version.
        """
        current = self.current()
        if current is None:
            raise VersionStateError("nothing is published: nothing to roll back")
        if to is None:
            retained = self.versions()
            if current not in retained or retained.index(current) == 0:
                raise VersionStateError(
                    f"no retained version older than {current!r}; retained: {retained}"
                )
            to = retained[retained.index(current) - 1]
        elif to == current:
            return current
        self._flip(to, PUBLISHED, "rollback")
        return to

    def discard(self, version: str) -> int:
        """Delete every key of a version that must not (or no longer) be served.

        For a failed job: the current version is untouched. Stop the version's writers first;
        a write that lands after the discard leaves stray keys (discard again to sweep them).

        Returns:
            Number of keys deleted.

        Raises:
            VersionStateError: ``version`` is the current version.
        """
        if not self._mark_deleting(version):
            raise VersionStateError(f"version {version!r} is current; publish or roll back first")
        return self._delete_keys(version)

    def current(self) -> str | None:
        """The version readers see now, or None before the first publish."""
        raw = self._redis.get(self.pointer_key())
        return None if raw is None else _text(raw)

    def versions(self) -> list[str]:
        """Published, retained versions, oldest first."""
        return [_text(v) for v in self._redis.zrange(self.versions_key(), 0, -1)]

    def info(self, version: str) -> VersionInfo | None:
        """Everything in the meta hash of ``version``, or None if it does not exist."""
        return version_info(version, self._redis.hgetall(self.meta_key(version)))

    def history(self, limit: int = 20) -> list[dict[str, str]]:
        """The latest pointer flips, newest first: ``{action, version, previous, at}``."""
        return [json.loads(x) for x in self._redis.lrange(self.history_key(), 0, limit - 1)]

    # ------------------------------------------------------------------------------ erasure

    def erase(self, user_ids: np.ndarray) -> int:
        """Remove users from EVERY version in the store (published, ready, writing).

        Packed versions: each touched bucket is rewritten whole in one MULTI/EXEC (WATCHing
        its index and group strings, retried when a writer or another erasure got there
        first): the remaining entries are cut again into groups of ``chunk_users`` (only the
        last one shorter, as the read script and :meth:`publish`'s verification expect), the
        index gets the new count, first ids and last id, and group strings no longer needed
        are deleted (an emptied bucket loses its index too). Tagged versions the same, the
        MULTI on the node of the bucket's slot; on a cluster the meta's counts (another slot)
        are lowered right after the EXEC instead of inside it. Hash versions: one Lua script
        per version HDELs the users' fields. Either way a reader sees the version before or after
        the erasure, never a torn group, and ``users_written``, ``n_users`` and (a version
        still being written) ``expected_users`` in the meta are lowered by the users removed,
        so a recompute that is writing a version with an erased user fails its publish count
        check instead of serving it.

        Args:
            user_ids: int64 pseudonyms.

        Returns:
            entries removed, summed over versions (a user in three retained versions counts 3).
        """
        ids = np.unique(np.asarray(user_ids, dtype=np.int64).ravel())
        if ids.size == 0:
            return 0
        removed = 0
        for raw in self._redis.scan_iter(match=self.keys.meta_pattern, count=1000):
            version = self.keys.version_of_meta(_text(raw))
            info = self.info(version)
            if info is None or info.status == DELETING:
                continue
            if info.storage in _PACKED_KINDS:
                removed += self._erase_packed(version, info, ids)
            else:
                removed += self._erase_hash(version, info, ids)
        return removed

    def _erase_hash(self, version: str, info: VersionInfo, ids: np.ndarray) -> int:
        groups = group_of(ids, info.n_groups)
        keys = [self.meta_key(version)] + [self.group_key(version, int(g)) for g in groups]
        fields = [int(i).to_bytes(_FIELD_BYTES, "big") for i in ids.tolist()]
        return int(self._erase_hash_script(keys=keys, args=fields))

    def _erase_packed(self, version: str, info: VersionInfo, ids: np.ndarray) -> int:
        k = info.chunk_users
        width = _FIELD_BYTES + info.layout.size
        buckets = bucket_of(ids, info.n_groups)
        removed = 0
        for b in np.unique(buckets).tolist():
            targets = ids[buckets == b]
            index_key = self._index_key(version, int(b), info.slot_groups)
            for _ in range(20):  # WATCH retries: another writer touched the bucket meanwhile
                with self._redis.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(index_key)
                        index: bytes | None = pipe.get(index_key)  # type: ignore[assignment]
                        if index is None:
                            break
                        count = int.from_bytes(index[:_INDEX_HEAD], "big")
                        n_chunks = (len(index) - _INDEX_HEAD - _INDEX_TAIL) // _FIELD_BYTES
                        chunk_keys = [
                            self._chunk_key(version, int(b), c, info.slot_groups)
                            for c in range(n_chunks)
                        ]
                        pipe.watch(index_key, *chunk_keys)
                        parts: list[bytes] = [pipe.get(c) or b"" for c in chunk_keys]  # type: ignore[misc]
                        body = b"".join(parts)
                        if len(body) != count * width:
                            raise PackingError(
                                f"version {version!r} bucket {b}: {len(body)} bytes of groups "
                                f"for {count} entries of {width}; not erased"
                            )
                        entries = np.frombuffer(body, dtype=np.uint8).reshape(count, width)
                        have = entries[:, :_FIELD_BYTES].copy().view(">i8").ravel()
                        keep = ~np.isin(have.astype(np.int64), targets)
                        gone = int(count - keep.sum())
                        if gone == 0:
                            pipe.unwatch()
                            break
                        kept = entries[keep]
                        n = len(kept)
                        new_chunks = -(-n // k)
                        pipe.multi()
                        for c in range(new_chunks):
                            pipe.set(chunk_keys[c], kept[c * k : (c + 1) * k].tobytes())
                        if new_chunks < n_chunks:
                            pipe.delete(*chunk_keys[new_chunks:])
                        if n == 0:
                            pipe.delete(index_key)
                        else:
                            kept_ids = kept[:, :_FIELD_BYTES]
                            pipe.set(
                                index_key,
                                n.to_bytes(_INDEX_HEAD, "big")
                                + kept_ids[::k].tobytes()
                                + kept_ids[-1].tobytes(),
                            )
                        if not self.cluster:  # same MULTI as the bucket
                            self._lower_counts(pipe, version, info, gone)
                        pipe.execute()
                        if self.cluster:  # the meta is in another slot: right after it
                            counts = self._redis.pipeline(transaction=False)
                            self._lower_counts(counts, version, info, gone)
                            counts.execute()
                        removed += gone
                        break
                    except redis.WatchError:
                        continue
            else:
                raise SegmentStoreError(
                    f"version {version!r} bucket {b}: kept changing during the erasure"
                )
        return removed

    def _lower_counts(self, pipe: Any, version: str, info: VersionInfo, gone: int) -> None:
        meta = self.meta_key(version)
        pipe.hincrby(meta, "users_written", -gone)
        if info.n_users is not None:
            pipe.hincrby(meta, "n_users", -gone)
        if info.expected_users is not None and info.status in (WRITING, READY):
            pipe.hincrby(meta, "expected_users", -gone)

    # -------------------------------------------------------------------------------- reads

    def get(self, user_id: int) -> tuple[str, dict[str, Any]] | None:
        """The current record of one user, with the version it came from.

        Returns:
            ``(version, record)``, or None when the user is absent or nothing is published.
        """
        version, found, records = self._read(np.asarray([user_id], dtype=np.int64))
        if version is None or not found[0]:
            return None
        return version, decode(records, self._read_meta(version).layout)

    def get_many(
        self, user_ids: Sequence[int] | np.ndarray
    ) -> tuple[str | None, list[dict[str, Any] | None]]:
        """Records of up to ``max_batch`` users, all from one version, in input order.

        Returns:
            ``(version, records)`` with None for absent users; ``(None, [None, ...])`` before
            the first publish.

        Raises:
            ValueError: more than ``max_batch`` users.
        """
        ids = np.asarray(user_ids, dtype=np.int64).ravel()
        if len(ids) > self.max_batch:
            raise ValueError(f"at most {self.max_batch} users per batch, got {len(ids)}")
        version, found, records = self._read(ids)
        if version is None:
            return None, [None] * len(ids)
        return version, decode_found(found, records, self._read_meta(version).layout)

    def close(self) -> None:
        """Close the client if this store created it."""
        if self._owns_client:
            self._redis.close()

    def __enter__(self) -> SegmentStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------ private

    def _read(self, ids: np.ndarray) -> tuple[str | None, np.ndarray, bytes]:
        """One consistent read: (version read, found mask, found records back to back)."""
        check_read_ids(ids)
        prefix = self.keys.versions_prefix
        for _ in range(_READ_ATTEMPTS):
            assumed = self._assumed_version
            try:
                meta = self._read_meta(assumed) if assumed else None
            except VersionStateError:  # evicted from the cache and deleted since
                assumed, meta = "", None
            if self.cluster or (meta is not None and meta.storage == TAGGED):
                tagged = self._read_tagged(ids)
                if tagged is not None:
                    return tagged
                continue
            reply = self._read_script(
                keys=[self.pointer_key()], args=read_args(ids, assumed, prefix, meta)
            )
            result = parse_read_reply(reply, assumed, meta, len(ids))
            if result is not None:
                return result
            version = _text(reply[0])
            self._read_meta(version)  # learn the new version's n_groups and layout
            self._assumed_version = version
        raise SegmentStoreError(f"the pointer moved {_READ_ATTEMPTS} times during one read")

    def _read_tagged(self, ids: np.ndarray) -> tuple[str | None, np.ndarray, bytes] | None:
        """Read the pointer, then the users from the version it names, one script call per
        tag group (pipelined: one round trip per node). None: read again (the pointer names a
        version not tagged, or the version was deleted between the two steps)."""
        raw = self._redis.get(self.pointer_key())
        if raw is None:
            return None, np.zeros(len(ids), dtype=bool), b""
        version = _text(raw)
        self._assumed_version = version
        try:
            meta = self._read_meta(version)
        except VersionStateError:  # deleted since the pointer was read
            return None
        if meta.storage != TAGGED:  # a single server, back at an untagged version
            return None
        calls = tagged_read_calls(ids, version, meta, self.keys)
        replies = self._run_tagged(calls)
        found, records, torn = merge_tagged_replies(replies, calls, len(ids), meta)
        if torn and not self._still_served(version):
            return None
        return version, found, records

    def _run_tagged(self, calls: Sequence[TaggedCall]) -> list[Any]:
        """The replies of the tagged read calls, sent in one (cluster) pipeline; loads the
        script where a node lacks it (a restarted node) and sends again."""
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for call in calls:
                # execute_command: redis-py blocks the evalsha method in cluster pipelines;
                # the node from the local slot map, else redis-py asks a server for the keys
                # of every EVALSHA (COMMAND GETKEYS: one extra round trip per call)
                options: dict[str, Any] = {}
                if isinstance(self._redis, redis.RedisCluster):
                    options["target_nodes"] = self._redis.get_node_from_key(call.key)
                pipe.execute_command(
                    "EVALSHA", self._tagged_sha, 1, call.key, *call.args, **options
                )
            try:
                return list(pipe.execute())
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                self._redis.script_load(TAGGED_READ_LUA)
        raise AssertionError("unreachable")

    def _still_served(self, version: str) -> bool:
        """Whether ``version`` is published (readable whole), not being or already deleted."""
        return self._redis.hget(self.meta_key(version), "status") == PUBLISHED.encode()

    def _read_meta(self, version: str) -> ReadMeta:
        cached = self._read_meta_cache.get(version)
        if cached is not None:
            return cached
        n_groups, layout, storage, chunk_users, slot_groups = self._redis.hmget(
            self.meta_key(version),
            ["n_groups", "layout", "storage", "chunk_users", "slot_groups"],
        )
        if n_groups is None or layout is None:
            raise VersionStateError(f"version {version!r} has no meta")
        meta = ReadMeta(
            int(n_groups),
            RecordLayout.from_json(layout),
            _text(storage or HASH),
            int(chunk_users or 0),
            int(slot_groups or 0),
        )
        with self._lock:
            while len(self._read_meta_cache) >= _META_CACHE:
                self._read_meta_cache.pop(next(iter(self._read_meta_cache)))
            self._read_meta_cache[version] = meta
        return meta

    def _write_packed(
        self,
        version: str,
        n_buckets: int,
        chunk_users: int,
        ids: np.ndarray,
        recs: np.ndarray,
        slot_groups: int = 0,
    ) -> int:
        """Sort by (bucket, id), then SET each bucket's group strings and index, pipelined."""
        if len(ids) and ids.min() < 0:
            raise ValueError("user ids must be non-negative")
        buckets = bucket_of(ids, n_buckets).astype(np.int64)
        order = np.lexsort((ids, buckets))
        ids = ids[order]
        buckets = buckets[order]
        if len(ids) > 1:
            dupes = ids[1:] == ids[:-1]
            if dupes.any():
                raise ValueError(f"user id {int(ids[1:][dupes][0])} appears twice")
        if len(ids):
            starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
        else:
            starts = np.zeros(0, dtype=np.int64)
        bounds = np.r_[starts, len(ids)].astype(np.int64)
        added = 0
        first = 0
        while first < len(bounds) - 1:
            # whole buckets, about write_chunk_users users at a time
            limit = int(bounds[first]) + self.write_chunk_users
            last = max(first + 1, int(np.searchsorted(bounds, limit, side="right")) - 1)
            last = min(last, len(bounds) - 1)
            lo, hi = int(bounds[first]), int(bounds[last])
            send = self._send_packed_cluster if self.cluster else self._send_packed
            chunk_added = send(
                version,
                chunk_users,
                ids[lo:hi],
                recs[order[lo:hi]],
                buckets[bounds[first:last]].tolist(),
                (bounds[first : last + 1] - lo).tolist(),
                slot_groups,
            )
            self._redis.hincrby(self.meta_key(version), "users_written", chunk_added)
            added += chunk_added
            first = last
        return added

    def _packed_sets(
        self,
        version: str,
        chunk_users: int,
        ids: np.ndarray,
        recs: np.ndarray,
        buckets: list[int],
        bounds: list[int],
        slot_groups: int,
    ) -> Iterator[tuple[str, bytes, int | None]]:
        """The SETs that write whole buckets, in order: ``(key, value, None)`` for each group
        string (entries sorted by id: 8-byte id + record), then ``(key, index, users)`` for
        the bucket's index (user count, first id of each group, last id)."""
        n, size = recs.shape
        width = _FIELD_BYTES + size
        entries = np.empty((n, width), dtype=np.uint8)
        entries[:, :_FIELD_BYTES] = ids.astype(">i8").view(np.uint8).reshape(n, _FIELD_BYTES)
        entries[:, _FIELD_BYTES:] = recs
        body = entries.tobytes()
        del entries
        id_bytes = ids.astype(">i8").tobytes()
        for bucket, s, e in zip(buckets, bounds[:-1], bounds[1:], strict=True):
            for c, g in enumerate(range(s, e, chunk_users)):
                value = body[g * width : min(e, g + chunk_users) * width]
                yield self._chunk_key(version, bucket, c, slot_groups), value, None
            index = (
                (e - s).to_bytes(_INDEX_HEAD, "big")
                + b"".join(
                    id_bytes[g * _FIELD_BYTES : (g + 1) * _FIELD_BYTES]
                    for g in range(s, e, chunk_users)
                )
                + id_bytes[(e - 1) * _FIELD_BYTES : e * _FIELD_BYTES]
            )
            yield self._index_key(version, bucket, slot_groups), index, e - s

    def _send_packed(
        self,
        version: str,
        chunk_users: int,
        ids: np.ndarray,
        recs: np.ndarray,
        buckets: list[int],
        bounds: list[int],
        slot_groups: int = 0,
    ) -> int:
        """SET the group strings and index of whole buckets; returns users newly added."""
        batch: list[bytes] = []
        batch_bytes = 0
        counts: list[int | None] = []  # per reply: None for a group SET, users for an index
        sets = self._packed_sets(version, chunk_users, ids, recs, buckets, bounds, slot_groups)
        with self._connection() as conn:
            for key_text, value, count in sets:
                key = key_text.encode()
                if count is None:  # a group string: SET key value
                    batch.append(
                        b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, len(value))
                    )
                    batch.append(value)
                    batch.append(b"\r\n")
                    batch_bytes += len(value)
                else:  # the bucket's index: SET key value GET (the previous index)
                    batch.append(
                        b"*4\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$3\r\nGET\r\n"
                        % (len(key), key, len(value), value)
                    )
                counts.append(count)
                if count is not None and batch_bytes >= _SEND_BYTES:
                    conn.send_packed_command([b"".join(batch)])
                    batch, batch_bytes = [], 0
            if batch:
                conn.send_packed_command([b"".join(batch)])
            added = 0
            errors: list[str] = []
            for count in counts:
                try:
                    reply = conn.read_response()
                except redis.exceptions.ResponseError as exc:  # read every reply first
                    errors.append(str(exc))
                    continue
                if count is not None:  # the bucket's previous index (None: a new bucket)
                    old = 0 if reply is None else int.from_bytes(reply[:_INDEX_HEAD], "big")
                    added += count - old
            if errors:
                raise SegmentStoreError(f"writing {version!r} failed: {errors[0]}")
            return added

    def _send_packed_cluster(
        self,
        version: str,
        chunk_users: int,
        ids: np.ndarray,
        recs: np.ndarray,
        buckets: list[int],
        bounds: list[int],
        slot_groups: int = 0,
    ) -> int:
        """:meth:`_send_packed` on a Redis Cluster: the same SETs (group strings, then the
        index with SET ... GET), in one cluster pipeline that sends each node its own."""
        counts: list[int | None] = []
        pipe = self._redis.pipeline(transaction=False)
        sets = self._packed_sets(version, chunk_users, ids, recs, buckets, bounds, slot_groups)
        for key, value, count in sets:
            if count is None:
                pipe.set(key, value)
            else:
                pipe.set(key, value, get=True)
            counts.append(count)
        replies = pipe.execute(raise_on_error=False)
        added = 0
        errors: list[str] = []
        for count, reply in zip(counts, replies, strict=True):
            if isinstance(reply, Exception):
                errors.append(str(reply))
            elif count is not None:
                old = 0 if reply is None else int.from_bytes(reply[:_INDEX_HEAD], "big")
                added += count - old
        if errors:
            raise SegmentStoreError(f"writing {version!r} failed: {errors[0]}")
        return added

    def _write_chunk(
        self, version: str, groups: np.ndarray, ids: np.ndarray, recs: np.ndarray
    ) -> int:
        """Frame one HSET per group with numpy and send them pipelined; returns users added.

        ``groups`` is sorted and gives the group of each row of ``ids`` / ``recs``.
        """
        n, size = recs.shape
        if n == 0:
            return 0
        # RESP request framing is fixed-size per user: $8 <field> $<size> <value>
        head, mid, tail = b"$8\r\n", b"\r\n$%d\r\n" % size, b"\r\n"
        a = len(head)
        b = a + _FIELD_BYTES
        c = b + len(mid)
        d = c + size
        width = d + len(tail)
        frames = np.empty((n, width), dtype=np.uint8)
        frames[:, :a] = np.frombuffer(head, dtype=np.uint8)
        frames[:, a:b] = ids.astype(">i8").view(np.uint8).reshape(n, _FIELD_BYTES)
        frames[:, b:c] = np.frombuffer(mid, dtype=np.uint8)
        frames[:, c:d] = recs
        frames[:, d:] = np.frombuffer(tail, dtype=np.uint8)
        body = frames.tobytes()
        del frames
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        ends = np.r_[starts[1:], n]
        prefix = self.group_key(version, 0)[:-1]
        batch: list[bytes] = []
        batch_bytes = 0
        with self._connection() as conn:
            # send everything, then read the replies: Redis buffers its (tiny) replies and
            # works through the commands while the rest is still being sent
            for s, e, g in zip(
                starts.tolist(), ends.tolist(), groups[starts].tolist(), strict=True
            ):
                key = f"{prefix}{g}".encode()
                batch.append(
                    b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n" % (2 + 2 * (e - s), len(key), key)
                )
                batch.append(body[s * width : e * width])
                batch_bytes += (e - s) * width
                if batch_bytes >= _SEND_BYTES:
                    conn.send_packed_command([b"".join(batch)])
                    batch, batch_bytes = [], 0
            if batch:
                conn.send_packed_command([b"".join(batch)])
            return sum(int(conn.read_response()) for _ in range(len(starts)))

    def _connection(self) -> _Checkout:
        # hand-framed commands go to one server; a cluster writes through its pipeline
        assert isinstance(self._redis, redis.Redis), "single-server path on a cluster client"
        return _Checkout(self._redis.connection_pool)

    def _check_compact_plan(
        self, layout: RecordLayout, n_groups: int, expected_users: int | None
    ) -> None:
        limits = self.compact_limits()
        if max(layout.size, _FIELD_BYTES) > limits.max_value_bytes:
            self._loose(
                f"records of {layout.size} bytes exceed hash-max-listpack-value "
                f"({limits.max_value_bytes}): groups would use the large hashtable encoding"
            )
        if expected_users:
            biggest = expected_max_group_size(expected_users, n_groups)
            if biggest > limits.max_entries:
                self._loose(
                    f"{expected_users} users in {n_groups} groups may put {biggest} users in "
                    f"one group, over hash-max-listpack-entries ({limits.max_entries}); use "
                    f"n_groups={n_groups_for(expected_users, max_entries=limits.max_entries)}"
                )

    def _loose(self, message: str) -> None:
        if self.on_loose_encoding == "raise":
            raise LooseEncodingError(message)
        log.warning(message)

    def _verify_packed(self, version: str, info: VersionInfo) -> int:
        """Users stored in a packed version, after checking every group string (pipelined)."""
        k = info.chunk_users
        width = _FIELD_BYTES + info.layout.size
        n_users = 0
        for start in range(0, info.n_groups, _VERIFY_BATCH // 8):
            buckets = range(start, min(info.n_groups, start + _VERIFY_BATCH // 8))
            pipe = self._redis.pipeline(transaction=False)
            for b in buckets:
                pipe.get(self._index_key(version, b, info.slot_groups))
            indexes = pipe.execute()
            pipe = self._redis.pipeline(transaction=False)
            plan: list[tuple[int, int, bytes]] = []
            for b, index in zip(buckets, indexes, strict=True):
                if index is None:
                    continue
                count = int.from_bytes(index[:_INDEX_HEAD], "big")
                n_chunks = -(-count // k)
                if count == 0 or len(index) != _INDEX_HEAD + n_chunks * _FIELD_BYTES + _INDEX_TAIL:
                    raise PackingError(
                        f"version {version!r} bucket {b}: index of {len(index)} bytes does not "
                        f"match its {count} users"
                    )
                for c in range(n_chunks):
                    pipe.get(self._chunk_key(version, b, c, info.slot_groups))
                plan.append((b, count, index[_INDEX_HEAD:]))  # firsts, then the last id
                n_users += count
            chunks = iter(pipe.execute())
            for b, count, firsts in plan:
                parts = []
                for c in range(len(firsts) // _FIELD_BYTES - 1):
                    part = next(chunks)
                    users = min(k, count - c * k)
                    if part is None or len(part) != users * width:
                        raise PackingError(
                            f"version {version!r} bucket {b} group {c}: "
                            f"{0 if part is None else len(part)} bytes, expected {users} "
                            f"entries of {width} (written by two calls or another layout?)"
                        )
                    parts.append(part)
                entries = np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(count, width)
                ids = entries[:, :_FIELD_BYTES].copy().view(">i8").ravel().astype(np.int64)
                if (
                    (count > 1 and not bool(np.all(ids[1:] > ids[:-1])))
                    or np.r_[ids[::k], ids[-1:]].astype(">i8").tobytes() != firsts
                    or not bool(np.all(bucket_of(ids, info.n_groups) == b))
                ):
                    raise PackingError(
                        f"version {version!r} bucket {b}: ids are not sorted, unique and in "
                        "their bucket, or do not match the index"
                    )
        return n_users

    def _verify_groups(self, version: str, n_groups: int) -> tuple[int, int]:
        """(users stored, groups not in a compact encoding), pipelined over every group."""
        n_users = 0
        loose = 0
        for start in range(0, n_groups, _VERIFY_BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for g in range(start, min(n_groups, start + _VERIFY_BATCH)):
                key = self.group_key(version, g)
                pipe.hlen(key)
                pipe.object("encoding", key)
            replies = pipe.execute()
            for length, encoding in zip(replies[0::2], replies[1::2], strict=True):
                n_users += int(length)
                if length and encoding not in _COMPACT_ENCODINGS:
                    loose += 1
        return n_users, loose

    def _require(self, version: str) -> VersionInfo:
        info = self.info(version)
        if info is None:
            raise VersionStateError(f"version {version!r} does not exist")
        return info

    def _flip(self, version: str, required_status: str, action: str) -> str:
        ok, detail = self._flip_script(
            keys=[
                self.pointer_key(),
                self.meta_key(version),
                self.versions_key(),
                self.history_key(),
                self.seq_key(),
            ],
            args=[version, required_status, _now(), action, _HISTORY_LEN],
        )
        if not ok:
            status = _text(detail) or "missing"
            raise VersionStateError(
                f"cannot {action} {version!r}: it is {status}, must be {required_status}"
                + (" (not retained)" if status in ("missing", DELETING) else "")
            )
        return _text(detail)

    def _apply_retention(self, keep: int, protect: set[str]) -> None:
        retained = self.versions()
        keep_set = set(retained[-keep:]) | protect
        for old in retained:
            if old not in keep_set and self._mark_deleting(old):
                self._delete_keys(old)

    def _mark_deleting(self, version: str) -> bool:
        return bool(
            self._mark_deleting_script(
                keys=[self.pointer_key(), self.meta_key(version), self.versions_key()],
                args=[version],
            )
        )

    def _delete_keys(self, version: str) -> int:
        """UNLINK the groups (known from meta), any strays (SCAN by prefix), then the meta."""
        n_groups_raw, storage, tags_raw = self._redis.hmget(
            self.meta_key(version), ["n_groups", "storage", "slot_groups"]
        )
        deleted = 0
        if n_groups_raw is not None and storage in (PACKED.encode(), TAGGED.encode()):
            slot_groups = int(_text(tags_raw)) if tags_raw is not None else 0
            keys = self._packed_keys(version, int(_text(n_groups_raw)), slot_groups)
            deleted += self._unlink(keys)
        elif n_groups_raw is not None:
            keys = (self.group_key(version, g) for g in range(int(_text(n_groups_raw))))
            deleted += self._unlink(keys)
        for kind in ("g", "i"):
            pattern = self.version_prefix(version) + kind + ":*"
            deleted += self._unlink(self._redis.scan_iter(match=pattern, count=1000))
        deleted += int(self._redis.unlink(self.meta_key(version)))
        return deleted

    def _packed_keys(self, version: str, n_buckets: int, slot_groups: int) -> Iterator[str]:
        """Every group string and index of a packed or tagged version (from the indexes)."""
        for start in range(0, n_buckets, _VERIFY_BATCH):
            buckets = range(start, min(n_buckets, start + _VERIFY_BATCH))
            pipe = self._redis.pipeline(transaction=False)
            for b in buckets:
                pipe.strlen(self._index_key(version, b, slot_groups))
            for b, length in zip(buckets, pipe.execute(), strict=True):
                if length:
                    for c in range((int(length) - _INDEX_HEAD - _INDEX_TAIL) // _FIELD_BYTES):
                        yield self._chunk_key(version, b, c, slot_groups)
                    yield self._index_key(version, b, slot_groups)

    def _index_key(self, version: str, bucket: int, slot_groups: int) -> str:
        """A bucket's index: tagged (``slot_groups`` > 0) or packed."""
        if slot_groups:
            return self.keys.tagged_index(version, bucket, slot_groups)
        return self.keys.index(version, bucket)

    def _chunk_key(self, version: str, bucket: int, group: int, slot_groups: int) -> str:
        """Group string ``group`` of a bucket: tagged (``slot_groups`` > 0) or packed."""
        if slot_groups:
            return self.keys.tagged_chunk(version, bucket, group, slot_groups)
        return self.keys.chunk(version, bucket, group)

    def _unlink(self, keys: Iterator[str | bytes]) -> int:
        deleted = 0
        batch: list[str | bytes] = []
        for key in keys:
            batch.append(key)
            if len(batch) >= _UNLINK_BATCH:
                deleted += int(self._redis.unlink(*batch))
                batch = []
        if batch:
            deleted += int(self._redis.unlink(*batch))
        return deleted


def version_info(version: str, raw: Mapping[Any, Any]) -> VersionInfo | None:
    """A :class:`VersionInfo` from the HGETALL of a version's meta hash (None if empty)."""
    if not raw or b"layout" not in raw:
        return None
    m = {_text(k): _text(v) for k, v in raw.items()}
    return VersionInfo(
        version=version,
        status=m["status"],
        layout=RecordLayout.from_json(m["layout"]),
        n_groups=int(m["n_groups"]),
        created_at=m["created_at"],
        as_of=m.get("as_of"),
        published_at=m.get("published_at"),
        users_written=int(m.get("users_written", 0)),
        n_users=int(m["n_users"]) if "n_users" in m else None,
        expected_users=int(m["expected_users"]) if "expected_users" in m else None,
        meta=json.loads(m.get("meta", "{}")),
        storage=m.get("storage", HASH),  # absent: written before the packed layout existed
        chunk_users=int(m.get("chunk_users", 0)),
        slot_groups=int(m.get("slot_groups", 0)),
    )


def check_read_ids(ids: np.ndarray) -> bytes:
    """The 8-byte fields of the ids a read asks for (ids must be non-negative)."""
    if len(ids) and ids.min() < 0:
        raise ValueError("user ids must be non-negative")
    return user_fields(ids)


def read_groups(ids: np.ndarray, meta: ReadMeta | None) -> str:
    """The read script's group argument: the bucket (packed) or group (hash) of each id under
    ``meta`` ("" unknown)."""
    if meta is None:
        return ""
    if meta.storage == PACKED:
        if len(ids) == 1:  # the scalar path is ~10x faster than numpy for one id
            return str((((int(ids[0]) * _MIX) & _MASK_64) >> 32) % meta.n_groups)
        return " ".join(map(str, bucket_of(ids, meta.n_groups).tolist()))
    if len(ids) == 1:
        return str(group_of(int(ids[0]), meta.n_groups))
    return " ".join(map(str, group_of(ids, meta.n_groups).tolist()))


def read_args(
    ids: np.ndarray, assumed: str, prefix: str, meta: ReadMeta | None, window: int = 8
) -> list[Any]:
    """The read script's ARGV for ``ids`` under the assumed version's ``meta`` (``window``:
    entries read on each side of a packed entry's interpolated position)."""
    if meta is not None and meta.storage == PACKED:
        storage, width, chunk_users = "p", _FIELD_BYTES + meta.layout.size, meta.chunk_users
    else:
        storage, width, chunk_users = "h", 0, 0
    return [
        assumed,
        prefix,
        read_groups(ids, meta),
        check_read_ids(ids),
        storage,
        width,
        chunk_users,
        window,
    ]


def parse_read_reply(
    reply: Sequence[Any], assumed: str, meta: ReadMeta | None, n_ids: int
) -> tuple[str | None, np.ndarray, bytes] | None:
    """Decode the read script's reply: ``(version, found mask, records)``, or None when the
    pointer is at a version other than ``assumed`` (learn it and read again)."""
    if not reply:
        return None, np.zeros(n_ids, dtype=bool), b""
    version = _text(reply[0])
    if len(reply) != 3 or version != assumed:
        return None
    assert meta is not None
    found = np.frombuffer(reply[1], dtype=np.uint8) == ord("1")
    records = bytes(reply[2])
    if len(records) != int(found.sum()) * meta.layout.size:
        raise SegmentStoreError(
            f"version {version!r} holds records that are not {meta.layout.size} "
            "bytes: written with another layout?"
        )
    return version, found, records


@dataclass(frozen=True)
class TaggedCall:
    """One call of the tagged read script: the users of one tag group of a version."""

    key: str  # routes the call: a key of the group's hash tag
    args: list[Any]
    positions: np.ndarray  # where the group's users are in the batch


def tagged_read_calls(
    ids: np.ndarray, version: str, meta: ReadMeta, keys: KeyLayout, window: int = 8
) -> list[TaggedCall]:
    """The tagged read script calls that read ``ids`` from ``version`` (one per tag group
    the ids fall in; the ids of a group in batch order)."""
    if not len(ids):
        return []
    buckets = bucket_of(ids, meta.n_groups).astype(np.int64)
    tags = buckets % meta.slot_groups
    order = np.argsort(tags, kind="stable")
    sorted_tags = tags[order]
    starts = np.flatnonzero(np.r_[True, sorted_tags[1:] != sorted_tags[:-1]])
    ends = np.r_[starts[1:], len(order)]
    width = _FIELD_BYTES + meta.layout.size
    calls = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        positions = order[s:e]
        tag = int(sorted_tags[s])
        group_buckets = buckets[positions]
        calls.append(
            TaggedCall(
                key=keys.tagged_index(version, int(group_buckets[0]), meta.slot_groups),
                args=[
                    keys.tagged_index_prefix(version, tag),
                    keys.tagged_chunk_prefix(version, tag),
                    " ".join(map(str, group_buckets.tolist())),
                    user_fields(ids[positions]),
                    width,
                    meta.chunk_users,
                    window,
                ],
                positions=positions,
            )
        )
    return calls


def merge_tagged_replies(
    replies: Sequence[Any], calls: Sequence[TaggedCall], n_ids: int, meta: ReadMeta
) -> tuple[np.ndarray, bytes, bool]:
    """``(found mask, found records back to back, torn)`` in batch order from the replies of
    :func:`tagged_read_calls`'s calls (torn: an index or group string was missing)."""
    size = meta.layout.size
    found = np.zeros(n_ids, dtype=bool)
    out = np.zeros((n_ids, size), dtype=np.uint8)
    torn = False
    for call, reply in zip(calls, replies, strict=True):
        mask = np.frombuffer(reply[0], dtype=np.uint8) == ord("1")
        records = bytes(reply[1])
        torn = torn or reply[2] == b"1"
        hits = call.positions[mask]
        if len(mask) != len(call.positions) or len(records) != len(hits) * size:
            raise SegmentStoreError(
                f"a tagged read returned {len(records)} bytes for {len(hits)} records of "
                f"{size}: written with another layout?"
            )
        found[hits] = True
        if len(hits):
            out[hits] = np.frombuffer(records, dtype=np.uint8).reshape(len(hits), size)
    return found, out[found].tobytes(), torn


def decode_found(
    found: np.ndarray, records: bytes, layout: RecordLayout
) -> list[dict[str, Any] | None]:
    """Records in input order (None where not found) from a read's mask and records."""
    out: list[dict[str, Any] | None] = [None] * len(found)
    if not records:
        return out
    decoded = iter(decode_many(records, layout))
    for i in np.flatnonzero(found).tolist():
        out[i] = next(decoded)
    return out


class _Checkout:
    """A pooled connection for hand-framed commands; dropped (not reused) after any error,
    since unread replies would corrupt the next user of the connection."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._conn: Any = None

    def __enter__(self) -> Any:
        self._conn = self._pool.get_connection()
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._conn.disconnect()
        self._pool.release(self._conn)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _sha1(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
