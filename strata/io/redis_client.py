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
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias, TypeVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster, key_slot
from redis.exceptions import RedisClusterException
from redis.retry import Retry

__all__ = [
    "CLIENT_ERRORS",
    "MODE_ENV",
    "AsyncClient",
    "RedisMode",
    "SyncClient",
    "async_client",
    "consumer_client",
    "fail_fast_async_client",
    "group_by_slot",
    "is_cluster",
    "mget_many",
    "redis_mode",
    "slot_of",
    "sync_client",
    "xreadgroup_many",
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

#: what a failing Redis raises in either mode (a cluster client's own exceptions, such as
#: a slot not covered while a master restarts, are no ``RedisError``)
CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    RedisClusterException,
    OSError,
)

#: how often :func:`xreadgroup_many` polls a cluster while it waits for entries
_POLL_MS = 20


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


def consumer_client(
    url: str,
    *,
    mode: str | None = None,
    socket_timeout: float | None = 10.0,
    socket_connect_timeout: float | None = 5.0,
) -> SyncClient:
    """A synchronous client of a stream consumer (the rule workers, the warehouse sink):
    no client-side retries.

    redis-py sends a command again, by default, when the connection drops before the reply.
    For ``XREADGROUP ... >`` that is wrong: a Redis killed after it delivered (and, with
    ``appendfsync always``, persisted) entries to the consumer, but before the reply reached
    it, leaves them pending for this consumer, and the silent second read skips past them.
    Without retries the error reaches the consumer, which then re-reads its pending entries
    (``XREADGROUP ... 0``) before reading new ones. A cluster client still follows MOVED/ASK
    redirects and refreshes its slot table after a failure.
    """
    return sync_client(
        url,
        mode=mode,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        retry=Retry(NoBackoff(), 0),
    )


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


def fail_fast_async_client(
    url: str,
    timeout_s: float,
    connect_timeout_s: float,
    max_connections: int,
    *,
    mode: str | None = None,
) -> AsyncClient:
    """The online API's asyncio client of either mode (``mode``, default
    ``STRATA_REDIS_MODE``): short timeouts, no client-side retries (the API's circuit breaker
    decides), bytes replies. A cluster client still follows MOVED/ASK redirects, and
    ``max_connections`` is per node."""
    return async_client(
        url,
        mode=mode,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        max_connections=max_connections,
        retry=AsyncRetry(NoBackoff(), 0),
        health_check_interval=0,
    )


def mget_many(client: SyncClient, names: Sequence[str]) -> list[Any]:
    """The values of ``names`` (None where missing), in order, in one round trip: one MGET on
    a standalone server, one MGET per hash slot on a cluster (keys sharing a hash tag: one)."""
    if not names:
        return []
    if is_cluster(client):
        groups = list(group_by_slot(range(len(names)), names.__getitem__).values())
    else:
        groups = [list(range(len(names)))]
    with client.pipeline(transaction=False) as pipe:
        for members in groups:
            # execute_command: a cluster pipeline refuses its mget() (of any slots)
            pipe.execute_command("MGET", *[names[i] for i in members])
        replies = pipe.execute()
    values: list[Any] = [None] * len(names)
    for members, reply in zip(groups, replies, strict=True):
        for i, value in zip(members, reply, strict=True):
            values[i] = value
    return values


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


def xreadgroup_many(
    client: SyncClient,
    group: str,
    consumer: str,
    streams: Mapping[str, str],
    count: int | None,
    block_ms: int | None,
) -> list[tuple[Any, list[Any]]]:
    """XREADGROUP over several streams, in RESP2's shape ``[(stream, [(id, fields)...])...]``.

    A standalone server answers one call (blocking up to ``block_ms`` when nothing is there).
    A cluster refuses streams of several slots in one call, so each stream is read in one
    pipeline (non-blocking, each command sent to its slot's master) and, while nothing came and
    ``block_ms`` is not over, read again every ``_POLL_MS`` ms: a short poll instead of a
    blocking read that would hold one node while the others get entries.
    """
    if not streams:
        return []
    if not is_cluster(client):
        reply: Any = client.xreadgroup(
            group,
            consumer,
            dict(streams),  # type: ignore[arg-type]  # redis-py's invariant dict types
            count=count,
            block=block_ms,
        )
        if isinstance(reply, dict):  # RESP3
            return [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in reply.items()]
        return [(name, items) for name, items in (reply or [])]
    deadline = time.monotonic() + (block_ms or 0) / 1000
    while True:
        with client.pipeline(transaction=False) as pipe:
            for name, after in streams.items():
                pipe.xreadgroup(group, consumer, {name: after}, count=count)
            replies = pipe.execute()
        out = [(name, items) for reply in replies for name, items in (reply or []) if items]
        left_s = deadline - time.monotonic()
        if out or block_ms is None or left_s <= 0:
            return out
        time.sleep(min(_POLL_MS / 1000, left_s))
