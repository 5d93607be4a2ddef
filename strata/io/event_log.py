"""Appending live events to the partition streams: one atomic script call per batch (per
partition of the batch on a Redis Cluster).

The stream layout (the partition count, ``{ns}:rt:layout`` field ``partitions``) is fixed by
the first writer (HSETNX, then everyone uses the stored value) and read again with every
append, in the same round trip as the backlog check: a batch partitioned with another count
(the layout changed, Redis flushed meanwhile) is partitioned again. The whole batch is refused
when any partition it touches holds more than ``max_backlog`` entries (backpressure: the API
answers 503 with Retry-After; nothing is dropped silently). Otherwise
:data:`EVENT_APPEND_LUA`, for each event in order, does ``SET
{ns}:rt:{pP}:seen:{event_id} 1 NX EX dedupe_ttl_s`` and an ``XADD`` of the new ones only, to the
stream of ``partition_of(user, P)``, field :data:`strata.realtime.keys.ENTRY_FIELD` = the
wire JSON. One user's events thus keep their order in one stream, and a batch posted twice
appends nothing the second time.

A script may touch one hash slot of a cluster only: there the batch is split by partition
(a partition's stream and its dedupe markers share the partition's hash tag) and each part is
one script call (concurrent on the asyncio client). A part can then be refused while another
was appended, when a backlog crosses the limit between the check and the call; the caller
retries the batch and the dedupe markers make that retry append only what is missing.

:class:`EventAppender` (redis-py, used by ``strata campaigns run``, tests and the benchmark)
and :class:`AsyncEventAppender` (``redis.asyncio``, used by the API) share the script and the
argument building.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from strata.ids import bucket_of
from strata.io.redis_client import (
    AsyncClient,
    SyncClient,
    fail_fast_async_client,
    is_cluster,
    sync_client,
)
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

#: KEYS: the touched streams (n_streams), then one seen key per event.
#: ARGV: max_backlog, dedupe_ttl_s, n_streams, entry field, then per event
#: (1-based stream index among KEYS[1..n_streams], payload).
#: Returns {0, accepted, duplicates}; {1, stream index, length} when a stream is over the
#: backlog (nothing appended).
EVENT_APPEND_LUA = """
local max_backlog = tonumber(ARGV[1])
local ttl = ARGV[2]
local n_streams = tonumber(ARGV[3])
local field = ARGV[4]
for i = 1, n_streams do
  local len = redis.call('XLEN', KEYS[i])
  if len > max_backlog then
    return {1, i, len}
  end
