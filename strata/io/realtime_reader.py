"""Asynchronous reads of the real-time loop's state, for the online API.

Live overlays and dynamic tags of a batch of users in one script call (one round trip, run
next to the snapshot read), a user's action log, and the rule list with its statistics (one
pipelined call). Same client settings as :class:`strata.io.segment_reader.AsyncSegmentReader`:
short timeouts, no client-side retries (the API's circuit breaker decides). Key names come
from :class:`strata.realtime.keys.RealtimeKeys`; the value formats are the stream workers'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from strata.realtime.keys import RealtimeKeys

__all__ = ["LIVE_READ_LUA", "AsyncRealtimeReader", "LiveState"]

#: KEYS: n live keys, then the n users' tag keys. Returns one {overlay or nil, tag hash as a
#: flat list} per user.
LIVE_READ_LUA = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  out[i] = {redis.call('GET', KEYS[i]), redis.call('HGETALL', KEYS[n + i])}
end
return out
"""


@dataclass(frozen=True)
class LiveState:
    """One user's live overlay (raw JSON, None when absent) and dynamic tags (name ->
    expiry epoch ms, expired ones included)."""

    overlay: bytes | None = None
    tags: dict[bytes, bytes] = field(default_factory=dict)


class AsyncRealtimeReader:
    """Reads live overlays, tags, action logs and rule statistics (``redis.asyncio``).

    Args:
        url: ``redis://`` URL.
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
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s,
            max_connections=max_connections,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
            health_check_interval=0,
        )
        self._live = self._redis.register_script(LIVE_READ_LUA)

    async def live_many(self, user_ids: Sequence[int]) -> list[LiveState]:
        """Overlay and tags of each (pseudonymised) user, in input order, one round trip."""
        if not user_ids:
            return []
        keys = [self.keys.live(u) for u in user_ids] + [self.keys.tags(u) for u in user_ids]
        reply = await self._live(keys=keys)
        out = []
        for overlay, flat in reply:
            tags = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}
            out.append(LiveState(overlay, tags))
        return out

    async def actions(self, user_id: int, limit: int) -> list[dict[str, Any]]:
        """The user's newest ``limit`` actions, newest first (unparsable entries skipped)."""
        raw = await self._redis.lrange(self.keys.actions(user_id), 0, limit - 1)
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
        """``{ns}:rt:rules`` and ``HGETALL {ns}:rt:stats``, in one pipelined call."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.rules)
            pipe.hgetall(self.keys.stats)
            rules, stats = await pipe.execute()
        return rules, stats

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
