"""Asynchronous reads of the real-time loop's state, for the online API.

Live overlays and dynamic tags of a batch of users in one script call (one round trip, run
next to the snapshot read; on a Redis Cluster one call per stream partition of the batch, run
concurrently, since a user's keys live under their partition's hash tag), a user's action
log, and the rule list with its statistics (one pipelined call, the partitions' hashes
merged). Same client settings as :class:`strata.io.segment_reader.AsyncSegmentReader`: short
timeouts, no client-side retries (the API's circuit breaker decides). Key names come from
:class:`strata.realtime.keys.RealtimeKeys`; the value formats are the stream workers'.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from strata.ids import bucket_of
from strata.io.redis_client import AsyncClient, fail_fast_async_client, is_cluster
from strata.realtime.keys import RealtimeKeys
from strata.realtime.stats import merge_stat_hashes
from strata.realtime.stream_config import StreamConfig

__all__ = ["LIVE_READ_LUA", "AsyncRealtimeReader", "LiveState"]

#: KEYS[1]: a key of the (one) partition of the batch on a cluster, for routing only (any key
#: on a standalone server). ARGV: the partition-tag prefix ``{ns}:rt:{p``, then ``uid:p``
#: pairs joined by spaces (p: the user's partition). Key names are built in the script (a
#: batch of 1,000 users would otherwise send 2,000 key names and parse 2,000 replies, most of
#: them empty: ~9 ms instead of ~1 ms); on a cluster every name of one call shares the slot of
#: KEYS[1]. Returns, only for users with live state, a flat list {position (1-based), overlay
#: or false, tag hash as a flat list, ...}.
LIVE_READ_LUA = """
local prefix = ARGV[1]
local out = {}
local i = 0
for uid, p in string.gmatch(ARGV[2], '(%d+):(%d+)') do
  i = i + 1
  local part = prefix .. p .. '}:'
  local overlay = redis.call('GET', part .. 'live:' .. uid)
  local t = redis.call('HGETALL', part .. 'tags:' .. uid)
  if overlay or #t > 0 then
    out[#out + 1] = i
    out[#out + 1] = overlay
    out[#out + 1] = t
  end
end
return out
"""


@dataclass(frozen=True)
class LiveState:
    """One user's live overlay (raw JSON, None when absent) and dynamic tags (name ->
    expiry epoch ms, expired ones included)."""

    overlay: bytes | None = None
    tags: dict[bytes, bytes] = field(default_factory=dict)


_NOTHING = LiveState()
#: while no writer has fixed the stream layout, how often the reader asks for it again
_LAYOUT_RECHECK_S = 5.0


class AsyncRealtimeReader:
    """Reads live overlays, tags, action logs and rule statistics (``redis.asyncio``).

    Args:
        url: ``redis://`` URL (a standalone server or any node of a cluster).
        namespace: the key namespace (``Settings.redis_namespace``).
        timeout_s, connect_timeout_s, max_connections: the connection pool's limits.
    """

    def __init__(
        self,
        url: str,
        namespace: str = "strata",
        *,
        timeout_s: float = 0.15,
        connect_timeout_s: float = 0.15,
        max_connections: int = 64,
    ) -> None:
        self.keys = RealtimeKeys(namespace)
        self._redis: AsyncClient = fail_fast_async_client(
            url, timeout_s, connect_timeout_s, max_connections
        )
        self._split = is_cluster(self._redis)
        self._live = self._redis.register_script(LIVE_READ_LUA)
        self._partitions: int | None = None
        self._ask_layout_at = 0.0
        self._keys: RealtimeKeys | None = None
        self._default_keys = self.keys.with_partitions(StreamConfig().partitions)

    async def _layout(self) -> RealtimeKeys:
        """The keys with the stored partition count (until a writer fixed it, the configured
        default's, asked again every ``_LAYOUT_RECHECK_S``: no extra round trip per lookup
        where no event was ever posted)."""
        if self._partitions is None and time.monotonic() >= self._ask_layout_at:
            stored = await self._redis.hget(self.keys.layout, "partitions")
            if stored is not None:
                self._partitions = int(stored)
            else:
                self._ask_layout_at = time.monotonic() + _LAYOUT_RECHECK_S
        if self._partitions is None:
            return self._default_keys
        if self._keys is None or self._keys.partitions != self._partitions:
            self._keys = self.keys.with_partitions(self._partitions)
        return self._keys

    async def live_many(self, user_ids: Sequence[int]) -> list[LiveState]:
        """Overlay and tags of each (pseudonymised) user, in input order, one round trip."""
        if not user_ids:
            return []
        keys = await self._layout()
        out = [_NOTHING] * len(user_ids)
        ids = np.fromiter((int(u) for u in user_ids), dtype=np.int64, count=len(user_ids))
        parts = bucket_of(ids, keys.partitions or 1).tolist()  # partition_of, vectorised
        uids = ids.tolist()
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(parts):
            groups.setdefault(p if self._split else 0, []).append(i)
        tag_prefix = keys.part(0)[: -len("0}:")]
        calls = []
        for p, positions in groups.items():
            pairs = " ".join(f"{uids[i]}:{parts[i]}" for i in positions)
            calls.append(self._live(keys=[keys.live_users(p)], args=[tag_prefix, pairs]))
        replies = await asyncio.gather(*calls) if len(calls) > 1 else [await calls[0]]
        for positions, reply in zip(groups.values(), replies, strict=True):
            for j in range(0, len(reply), 3):
                flat = reply[j + 2]
                tags = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}
                out[positions[int(reply[j]) - 1]] = LiveState(reply[j + 1], tags)
        return out

    async def actions(self, user_id: int, limit: int) -> list[dict[str, Any]]:
        """The user's newest ``limit`` actions, newest first (unparsable entries skipped)."""
        keys = await self._layout()
        raw = await self._redis.lrange(keys.actions(user_id), 0, limit - 1)
        out = []
        for item in raw:
            try:
                action = orjson.loads(item)
            except orjson.JSONDecodeError:
                continue
            if isinstance(action, dict):
                out.append(action)
        return out

    async def rules_and_stats(self) -> tuple[bytes | None, dict[bytes, bytes]]:
        """``{ns}:rt:rules`` and the partitions' ``{ns}:rt:{pP}:stats`` merged, in one
        pipelined call."""
        keys = await self._layout()
        n = keys.partitions or 0
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.rules)
            for p in range(n):
                pipe.hgetall(self.keys.stats(p))
            rules, *parts = await pipe.execute()
        return rules, merge_stat_hashes(parts)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
