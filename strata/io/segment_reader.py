"""Asynchronous reads of the published segment snapshot, for the online API.

The same single-round-trip Lua read as :class:`strata.io.segment_store.SegmentStore` (pointer
and records of one version in one script, so an answer never mixes versions), on
``redis.asyncio`` with short timeouts and no client-side retries: the API has a latency budget
and its own circuit breaker, so a failed call must fail fast instead of being retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from strata.io.segment_store import (
    READ_LUA,
    ReadMeta,
    SegmentStoreError,
    VersionInfo,
    check_read_ids,
    decode_found,
    parse_read_reply,
    read_args,
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


def fail_fast_client(
    url: str, timeout_s: float, connect_timeout_s: float, max_connections: int
) -> aioredis.Redis:
    """The API's asyncio Redis client: short timeouts, no client-side retries (the API's
    circuit breaker decides), bytes replies."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        max_connections=max_connections,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
        health_check_interval=0,
    )


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
        url: ``redis://`` URL.
        namespace: key prefix the snapshot was published under.
        timeout_s: socket timeout of each call.
        connect_timeout_s: connect timeout.
        max_connections: size of the connection pool.
        max_batch: most ids one :meth:`get_many` may read.
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
    ) -> None:
        self.namespace = namespace
        self.keys = KeyLayout(namespace)
        self.max_batch = max_batch
        self._redis = fail_fast_client(url, timeout_s, connect_timeout_s, max_connections)
        self._script = self._redis.register_script(READ_LUA)
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
        version, found, records = await self._read(ids)
        if version is None:
            return None, [None] * len(ids)
        info = await self.info(version)
        assert info is not None
        return version, decode_found(found, records, info.layout)

    async def current(self) -> str | None:
        """The version the pointer names now (None before the first publish)."""
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