end
local accepted, duplicates = 0, 0
local first_seen = 1 + n_streams
local n_events = (#ARGV - 4) / 2
for j = 0, n_events - 1 do
  if redis.call('SET', KEYS[first_seen + j], '1', 'NX', 'EX', ttl) then
    redis.call('XADD', KEYS[tonumber(ARGV[5 + 2 * j])], '*', field, ARGV[6 + 2 * j])
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
    """KEYS and ARGV of one script call appending ``events``; also the partition of each
    touched stream, in order."""
    users = np.fromiter((int(e["user_id"]) for e in events), dtype=np.int64, count=len(events))
    # bucket_of over the batch is partition_of of each user, vectorised
    parts = bucket_of(users, partitions).tolist()
    order: dict[int, int] = {}
    for p in parts:
        if p not in order:
            order[p] = len(order) + 1
    streams = [keys.stream(p) for p in order]
    seen = [keys.seen(str(e["event_id"]), p) for e, p in zip(events, parts, strict=True)]
    argv: list[Any] = [config.max_backlog, config.dedupe_ttl_s, len(streams), ENTRY_FIELD]
    for event, p in zip(events, parts, strict=True):
        argv.append(order[p])
        argv.append(encode_event(event))
    return [*streams, *seen], argv, list(order)


def _calls(
    events: Sequence[Mapping[str, Any]],
    keys: RealtimeKeys,
    partitions: int,
    config: StreamConfig,
    split: bool,
) -> list[tuple[list[str], list[Any], list[int]]]:
    """The script calls of one append: one for the batch, or (``split``, on a cluster) one per
    touched partition, each with its events in batch order."""
    if not split:
        return [_batch_args(events, keys, partitions, config)]
    users = np.fromiter((int(e["user_id"]) for e in events), dtype=np.int64, count=len(events))
    by_part: dict[int, list[Mapping[str, Any]]] = {}
    for event, p in zip(events, bucket_of(users, partitions).tolist(), strict=True):
        by_part.setdefault(p, []).append(event)
    return [_batch_args(part, keys, partitions, config) for part in by_part.values()]


def _merge(
    replies: Sequence[Sequence[Any]], calls: Sequence[tuple[Any, Any, list[int]]]
) -> AppendResult:
    """The script replies of one append as one result (the first refusal wins)."""
    accepted = duplicates = 0
    for reply, (_, _, touched) in zip(replies, calls, strict=True):
        if int(reply[0]) == 1:
            return AppendResult(
                refused=True, partition=touched[int(reply[1]) - 1], backlog=int(reply[2])
            )
        accepted += int(reply[1])
        duplicates += int(reply[2])
    return AppendResult(accepted, duplicates)


def _over_backlog(
    lengths: Sequence[Any], touched: Sequence[int], limit: int
) -> AppendResult | None:
    for p, n in zip(touched, lengths, strict=True):
        if int(n) > limit:
            return AppendResult(refused=True, partition=p, backlog=int(n))
    return None


def _touched(events: Sequence[Mapping[str, Any]], partitions: int) -> list[int]:
    users = np.fromiter((int(e["user_id"]) for e in events), dtype=np.int64, count=len(events))
    return sorted(set(bucket_of(users, partitions).tolist()))


def _stored_partitions(raw: Any, configured: int) -> int:
    return configured if raw is None else int(raw)


def stream_partitions(client: SyncClient, keys: RealtimeKeys, configured: int) -> int:
    """The partition count every writer and worker must use: the stored one, set from
    ``configured`` by the first caller (HSETNX, then HGET)."""
    client.hsetnx(keys.layout, _LAYOUT_FIELD, configured)
    return _stored_partitions(client.hget(keys.layout, _LAYOUT_FIELD), configured)


async def async_stream_partitions(client: AsyncClient, keys: RealtimeKeys, configured: int) -> int:
    """:func:`stream_partitions` on an asyncio client."""
    await client.hsetnx(keys.layout, _LAYOUT_FIELD, configured)
    raw = await client.hget(keys.layout, _LAYOUT_FIELD)
    return _stored_partitions(raw, configured)


class EventAppender:
    """Appends batches of wire events to the partition streams (redis-py, synchronous).

    Args:
        client: a client of either mode (or a ``redis://`` URL, see
            :func:`strata.io.redis_client.sync_client`).
        namespace: the key namespace (``Settings.redis_namespace``).
        config: stream settings (partitions, backlog limit, dedupe TTL).
    """

    def __init__(
        self,
        client: SyncClient | str,
        namespace: str = "strata",
        config: StreamConfig | None = None,
    ) -> None:
        self._redis = sync_client(client) if isinstance(client, str) else client
        self._owned = isinstance(client, str)
        self._split = is_cluster(self._redis)
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
        """Append a batch atomically (all new events, or nothing when over the backlog; per
        partition on a cluster, see the module docstring).

        Args:
            events: wire events with ``user_id`` (pseudonymised int) and ``event_id``.
        """
        if not events:
            return AppendResult()
        for _ in range(_LAYOUT_ATTEMPTS):
            partitions = self.partitions
            touched = _touched(events, partitions) if self._split else []
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.hsetnx(self.keys.layout, _LAYOUT_FIELD, partitions)
                pipe.hget(self.keys.layout, _LAYOUT_FIELD)
                for p in touched:
                    pipe.xlen(self.keys.stream(p))
                _, stored, *lengths = pipe.execute()
            if _stored_partitions(stored, partitions) != partitions:
                self._partitions = int(stored)
                continue
            refused = _over_backlog(lengths, touched, self.config.max_backlog)
            if refused is not None:
                return refused
            calls = _calls(events, self.keys, partitions, self.config, self._split)
            replies = [self._script(keys=k, args=a) for k, a, _ in calls]
            return _merge(replies, calls)
        raise LayoutChanged("the stream layout changed during the append")

    def close(self) -> None:
        """Close the client when this appender created it."""
        if self._owned:
            self._redis.close()


class AsyncEventAppender:
    """:class:`EventAppender` on ``redis.asyncio``, with the API's short timeouts and no
    client-side retries (the API's circuit breaker decides).

    Args:
        url: ``redis://`` URL (a standalone server or any node of a cluster).
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
        self._redis = fail_fast_async_client(url, timeout_s, connect_timeout_s, max_connections)
        self._split = is_cluster(self._redis)
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
            touched = _touched(events, partitions) if self._split else []
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hsetnx(self.keys.layout, _LAYOUT_FIELD, partitions)
                pipe.hget(self.keys.layout, _LAYOUT_FIELD)
                for p in touched:
                    pipe.xlen(self.keys.stream(p))
                _, stored, *lengths = await pipe.execute()
            if _stored_partitions(stored, partitions) != partitions:
                self._partitions = int(stored)
                continue
            refused = _over_backlog(lengths, touched, self.config.max_backlog)
            if refused is not None:
                return refused
            calls = _calls(events, self.keys, partitions, self.config, self._split)
            replies = await asyncio.gather(*(self._script(keys=k, args=a) for k, a, _ in calls))
            return _merge(replies, calls)
        raise LayoutChanged("the stream layout changed during the append")

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
