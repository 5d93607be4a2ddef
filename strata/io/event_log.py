"""Appending live events to the partition streams: one atomic script call per batch.

:data:`EVENT_APPEND_LUA` takes a whole batch. It first fixes the stream layout (the partition
count, ``{ns}:rt:layout`` field ``partitions``: set once with HSETNX, then everyone uses the
stored value) and refuses the batch when the caller partitioned it with another count. Then it
refuses the whole batch when any partition it touches holds more than ``max_backlog`` entries
(backpressure: the API answers 503 with Retry-After; nothing is dropped silently). Otherwise,
for each event in order, ``SET {ns}:rt:seen:{event_id} 1 NX EX dedupe_ttl_s`` and an ``XADD``
of the new ones only, to the stream of ``partition_of(user, P)``, field
:data:`strata.realtime.keys.ENTRY_FIELD` = the wire JSON. One user's events thus keep their
order in one stream, and a batch posted twice appends nothing the second time.

:class:`EventAppender` (redis-py, used by ``strata campaigns run``, tests and the benchmark)
and :class:`AsyncEventAppender` (``redis.asyncio``, used by the API) share the script and the
argument building. The keys of one batch span partitions (different hash slots): this targets
a standalone Redis, like the segment store's scripts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis

from strata.ids import bucket_of
from strata.io.segment_reader import fail_fast_client
from strata.io.segment_store import SegmentStoreError
from strata.realtime.keys import ENTRY_FIELD, RealtimeKeys
from strata.realtime.stream_config import StreamConfig
from strata.realtime.wire import encode_event

__all__ = [
    "EVENT_APPEND_LUA",
    "AppendResult",
    "AsyncEventAppender",
    "EventAppender",
    "LayoutChanged",
    "async_stream_partitions",
    "stream_partitions",
]

#: KEYS: layout, the touched streams (n_streams), then one seen key per event.
#: ARGV: partitions, max_backlog, dedupe_ttl_s, n_streams, entry field, then per event
#: (1-based stream index among KEYS[2..], payload).
#: Returns {0, accepted, duplicates}; {1, stream index, length} when a stream is over the
#: backlog; {2, stored partitions} when the layout differs from the caller's.
EVENT_APPEND_LUA = """
local layout = KEYS[1]
local want = ARGV[1]
redis.call('HSETNX', layout, 'partitions', want)
local stored = redis.call('HGET', layout, 'partitions')
if stored ~= want then
  return {2, tonumber(stored)}
end
local max_backlog = tonumber(ARGV[2])
local ttl = ARGV[3]
local n_streams = tonumber(ARGV[4])
local field = ARGV[5]
for i = 1, n_streams do
  local len = redis.call('XLEN', KEYS[1 + i])
  if len > max_backlog then
    return {1, i, len}
  end
