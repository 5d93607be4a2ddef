"""Logging first exposures to experiment arms: one atomic script call per batch.

:data:`EXPOSURE_LUA` does, for each exposure of the batch, the shared contract's write:
``SET {ns}:rt:exposed:{experiment}:{user} arm NX`` and, only when that SET succeeds (the
user's first exposure to the experiment), ``HINCRBY {ns}:rt:exposed_count:{experiment} arm 1``
and ``XADD {ns}:rt:exposures * x <json>``. The JSON is the exposure record
``{"experiment", "arm", "user_id", "ts", "source"}`` (orjson); the warehouse sink consumes the
stream into the ``exposures`` table. A second serve of the same user and experiment writes
nothing, so the stream holds one entry per user and experiment, and answers the arm first
served (the marker's value), which keeps users in their arm when the weights are edited.

:class:`ExposureLog` (redis-py; the generator, stream workers, tests) and
:class:`AsyncExposureLog` (``redis.asyncio``, the API) share the script and its arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis

from strata.io.segment_reader import fail_fast_client
from strata.realtime.keys import EXPOSURE_FIELD, RealtimeKeys

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


def _args(
    keys: RealtimeKeys, exposures: Sequence[Exposure], ttl_s: int
) -> tuple[list[str], list[Any]]:
    kk: list[str] = [keys.exposures]
    argv: list[Any] = [EXPOSURE_FIELD, int(ttl_s)]
    for x in exposures:
        kk += [keys.exposed(x.experiment, x.user_id), keys.exposed_count(x.experiment)]
        argv += [x.arm, x.to_json()]
    return kk, argv


def _counts(raw: Mapping[Any, Any]) -> dict[str, int]:
    return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}


class ExposureLog:
    """Logs first exposures (redis-py, synchronous).

    Args:
        client: a redis-py client (or a ``redis://`` URL).
        namespace: the key namespace (``Settings.redis_namespace``).
        ttl_s: lifetime of the first-exposure markers (0: kept).
    """

    def __init__(
        self, client: redis.Redis | str, namespace: str = "strata", *, ttl_s: int = 0
    ) -> None:
        self._redis = redis.Redis.from_url(client) if isinstance(client, str) else client
        self._owned = isinstance(client, str)
        self.keys = RealtimeKeys(namespace)
        self.ttl_s = ttl_s
        self._script = self._redis.register_script(EXPOSURE_LUA)

    def log(self, exposures: Sequence[Exposure]) -> list[Logged]:
        """Log a batch atomically; per exposure, whether it was the user's first and the arm
        of the user's first exposure."""
        if not exposures:
            return []
        keys, argv = _args(self.keys, exposures, self.ttl_s)
        return _logged(self._script(keys=keys, args=argv))

    def counts(self, experiment: str) -> dict[str, int]:
        """Users exposed per arm of ``experiment``."""
        return _counts(self._redis.hgetall(self.keys.exposed_count(experiment)))

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
        self._redis = fail_fast_client(url, timeout_s, connect_timeout_s, max_connections)
        self.keys = RealtimeKeys(namespace)
        self.ttl_s = ttl_s
        self._script = self._redis.register_script(EXPOSURE_LUA)

    async def log(self, exposures: Sequence[Exposure]) -> list[Logged]:
        """Log a batch atomically (see :meth:`ExposureLog.log`)."""
        if not exposures:
            return []
        keys, argv = _args(self.keys, exposures, self.ttl_s)
        return _logged(await self._script(keys=keys, args=argv))

    async def counts_many(self, experiments: Sequence[str]) -> dict[str, dict[str, int]]:
        """Users exposed per arm of each experiment (one pipelined round trip)."""
        if not experiments:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in experiments:
                pipe.hgetall(self.keys.exposed_count(name))
            replies = await pipe.execute()
        return {name: _counts(raw) for name, raw in zip(experiments, replies, strict=True)}

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
