"""Asynchronous reads of the published segment snapshot, for the online API.

The same reads as :class:`strata.io.segment_store.SegmentStore`, on ``redis.asyncio`` with
short timeouts and no client-side retries: the API has a latency budget and its own circuit
breaker, so a failed call must fail fast instead of being retried.

On a single server: one Lua script reads the pointer and the records of that version (one
round trip, an answer never mixes versions). On a Redis Cluster (``STRATA_REDIS_MODE=cluster``)
or for a ``tagged`` version: the pointer first, then one script call per tag group of the
version it names, in a cluster pipeline that sends each node its calls concurrently; every
call names that version, which is kept until it ages out, so a flip between the two steps
still answers the whole batch from the old version (and a version deleted meanwhile is
noticed by its missing keys and status: read again).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from strata.io.redis_client import fail_fast_async_client, is_cluster
from strata.io.segment_store import (
    PUBLISHED,
    READ_LUA,
    TAGGED,
    TAGGED_READ_LUA,
    ReadMeta,
    SegmentStoreError,
    TaggedCall,
    VersionInfo,
    check_read_ids,
    decode_found,
    merge_tagged_replies,
    parse_read_reply,
    read_args,
    tagged_read_calls,
    version_info,
)
from strata.online.codec import decode
from strata.online.keys import KeyLayout

__all__ = ["READ_ERRORS", "AsyncSegmentReader", "SegmentReader", "fail_fast_client"]

#: What a failed read raises: Redis and network errors, timeouts, an inconsistent store. The
#: API answers each with 503 behind its circuit breaker, without importing redis itself.
READ_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    OSError,
    TimeoutError,
    SegmentStoreError,
)

_READ_ATTEMPTS = 3
_INFO_CACHE = 16


#: the API's asyncio client (kept under this name for the segment reader's callers)
fail_fast_client = fail_fast_async_client


@contextlib.contextmanager
def _closed_transport_fails_the_call() -> Iterator[None]:
    """uvloop raises RuntimeError ("... the handler is closed") when redis-py writes to a
    connection whose transport closed under it (seen after timeouts under load, on the
    cluster client); redis-py drops that connection, so this is one failed call like any
    connection error (503 behind the API's breaker), not a bug to answer 500 with."""
    try:
        yield
    except SegmentStoreError:
        raise
    except RuntimeError as exc:
        if "closed" not in str(exc):
            raise
        raise RedisConnectionError(f"connection closed during the call: {exc}") from exc


class SegmentReader(Protocol):
    """The reads the online API needs (what :class:`AsyncSegmentReader` offers)."""

    max_batch: int

    async def get(self, user_id: int) -> tuple[str, dict[str, Any]] | None: ...

    async def lookup(self, user_id: int) -> tuple[str | None, dict[str, Any] | None]: ...

    async def get_many(
        self, user_ids: Sequence[int] | np.ndarray
    ) -> tuple[str | None, list[dict[str, Any] | None]]: ...

    async def current(self) -> str | None: ...

    async def info(self, version: str) -> VersionInfo | None: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


class AsyncSegmentReader:
    """Reads user records of the current version from Redis, asynchronously.

    Args:
        url: ``redis://`` URL (on a cluster: any node).
        namespace: key prefix the snapshot was published under.
        timeout_s: socket timeout of each call.
        connect_timeout_s: connect timeout.
        max_connections: size of the connection pool.
        max_batch: most ids one :meth:`get_many` may read.
        mode: ``standalone`` or ``cluster`` (default ``STRATA_REDIS_MODE``).
    """

    def __init__(
        self,
        url: str,
        namespace: str = "strata",
        *,
        timeout_s: float = 0.15,
        connect_timeout_s: float = 0.15,
        max_connections: int = 64,
        max_batch: int = 1000,
        mode: str | None = None,
    ) -> None:
        self.namespace = namespace
        self.max_batch = max_batch
        self._redis = fail_fast_client(
            url, timeout_s, connect_timeout_s, max_connections, mode=mode
        )
        #: whether this reads a Redis Cluster (tagged keys, pointer then per-slot calls)
        self.cluster = is_cluster(self._redis)
        self.keys = KeyLayout(namespace, cluster=self.cluster)
        self._script = self._redis.register_script(READ_LUA)
        self._tagged_sha = self._redis.register_script(TAGGED_READ_LUA).sha
        self._info: dict[str, VersionInfo] = {}
        self._assumed = ""
        self._info_lock = asyncio.Lock()

    @property
    def pointer_key(self) -> str:
        """Key of the current-version pointer."""
        return self.keys.pointer

    async def get(self, user_id: int) -> tuple[str, dict[str, Any]] | None:
        """``(version, record)`` of one user, or None (absent, or nothing published)."""
        version, record = await self.lookup(user_id)
        return None if version is None or record is None else (version, record)

    async def lookup(self, user_id: int) -> tuple[str | None, dict[str, Any] | None]:
        """``(version, record)`` of one user: version None when nothing is published,
        record None when the current version does not hold the user."""
        with _closed_transport_fails_the_call():
            version, found, records = await self._read(np.asarray([user_id], dtype=np.int64))
        if version is None or not found[0]:
            return version, None
        info = await self.info(version)
        assert info is not None
        return version, decode(records, info.layout)

    async def get_many(
        self, user_ids: Sequence[int] | np.ndarray
    ) -> tuple[str | None, list[dict[str, Any] | None]]:
        """Records of up to ``max_batch`` users, one version, input order, None if absent."""
        ids = np.asarray(user_ids, dtype=np.int64).ravel()
        if len(ids) > self.max_batch:
            raise ValueError(f"at most {self.max_batch} users per batch, got {len(ids)}")
        with _closed_transport_fails_the_call():
            version, found, records = await self._read(ids)
        if version is None:
            return None, [None] * len(ids)
        info = await self.info(version)
        assert info is not None
        return version, decode_found(found, records, info.layout)

    async def current(self) -> str | None:
        """The version the pointer names now (None before the first publish)."""
        with _closed_transport_fails_the_call():
            raw = await self._redis.get(self.pointer_key)
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def info(self, version: str) -> VersionInfo | None:
        """The meta of ``version`` (cached: a published version's layout never changes)."""
        cached = self._info.get(version)
        if cached is not None:
            return cached
        raw = await self._redis.hgetall(self.keys.meta(version))
        info = version_info(version, raw)
        if info is not None:
            async with self._info_lock:
                while len(self._info) >= _INFO_CACHE:
                    self._info.pop(next(iter(self._info)))
                self._info[version] = info
        return info

    async def ping(self) -> bool:
        """True when Redis answers PING."""
        return bool(await self._redis.ping())

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    async def _read(self, ids: np.ndarray) -> tuple[str | None, np.ndarray, bytes]:
        check_read_ids(ids)
        prefix = self.keys.versions_prefix
        for _ in range(_READ_ATTEMPTS):
            assumed = self._assumed
            info = await self.info(assumed) if assumed else None
            if info is None:
                assumed = ""
            meta = None if info is None else ReadMeta.of(info)
            if self.cluster or (meta is not None and meta.storage == TAGGED):
                tagged = await self._read_tagged(ids)
                if tagged is not None:
                    return tagged
                continue
            reply = await self._script(
                keys=[self.pointer_key], args=read_args(ids, assumed, prefix, meta)
            )
            result = parse_read_reply(reply, assumed, meta, len(ids))
            if result is not None:
                return result
            version = reply[0].decode()
            if await self.info(version) is None:
                raise SegmentStoreError(f"the current version {version!r} has no meta")
            self._assumed = version
        raise SegmentStoreError(f"the pointer moved {_READ_ATTEMPTS} times during one read")

    async def _read_tagged(self, ids: np.ndarray) -> tuple[str | None, np.ndarray, bytes] | None:
        """The pointer, then one script call per tag group of the version it names (one
        pipeline per node, concurrently). None: read again (see the module docstring)."""
        version = await self.current()
        if version is None:
            return None, np.zeros(len(ids), dtype=bool), b""
        self._assumed = version
        info = await self.info(version)
        if info is None or info.storage != TAGGED:  # deleted meanwhile, or untagged (1 server)
            return None
        meta = ReadMeta.of(info)
        calls = tagged_read_calls(ids, version, meta, self.keys)
        replies = await self._run_tagged(calls)
        found, records, torn = merge_tagged_replies(replies, calls, len(ids), meta)
        if torn and await self._redis.hget(self.keys.meta(version), "status") != PUBLISHED.encode():
            return None
        return version, found, records

    async def _run_tagged(self, calls: Sequence[TaggedCall]) -> list[Any]:
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for call in calls:
                # execute_command: redis-py blocks the evalsha method in cluster pipelines
                pipe.execute_command("EVALSHA", self._tagged_sha, 1, call.key, *call.args)
            try:
                return list(await pipe.execute())
            except NoScriptError:  # a restarted node: load the script everywhere, again
                if attempt:
                    raise
                await self._redis.script_load(TAGGED_READ_LUA)
        raise AssertionError("unreachable")