end
local accepted, duplicates = 0, 0
local first_seen = 2 + n_streams
local n_events = (#ARGV - 5) / 2
for j = 0, n_events - 1 do
  if redis.call('SET', KEYS[first_seen + j], '1', 'NX', 'EX', ttl) then
    redis.call('XADD', KEYS[1 + tonumber(ARGV[6 + 2 * j])], '*', field, ARGV[7 + 2 * j])
    accepted = accepted + 1
  else
    duplicates = duplicates + 1
  end
end
return {0, accepted, duplicates}
"""

_LAYOUT_FIELD = "partitions"
_LAYOUT_ATTEMPTS = 3


@dataclass(frozen=True)
class AppendResult:
    """What one append did: ``accepted`` new events, ``duplicates`` already seen, or, when
    ``refused``, nothing (``backlog`` entries wait in ``partition``, over ``max_backlog``)."""

    accepted: int = 0
    duplicates: int = 0
    refused: bool = False
    partition: int | None = None
    backlog: int | None = None


class LayoutChanged(SegmentStoreError):
    """The stored partition count kept changing during one append (Redis flushed meanwhile)."""


def _batch_args(
    events: Sequence[Mapping[str, Any]], keys: RealtimeKeys, partitions: int, config: StreamConfig
) -> tuple[list[str], list[Any], list[int]]:
    """KEYS and ARGV of one append; also the partition of each touched stream, in order."""
    users = np.fromiter((int(e["user_id"]) for e in events), dtype=np.int64, count=len(events))
    # bucket_of over the batch is partition_of of each user, vectorised
    parts = bucket_of(users, partitions).tolist()
    order: dict[int, int] = {}
    for p in parts:
        if p not in order:
            order[p] = len(order) + 1
    streams = [keys.stream(p) for p in order]
    seen = [keys.seen(str(e["event_id"])) for e in events]
    argv: list[Any] = [
        partitions,
        config.max_backlog,
        config.dedupe_ttl_s,
        len(streams),
        ENTRY_FIELD,
    ]
    for event, p in zip(events, parts, strict=True):
        argv.append(order[p])
        argv.append(encode_event(event))
    return [keys.layout, *streams, *seen], argv, list(order)


def _result(reply: Sequence[Any], touched: list[int]) -> AppendResult | int:
    """The script's reply as a result, or the stored partition count to retry with."""
    code = int(reply[0])
    if code == 0:
        return AppendResult(int(reply[1]), int(reply[2]))
    if code == 1:
        return AppendResult(
            refused=True, partition=touched[int(reply[1]) - 1], backlog=int(reply[2])
        )
    return int(reply[1])


def _stored_partitions(raw: Any, configured: int) -> int:
    return configured if raw is None else int(raw)


def stream_partitions(client: redis.Redis, keys: RealtimeKeys, configured: int) -> int:
    """The partition count every writer and worker must use: the stored one, set from
    ``configured`` by the first caller (HSETNX, then HGET)."""
    client.hsetnx(keys.layout, _LAYOUT_FIELD, configured)
    return _stored_partitions(client.hget(keys.layout, _LAYOUT_FIELD), configured)


async def async_stream_partitions(
    client: aioredis.Redis, keys: RealtimeKeys, configured: int
) -> int:
    """:func:`stream_partitions` on an asyncio client."""
    await client.hsetnx(keys.layout, _LAYOUT_FIELD, configured)
    raw = await client.hget(keys.layout, _LAYOUT_FIELD)
    return _stored_partitions(raw, configured)


class EventAppender:
    """Appends batches of wire events to the partition streams (redis-py, synchronous).

    Args:
        client: a redis-py client (or a ``redis://`` URL).
        namespace: the key namespace (``Settings.redis_namespace``).
        config: stream settings (partitions, backlog limit, dedupe TTL).
    """

    def __init__(
        self,
        client: redis.Redis | str,
        namespace: str = "strata",
        config: StreamConfig | None = None,
    ) -> None:
        self._redis = redis.Redis.from_url(client) if isinstance(client, str) else client
        self._owned = isinstance(client, str)
        self.keys = RealtimeKeys(namespace)
        self.config = config or StreamConfig.model_validate({})
        self._script = self._redis.register_script(EVENT_APPEND_LUA)
        self._partitions: int | None = None

    @property
    def partitions(self) -> int:
        """The stream partition count in use (read from Redis on first use)."""
        if self._partitions is None:
            self._partitions = stream_partitions(self._redis, self.keys, self.config.partitions)
        return self._partitions

    def append(self, events: Sequence[Mapping[str, Any]]) -> AppendResult:
        """Append a batch atomically (all new events, or nothing when over the backlog).

        Args:
            events: wire events with ``user_id`` (pseudonymised int) and ``event_id``.
        """
        if not events:
            return AppendResult()
        for _ in range(_LAYOUT_ATTEMPTS):
            keys, argv, touched = _batch_args(events, self.keys, self.partitions, self.config)
            out = _result(self._script(keys=keys, args=argv), touched)
            if isinstance(out, AppendResult):
                return out
            self._partitions = out
        raise LayoutChanged("the stream layout changed during the append")

    def close(self) -> None:
        """Close the client when this appender created it."""
        if self._owned:
            self._redis.close()


class AsyncEventAppender:
    """:class:`EventAppender` on ``redis.asyncio``, with the API's short timeouts and no
    client-side retries (the API's circuit breaker decides).

    Args:
        url: ``redis://`` URL.
        namespace: the key namespace.
        config: stream settings.
        timeout_s, connect_timeout_s, max_connections: the connection pool's limits.
    """

    def __init__(
        self,
        url: str,
        namespace: str = "strata",
        config: StreamConfig | None = None,
        *,
        timeout_s: float = 0.5,
        connect_timeout_s: float = 0.15,
        max_connections: int = 64,
    ) -> None:
        self._redis = fail_fast_client(url, timeout_s, connect_timeout_s, max_connections)
        self.keys = RealtimeKeys(namespace)
        self.config = config or StreamConfig.model_validate({})
        self._script = self._redis.register_script(EVENT_APPEND_LUA)
        self._partitions: int | None = None

    async def partitions(self) -> int:
        """The stream partition count in use (read from Redis on first use)."""
        if self._partitions is None:
            self._partitions = await async_stream_partitions(
                self._redis, self.keys, self.config.partitions
            )
        return self._partitions

    async def append(self, events: Sequence[Mapping[str, Any]]) -> AppendResult:
        """Append a batch atomically (see :meth:`EventAppender.append`)."""
        if not events:
            return AppendResult()
        for _ in range(_LAYOUT_ATTEMPTS):
            partitions = await self.partitions()
            keys, argv, touched = _batch_args(events, self.keys, partitions, self.config)
            out = _result(await self._script(keys=keys, args=argv), touched)
            if isinstance(out, AppendResult):
                return out
            self._partitions = out
        raise LayoutChanged("the stream layout changed during the append")

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
