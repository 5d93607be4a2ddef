"""One place that turns a Redis URL into a client: a single server or a Redis Cluster.

``STRATA_REDIS_MODE`` says which: ``standalone`` (the default) or ``cluster``. In cluster mode
``STRATA_REDIS_URL`` names any node; the client discovers the others (``CLUSTER SLOTS``),
routes each command to the master of its key's slot and follows ``MOVED``/``ASK`` redirects
when slots move or a replica takes over.

Every store (segment store, async reader, event log, live state, sink, erasure) builds its
client here, so one setting switches all of them. Code that must work on both uses only what
both offer: keys that change together share a hash tag (``{...}``, see
:mod:`strata.online.keys` and :mod:`strata.realtime.keys`), a MULTI or Lua script touches one
slot, and batch reads are grouped by slot (:func:`group_by_slot`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeAlias, TypeVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster, key_slot

__all__ = [
    "MODE_ENV",
    "AsyncClient",
    "RedisMode",
    "SyncClient",
    "async_client",
    "group_by_slot",
    "is_cluster",
    "redis_mode",
    "slot_of",
    "sync_client",
]

#: the environment variable that chooses the deployment: ``standalone`` or ``cluster``
MODE_ENV = "STRATA_REDIS_MODE"

RedisMode = Literal["standalone", "cluster"]
MODES: tuple[RedisMode, ...] = ("standalone", "cluster")

#: a synchronous client of either mode (both speak the same command API)
SyncClient: TypeAlias = "redis.Redis | RedisCluster"
#: an asyncio client of either mode
AsyncClient: TypeAlias = "aioredis.Redis | AsyncRedisCluster"

T = TypeVar("T")


class RedisModeError(ValueError):
    """``STRATA_REDIS_MODE`` holds something other than ``standalone`` or ``cluster``."""


def redis_mode(mode: str | None = None) -> RedisMode:
    """The Redis deployment to use: ``mode`` when given, else ``STRATA_REDIS_MODE``, else
    ``standalone``.

    Raises:
        RedisModeError: the value is not one of ``standalone``, ``cluster``.
    """
    value = (mode if mode is not None else os.environ.get(MODE_ENV, "")).strip().lower()
    if not value:
        return "standalone"
    if value not in MODES:
        raise RedisModeError(f"{MODE_ENV}={value!r} is not a Redis mode: use standalone or cluster")
    return value


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a Redis Cluster client (sync or asyncio)."""
    return isinstance(client, RedisCluster | AsyncRedisCluster)


def sync_client(
    url: str,
    *,
    mode: str | None = None,
    socket_timeout: float | None = 5.0,
    socket_connect_timeout: float | None = 2.0,
    decode_responses: bool = False,
    **kwargs: Any,
) -> SyncClient:
    """A synchronous client for ``url`` in the chosen mode (see :func:`redis_mode`).

    Extra keyword arguments go to the connection pool (``max_connections``, ``retry``,
    ``health_check_interval``...), as for ``redis.Redis.from_url``.
    """
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "decode_responses": decode_responses,
        **kwargs,
    }
    if redis_mode(mode) == "cluster":
        return RedisCluster.from_url(url, **common)
    return redis.Redis.from_url(url, **common)


def async_client(
    url: str,
    *,
    mode: str | None = None,
    socket_timeout: float | None = 5.0,
    socket_connect_timeout: float | None = 2.0,
    decode_responses: bool = False,
    **kwargs: Any,
) -> AsyncClient:
    """An asyncio client for ``url`` in the chosen mode (see :func:`redis_mode`)."""
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "decode_responses": decode_responses,
        **kwargs,
    }
    if redis_mode(mode) == "cluster":
        return AsyncRedisCluster.from_url(url, **common)
    return aioredis.Redis.from_url(url, **common)


def slot_of(key: str | bytes) -> int:
    """The cluster hash slot (0-16383) of ``key``, honouring a ``{hash tag}``."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def group_by_slot(items: Iterable[T], key_of: Callable[[T], str | bytes]) -> dict[int, list[T]]:
    """``items`` grouped by the slot of their key, each group in input order (for batch
    reads that must send one pipeline or script call per slot on a cluster)."""
    out: dict[int, list[T]] = {}
    for item in items:
        out.setdefault(slot_of(key_of(item)), []).append(item)
    return out
