"""Logging first exposures to experiment arms: one atomic script call per stream partition of
a batch.

:data:`EXPOSURE_LUA` does, for each exposure of the batch, the shared contract's write:
``SET {ns}:rt:{pP}:exposed:{experiment}:{user} arm NX`` and, only when that SET succeeds (the
user's first exposure to the experiment), ``HINCRBY {ns}:rt:{pP}:exposed_count:{experiment}
arm 1`` and ``XADD {ns}:rt:{pP}:exposures * x <json>``, where P is the user's stream partition:
the three keys share P's hash tag, so the write is one script on a Redis Cluster too, and
the counts per arm are the sum over the partitions' hashes. The JSON is the exposure record
``{"experiment", "arm", "user_id", "ts", "source"}`` (orjson); the warehouse sink consumes the
stream into the ``exposures`` table. A second serve of the same user and experiment writes
nothing, so the stream holds one entry per user and experiment, and answers the arm first
served (the marker's value), which keeps users in their arm when the weights are edited.

:class:`ExposureLog` (redis-py; the generator, stream workers, tests) and
:class:`AsyncExposureLog` (``redis.asyncio``, the API) share the script and its arguments.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from strata.io.redis_client import AsyncClient, SyncClient, fail_fast_async_client, sync_client
from strata.realtime.keys import EXPOSURE_FIELD, RealtimeKeys
from strata.realtime.stream_config import StreamConfig

__all__ = ["EXPOSURE_LUA", "AsyncExposureLog", "Exposure", "ExposureLog", "Logged"]

#: KEYS: the exposures stream, then per exposure (exposed marker, count hash).
#: ARGV: entry field, marker TTL in seconds (0: none), then per exposure (arm, record JSON).
#: Returns per exposure {1, arm} (first exposure, logged) or {0, the arm of the first exposure}
#: (seen before: the arm stays the one first served, even if the weights changed); a failing XADD
#: (e.g. a wrong-typed key) removes that exposure's marker again and fails the call.
EXPOSURE_LUA = """
local field = ARGV[1]
local ttl = tonumber(ARGV[2])
local out = {}
local n = (#KEYS - 1) / 2
for i = 0, n - 1 do
  local arm = ARGV[3 + 2 * i]
  local ok
  if ttl > 0 then
    ok = redis.call('SET', KEYS[2 + 2 * i], arm, 'NX', 'EX', ttl)
  else
    ok = redis.call('SET', KEYS[2 + 2 * i], arm, 'NX')
  end
  if ok then
    local added = redis.pcall('XADD', KEYS[1], '*', field, ARGV[4 + 2 * i])
    if type(added) == 'table' and added.err then
      -- a script is not rolled back: take the marker back so a retry logs the exposure
      redis.call('DEL', KEYS[2 + 2 * i])
      return added
    end
    redis.call('HINCRBY', KEYS[3 + 2 * i], arm, 1)
    out[i + 1] = {1, arm}
  else
    out[i + 1] = {0, redis.call('GET', KEYS[2 + 2 * i])}
  end
end
return out
"""

Source = Literal["serve", "action"]


@dataclass(frozen=True)
class Exposure:
    """One exposure record (the shared contract's fields)."""

    experiment: str
    arm: str
    user_id: int
    ts: int
    source: Source = "serve"

    def to_json(self) -> bytes:
        """The stream entry's value."""
        return orjson.dumps(
            {
                "experiment": self.experiment,
                "arm": self.arm,
                "user_id": int(self.user_id),
                "ts": int(self.ts),
                "source": self.source,
            }
        )


@dataclass(frozen=True)
class Logged:
    """What logging one exposure did: ``first`` (this call logged it) and the user's ``arm``
    of the experiment as first exposed (sticky: a later weight change does not move it)."""

    first: bool
    arm: str


def _logged(reply: Sequence[Any]) -> list[Logged]:
    out = []
    for flag, arm in reply:
        out.append(Logged(bool(int(flag)), arm.decode() if isinstance(arm, bytes) else str(arm)))
    return out


def _calls(
    keys: RealtimeKeys, exposures: Sequence[Exposure], ttl_s: int
) -> list[tuple[list[int], list[str], list[Any]]]:
    """One script call per partition of the batch: the positions of its exposures in the
    batch, KEYS and ARGV."""
    by_part: dict[int, list[int]] = {}
    for i, x in enumerate(exposures):
        by_part.setdefault(keys.partition_of(x.user_id), []).append(i)
    calls = []
    for p, positions in by_part.items():
        kk: list[str] = [keys.exposures(p)]
        argv: list[Any] = [EXPOSURE_FIELD, int(ttl_s)]
        for i in positions:
            x = exposures[i]
            kk += [keys.exposed(x.experiment, x.user_id), keys.exposed_count(x.experiment, p)]
            argv += [x.arm, x.to_json()]
        calls.append((positions, kk, argv))
    return calls


def _in_order(
    n: int, calls: Sequence[tuple[list[int], Any, Any]], replies: Sequence[Any]
) -> list[Logged]:
    out: list[Logged | None] = [None] * n
    for (positions, _, _), reply in zip(calls, replies, strict=True):
        for i, logged in zip(positions, _logged(reply), strict=True):
            out[i] = logged
    return [x for x in out if x is not None]


def _counts(raws: Sequence[Mapping[Any, Any]]) -> dict[str, int]:
    """Per-arm counts summed over the partitions' hashes."""
    out: dict[str, int] = {}
    for raw in raws:
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else str(k)
            out[name] = out.get(name, 0) + int(v)
    return out


def _partitions(stored: Any, partitions: int | None) -> int:
    if partitions is not None:
        return partitions
    return int(stored) if stored is not None else StreamConfig.model_validate({}).partitions


class ExposureLog:
    """Logs first exposures (redis-py, synchronous).

    Args:
        client: a client of either mode (or a ``redis://`` URL, see
            :func:`strata.io.redis_client.sync_client`).
        namespace: the key namespace (``Settings.redis_namespace``).
        ttl_s: lifetime of the first-exposure markers (0: kept).
        partitions: the stream partition count (default: the stored layout's, else the
            configured default).
    """

    def __init__(
        self,
        client: SyncClient | str,
        namespace: str = "strata",
        *,
        ttl_s: int = 0,
        partitions: int | None = None,
    ) -> None:
        self._redis = sync_client(client) if isinstance(client, str) else client
        self._owned = isinstance(client, str)
        self._base = RealtimeKeys(namespace)
        self._partitions = partitions
        self.ttl_s = ttl_s
        self._script = self._redis.register_script(EXPOSURE_LUA)

    @property
    def keys(self) -> RealtimeKeys:
        """The key layout, with the partition count (read from Redis on first use)."""
        if self._partitions is None:
            self._partitions = _partitions(self._redis.hget(self._base.layout, "partitions"), None)
        return self._base.with_partitions(self._partitions)

    def log(self, exposures: Sequence[Exposure]) -> list[Logged]:
        """Log a batch, atomically per partition; per exposure, whether it was the user's
        first and the arm of the user's first exposure."""
        if not exposures:
            return []
        calls = _calls(self.keys, exposures, self.ttl_s)
        replies = [self._script(keys=kk, args=argv) for _, kk, argv in calls]
        return _in_order(len(exposures), calls, replies)

    def counts(self, experiment: str) -> dict[str, int]:
        """Users exposed per arm of ``experiment`` (summed over the partitions)."""
        keys = self.keys
        with self._redis.pipeline(transaction=False) as pipe:
            for p in range(self._partitions or 1):
                pipe.hgetall(keys.exposed_count(experiment, p))
            return _counts(pipe.execute())

    def close(self) -> None:
        """Close the client when this log created it."""
        if self._owned:
            self._redis.close()


class AsyncExposureLog:
    """:class:`ExposureLog` on ``redis.asyncio`` with the API's short timeouts.

    Args:
        url: ``redis://`` URL.
        namespace: the key namespace.
        ttl_s: lifetime of the first-exposure markers (0: kept).
        timeout_s, connect_timeout_s, max_connections: the connection pool's limits.
    """

    def __init__(
        self,
        url: str,
        namespace: str = "strata",
        *,
        ttl_s: int = 0,
        timeout_s: float = 0.5,
        connect_timeout_s: float = 0.15,
        max_connections: int = 64,
    ) -> None:
        self._redis: AsyncClient = fail_fast_async_client(
            url, timeout_s, connect_timeout_s, max_connections
        )
        self._base = RealtimeKeys(namespace)
        self._partitions: int | None = None
        self.ttl_s = ttl_s
        self._script = self._redis.register_script(EXPOSURE_LUA)

    async def _keys(self) -> RealtimeKeys:
        if self._partitions is None:
            stored = await self._redis.hget(self._base.layout, "partitions")
            self._partitions = _partitions(stored, None)
        return self._base.with_partitions(self._partitions)

    async def log(self, exposures: Sequence[Exposure]) -> list[Logged]:
        """Log a batch, atomically per partition (see :meth:`ExposureLog.log`)."""
        if not exposures:
            return []
        calls = _calls(await self._keys(), exposures, self.ttl_s)
        replies = await asyncio.gather(*(self._script(keys=kk, args=argv) for _, kk, argv in calls))
        return _in_order(len(exposures), calls, replies)

    async def counts_many(self, experiments: Sequence[str]) -> dict[str, dict[str, int]]:
        """Users exposed per arm of each experiment, summed over the partitions (one
        pipelined round trip)."""
        if not experiments:
            return {}
        keys = await self._keys()
        n = self._partitions or 1
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in experiments:
                for p in range(n):
                    pipe.hgetall(keys.exposed_count(name, p))
            replies = await pipe.execute()
        return {name: _counts(replies[i * n : (i + 1) * n]) for i, name in enumerate(experiments)}

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
